"""What each identity may publish and read on the bus.

The rules are topic patterns in which ``%u`` stands for the identity's name
(the authenticated MQTT user name), the way Mosquitto's ACL files write
them; our broker (oneos/broker/auth.py) applies exactly these, and
:func:`mosquitto_acl` writes them as a Mosquitto ACL file.

Why each rule is there:

- only runtime ``R`` writes ``runtimes/R/status`` and ``agents/R/...``: a
  forged status (a false leader claim, a false "dead") or a forged agent
  state cannot be published by anyone else;
- requests go to ``rpc/TARGET/CALLER`` and every identity may write only
  with its own name as CALLER: the server reads the caller from the topic,
  and the broker vouches for it;
- answers go to ``reply/CALLER/CLIENT``, readable only by CALLER: a stream
  token in an answer is seen by its requester alone;
- only runtimes read requests and write answers and the network's store
  record; client identities only ask.

Everything not allowed is refused: publishes are dropped (and logged by the
broker), subscriptions get the failure return code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from oneos import TOPIC_ROOT
from oneos.pubsub.mqtt import topic_matches
from oneos.security.credentials import role

R = TOPIC_ROOT


@dataclass(frozen=True)
class Rules:
    """Topic patterns (``%u`` = the identity's name) one kind of identity may read and write."""

    read: tuple[str, ...]
    write: tuple[str, ...]


#: rules every identity has
COMMON = Rules(
    read=(f"{R}/runtimes/+/status", f"{R}/agents/+/+", f"{R}/network/store", f"{R}/reply/%u/#", f"{R}/barrier/%u/#"),
    write=(f"{R}/rpc/+/%u", f"{R}/barrier/%u/#"),
)

#: what a runtime may do beyond the common rules
RUNTIME = Rules(
    read=(f"{R}/rpc/#",),
    write=(f"{R}/runtimes/%u/status", f"{R}/agents/%u/+", f"{R}/reply/#", f"{R}/network/store"),
)

#: what a client identity may do beyond the common rules: nothing
CLIENT = Rules(read=(), write=())


@functools.lru_cache(maxsize=4096)
def rules_for(name: str | None) -> Rules:
    """The rules of identity *name*, ``%u`` filled in; an invalid name may do nothing.

    Cached: the broker asks for every publish and every delivery, and a
    network has few identities.
    """
    kind = role(name)
    if kind is None or name is None:
        return Rules((), ())
    extra = RUNTIME if kind == "runtime" else CLIENT

    def fill(patterns: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(p.replace("%u", name) for p in patterns)

    return Rules(fill(COMMON.read + extra.read), fill(COMMON.write + extra.write))


def matches(pattern: str, topic: str) -> bool:
    """Whether topic name *topic* matches filter *pattern* (MQTT ``+`` and ``#``)."""
    return topic_matches(pattern, topic)


def covers(pattern: str, topic_filter: str) -> bool:
    """Whether every topic matching *topic_filter* also matches *pattern*.

    A subscription is allowed only when some read rule covers its whole
    filter: ``oneos/v1/#`` is refused to an identity that may read only
    part of it (its retained messages would otherwise be delivered).
    """
    p, f = pattern.split("/"), topic_filter.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(f):
            return False
        if f[i] == "#":
            return False  # the filter reaches deeper than this pattern allows
        if level == "+":
            continue
        if f[i] != level:  # a literal level covers only itself, not '+'
            return False
    return len(p) == len(f)


def may_publish(name: str | None, topic: str) -> bool:
    return any(matches(p, topic) for p in rules_for(name).write)


def may_receive(name: str | None, topic: str) -> bool:
    return any(matches(p, topic) for p in rules_for(name).read)


def may_subscribe(name: str | None, topic_filter: str) -> bool:
    return any(covers(p, topic_filter) for p in rules_for(name).read)


def mosquitto_acl(names: list[str]) -> str:
    """A Mosquitto ACL file granting exactly these rules to the identities *names*.

    Common rules are ``pattern`` lines (Mosquitto fills in ``%u``); the
    runtime rules are ``user`` sections, one per runtime identity, because
    Mosquitto cannot tell a runtime from a client by its name.
    """
    lines = [
        "# OneOS bus permissions (written by 'oneos mosquitto'; see docs/security.md)",
        "# Rules every identity has; %u is the authenticated user name.",
        "",
    ]
    for p in COMMON.read:
        lines.append(f"pattern read {p}")
    for p in COMMON.write:
        lines.append(f"pattern write {p}")
    for name in sorted(set(names)):
        if role(name) != "runtime":
            continue
        lines += ["", f"user {name}"]
        lines += [f"topic read {p.replace('%u', name)}" for p in RUNTIME.read]
        lines += [f"topic write {p.replace('%u', name)}" for p in RUNTIME.write]
    return "\n".join(lines) + "\n"
