"""RoleHost and KernelHost (oneos/runtime/kernel.py) with fake services and the in-memory bus: no sockets, no sleeps."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.task import Clock

from oneos.errors import OneOSError
from oneos.pubsub import topics
from oneos.pubsub.rpc import Unanswered
from oneos.runtime.kernel import KernelHost, RoleHost
from oneos.runtime.status import RuntimeStatus
from test_membership import FakeBus, request


class Recorder(service.Service):
    """A role's service that notes when it starts and stops; *stopping* lets stopping take a while."""

    def __init__(self, log: list[str], tag: str, stopping: defer.Deferred | None = None) -> None:
        self.log, self.tag, self.stopping = log, tag, stopping

    def startService(self) -> None:
        super().startService()
        self.log.append(f"start {self.tag}")

    def stopService(self) -> Any:
        super().stopService()
        self.log.append(f"stop {self.tag}")
        return self.stopping


def factories(log: list[str], built: list[Recorder]) -> dict[str, Any]:
    def make(tag: str) -> Any:
        def factory() -> Recorder:
            s = Recorder(log, f"{tag}#{sum(1 for b in built if b.tag.startswith(tag)) + 1}")
            built.append(s)
            return s

        return factory

    return {"one": make("one"), "two": make("two")}


def running_host(**kw: Any) -> tuple[RoleHost, list[str], list[Recorder], list[bool]]:
    log: list[str] = []
    built: list[Recorder] = []
    changes: list[bool] = []
    host = RoleHost("fs", factories(log, built), on_change=changes.append, **kw)
    host.startService()
    return host, log, built, changes


# -- RoleHost ------------------------------------------------------------------------------------------


def test_a_role_has_no_services_until_taken_then_all_of_them_started_and_named():
    host, log, built, changes = running_host()
    assert list(host) == [] and log == [] and not host.holding
    host.take_over()
    assert host.holding and changes == [True]
    assert [s.name for s in host] == ["one", "two"] and all(s.running for s in host)
    assert log == ["start one#1", "start two#1"]


def test_giving_the_role_up_stops_and_removes_every_service():
    host, log, built, changes = running_host()
    host.take_over()
    host.step_down()
    assert list(host) == [] and not host.holding and changes == [True, False]
    assert log[2:] == ["stop one#1", "stop two#1"] and not any(s.running for s in built)


def test_each_term_builds_fresh_services():
    host, log, built, _ = running_host()
    host.take_over()
    host.step_down()
    host.take_over()
    assert [s.tag for s in host] == ["one#2", "two#2"] and len(built) == 4


def test_taking_or_giving_up_twice_is_harmless():
    host, log, built, changes = running_host()
    host.take_over()
    host.take_over()
    assert len(built) == 2 and changes == [True]
    host.step_down()
    host.step_down()
    assert changes == [True, False] and log.count("stop one#1") == 1


def test_a_factory_that_fails_does_not_keep_the_others_from_starting():
    log: list[str] = []
    built: list[Recorder] = []
    good = factories(log, built)

    def broken() -> service.IService:
        raise RuntimeError("cannot build")

    host = RoleHost("kernel", {"bad": broken, "one": good["one"]})
    host.startService()
    host.take_over()
    assert [s.name for s in host] == ["one"] and log == ["start one#1"] and host.holding


def test_the_role_is_held_only_once_its_services_have_stopped():
    log: list[str] = []
    slow = defer.Deferred()
    changes: list[bool] = []
    host = RoleHost("kernel", {"slow": lambda: Recorder(log, "slow", slow)}, on_change=changes.append)
    host.startService()
    host.take_over()
    d = host.step_down()
    assert not host.holding and not d.called and changes == [True], "on_change(False) waits for the services"
    slow.callback(None)
    assert d.called and changes == [True, False] and list(host) == []


def test_stopping_the_runtime_gives_the_role_up():
    host, log, built, changes = running_host()
    host.take_over()
    host.stopService()
    assert changes == [True, False] and list(host) == [] and not any(s.running for s in built)


def test_a_role_taken_before_the_host_runs_starts_its_services_with_the_host():
    log: list[str] = []
    built: list[Recorder] = []
    host = RoleHost("fs", factories(log, built))
    host.take_over()
    assert log == [] and [s.name for s in host] == ["one", "two"]
    host.startService()
    assert log == ["start one#1", "start two#1"]


# -- KernelHost: the kernel RPC target --------------------------------------------------------------------


class Members:
    """What the kernel target reads of the membership."""

    id, instance, epoch = "rt-a", "inst-a", 7

    def statuses(self) -> list[RuntimeStatus]:
        return [
            RuntimeStatus(id="rt-a", instance="inst-a", leader=True, epoch=7),
            RuntimeStatus(id="rt-b", instance="b"),
        ]


