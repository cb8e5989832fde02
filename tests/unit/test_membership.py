"""Membership (oneos/runtime/membership.py) alone: an in-memory bus, a task.Clock, no sockets, no sleeps.

``FakeBus`` here is an in-memory broker and client in one (retained
messages, wildcard subscriptions, connect/disconnect listeners, ``barrier``);
the other tests in tests/unit import it to run RPC targets and status
publishing without a broker.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from oneos.errors import DuplicateRuntimeId, RPCTimeout
from oneos.pubsub import messages, mqtt, topics
from oneos.pubsub.client import Message
from oneos.runtime.membership import Membership, significant_change
from oneos.runtime.status import ALIVE, DEAD, LEFT, RuntimeStatus

# -- the shared fakes --------------------------------------------------------------------------


class MemoryBroker:
    """What several FakeBus clients share: subscriptions and retained messages."""

    def __init__(self) -> None:
        self.subs: list[FakeSubscription] = []
        self.retained: dict[str, bytes] = {}

    def route(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        for sub in list(self.subs):
            if sub.active and sub.bus.connected and mqtt.topic_matches(sub.topic_filter, topic):
                sub.callback(Message(topic, payload, False, qos))


class FakeSubscription:
    def __init__(self, bus: FakeBus, topic_filter: str, callback: Any) -> None:
        self.bus, self.topic_filter, self.callback, self.active = bus, topic_filter, callback, True

    def cancel(self) -> defer.Deferred:
        self.active = False
        if self in self.bus.broker.subs:
            self.bus.broker.subs.remove(self)
        return defer.succeed(None)


class FakeBus:
    """Just what the runtime's services ask of a PubSubClient, in memory and synchronous.

    *username* None is a network without identities (every caller trusted by
    an RPCServer); a name turns identity checks on.
    """

    def __init__(
        self, reactor: Any, identity: str = "rt-a", *, broker: MemoryBroker | None = None, username: str | None = None
    ) -> None:
        self.reactor = reactor
        self.broker = broker or MemoryBroker()
        self.identity = self.client_id = identity
        self.address = SimpleNamespace(username=username)
        self.will: mqtt.Will | None = None
        self.connected = True
        self.connected_since = reactor.seconds()
        self.last_heard = reactor.seconds()
        #: every publish made through this client: (topic, payload, qos, retain)
        self.published: list[tuple[str, bytes, int, bool]] = []
        self._listeners: list[tuple[Any, Any]] = []

    def subscribe(self, topic_filter: str, callback: Any, qos: int = 1) -> defer.Deferred:
        sub = FakeSubscription(self, topic_filter, callback)
        self.broker.subs.append(sub)
        for topic, payload in sorted(self.broker.retained.items()):
            if mqtt.topic_matches(topic_filter, topic):
                callback(Message(topic, payload, True, 1))
        return defer.succeed(sub)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, **kw: Any) -> defer.Deferred:
        self.published.append((topic, payload, qos, retain))
        if self.connected:
            self.broker.route(topic, payload, qos, retain)
        return defer.succeed(None)

    def barrier(self) -> defer.Deferred:
        return defer.succeed(None)

    def add_listener(self, on_connect: Any = None, on_disconnect: Any = None) -> None:
        self._listeners.append((on_connect, on_disconnect))

    # -- the test's side ---------------------------------------------------------
    def inject(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Another client publishes *payload* on *topic*."""
        self.broker.route(topic, payload, 1, retain)

    def disconnect(self) -> None:
        self.connected = False
        self.connected_since = float("-inf")
        for _, on_disconnect in list(self._listeners):
            if on_disconnect is not None:
                on_disconnect()

    def reconnect(self) -> None:
        self.connected = True
        self.connected_since = self.last_heard = self.reactor.seconds()
        for on_connect, _ in list(self._listeners):
            if on_connect is not None:
                on_connect()

    def last(self, topic: str) -> bytes | None:
        """The last payload this client published on *topic*."""
        found = [p for t, p, _, _ in self.published if t == topic]
        return found[-1] if found else None


