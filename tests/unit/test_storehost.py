"""StoreHost (oneos/runtime/storehost.py) on the in-memory bus of test_membership: no sockets, no sleeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from oneos.pubsub import topics
from oneos.runtime.netstore import StoreRecord
from oneos.runtime.storehost import StoreHost
from tests.unit.test_membership import FakeBus


class QuietMembership:
    """What StoreHost asks of the membership: a publish now and then, no one live."""

    def __init__(self) -> None:
        self.published = 0

    def publish(self) -> defer.Deferred:
        self.published += 1
        return defer.succeed(None)

    def on_change(self, listener: Any) -> None:
        pass

    def live(self) -> list[Any]:
        return []


class IdleRole:
    holding = False

    def take_over(self) -> defer.Deferred:
        return defer.succeed(None)

    def step_down(self) -> defer.Deferred:
        return defer.succeed(None)


def started_host(tmp_path: Path, bus: FakeBus, clock: Clock, me: str, store: str) -> StoreHost:
    host = StoreHost(
        bus,  # type: ignore[arg-type]  # the in-memory bus stands for the PubSubClient
        QuietMembership(),
        IdleRole(),  # type: ignore[arg-type]
        clock,
        me=me,
        configured=store,
        local_store="",
        kernel=True,
        machine="machine-1",
        home=tmp_path / me,
    )
    (tmp_path / me).mkdir()
    host.join()
    host.startService()
    return host


def warnings_during(action: Any) -> list[str]:
    seen: list[dict[str, Any]] = []
    observer: Any = seen.append  # an ILogObserver is any callable taking the event
    globalLogPublisher.addObserver(observer)
    try:
        action()
    finally:
        globalLogPublisher.removeObserver(observer)
    return [e.get("log_format", "") for e in seen if e.get("log_level") == LogLevel.warn]


def test_the_same_store_announced_by_many_runtimes_at_once_is_no_news(tmp_path):
    # 200 kernel runtimes started together with one store setting all announce it; each hears the others'.
    clock, bus = Clock(), FakeBus(Clock())
    host = started_host(tmp_path, bus, clock, "rt-a", "sqlite:////srv/fs.sqlite3")
    assert host.record is not None and host.record.url == "sqlite:////srv/fs.sqlite3"

    def others_announce() -> None:
        for i in range(20):
            record = StoreRecord("sqlite:////srv/fs.sqlite3", host=f"rt-{i}", machine="machine-1", claimed_at=i)
            bus.inject(topics.NETWORK_STORE, record.encode(), retain=True)

    assert warnings_during(others_announce) == []
    assert host.record.host == "rt-a", "the runtime keeps the record it adopted"


def test_another_tree_announced_later_is_warned_about(tmp_path):
    clock, bus = Clock(), FakeBus(Clock())
    host = started_host(tmp_path, bus, clock, "rt-a", "sqlite:////srv/fs.sqlite3")
    other_file = StoreRecord("sqlite:////srv/other.sqlite3", host="rt-b", machine="machine-1")
    other_machine = StoreRecord("sqlite:////srv/fs.sqlite3", host="rt-c", machine="machine-2")

    def announce() -> None:
        bus.inject(topics.NETWORK_STORE, other_file.encode(), retain=True)
        bus.inject(topics.NETWORK_STORE, other_machine.encode(), retain=True)

    warned = warnings_during(announce)
    assert len(warned) == 2 and all("another file store" in w for w in warned)
    assert host.record is not None and host.record.url == "sqlite:////srv/fs.sqlite3"
