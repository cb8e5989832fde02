"""What a runtime tells the others about itself, and how it is encoded.

Pure data and codec, no I/O: the status is a retained message per runtime,
so whoever subscribes (another runtime, ``oneos status``) gets the latest
picture of every runtime at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from oneos.pubsub import messages

ALIVE = "alive"
DEAD = "dead"  # published by the broker as our last will
LEFT = "left"  # published by a runtime that stopped cleanly
STATES = (ALIVE, DEAD, LEFT)


@dataclass(frozen=True)
class DeviceStatus:
    """One device of a runtime as its status tells it (the full record: ``device_list``, oneos.devices.info)."""

    name: str
    direction: str
    driver: str
    #: ok or failed
    state: str = "ok"
    #: why it failed ('' when ok)
    reason: str = ""
    #: the OneOS user it belongs to ('' from a runtime older than device permissions)
    owner: str = ""
    #: its rwx bits (None from a runtime older than device permissions)
    mode: int | None = None

    @classmethod
    def from_dict(cls, body: Any) -> DeviceStatus:
        if not isinstance(body, dict):
            raise messages.MalformedMessage(f"a device entry is an object, not {type(body).__name__}")
        mode = body.get("mode")
        return cls(
            name=messages.require(body, "name", str),
            direction=str(body.get("direction", "")),
            driver=str(body.get("driver", "")),
            state=str(body.get("state", "ok")),
            reason=str(body.get("reason", "")),
            owner=str(body.get("owner") or ""),
            mode=mode if isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode <= 0o777 else None,
        )


@dataclass(frozen=True)
class RuntimeStatus:
    """One runtime as the network sees it."""

    id: str
    instance: str
    state: str = ALIVE
    address: str = ""
    kernel: bool = False
    leader: bool = False
    memory_limit_mb: int = 0
    tags: tuple[str, ...] = ()
    interpreters: tuple[str, ...] = ()
    cpu_percent: float = 0.0
    memory_used_mb: float = 0.0
    memory_total_mb: float = 0.0
    rss_mb: float = 0.0
    agents: int = 0
    #: memory the agents of this runtime use now (against memory_limit_mb)
    agents_memory_mb: float = 0.0
    started_at: float = 0.0
    updated_at: float = 0.0
    #: seconds between refreshes, so any reader can judge staleness
    interval: float = 2.0
    services: dict[str, str] = field(default_factory=dict)
    #: host:port peers connect to for streams (pipes, file content, agent output)
    stream: str = ""
    #: the stream address speaks TLS only (certificates of the network's CA): peers connect with TLS
    stream_tls: bool = False
    #: host:port of this runtime's SSH front door ('' when off)
    ssh: str = ""
    #: this runtime's web desktop, a URL such as ``http://127.0.0.1:3000/`` ('' when off)
    desktop: str = ""
    pid: int = 0
    #: this runtime can open the network's store, so it may serve the file tree
    fs_eligible: bool = False
    #: this runtime serves the file tree now
    fs_serving: bool = False
    #: the leadership term this runtime leads (or last saw): strictly increasing across the network's life
    epoch: int = 0
    #: the I/O devices this runtime serves (name, direction, driver, state, reason, owner, mode)
    devices: tuple[DeviceStatus, ...] = ()

    @property
    def alive(self) -> bool:
        return self.state == ALIVE

    def rank(self) -> tuple[float, str]:
        """Election order: the longest-running kernel first, id breaks ties."""
        return (self.started_at, self.id)

    def with_(self, **changes: Any) -> RuntimeStatus:
        return replace(self, **changes)

    def encode(self) -> bytes:
        body = asdict(self)
        body["tags"] = list(self.tags)
        body["interpreters"] = list(self.interpreters)
        return messages.encode("runtime.status", **body)

    @classmethod
    def decode(cls, payload: bytes) -> RuntimeStatus:
        """Parse a status message; raise MalformedMessage when it is not one."""
        return cls.from_dict(messages.decode(payload, "runtime.status"))

    @classmethod
    def from_dict(cls, body: Any) -> RuntimeStatus:
        """Read a status's fields (a message's body, or a row of the kernel's ``runtimes``); MalformedMessage if bad."""
        if not isinstance(body, dict):
            raise messages.MalformedMessage(f"a runtime status is an object, not {type(body).__name__}")
        rid = messages.require(body, "id", str)
        instance = messages.require(body, "instance", str)
        state = messages.require(body, "state", str)
        if state not in STATES:
            raise messages.MalformedMessage(f"unknown runtime state {state!r}")
        try:
            return cls(
                id=rid,
                instance=instance,
                state=state,
                address=str(body.get("address", "")),
                kernel=bool(body.get("kernel", False)),
                leader=bool(body.get("leader", False)),
                memory_limit_mb=int(body.get("memory_limit_mb", 0)),
                tags=tuple(str(t) for t in body.get("tags", ())),
                interpreters=tuple(str(t) for t in body.get("interpreters", ())),
                cpu_percent=float(body.get("cpu_percent", 0.0)),
                memory_used_mb=float(body.get("memory_used_mb", 0.0)),
                memory_total_mb=float(body.get("memory_total_mb", 0.0)),
                rss_mb=float(body.get("rss_mb", 0.0)),
                agents=int(body.get("agents", 0)),
                agents_memory_mb=float(body.get("agents_memory_mb", 0.0)),
                started_at=float(body.get("started_at", 0.0)),
                updated_at=float(body.get("updated_at", 0.0)),
                interval=float(body.get("interval", 2.0)),
                services={str(k): str(v) for k, v in dict(body.get("services") or {}).items()},
                stream=str(body.get("stream", "")),
                stream_tls=bool(body.get("stream_tls", False)),
                ssh=str(body.get("ssh", "")),
                desktop=str(body.get("desktop", "")),
                pid=int(body.get("pid", 0) or 0),
                fs_eligible=bool(body.get("fs_eligible", False)),
                fs_serving=bool(body.get("fs_serving", False)),
                epoch=int(body.get("epoch", 0) or 0),
                devices=tuple(DeviceStatus.from_dict(d) for d in body.get("devices") or ()),
            )
        except (TypeError, ValueError) as e:
            raise messages.MalformedMessage(f"bad runtime status field: {e}") from None


def elect(statuses: list[RuntimeStatus]) -> str | None:
    """Pick the leader among *statuses* (already filtered to the live ones).

    Leadership is sticky: while a live kernel runtime claims it, it keeps it,
    so a newcomer never pulls the kernel services away.  If two claim it,
    the newer term (higher epoch) wins, so a stale claim (an old leader
    coming back, an old retained status) never unseats the live leader;
    in a race within one term the better-ranked keeps it.  With no
    claimant, the best-ranked live kernel runtime is chosen.  Every runtime
    computes this from the same retained statuses, so they agree without
    talking.
    """
    kernels = [s for s in statuses if s.kernel and s.alive]
    claimants = [s for s in kernels if s.leader]
    if claimants:
        return min(claimants, key=lambda s: (-s.epoch, *s.rank())).id
    if not kernels:
        return None
    return min(kernels, key=RuntimeStatus.rank).id