def request(bus: FakeBus, target: str, method: str, *, caller: str = "rt-z", meta: Any = None, **args: Any):
    """Send one RPC request on *bus* as *caller*; the reply body, or None if nobody answered."""
    reply_to = topics.reply(caller, "c1")
    before = len(bus.published)
    body: dict[str, Any] = {"id": "r1", "method": method, "args": args, "reply_to": reply_to}
    if meta is not None:
        body["meta"] = meta
    bus.inject(topics.rpc(target, caller), messages.encode("rpc.request", **body))
    replies = [p for t, p, _, _ in bus.published[before:] if t == reply_to]
    return messages.decode(replies[-1], "rpc.reply") if replies else None


# -- helpers for this file -------------------------------------------------------------------------


class PingRPC:
    """The RPC client the duplicate-id check uses: answers a ping with *answer*, or times out."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str]] = []

    def call(self, target: str, method: str, timeout: float | None = None, **args: Any) -> defer.Deferred:
        self.calls.append((target, method))
        if self.answer is None:
            return defer.fail(RPCTimeout(target, method, timeout or 1.0))
        return defer.succeed(self.answer)


ME = RuntimeStatus(id="rt-a", instance="inst-a", kernel=True, started_at=100.0)


def other(rid: str, **kw: Any) -> bytes:
    fields: dict[str, Any] = {"instance": f"inst-{rid}", "kernel": True, "started_at": 50.0, **kw}
    return RuntimeStatus(id=rid, **fields).encode()


def make(clock: Clock, bus: FakeBus | None = None, rpc: Any = None, me: RuntimeStatus = ME) -> Membership:
    bus = bus or FakeBus(clock)
    return Membership(bus, rpc or PingRPC(), clock, lambda: me, interval=2.0)


def joined(clock: Clock, *retained: tuple[str, bytes], rpc: Any = None) -> tuple[Membership, FakeBus]:
    bus = FakeBus(clock)
    for rid, payload in retained:
        bus.broker.retained[topics.status(rid)] = payload
    m = make(clock, bus, rpc)
    m.join()
    return m, bus


def ids(statuses: list[RuntimeStatus]) -> list[str]:
    return [s.id for s in statuses]


def published_status(bus: FakeBus, rid: str = "rt-a") -> RuntimeStatus:
    payload = bus.last(topics.status(rid))
    assert payload is not None
    return RuntimeStatus.decode(payload)


# -- joining and statuses arriving --------------------------------------------------------------------------


def test_the_will_is_our_status_marked_dead_before_any_connection():
    clock = Clock()
    bus = FakeBus(clock)
    make(clock, bus)
    assert bus.will is not None and bus.will.topic == topics.status("rt-a") and bus.will.retain
    will = RuntimeStatus.decode(bus.will.payload)
    assert (will.id, will.instance, will.state, will.leader) == ("rt-a", "inst-a", DEAD, False)


def test_join_learns_the_retained_statuses_then_announces_itself():
    clock = Clock()
    m, bus = joined(clock, ("rt-b", other("rt-b")), ("rt-c", other("rt-c", kernel=False)))
    assert m.joined and m.synced
    assert ids(m.live()) == ["rt-a", "rt-b", "rt-c"]
    mine = published_status(bus)
    assert mine.state == ALIVE and not mine.leader and bus.broker.retained[topics.status("rt-a")]
    bus.inject(topics.status("rt-d"), other("rt-d"), retain=True)
    assert "rt-d" in ids(m.live())


def test_a_status_published_on_another_runtimes_topic_is_dropped():
    clock = Clock()
    m, bus = joined(clock)
    bus.inject(topics.status("rt-b"), other("rt-x"))  # rt-x's status on rt-b's topic
    bus.inject(topics.status("rt-c"), b"\xffnot json")
    bus.inject(topics.status("rt-d"), messages.encode("runtime.status", id="rt-d", instance="i", state="zombie"))
    assert ids(m.statuses()) == ["rt-a"]


def test_dead_and_left_runtimes_are_out_of_the_live_set_and_a_cleared_status_is_forgotten():
    clock = Clock()
    m, bus = joined(clock, ("rt-b", other("rt-b")), ("rt-c", other("rt-c")), ("rt-d", other("rt-d")))
    bus.inject(topics.status("rt-b"), other("rt-b", state=DEAD), retain=True)  # its will
    bus.inject(topics.status("rt-c"), other("rt-c", state=LEFT), retain=True)  # a clean stop
    bus.inject(topics.status("rt-d"), b"", retain=True)  # retained status cleared
    assert ids(m.live()) == ["rt-a"]
    assert {s.id: s.state for s in m.statuses()} == {"rt-a": ALIVE, "rt-b": DEAD, "rt-c": LEFT}


def test_an_older_incarnations_will_does_not_kill_its_successor():
    clock = Clock()
    m, bus = joined(clock, ("rt-b", other("rt-b", instance="new", started_at=20.0)))
    bus.inject(topics.status("rt-b"), other("rt-b", instance="old", started_at=10.0, state=DEAD))
    assert "rt-b" in ids(m.live())
    # the successor's own will does count
    bus.inject(topics.status("rt-b"), other("rt-b", instance="new", started_at=20.0, state=DEAD))
    assert "rt-b" not in ids(m.live())


def test_our_own_will_is_corrected_at_once():
    clock = Clock()
    m, bus = joined(clock)
    bus.inject(topics.status("rt-a"), ME.with_(state=DEAD).encode(), retain=True)  # the broker fired our will
    assert RuntimeStatus.decode(bus.broker.retained[topics.status("rt-a")]).state == ALIVE
    assert "rt-a" in ids(m.live())


def test_a_clean_stop_publishes_left_and_stops_refreshing():
    clock = Clock()
    m, bus = joined(clock)
    m.set_leader(True)
    m.stopService()
    left = published_status(bus)
    assert left.state == LEFT and not left.leader
    n = len(bus.published)
    clock.advance(10)
    assert len(bus.published) == n


# -- staleness ------------------------------------------------------------------------------------------


def test_a_status_not_refreshed_for_three_heartbeats_counts_as_dead():
    clock = Clock()
    m, bus = joined(clock, ("rt-b", other("rt-b")), ("rt-c", other("rt-c")), ("rt-d", other("rt-d", interval=20.0)))
    assert (m.heartbeat, m.dead_after) == (12.0, 36.0)
    clock.advance(30)
    bus.inject(topics.status("rt-c"), other("rt-c"))  # rt-c refreshes, rt-b does not
    clock.advance(6)
    assert ids(m.live()) == ["rt-a", "rt-b", "rt-c", "rt-d"], "exactly 3 heartbeats is not yet stale"
    clock.advance(0.1)
    assert ids(m.live()) == ["rt-a", "rt-c", "rt-d"]
    assert {s.id: s.state for s in m.statuses()}["rt-b"] == DEAD
    clock.advance(24)  # at 60.1: rt-d's own heartbeat is 20 s, so it has 60 s
    assert ids(m.live()) == ["rt-a", "rt-c"]
    clock.pump([2.0] * 18)  # sample by sample (one long advance of a Clock runs a LoopingCall once)
    assert ids(m.live()) == ["rt-a"], "our own status is never stale: the heartbeat refreshes it"
    assert published_status(bus).updated_at > 84.0, "it went out within the last heartbeat"


def test_no_runtime_is_judged_stale_while_we_are_cut_off_or_just_back():
    clock = Clock()
    m, bus = joined(clock, ("rt-b", other("rt-b")))
    clock.advance(3)
    bus.disconnect()
    assert not m.synced
    clock.advance(40)
    assert "rt-b" in ids(m.live()), "we heard nothing because of our own trouble"
    bus.reconnect()  # at 43: rt-b's retained status is 43 s old, but we have only just come back
    assert m.synced
    clock.advance(36)
    assert "rt-b" in ids(m.live())
    clock.advance(0.1)
    assert "rt-b" not in ids(m.live())


# -- publishing on change ------------------------------------------------------------------------------------


class Sampler:
    """Stands for the runtime's describe(): the status it would publish, changed by the test."""

    def __init__(self, **fields: Any) -> None:
        self.status = RuntimeStatus(
            id="rt-a", instance="inst-a", kernel=True, started_at=100.0, memory_total_mb=1000.0, **fields
        )

    def __call__(self) -> RuntimeStatus:
        return self.status


