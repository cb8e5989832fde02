"""Election and failover with real runtimes on one fake clock: who leads, how fast a dead leader is replaced.

Each scenario runs three real runtimes (membership, election, kernel, store and fs roles, the MQTT
client protocol) on the in-memory broker.  Timing is asserted on the simulated clock against the
rules in docs/architecture.md ("Election: a lease with a fencing epoch"); the wall time a scenario
takes is checked too, loosely, because being fast is the point of this tier.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from oneos.errors import StaleEpoch
from oneos.testing.cluster import Cluster, SimRuntime

KEEPALIVE = 2
LEASE = float(KEEPALIVE)  # RuntimeService: lease = keepalive
MARGIN = max(0.5, LEASE / 4)  # RuntimeService: margin = max(0.5, lease / 4)
SETTLE = 0.5  # RuntimeService's default settle time
LEASE_CHECK = LEASE / 4  # Election checks its lease this often
#: Generous: each scenario takes well under a second of wall time on a 2-core machine.
WALL_LIMIT = 15.0


class Safety:
    """Checks, at every simulated instant a condition is evaluated, that two runtimes never lead with a valid lease."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.violations: list[tuple[float, list[str]]] = []

    def until(self, condition: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            holders = [r.id for r in self.cluster.leaders() if r.lease_valid()]
            if len(holders) > 1:
                self.violations.append((self.cluster.now, holders))
            return condition()

        return check


def elect(cluster: Cluster, n: int = 3) -> list[SimRuntime]:
    runtimes = cluster.add_runtimes(n)
    cluster.run_until(cluster.converged, timeout=10, what=f"{n} runtimes agree on one leader")
    return runtimes


def test_three_runtimes_elect_one_leader(cluster: Cluster) -> None:
    wall = time.perf_counter()
    a, b, c = cluster.add_runtimes(3)
    took = cluster.run_until(cluster.converged, timeout=10, what="one leader")
    # started at the same instant: the best rank is the lowest id; it claims after the settle time
    assert [r.id for r in cluster.leaders()] == [a.id]
    assert took == pytest.approx(SETTLE)
    assert a.epoch == 1 and {b.max_epoch, c.max_epoch} == {1}
    assert {b.leader_seen(), c.leader_seen()} == {a.id}
    # the file tree is served by the leader (every runtime is configured with the one SQLite file)
    assert [r.id for r in (a, b, c) if r.service.fs_role.holding] == [a.id]
    assert time.perf_counter() - wall < WALL_LIMIT


def test_a_killed_leader_is_replaced_one_lease_and_margin_later(cluster: Cluster) -> None:
    a, b, c = elect(cluster)
    safety = Safety(cluster)
    wall = time.perf_counter()
    cluster.kill(a.id)
    # its connection resets, so the broker publishes its will at once; the others wait lease + margin
    took = cluster.run_until(safety.until(lambda: cluster.converged([b, c])), timeout=10, what="a new leader")
    assert took == pytest.approx(LEASE + MARGIN, abs=0.01)
    assert [r.id for r in cluster.leaders()] == [b.id]
    assert b.epoch == 2 and c.max_epoch == 2
    assert safety.violations == []
    assert time.perf_counter() - wall < WALL_LIMIT


def test_a_leader_whose_machine_vanishes_is_replaced_after_the_keepalive_and_lease(cluster: Cluster) -> None:
    a, b, c = elect(cluster)
    safety = Safety(cluster)
    cluster.kill(a.id, silently=True)  # no reset reaches the broker: it drops a after 1.5 keepalives of silence
    took = cluster.run_until(safety.until(lambda: cluster.converged([b, c])), timeout=10, what="a new leader")
    assert LEASE + MARGIN + KEEPALIVE <= took <= 1.5 * KEEPALIVE + LEASE + MARGIN
    assert [r.id for r in cluster.leaders()] == [b.id] and b.epoch == 2
    assert safety.violations == []


def test_a_killed_follower_is_seen_dead_at_once_and_the_leader_stays(cluster: Cluster) -> None:
    a, b, c = elect(cluster)
    cluster.kill(c.id)
    took = cluster.run_until(lambda: cluster.converged([a, b]), timeout=5, what="c seen dead")
    assert took == 0.0  # the will arrives in the same instant: no time passes
    assert a.leading and a.epoch == 1
    cluster.run(10)
    assert cluster.converged([a, b]) and a.epoch == 1, "a follower's death must not disturb the leader"


def test_a_partitioned_leader_loses_its_lease_and_the_others_elect_a_newer_term(cluster: Cluster) -> None:
    a, b, c = elect(cluster)
    old_epoch = a.epoch
    safety = Safety(cluster)
    wall = time.perf_counter()
    start = cluster.now
    cluster.partition(a.id)

    # the cut-off leader hears no answer to its pings: within a lease (checked every lease/4) it steps down
    cluster.run_until(safety.until(lambda: not a.leading), timeout=LEASE + LEASE_CHECK + 0.01, what="a steps down")
    assert not a.lease_valid()
    assert cluster.now - start <= LEASE + LEASE_CHECK

    # the broker drops it after 1.5 keepalives of silence and publishes its will; the others take over
    # lease + margin after that
    cluster.run_until(safety.until(lambda: cluster.converged([b, c])), timeout=10, what="the other side elects")
    assert cluster.now - start <= 1.5 * KEEPALIVE + LEASE + MARGIN + SETTLE
    assert [r.id for r in cluster.leaders()] == [b.id] and b.epoch == old_epoch + 1

    # healed: it reconnects, learns the newer term and follows; exactly one leader
    cluster.heal(a.id)
    cluster.run_until(safety.until(cluster.converged), timeout=30, what="one leader after the heal")
    assert [r.id for r in cluster.leaders()] == [b.id]
    assert a.max_epoch == b.epoch == old_epoch + 1 and not a.leading
    # fencing: a command of the old term is refused everywhere, the old leader included
    for runtime in (a, b, c):
        guard = runtime.service.rpc_service.server.guard
        assert guard is not None
        with pytest.raises(StaleEpoch):
            guard("spawn", {"epoch": old_epoch})
    assert safety.violations == []
    assert time.perf_counter() - wall < WALL_LIMIT


def test_after_a_broker_restart_everyone_reconnects_and_the_leader_keeps_its_term(cluster: Cluster) -> None:
    a, b, c = elect(cluster)
    safety = Safety(cluster)
    cluster.restart_broker()  # every connection resets; the new broker remembers nothing
    cluster.settle()
    assert not any(r.service.client.connected for r in (a, b, c))
    took = cluster.run_until(
        safety.until(lambda: cluster.converged() and all(r.service.client.connected for r in (a, b, c))),
        timeout=10,
        what="everyone back with one leader",
    )
    # back within the reconnect backoff, well inside the lease: no new election
    assert took < LEASE
    assert [r.id for r in cluster.leaders()] == [a.id] and a.epoch == 1
    assert len(cluster.broker.sessions) == 3
    assert safety.violations == []


def test_a_broker_outage_longer_than_the_lease_ends_the_term_and_a_newer_one_begins(cluster: Cluster) -> None:
    a, b, c = elect(cluster)
    safety = Safety(cluster)
    start = cluster.now
    cluster.restart_broker(down=3 * LEASE)
    cluster.run_until(safety.until(lambda: not a.leading), timeout=LEASE + LEASE_CHECK + 0.01, what="a steps down")
    cluster.run_until(safety.until(cluster.converged), timeout=30, what="one leader after the outage")
    assert cluster.now - start > 3 * LEASE
    [leader] = cluster.leaders()
    assert leader.epoch == 2 and all(r.max_epoch == 2 for r in (a, b, c))
    assert safety.violations == []


def test_a_restarted_leader_rejoins_as_a_follower(cluster: Cluster) -> None:
    a, b, c = elect(cluster)
    cluster.kill(a.id)
    cluster.run_until(lambda: cluster.converged([b, c]), timeout=10, what="b takes over")
    a = cluster.restart(a.id)
    cluster.run_until(cluster.converged, timeout=10, what="a back, following")
    assert [r.id for r in cluster.leaders()] == [b.id], "leadership is sticky: a returning runtime does not take it"
    assert a.max_epoch == b.epoch == 2


def partition_and_heal_the_leader(cluster: Cluster) -> tuple[SimRuntime, SimRuntime, SimRuntime]:
    a, b, c = elect(cluster)
    cluster.partition(a.id)
    cluster.run_until(lambda: cluster.converged([b, c]) and b.service.fs_role.holding, timeout=10, what="b leads")
    return a, b, c


def test_after_a_partition_heals_the_kernel_services_stay_where_they_are(cluster: Cluster) -> None:
    a, b, c = partition_and_heal_the_leader(cluster)
    scheduler = b.service.kernel.getServiceNamed("scheduler")
    cluster.heal(a.id)
    cluster.run_until(cluster.converged, timeout=30, what="one leader after the heal")
    # a's client resends its last unacknowledged status (leader=True, epoch 1) before its fresh one:
    # the newer term wins the election, so b's scheduler is never stopped
    assert b.service.kernel.getServiceNamed("scheduler") is scheduler


def test_after_a_partition_heals_the_file_system_stays_where_it_is(cluster: Cluster) -> None:
    """The old leader's resent claim (epoch 1, DUP) must not move the fs role for a moment (it aborted writes)."""
    a, b, c = partition_and_heal_the_leader(cluster)
    fs = b.service.fs_role.getServiceNamed("fs")
    cluster.heal(a.id)
    cluster.run_until(cluster.converged, timeout=30, what="one leader after the heal")
    assert b.service.fs_role.getServiceNamed("fs") is fs, "the fs service was stopped and started again"
