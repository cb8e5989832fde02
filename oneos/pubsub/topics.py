"""Topic names OneOS uses, in one place so every module agrees."""

from __future__ import annotations

from oneos import TOPIC_ROOT


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


def rpc(target: str) -> str:
    """Where requests for *target* (a runtime id, or 'kernel') are published."""
    return f"{TOPIC_ROOT}/rpc/{target}"


def reply(client_id: str) -> str:
    """Where answers to one client's requests are published."""
    return f"{TOPIC_ROOT}/reply/{client_id}"


#: The RPC target served by whichever runtime currently leads the kernel.
KERNEL = "kernel"


def agent(runtime_id: str, agent_id: str) -> str:
    """Retained status of one agent (cleared some time after it ended)."""
    return f"{TOPIC_ROOT}/agents/{runtime_id}/{agent_id}"


#: Subscription filter for every agent's status.
ALL_AGENTS = f"{TOPIC_ROOT}/agents/+/+"


#: Retained record of the store that holds the network's file tree.
NETWORK_STORE = f"{TOPIC_ROOT}/network/store"
