"""Failure semantics, deterministically: the leadership lease and epoch, restart policy, scheduler reconciliation.

Everything runs on a task.Clock (or MemoryReactorClock) with small fakes for
the membership and the RPC client; no sockets, no sleeps.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from oneos.errors import StaleEpoch
from oneos.pubsub import mqtt
from oneos.pubsub.client import PubSubClient
from oneos.pubsub.rpc import Unanswered
from oneos.runtime.election import Election
from oneos.runtime.status import RuntimeStatus, elect
from oneos.scheduler.restarts import EXITED_OK, FAILED, LOST, USER_KILLED, RestartPolicy, decide, outcome_of
from oneos.scheduler.service import SchedulerService
from test_pubsub_client import FakeBroker

# -- restart policy ----------------------------------------------------------------------


def test_policy_modes():
    p = RestartPolicy()
    assert not decide(p, "no", FAILED, None, 0).restart
    assert not decide(p, "on-failure", EXITED_OK, None, 0).restart
    assert decide(p, "on-failure", FAILED, None, 0).restart and decide(p, "on-failure", LOST, None, 0).restart
    assert decide(p, "always", EXITED_OK, None, 0).restart
    assert not decide(p, "always", USER_KILLED, None, 0).restart
    assert outcome_of({"state": "exited", "exit_code": 3}) == FAILED
    assert outcome_of({"state": "killed", "signal": 11}) == FAILED
    assert outcome_of({"state": "exited", "exit_code": 0}) == EXITED_OK
    assert outcome_of({"state": "killed", "reason": "killed by user"}) == USER_KILLED


def test_back_off_doubles_to_a_cap_then_quarantines():
    p = RestartPolicy(base=1, cap=8, max_attempts=6, window=600)
    history, delays = None, []
    for _ in range(6):
        d = decide(p, "on-failure", FAILED, history, now=10.0)
        delays.append(d.delay)
        history = d.history
    assert delays == [1, 2, 4, 8, 8, 8]
    d = decide(p, "on-failure", FAILED, history, now=10.0)
    assert not d.restart and "quarantined" in d.quarantined
    # a quiet window later the count starts again
    assert decide(p, "on-failure", FAILED, history, now=700.0).delay == 1


def test_a_program_that_keeps_killing_runtimes_is_quarantined():
    p = RestartPolicy(max_runtime_deaths=2)
    first = decide(p, "on-failure", LOST, None, 0)
    assert first.restart
    second = decide(p, "on-failure", LOST, first.history, 1)
    assert not second.restart and "runtime died with it 2 times" in second.quarantined


# -- leadership: lease and epoch -------------------------------------------------------------


def status(rid, *, leader=False, epoch=0, started=0.0, alive=True, kernel=True):
    return RuntimeStatus(
        id=rid,
        instance=rid,
        state="alive" if alive else "dead",
        leader=leader,
        epoch=epoch,
        kernel=kernel,
        started_at=started,
    )


def test_a_stale_claim_never_unseats_the_current_term():
    # rt-a led term 3 and comes back claiming it; rt-b leads term 4
    assert (
        elect([status("rt-a", leader=True, epoch=3, started=1), status("rt-b", leader=True, epoch=4, started=2)])
        == "rt-b"
    )


class FakeClient:
    def __init__(self, clock: Clock) -> None:
        self.last_heard = clock.seconds()
        self.connected = True


class FakeMembership:
    def __init__(self, clock: Clock, me: str = "rt-b") -> None:
        self.id, self.instance, self.client = me, me, FakeClient(clock)
        self.view: list[RuntimeStatus] = []
        self.synced = True
        self.epoch = 0
        self.max_epoch = 0
        self.leader = False
        self.listeners: list[Any] = []

    def live(self):
        return [s for s in self.view if s.alive]

    def statuses(self):
        return list(self.view)

    def on_change(self, fn):
        self.listeners.append(fn)

    def note_epoch(self, epoch):
        self.max_epoch = max(self.max_epoch, epoch)

    def set_leader(self, leader):
        self.leader = leader
        mine = [s for s in self.view if s.id == self.id][0]
        self.view = [s for s in self.view if s.id != self.id] + [
            mine.__class__(**{**mine.__dict__, "leader": leader, "epoch": self.epoch})
        ]
        return defer.succeed(None)

    def change(self, view):
        self.view = view
        for fn in list(self.listeners):
            fn()


class FakeKernel:
    def __init__(self) -> None:
        self.events: list[str] = []

    def take_over(self):
        self.events.append("take_over")
        return defer.succeed(None)

    def step_down(self):
        self.events.append("step_down")
        return defer.succeed(None)


def election(clock, membership, **kw) -> tuple[Election, FakeKernel]:
    kernel = FakeKernel()
    e = Election(membership, kernel, clock, is_kernel=True, settle=0.5, lease=2.0, margin=0.5, **kw)
    return e, kernel


def test_takeover_waits_lease_and_margin_after_the_leader_vanished():
    clock = Clock()
    m = FakeMembership(clock)
    m.max_epoch = 7
    m.view = [status("rt-a", leader=True, epoch=7, started=1), status("rt-b", started=2)]
    e, kernel = election(clock, m)
    e.startService()
    assert kernel.events == []
    clock.advance(10)
    m.client.last_heard = clock.seconds()
    m.change([status("rt-a", leader=True, epoch=7, started=1, alive=False), status("rt-b", started=2)])
    for _ in range(4):  # 2.0 s of the 2.5 s wait, hearing the broker all along
        clock.advance(0.5)
        m.client.last_heard = clock.seconds()
    assert kernel.events == [], "a new leader must not start before the old one's lease has run out"
    clock.advance(0.5)
    m.client.last_heard = clock.seconds()
    clock.advance(0.01)
    assert kernel.events == ["take_over"] and e.leading
    assert m.epoch == 8 and m.max_epoch == 8, "each term is one higher than any seen"


def test_a_leader_that_stops_hearing_the_broker_steps_down_and_stays_silent():
    clock = Clock()
    m = FakeMembership(clock, me="rt-a")
    m.view = [status("rt-a", started=1)]
    e, kernel = election(clock, m)
    e.startService()
    clock.advance(0.6)
    assert e.leading
    e.guard("spawn", {})  # fine while the lease holds
    clock.advance(2.1)  # nothing heard from the broker for longer than the lease
    with pytest.raises(Unanswered):
        e.guard("spawn", {})
    assert not e.leading and kernel.events == ["take_over", "step_down"]


def test_a_runtime_cut_off_never_elects_itself():
    clock = Clock()
    m = FakeMembership(clock, me="rt-b")
    m.view = [status("rt-b", started=1)]
    m.synced = False  # just reconnected: the retained statuses are still arriving
    e, kernel = election(clock, m)
    e.startService()
    clock.advance(5)
    assert kernel.events == []
    m.synced = True
    m.client.last_heard = clock.seconds() - 30  # and the broker has not been heard for long
    m.change(m.view)
    clock.advance(1)
    assert kernel.events == []


def test_runtimes_refuse_commands_of_an_older_term(tmp_path):
    from oneos.config import load_config
    from oneos.runtime.app import build_runtime

    runtime = build_runtime(load_config(tmp_path), reactor=MemoryReactorClock()).getServiceNamed("runtime")
    runtime.membership.note_epoch(5)
    runtime._fence("agent_spawn", {"epoch": 5})
    runtime._fence("agent_attach", {})  # a client, not a kernel command
    with pytest.raises(StaleEpoch, match="term 4"):
        runtime._fence("agent_kill", {"epoch": 4})
    runtime._fence("agent_kill", {"epoch": 6})
    assert runtime.membership.max_epoch == 6


def test_a_runtime_s_target_answers_nothing_until_it_has_joined_then_fences(tmp_path):
    from oneos.config import load_config
    from oneos.pubsub.rpc import Unanswered
    from oneos.runtime.app import build_runtime

    runtime = build_runtime(load_config(tmp_path), reactor=MemoryReactorClock()).getServiceNamed("runtime")
    assert runtime.rpc_service.server.guard == runtime._guard
    # served before it announces itself: meanwhile a request for its id is another runtime's (the duplicate check)
    with pytest.raises(Unanswered):
        runtime._guard("ping", {})
    runtime.membership.joined = True
    runtime._guard("ping", {})
    runtime.membership.note_epoch(5)
    with pytest.raises(StaleEpoch):
        runtime._guard("agent_spawn", {"epoch": 4})


def test_a_request_queued_while_cut_off_is_not_delivered_late():
    reactor = MemoryReactorClock()
    client = PubSubClient("mqtt://broker.example:1884", reactor, client_id="me", keepalive=2, rng=random.Random(1))
    client.startService()
    late = client.publish("oneos/v1/rpc/rt-a", b"{}", qos=1, expires=reactor.seconds() + 5)
    fresh = client.publish("oneos/v1/rpc/rt-a", b"{}", qos=1, expires=reactor.seconds() + 60)
    errors: list = []
    late.addErrback(errors.append)
    reactor.advance(10)
    broker = FakeBroker(reactor, client)
    broker.accept()
    sent = [p for p in broker.received() if p.type == mqtt.PUBLISH]
    assert len(sent) == 1 and errors and not fresh.called


# -- the scheduler ------------------------------------------------------------------------------


class FakeRPC:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict, dict]] = []
        self.n = 0

    def call(self, target, method, timeout=None, meta=None, **args):
        self.calls.append((target, method, meta or {}, args))
        if method == "agent_spawn":
            self.n += 1
            return defer.succeed(
                {
                    "id": f"a{self.n}",
                    "runtime": target,
                    "state": "running",
                    "name": args["program"],
                    "program": args["program"],
                    "job": args.get("job") or f"a{self.n}",
                    "incarnation": args.get("incarnation", 0),
                    "restart": args.get("restart", "no"),
                }
            )
        if method == "agent_kill":  # a runtime answers a kill with the agent's record, as agent_spawn does
            return defer.succeed({"id": args["agent_id"], "runtime": target, "state": "killed", "name": "x"})
        return defer.succeed({})


class FakePubSub:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic, payload, qos=0, retain=False, **kw):
        self.published.append((topic, payload))
        return defer.succeed(None)


class SchedMembership:
    def __init__(self, live_ids, epoch=3) -> None:
        self.ids = list(live_ids)
        self.epoch = epoch
        self.synced = True
        self.interval = 2.0

    def live(self):
        return [
            RuntimeStatus(id=i, instance=i, memory_limit_mb=4096, memory_total_mb=8000, interpreters=("sh",))
            for i in self.ids
        ]

    def on_change(self, fn):
        pass


def scheduler(live_ids=("rt-a", "rt-b", "rt-c"), **policy):
    clock = Clock()
    s = SchedulerService(
        FakePubSub(), FakeRPC(), SchedMembership(live_ids), clock, policy=RestartPolicy(**policy) if policy else None
    )
    s.running = True
    return s, clock


def test_fifty_placements_at_once_spread_across_runtimes():
    s, _ = scheduler()
    for _ in range(51):
        s.spawn("sleep", ["60"])
    counts: dict[str, int] = {}
    for target, _method, meta, _ in s.rpc.calls:
        assert meta == {"epoch": 3}, "every command carries the leader's term"
        counts[target] = counts.get(target, 0) + 1
    assert counts == {"rt-a": 17, "rt-b": 17, "rt-c": 17}


def test_a_lost_agent_restarts_elsewhere_only_after_the_grace():
    s, clock = scheduler(disconnect_grace=10, base=1)
    s.table["x1"] = {
        "id": "x1",
        "runtime": "rt-a",
        "state": "running",
        "program": "sleep",
        "args": ["60"],
        "restart": "on-failure",
        "name": "sleep",
    }
    s.membership.ids = ["rt-b", "rt-c"]
    s._check_runtimes()
    assert s.table["x1"]["state"] == "lost"
    assert [r["state"] for r in s.ps()] == ["restarting in 10 s"]
    clock.advance(9.9)
    assert not any(m == "agent_spawn" for _, m, _, _ in s.rpc.calls)
    clock.advance(0.2)
    [(target, _, meta, args)] = [c for c in s.rpc.calls if c[1] == "agent_spawn"]
    assert target != "rt-a" and args["job"] == "x1" and args["incarnation"] == 1 and meta == {"epoch": 3}


def test_a_runtime_back_within_the_grace_restarts_nothing():
    s, clock = scheduler(disconnect_grace=10)
    s.table["x1"] = {"id": "x1", "runtime": "rt-a", "state": "running", "program": "sleep", "restart": "on-failure"}
    s.membership.ids = ["rt-b"]
    s._check_runtimes()
    s.membership.ids = ["rt-a", "rt-b"]
    s.table["x1"] = {**s.table["x1"], "state": "running"}  # its runtime republished it
    clock.advance(30)
    assert not any(m == "agent_spawn" for _, m, _, _ in s.rpc.calls)


def test_a_returning_runtime_has_its_superseded_incarnation_stopped():
    s, _ = scheduler()
    s.table["new"] = {"id": "new", "runtime": "rt-b", "state": "running", "job": "x1", "incarnation": 1}
    old = {"id": "x1", "runtime": "rt-a", "state": "running", "job": "x1", "incarnation": 0}
    s.table["x1"] = old
    s._consider(old)
    [(target, method, meta, args)] = s.rpc.calls
    assert (target, method, meta["epoch"], args["agent_id"]) == ("rt-a", "agent_kill", 3, "x1")
    assert "superseded by incarnation 1" in args["reason"]


def test_a_crash_loop_backs_off_and_a_user_kill_is_final():
    s, clock = scheduler(base=1, cap=8)
    s.table["c1"] = row = {
        "id": "c1",
        "runtime": "rt-a",
        "state": "exited",
        "exit_code": 3,
        "program": "crash",
        "restart": "on-failure",
    }
    s._consider(row)
    assert row["next_restart_at"] == pytest.approx(1.0)
    clock.advance(1.0)
    assert [c[1] for c in s.rpc.calls] == ["agent_spawn"]
    killed = {
        "id": "k1",
        "runtime": "rt-a",
        "state": "killed",
        "reason": "killed by user",
        "program": "x",
        "restart": "always",
    }
    s.table["k1"] = killed
    s._consider(killed)
    assert not killed.get("next_restart_at")


def test_users_control_only_their_own_programs():
    from oneos.agents.manager import AgentError

    s, _ = scheduler()
    s.table["b1"] = {"id": "b1", "runtime": "rt-a", "state": "running", "user": "bob"}
    with pytest.raises(AgentError, match="belongs to bob, not alice"):
        s.kill("b1", user="alice")
    with pytest.raises(AgentError, match="belongs to bob"):
        s._forward("b1", "agent_pause", user="alice")
    s.kill("b1", user="bob")
    s.kill("b1", user="root")  # the admin may
    assert [c[1] for c in s.rpc.calls] == ["agent_kill", "agent_kill"]