def sent(bus: FakeBus) -> list[RuntimeStatus]:
    return [RuntimeStatus.decode(p) for t, p, _, _ in bus.published if t == topics.status("rt-a")]


def test_a_status_goes_out_when_it_changed_and_on_the_heartbeat_only():
    clock, sampler = Clock(), Sampler(cpu_percent=10.0, memory_used_mb=300.0)
    bus = FakeBus(clock)
    m = Membership(bus, PingRPC(), clock, sampler, interval=2.0)
    m.join()
    assert len(sent(bus)) == 1 and sent(bus)[0].interval == 12.0  # readers judge staleness by the heartbeat
    sampler.status = sampler.status.with_(cpu_percent=14.0, memory_used_mb=340.0)  # 4 points each: noise
    clock.pump([2.0] * 5)  # sample by sample (one long advance of a Clock runs a LoopingCall once)
    assert len(sent(bus)) == 1
    clock.advance(2)  # the 6th sample: the heartbeat
    assert len(sent(bus)) == 2 and sent(bus)[-1].cpu_percent == 14.0
    sampler.status = sampler.status.with_(cpu_percent=20.0)  # 6 points
    clock.advance(2)
    assert len(sent(bus)) == 3
    sampler.status = sampler.status.with_(agents=1)  # any other field: at the next sample
    clock.advance(2)
    assert len(sent(bus)) == 4 and sent(bus)[-1].agents == 1
    m.set_leader(True)  # an event goes out at once
    assert len(sent(bus)) == 5
    clock.pump([2.0] * 5)
    assert len(sent(bus)) == 5, "the heartbeat counts from the last status sent"
    m.mode = "periodic"  # the old wire behaviour, for comparisons: every sample, stale after 3 of them
    clock.pump([2.0] * 3)
    assert len(sent(bus)) == 8 and (m.heartbeat, m.dead_after) == (2.0, 6.0)


