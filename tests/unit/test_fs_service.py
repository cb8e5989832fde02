"""FileSystemService (oneos/fs/service.py) opening its store on a task.Clock: retries, serving, refusals.

The store is a small fake, opened by a stand-in for ``open_store`` that fails as many
times as a test says; the RPC target runs on the in-memory bus.  No
sockets, no threads, no sleeps.  tests/unit/test_resource_limits.py already
covers a store lost during maintenance being closed and a retry scheduled.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from oneos.fs import service as fs_service
from oneos.fs.errors import PermissionDenied, StoreUnavailable
from oneos.fs.service import TARGET, FileSystemService
from oneos.fs.store import Stat
from oneos.pubsub.rpc import Unanswered
from test_membership import FakeBus, request


class ServingStore:
    """A store that answers ``stat`` and maintenance, and can break (then both fail as a lost store does).

    (Not ``FakeStore`` of tests/unit/test_resource_limits.py: importing that module loads the shell and its SSH
    front end, so this unit would fail whenever the shell does; and a served store must answer ``stat``.)
    """

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.broken = False
        self.closed = False

    def scandir(self, path: str) -> defer.Deferred:
        return defer.succeed(["bin", "home", "tmp"])  # not a brand-new store: no tree to create

    def collect_garbage(self, stale_after: float) -> defer.Deferred:
        self.calls.append(("gc", stale_after))
        if self.broken:
            return defer.fail(StoreUnavailable("file store test", "gone"))
        return defer.succeed(0)

    def stat(self, path: str) -> defer.Deferred:
        if self.broken:
            return defer.fail(StoreUnavailable("file store test", "gone"))
        return defer.succeed(Stat(path=path, kind="dir", size=0, mode=0o755, owner="root", ctime=1.0, mtime=2.0))

    def usage(self) -> defer.Deferred:
        return defer.succeed({"files": 0, "bytes": 0})

    def close(self) -> defer.Deferred:
        self.closed = True
        return defer.succeed(None)


class Opener:
    """Stands in for open_store: fails *failures* times (with *error*), then opens a ServingStore."""

    def __init__(self, clock: Clock, failures: int, error: BaseException | None = None) -> None:
        self.clock = clock
        self.failures = failures
        self.error = error or StoreUnavailable("file store sqlite:///x", "database is locked")
        self.attempts: list[float] = []
        self.stores: list[ServingStore] = []

    def __call__(self, url: str, reactor: Any, **options: Any) -> defer.Deferred:
        self.attempts.append(self.clock.seconds())
        if len(self.attempts) <= self.failures:
            return defer.fail(self.error)
        self.stores.append(ServingStore())
        return defer.succeed(self.stores[-1])


def started(
    monkeypatch: Any, failures: int, *, url: str = "sqlite:///x", guard: Any = None, **kw: Any
) -> tuple[FileSystemService, Opener, Clock, FakeBus]:
    clock = Clock()
    opener = Opener(clock, failures, **kw)
    monkeypatch.setattr(fs_service, "open_store", opener)
    bus = FakeBus(clock)
    svc = FileSystemService(url, client=bus, transfer=None, reactor=clock, guard=guard)
    svc.startService()
    return svc, opener, clock, bus


def outcome(d: defer.Deferred) -> Any:
    out: list = []
    d.addBoth(out.append)
    assert out, "expected the Deferred to have fired"
    return out[0]


def test_an_unreachable_store_is_retried_with_growing_delays_up_to_the_maximum(monkeypatch):
    svc, opener, clock, _ = started(monkeypatch, failures=100)
    for _ in range(8):
        clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
    gaps = [b - a for a, b in zip(opener.attempts, opener.attempts[1:], strict=False)]
    assert gaps == [0.5, 1, 2, 4, 8, 10, 10, 10]
    assert svc.store is None and "database is locked" in str(svc.last_error)


def test_a_store_that_fails_first_is_served_once_it_opens(monkeypatch):
    svc, opener, clock, _ = started(monkeypatch, failures=2)
    assert svc.store is None and len(opener.attempts) == 1
    clock.advance(0.5)
    assert svc.store is None and len(opener.attempts) == 2
    clock.advance(0.9)
    assert svc.store is None, "the second wait is twice the first"
    clock.advance(0.1)
    assert svc.store is opener.stores[0] and opener.attempts == [0, 0.5, 1.5]
    assert outcome(svc.stat("/"))["kind"] == "dir"
    assert opener.stores[0].calls == [("gc", svc.stale_upload)], "maintenance starts at once"
    clock.advance(svc.gc_interval)
    clock.advance(svc.gc_interval)
    assert len(opener.attempts) == 3 and opener.stores[0].calls.count(("gc", svc.stale_upload)) == 3


def test_every_handler_refuses_with_the_last_error_while_no_store_is_open(monkeypatch):
    svc, _, _, _ = started(monkeypatch, failures=1)
    for d in (
        svc.stat("/"),
        svc.exists("/tmp"),
        svc.listdir("/"),
        svc.mkdir("/tmp/x"),
        svc.read_small("/etc/motd"),
        svc.write_small("/tmp/x", "aGk="),
        svc.usage(),
    ):
        failure = outcome(d)
        assert failure.check(StoreUnavailable) and failure.value.code == "EIO"
        assert "database is locked" in str(failure.value)


def test_the_kernels_area_is_refused_before_the_store_is_even_needed(monkeypatch):
    svc, _, _, _ = started(monkeypatch, failures=1)
    assert outcome(svc.stat("/etc/oneos/users.json")).check(PermissionDenied)


def test_an_error_that_is_not_the_stores_own_is_reported_as_unavailable_naming_the_store(monkeypatch):
    svc, _, _, _ = started(monkeypatch, failures=1, error=ConnectionRefusedError("127.0.0.1:27017"))
    assert isinstance(svc.last_error, StoreUnavailable)
    assert "file store sqlite:///x: connection refused" in str(svc.last_error)


def test_the_reported_error_never_shows_the_stores_password(monkeypatch):
    svc, _, _, _ = started(
        monkeypatch, failures=1, url="mongodb://oneos:s3cret@db.example/oneos", error=ConnectionRefusedError("x")
    )
    assert "s3cret" not in str(svc.last_error)


def test_over_rpc_callers_get_eio_until_the_store_opens_then_answers(monkeypatch):
    svc, _, clock, bus = started(monkeypatch, failures=1)
    refused = request(bus, TARGET, "stat", path="/")
    assert refused["ok"] is False and refused["error"]["kind"] == "EIO"
    assert "database is locked" in refused["error"]["message"]
    clock.advance(0.5)
    served = request(bus, TARGET, "stat", path="/")
    assert served["ok"] and served["result"]["path"] == "/"


def test_a_lapsed_leader_guard_keeps_the_fs_target_silent(monkeypatch):
    lapsed = {"on": False}

    def guard(method: str, meta: dict) -> None:
        if lapsed["on"]:
            raise Unanswered("lease lapsed")

    svc, _, _, bus = started(monkeypatch, failures=0, guard=guard)
    assert request(bus, TARGET, "stat", path="/")["ok"]
    lapsed["on"] = True
    assert request(bus, TARGET, "stat", path="/") is None


def test_a_store_lost_while_served_is_opened_again_and_served(monkeypatch):
    svc, opener, clock, _ = started(monkeypatch, failures=0)
    first = opener.stores[0]
    first.broken = True
    clock.advance(svc.gc_interval)  # maintenance fails, and so does a read: the store is lost
    assert svc.store is None and first.closed
    assert outcome(svc.stat("/")).check(StoreUnavailable)
    clock.advance(0.5)  # the delay starts again from its first value after a successful open
    assert svc.store is opener.stores[1] and outcome(svc.stat("/"))["path"] == "/"


def test_stopping_cancels_the_retry(monkeypatch):
    svc, opener, clock, _ = started(monkeypatch, failures=100)
    svc.stopService()
    clock.advance(100)
    assert len(opener.attempts) == 1 and clock.getDelayedCalls() == []


def test_a_store_that_opens_after_the_service_stopped_is_closed(monkeypatch):
    clock = Clock()
    late: defer.Deferred = defer.Deferred()
    monkeypatch.setattr(fs_service, "open_store", lambda url, reactor, **kw: late)
    svc = FileSystemService("sqlite:///x", client=FakeBus(clock), transfer=None, reactor=clock)
    svc.startService()
    svc.stopService()
    store = ServingStore()
    late.callback(store)
    assert store.closed and svc.store is None


def test_the_real_open_store_failing_on_a_bad_url_is_retried_too():
    clock = Clock()
    svc = FileSystemService("ftp://nowhere/tree", client=FakeBus(clock), transfer=None, reactor=clock)
    svc.startService()
    assert svc.store is None and isinstance(svc.last_error, StoreUnavailable)
    assert "ftp://nowhere/tree" in str(svc.last_error)
    [retry] = clock.getDelayedCalls()
    assert retry.getTime() == 0.5
    svc.stopService()
