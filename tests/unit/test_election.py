"""The election (oneos/runtime/election.py) on a task.Clock: what tests/unit/test_failover_logic.py leaves out.

That file covers the takeover wait after a leader's will, the guard of a
leader that stopped hearing the broker, and a cut-off runtime never electing
itself; these cover several candidates at once, the lease lapsing with no
request to notice it, the wait of a newcomer that finds a dead kernel
runtime, a claim arriving during the settle time, a newer term unseating
us, and that a leader on its way down claims nothing (with the real
Membership on the in-memory bus).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from oneos.pubsub import topics
from oneos.runtime.election import Election
from oneos.runtime.status import RuntimeStatus
from test_failover_logic import FakeKernel, FakeMembership, election, status
from test_membership import FakeBus, make


def run(clock: Clock, memberships: list, seconds: float, step: float = 0.1) -> None:
    """Advance *seconds*, every runtime hearing the broker all along (its pings answered)."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        for m in memberships:
            m.client.last_heard = clock.seconds()


def test_of_several_candidates_only_the_best_ranked_takes_over_and_all_agree():
    clock = Clock()
    view = [status("rt-c", started=3), status("rt-a", started=1), status("rt-b", started=2)]
    runtimes = {}
    for rid in ("rt-a", "rt-b", "rt-c"):
        m = FakeMembership(clock, me=rid)
        m.view = list(view)
        e, kernel = election(clock, m)
        e.startService()
        runtimes[rid] = (m, e, kernel)
    run(clock, [m for m, _, _ in runtimes.values()], 1.0)
    assert {rid: k.events for rid, (_, _, k) in runtimes.items()} == {
        "rt-a": ["take_over"],
        "rt-b": [],
        "rt-c": [],
    }
    claimed = [status("rt-a", started=1, leader=True, epoch=1), status("rt-b", started=2), status("rt-c", started=3)]
    for rid, (m, e, _) in runtimes.items():
        if rid != "rt-a":
            m.change(list(claimed))
        assert e.leader_id == "rt-a"
    assert runtimes["rt-a"][0].epoch == 1


def test_a_better_ranked_newcomer_does_not_unseat_the_sitting_leader():
    clock = Clock()
    m = FakeMembership(clock, me="rt-new")
    m.view = [status("rt-new", started=0), status("rt-old", started=5, leader=True, epoch=2)]
    e, kernel = election(clock, m)
    e.startService()
    run(clock, [m], 10.0, step=0.5)
    assert kernel.events == [] and not e.leading and e.leader_id == "rt-old"


def test_a_non_kernel_runtime_never_takes_over():
    clock = Clock()
    m = FakeMembership(clock, me="rt-a")
    m.view = [status("rt-a", started=1)]
    kernel = FakeKernel()
    e = Election(m, kernel, clock, is_kernel=False, settle=0.5, lease=2.0, margin=0.5)
    e.startService()
    run(clock, [m], 5.0, step=0.5)
    assert kernel.events == [] and not e.leading


def test_a_lease_that_lapses_with_no_request_stops_the_kernel_within_a_quarter_lease():
    clock = Clock()
    m = FakeMembership(clock, me="rt-a")
    m.view = [status("rt-a", started=1)]
    e, kernel = election(clock, m)
    e.startService()
    clock.advance(0.5)
    assert e.leading and m.epoch == 1
    m.change(m.view)  # our claim arrives (leading: the election now remembers a claimant)
    # last heard from the broker at 0: the lease runs to 2.0; nobody calls the guard
    for _ in range(6):  # to 2.0, in steps (Clock.advance runs what is due only at the end of a step)
        clock.advance(0.25)
    assert e.leading
    for _ in range(2):  # the lease check runs every lease/4
        clock.advance(0.25)
    assert not e.leading and kernel.events == ["take_over", "step_down"]
    assert (m.epoch, m.leader) == (0, False)
    # pings are answered again: it may lead again, but only lease + margin after it stood down
    m.client.last_heard = clock.seconds()
    t0 = clock.seconds()
    m.change(m.view)
    run(clock, [m], 2.4)
    assert kernel.events == ["take_over", "step_down"]
    run(clock, [m], 0.2)
    assert kernel.events == ["take_over", "step_down", "take_over"] and clock.seconds() - t0 >= 2.5
    assert m.epoch == 2, "a new term, one above the last"