def test_the_heartbeat_stretches_with_the_network_so_idle_traffic_grows_as_n():
    clock, sampler = Clock(), Sampler()
    bus = FakeBus(clock)
    m = Membership(bus, PingRPC(), clock, sampler, interval=2.0)
    m.join()
    assert m.heartbeat == 12.0  # a small network: 6 samples

    def network_of(n: int) -> None:
        """Live runtimes rt-0 .. rt-(n-2) besides us (others' statuses cleared)."""
        for i in range(300):
            if i < n - 1:
                bus.inject(topics.status(f"rt-{i}"), other(f"rt-{i}", updated_at=clock.seconds()))
            else:
                bus.inject(topics.status(f"rt-{i}"), b"")

    network_of(60)  # 60 / 12 s = 5 heartbeats a second: still the small network's
    clock.advance(2)
    assert m.heartbeat == 12.0
    network_of(200)
    clock.advance(2)
    assert m.heartbeat == 48.0, "200 / 48 s: about 4 a second for the whole network"
    assert sent(bus)[-1].interval == 48.0, "the new heartbeat goes out at once, so readers judge by it"
    before = len(sent(bus))
    clock.pump([2.0] * 23)
    assert len(sent(bus)) == before, "nothing changed: silent until the stretched heartbeat"
    clock.advance(2)
    assert len(sent(bus)) == before + 1
    assert m.dead_after == 3 * 48.0
    network_of(120)  # shrunk, but not to half of what the 48 s heartbeat serves: no flip-flop
    clock.advance(2)
    assert m.heartbeat == 48.0
    network_of(55)
    clock.advance(2)
    assert m.heartbeat == 24.0
    network_of(20)
    clock.advance(2)
    assert m.heartbeat == 12.0, "never below the small network's heartbeat"
    m.mode = "periodic"
    assert m.heartbeat == 2.0


