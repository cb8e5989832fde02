"""Which store holds the network's one file tree, and which runtime serves it.

Pure data and decisions, no I/O (the :mod:`oneos.runtime.storehost` service
does the publishing and watching), so every rule here is tested directly.

The network's store is a fact of the network, not of whichever runtime
happens to lead: it is kept as one retained record on the broker
(``oneos/v1/network/store``) and remembered by every runtime in
``$ONEOS_HOME/network.json`` so it outlives a broker restart.

* A SQLite store is a file on one machine: only runtimes on that machine
  that were configured with that very URL (or the runtime that created it)
  can open it.  Among those, the leader serves it if it is one of them,
  else the best-ranked live one.  When none is alive the tree is
  *unavailable* (a clear error naming the store host), never empty.
* A MongoDB store is shared: every kernel runtime can open it, so the tree
  is served by the leader, as the kernel services are.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from oneos.errors import OneOSError
from oneos.pubsub import messages
from oneos.runtime.status import RuntimeStatus

SQLITE, MONGODB = "sqlite", "mongodb"


class StoreConflict(OneOSError):
    """This runtime's store setting names another store than the network's."""


@dataclass(frozen=True)
class StoreRecord:
    """The network's store: its URL and, for SQLite, where the file lives."""

    url: str
    #: the runtime that created the tree (for SQLite, the one to name when it is down)
    host: str
    #: the machine holding a SQLite file ('' for a shared store)
    machine: str = ""
    claimed_at: float = 0.0

    @property
    def kind(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def shared(self) -> bool:
        """Whether every runtime can open it (MongoDB), rather than one machine's runtimes (SQLite)."""
        return self.kind == MONGODB

    def encode(self) -> bytes:
        return messages.encode("network.store", **asdict(self))

    @classmethod
    def decode(cls, payload: bytes) -> StoreRecord:
        body = messages.decode(payload, "network.store")
        url = messages.require(body, "url", str)
        if urlsplit(url).scheme not in (SQLITE, MONGODB):
            raise messages.MalformedMessage(f"unknown store kind in {url!r}")
        return cls(
            url=url,
            host=messages.require(body, "host", str),
            machine=str(body.get("machine", "")),
            claimed_at=float(body.get("claimed_at", 0.0) or 0.0),
        )

    def same_store(self, other: StoreRecord) -> bool:
        """Whether *other* names the same tree (same URL, and for SQLite the same machine's file),
        whoever announced it and when."""
        return self.url == other.url and self.machine == other.machine

    def describe(self) -> str:
        from oneos.fs.urls import redact

        where = f" on {self.host}" if not self.shared else ""
        return f"{redact(self.url)}{where}"


@dataclass(frozen=True)
class StoreDecision:
    """What a starting runtime does about the store."""

    #: the record to use (None: the network has no store yet and we cannot create one)
    record: StoreRecord | None
    #: publish *record* as the network's (we create it, or re-announce a remembered one)
    publish: bool
    #: this runtime can open the store and so may serve the tree
    eligible: bool


def decide(
    configured: str,
    retained: StoreRecord | None,
    remembered: StoreRecord | None,
    *,
    me: str,
    machine: str,
    kernel: bool,
    local_store: str,
    now: float,
) -> StoreDecision:
    """The store a runtime uses, given its setting and what the network says.

    Raises :class:`StoreConflict` when the setting names another store than
    the network's: two trees in one network is the failure this prevents.
    """
    record = retained or remembered
    if record is None:
        url = configured or (local_store if kernel else "")
        if not url:
            return StoreDecision(None, publish=False, eligible=False)
        kind = urlsplit(url).scheme
        new = StoreRecord(url=url, host=me, machine=machine if kind == SQLITE else "", claimed_at=now)
        return StoreDecision(new, publish=True, eligible=kernel or kind == SQLITE)
    if configured and configured != record.url:
        raise StoreConflict(
            f"this network keeps its file tree in {record.describe()}, but this runtime is configured with "
            f"store {_redact(configured)}; remove the store setting to use the network's tree "
            "(or 'oneos reset-fs' and restart the whole network to move it)"
        )
    if record.shared:
        eligible = kernel
    else:
        eligible = record.machine == machine and (record.host == me or configured == record.url)
        if configured and not eligible:
            raise StoreConflict(
                f"this network's file tree is the SQLite file {record.describe()} (machine {record.machine[:8]}); "
                f"this machine ({machine[:8]}) cannot open it: remove the store setting to use the network's tree"
            )
    return StoreDecision(record, publish=retained is None, eligible=eligible)


def fs_server(statuses: list[RuntimeStatus]) -> str | None:
    """The runtime that serves the tree now, from the live statuses (everyone computes the same).

    The leader when it can open the store (always so for a shared store),
    else the best-ranked live runtime that can.  Of two leader claims the
    newer term wins, as in :func:`~oneos.runtime.status.elect`: an old
    leader's stale claim (resent by its client after a partition heals)
    must not move the file system away from the leader for a moment.
    """
    eligible = [s for s in statuses if s.alive and s.fs_eligible]
    if not eligible:
        return None
    leaders = [s for s in eligible if s.leader]
    if leaders:
        return min(leaders, key=lambda s: (-s.epoch, *s.rank())).id
    return min(eligible, key=RuntimeStatus.rank).id


def unavailable_reason(record: StoreRecord | None, statuses: list[RuntimeStatus]) -> str:
    """Why nobody serves the tree, in words a user can act on."""
    if record is None:
        return "file system unavailable: this network has no file store yet (start a kernel runtime)"
    if record.shared:
        if not any(s.alive and s.kernel for s in statuses):
            return f"file system unavailable: no kernel runtime is alive to serve {record.describe()}"
        return f"file system unavailable: no kernel leader right now for {record.describe()} (election in progress)"
    return f"file system unavailable: store host {record.host} is down ({record.describe()})"


def route_check(target: str, statuses: list[RuntimeStatus], record: StoreRecord | None) -> None:
    """Raise at once when nobody serves *target* by this view of the network, saying why.

    Used by a runtime's RPC client (its membership view) and by the CLI (a
    snapshot taken as it connects), so a call to a service nobody provides
    fails in milliseconds with the reason instead of after a timeout.
    """
    from oneos.errors import KernelUnavailable
    from oneos.fs.errors import FileSystemUnavailable

    live = [s for s in statuses if s.alive]
    if target == "fs":
        if fs_server(live) is None:
            raise FileSystemUnavailable(unavailable_reason(record, live))
    elif target in ("kernel", "scheduler") and not any(s.leader for s in live):
        alive = "no kernel runtime is alive" if not any(s.kernel for s in live) else "an election is under way"
        raise KernelUnavailable(f"no kernel leader right now ({alive}); try again in a few seconds")


def _redact(url: str) -> str:
    from oneos.fs.urls import redact

    return redact(url)


def machine_id() -> str:
    """A stable id of this machine: runtimes with the same one can open the same SQLite file."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return hashlib.sha256(text.encode()).hexdigest()[:16]
    return hashlib.sha256(str(uuid.getnode()).encode()).hexdigest()[:16]


NETWORK_FILE = "network.json"


def _read_network(home: Path) -> dict[str, Any]:
    try:
        body = json.loads((Path(home) / NETWORK_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _write_network(home: Path, **changes: object) -> None:
    path = Path(home) / NETWORK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**_read_network(home), **changes}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(path)


def remember(home: Path, record: StoreRecord) -> None:
    """Keep *record* in ``$ONEOS_HOME/network.json`` (written atomically)."""
    _write_network(home, store=asdict(record))


def remember_epoch(home: Path, epoch: int) -> None:
    """Keep the highest leadership term seen, so terms keep increasing across restarts of everything."""
    _write_network(home, epoch=int(epoch))


def recall_epoch(home: Path) -> int:
    try:
        return int(_read_network(home).get("epoch", 0))
    except (TypeError, ValueError):
        return 0


def recall(home: Path) -> StoreRecord | None:
    """The record kept by :func:`remember`, or None (missing or unreadable)."""
    try:
        store = _read_network(home)["store"]
        return StoreRecord(
            url=str(store["url"]),
            host=str(store["host"]),
            machine=str(store.get("machine", "")),
            claimed_at=float(store.get("claimed_at", 0.0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