def test_a_newcomer_that_finds_a_dead_kernel_runtime_waits_lease_and_margin():
    clock = Clock()
    m = FakeMembership(clock, me="rt-b")
    m.view = [status("rt-a", started=1, leader=True, epoch=4, alive=False), status("rt-b", started=2)]
    m.max_epoch = 4
    e, kernel = election(clock, m)
    e.startService()
    run(clock, [m], 2.4)
    assert kernel.events == [], "rt-a may have died just before we came: its lease may still run"
    run(clock, [m], 0.2)
    assert kernel.events == ["take_over"] and m.epoch == 5


def test_without_a_dead_kernel_runtime_a_newcomer_waits_only_the_settle_time():
    clock = Clock()
    m = FakeMembership(clock, me="rt-b")
    m.view = [status("rt-x", started=1, kernel=False, alive=False), status("rt-b", started=2)]
    e, kernel = election(clock, m)
    e.startService()
    run(clock, [m], 0.4)
    assert kernel.events == []
    run(clock, [m], 0.2)
    assert kernel.events == ["take_over"]


def test_a_claim_arriving_during_the_settle_time_cancels_the_takeover():
    clock = Clock()
    m = FakeMembership(clock, me="rt-a")
    m.view = [status("rt-a", started=1)]
    e, kernel = election(clock, m)
    e.startService()
    run(clock, [m], 0.3)
    m.change([status("rt-a", started=1), status("rt-c", started=9, leader=True, epoch=1)])
    run(clock, [m], 5.0, step=0.5)
    assert kernel.events == [] and e.leader_id == "rt-c"
    assert len(clock.getDelayedCalls()) == 1, "only the lease check is left: the pending takeover was cancelled"


def test_a_newer_term_unseats_us():
    clock = Clock()
    m = FakeMembership(clock, me="rt-a")
    m.view = [status("rt-a", started=1)]
    e, kernel = election(clock, m)
    e.startService()
    run(clock, [m], 0.6)
    assert e.leading and m.epoch == 1
    mine = [s for s in m.view if s.id == "rt-a"][0]
    m.change([mine, status("rt-b", started=2, leader=True, epoch=2)])
    assert not e.leading and kernel.events == ["take_over", "step_down"]
    assert e.leader_id == "rt-b" and m.epoch == 0 and m.leader is False


def test_stopping_the_election_while_leading_stops_the_kernel_and_never_leads_again():
    clock = Clock()
    m = FakeMembership(clock, me="rt-a")
    m.view = [status("rt-a", started=1)]
    e, kernel = election(clock, m)
    e.startService()
    run(clock, [m], 0.6)
    e.stopService()
    assert kernel.events == ["take_over", "step_down"] and m.epoch == 0
    m.change([status("rt-a", started=1)])
    run(clock, [m], 5.0, step=0.5)
    assert kernel.events == ["take_over", "step_down"]


class SlowKernel(FakeKernel):
    """A kernel whose services take a while to stop."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping: defer.Deferred | None = None

    def step_down(self) -> defer.Deferred:
        self.events.append("step_down")
        self.stopping = defer.Deferred()
        return self.stopping


def test_a_leader_on_its_way_down_claims_nothing_with_the_real_membership():
    clock = Clock()
    bus = FakeBus(clock)
    me = RuntimeStatus(id="rt-a", instance="inst-a", kernel=True, started_at=1.0)
    m = make(clock, bus, me=me)
    m.mode = "periodic"  # a status every sample, so many go out while the kernel services stop
    m.join()
    kernel = SlowKernel()
    e = Election(m, kernel, clock, is_kernel=True, settle=0.5, lease=2.0, margin=0.5)
    e.startService()
    run(clock, [m], 0.6)
    claim = RuntimeStatus.decode(bus.last(topics.status("rt-a")))
    assert e.leading and kernel.events == ["take_over"] and (claim.leader, claim.epoch) == (True, 1)
    n = len(bus.published)
    other = RuntimeStatus(id="rt-b", instance="inst-b", kernel=True, started_at=2.0, leader=True, epoch=5)
    bus.inject(topics.status("rt-b"), other.encode())
    assert not e.leading and kernel.events == ["take_over", "step_down"]
    run(clock, [m], 4.0)  # the status loop publishes while the kernel services are still stopping
    kernel.stopping.callback(None)
    ours = [RuntimeStatus.decode(p) for t, p, _, _ in bus.published[n:] if t == topics.status("rt-a")]
    assert len(ours) >= 3
    assert all(not s.leader for s in ours), "a leader stepping down never claims a term again"
    assert ours[-1].epoch == 5 and m.max_epoch == 5
    assert e.leader_id == "rt-b"
