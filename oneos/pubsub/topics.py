"""Topic names OneOS uses, in one place so every module agrees."""

from __future__ import annotations

from oneos import TOPIC_ROOT

#: the caller level of requests made without an identity (a broker that allows anonymous clients);
#: not a valid identity name, so a server that expects identities refuses it
ANONYMOUS = "~"


def status(runtime_id: str) -> str:
    """Retained status of one runtime (its will marks it dead)."""
    return f"{TOPIC_ROOT}/runtimes/{runtime_id}/status"


#: Subscription filter for the status of every runtime.
ALL_STATUS = f"{TOPIC_ROOT}/runtimes/+/status"


def runtime_from_status_topic(topic: str) -> str | None:
    """The runtime id in a status topic, or None if *topic* is not one."""
    prefix = f"{TOPIC_ROOT}/runtimes/"
    if topic.startswith(prefix) and topic.endswith("/status"):
        rid = topic[len(prefix) : -len("/status")]
        return rid if rid and "/" not in rid else None
    return None


def rpc(target: str, caller: str) -> str:
    """Where *caller* (its bus identity) publishes requests for *target* (a runtime id, or 'kernel').

    The broker lets an identity publish only with its own name as *caller*
    (oneos/security/acl.py), so a server knows who asks from the topic.
    """
    return f"{TOPIC_ROOT}/rpc/{target}/{caller}"


def rpc_requests(target: str) -> str:
    """Subscription filter for every caller's requests to *target*."""
    return f"{TOPIC_ROOT}/rpc/{target}/+"


def caller_of(request_topic: str) -> str:
    """The caller level of a request topic."""
    return request_topic.rsplit("/", 1)[-1]


def reply(caller: str, client_id: str) -> str:
    """Where answers to one client's requests are published (readable only by identity *caller*)."""
    return f"{TOPIC_ROOT}/reply/{caller}/{client_id}"


def barrier(caller: str, client_id: str) -> str:
    """A client's own round-trip topic (see PubSubClient.barrier)."""
    return f"{TOPIC_ROOT}/barrier/{caller}/{client_id}"


#: The RPC target served by whichever runtime currently leads the kernel.
KERNEL = "kernel"


def agent(runtime_id: str, agent_id: str) -> str:
    """Retained status of one agent (cleared some time after it ended)."""
    return f"{TOPIC_ROOT}/agents/{runtime_id}/{agent_id}"


#: Subscription filter for every agent's status.
ALL_AGENTS = f"{TOPIC_ROOT}/agents/+/+"


#: Retained record of the store that holds the network's file tree.
NETWORK_STORE = f"{TOPIC_ROOT}/network/store"