class Guard:
    """The election's guard, switchable: answer, stay silent (lapsed lease) or refuse with an error."""

    def __init__(self) -> None:
        self.mode = "answer"
        self.seen: list[tuple[str, dict]] = []

    def __call__(self, method: str, meta: dict[str, Any]) -> None:
        self.seen.append((method, dict(meta)))
        if self.mode == "silent":
            raise Unanswered("the leadership lease lapsed")
        if self.mode == "refuse":
            raise OneOSError("not now")


def kernel_host(guard: Any = None, username: str | None = None) -> tuple[KernelHost, FakeBus, list[str]]:
    bus = FakeBus(Clock(), username=username)
    log: list[str] = []
    host = KernelHost(bus, Members(), {"scheduler": lambda: Recorder(log, "scheduler")}, guard=guard)
    host.startService()
    return host, bus, log


def test_the_kernel_target_answers_only_while_the_role_is_held():
    host, bus, log = kernel_host()
    assert request(bus, topics.KERNEL, "ping") is None, "not hosting: silent, another runtime may answer"
    host.take_over()
    reply = request(bus, topics.KERNEL, "ping")
    assert reply["ok"] and reply["result"] == {"leader": "rt-a", "instance": "inst-a", "epoch": 7}
    assert log == ["start scheduler"]
    runtimes = request(bus, topics.KERNEL, "runtimes")["result"]
    assert [r["id"] for r in runtimes] == ["rt-a", "rt-b"] and runtimes[0]["leader"] is True
    host.step_down()
    assert request(bus, topics.KERNEL, "ping") is None and log == ["start scheduler", "stop scheduler"]
    host.take_over()
    assert request(bus, topics.KERNEL, "ping")["ok"], "a new term serves the target again"


def test_a_lapsed_lease_keeps_the_kernel_target_silent_and_a_refusal_is_an_error():
    guard = Guard()
    host, bus, _ = kernel_host(guard)
    host.take_over()
    assert request(bus, topics.KERNEL, "ping", meta={"epoch": 7})["ok"]
    assert guard.seen == [("ping", {"epoch": 7})]
    guard.mode = "silent"
    assert request(bus, topics.KERNEL, "ping") is None
    assert request(bus, topics.KERNEL, "runtimes") is None
    guard.mode = "refuse"
    reply = request(bus, topics.KERNEL, "ping")
    assert reply["ok"] is False and reply["error"]["message"] == "not now"


def test_clients_may_ping_the_kernel_but_nothing_else_and_strangers_nothing():
    host, bus, _ = kernel_host(username="rt-a")  # identities on
    host.take_over()
    assert request(bus, topics.KERNEL, "ping", caller="alice@laptop")["ok"]
    assert request(bus, topics.KERNEL, "runtimes", caller="alice@laptop")["ok"]
    refused = request(bus, topics.KERNEL, "ping", caller="not a name")
    assert refused["ok"] is False and "not an identity" in refused["error"]["message"]


class SlowSubscribeBus(FakeBus):
    """A bus whose broker grants subscriptions only when the test says so."""

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self.pending: list[tuple[defer.Deferred, str, Any]] = []

    def subscribe(self, topic_filter: str, callback: Any, qos: int = 1) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pending.append((d, topic_filter, callback))
        return d

    def grant(self) -> None:
        for d, topic_filter, callback in self.pending:
            d.callback(FakeBus.subscribe(self, topic_filter, callback).result)
        self.pending = []


def test_the_kernels_services_start_once_its_target_is_subscribed():
    bus = SlowSubscribeBus(Clock())
    log: list[str] = []
    host = KernelHost(bus, Members(), {"scheduler": lambda: Recorder(log, "scheduler")})
    host.startService()
    d = host.take_over()
    assert host.holding and not d.called and log == []
    bus.grant()
    assert d.called and log == ["start scheduler"] and request(bus, topics.KERNEL, "ping")["ok"]


def test_a_role_given_up_while_its_target_subscribes_starts_nothing():
    bus = SlowSubscribeBus(Clock())
    log: list[str] = []
    host = KernelHost(bus, Members(), {"scheduler": lambda: Recorder(log, "scheduler")})
    host.startService()
    host.take_over()
    host.step_down()  # the lease lapsed within milliseconds of the takeover
    bus.grant()
    assert request(bus, topics.KERNEL, "ping") is None and host.rpc is None, "the target stays silent"
    assert log == [] and list(host) == [], "no scheduler may run on a runtime that does not hold the role"