def test_load_only_changes_share_a_network_wide_budget_other_changes_do_not_wait():
    clock, sampler = Clock(), Sampler(cpu_percent=10.0)
    bus = FakeBus(clock)
    m = Membership(bus, PingRPC(), clock, sampler, interval=2.0)
    m.join()
    for i in range(199):  # 200 live runtimes with us
        bus.inject(topics.status(f"rt-{i}"), other(f"rt-{i}", updated_at=clock.seconds()))
    clock.advance(2)
    assert m.load_gap == 20.0, "200 runtimes / 10 a second: one load-only status per runtime per 20 s"
    before = len(sent(bus))
    loads = []
    for step in range(20):  # a busy machine: the CPU figure moves by 6 points on every sample
        sampler.status = sampler.status.with_(cpu_percent=(10.0 + 6.0 * (step + 1)) % 100)
        clock.advance(2)
        loads.append(len(sent(bus)) - before)
    assert loads == [0] * 9 + [1] * 10 + [2], f"40 s of moving load: two statuses, not twenty ({loads})"
    assert sent(bus)[-1].cpu_percent == sampler.status.cpu_percent, "the one sent carries the latest figure"
    sampler.status = sampler.status.with_(agents=1)  # any other change: at the next sample, budget or not
    clock.advance(2)
    assert len(sent(bus)) - before == 3 and sent(bus)[-1].agents == 1
    for i in range(190):  # the network shrinks to 10: load changes go out at the next sample again
        bus.inject(topics.status(f"rt-{i}"), b"")
    clock.advance(2)
    assert m.load_gap == 2.0
    sampler.status = sampler.status.with_(cpu_percent=sampler.status.cpu_percent + 20.0)
    clock.advance(2)
    assert sent(bus)[-1].cpu_percent == sampler.status.cpu_percent


@pytest.mark.parametrize(
    ("change", "significant"),
    [
        ({}, False),
        ({"cpu_percent": 15.0}, False),
        ({"cpu_percent": 15.1}, True),
        ({"memory_used_mb": 550.0}, False),  # 5 points of the machine's 1000 MB
        ({"memory_used_mb": 560.0}, True),
        ({"rss_mb": 160.0}, True),
        ({"agents_memory_mb": 40.0}, False),  # 4 points of the 1000 MB limit
        ({"agents_memory_mb": 60.0}, True),
        ({"updated_at": 99.0}, False),
        ({"agents": 3}, True),
        ({"leader": True}, True),
        ({"fs_serving": True}, True),
        ({"tags": ("gpu",)}, True),
    ],
)
def test_significant_change(change: dict[str, Any], significant: bool):
    old = RuntimeStatus(
        id="rt-a", instance="i", cpu_percent=10.0, memory_used_mb=500.0, memory_total_mb=1000.0, rss_mb=100.0
    )
    assert significant_change(old, old.with_(**change)) is significant
    assert significant_change(None, old)


# -- on_change ----------------------------------------------------------------------------------------------


def test_on_change_fires_when_the_live_set_or_a_claim_changes_and_not_on_a_plain_refresh():
    clock = Clock()
    m, bus = joined(clock, ("rt-b", other("rt-b")))
    calls: list[int] = []

    def broken() -> None:
        raise RuntimeError("a listener that fails")

    m.on_change(broken)
    m.on_change(lambda: calls.append(1))
    bus.inject(topics.status("rt-b"), other("rt-b", cpu_percent=50.0))  # a refresh
    assert calls == []
    bus.inject(topics.status("rt-c"), other("rt-c"))
    assert calls == [1], "a failing listener does not keep the others from hearing"
    bus.inject(topics.status("rt-b"), other("rt-b", leader=True, epoch=1))
    assert len(calls) == 2
    bus.inject(topics.status("rt-b"), other("rt-b", leader=True, epoch=2))  # a new term
    assert len(calls) == 3
    bus.inject(topics.status("rt-c"), other("rt-c", state=DEAD))
    assert len(calls) == 4
    bus.disconnect()  # losing the view always tells
    assert len(calls) == 5


def test_on_change_hears_a_runtime_going_stale_on_the_next_tick():
    clock = Clock()
    m, _ = joined(clock, ("rt-b", other("rt-b")))
    calls: list[list[str]] = []
    m.on_change(lambda: calls.append(ids(m.live())))
    clock.advance(36)
    assert calls == []
    clock.advance(2)  # the tick at 38 sees rt-b stale
    assert calls == [["rt-a"]]


# -- epochs and claims --------------------------------------------------------------------------------------


def test_note_epoch_keeps_the_highest_term_and_tells_the_listeners():
    clock = Clock()
    m = make(clock)
    seen: list[int] = []
    m.on_epoch(seen.append)
    assert m.note_epoch(3) and not m.note_epoch(3) and not m.note_epoch(2)
    assert m.note_epoch(5)
    assert (m.max_epoch, seen) == (5, [3, 5])


def test_a_live_leaders_term_is_noted_and_a_dead_ones_is_not():
    clock = Clock()
    m, bus = joined(clock)
    bus.inject(topics.status("rt-b"), other("rt-b", leader=True, epoch=9, state=DEAD))
    assert m.max_epoch == 0
    bus.inject(topics.status("rt-c"), other("rt-c", leader=True, epoch=4))
    assert m.max_epoch == 4
    bus.inject(topics.status("rt-d"), other("rt-d", leader=False, epoch=7))  # a term heard of, not led
    assert m.max_epoch == 4


def test_a_claim_carries_our_own_term_and_a_leader_on_its_way_down_claims_nothing():
    clock = Clock()
    m, bus = joined(clock)
    m.note_epoch(6)
    m.epoch = 7
    m.set_leader(True)
    claim = published_status(bus)
    assert (claim.leader, claim.epoch) == (True, 7)
    m.epoch = 0  # stepping down: the election zeroes the term first
    m.publish()
    down = published_status(bus)
    assert (down.leader, down.epoch) == (False, 7), "never a claim, only the highest term heard of"
    m.set_leader(False)
    assert (published_status(bus).leader, published_status(bus).epoch) == (False, 7)


# -- duplicate ids --------------------------------------------------------------------------------------------


def test_join_refuses_an_id_a_live_runtime_answers_for():
    clock = Clock()
    rpc = PingRPC({"instance": "someone-else"})
    taken = ME.with_(instance="someone-else", address="10.0.0.9").encode()
    bus = FakeBus(clock)
    bus.broker.retained[topics.status("rt-a")] = taken
    m = make(clock, bus, rpc)
    failures: list = []
    m.join().addErrback(failures.append)
    assert failures and failures[0].check(DuplicateRuntimeId) and "10.0.0.9" in str(failures[0].value)
    assert rpc.calls == [("rt-a", "ping")] and not m.joined
    assert bus.last(topics.status("rt-a")) is None, "a refused runtime never announces itself"


def test_join_takes_over_a_stale_alive_status_nobody_answers_for():
    clock = Clock()
    bus = FakeBus(clock)
    bus.broker.retained[topics.status("rt-a")] = ME.with_(instance="crashed").encode()
    m = make(clock, bus, PingRPC(None))
    m.join()
    assert m.joined and published_status(bus).instance == "inst-a"


def test_of_two_runtimes_started_with_one_id_the_later_stops_and_the_earlier_reclaims():
    clock = Clock()
    m, bus = joined(clock)
    conflicts: list = []
    m.on_conflict(conflicts.append)
    n = len(bus.published)
    bus.inject(topics.status("rt-a"), ME.with_(instance="later", started_at=200.0).encode())
    assert conflicts == [] and len(bus.published) > n, "we started first: we publish ours again"
    assert published_status(bus).instance == "inst-a"
    bus.inject(topics.status("rt-a"), ME.with_(instance="earlier", started_at=1.0).encode())
    assert len(conflicts) == 1 and isinstance(conflicts[0], DuplicateRuntimeId)


@pytest.mark.parametrize("state", [DEAD, LEFT])
def test_a_dead_namesake_is_no_conflict(state):
    clock = Clock()
    m, bus = joined(clock)
    conflicts: list = []
    m.on_conflict(conflicts.append)
    bus.inject(topics.status("rt-a"), ME.with_(instance="earlier", started_at=1.0, state=state).encode())
    assert conflicts == []
