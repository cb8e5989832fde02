"""Two hundred real runtimes in one process agree on one leader.

What it costs, and why (measured on a 2-core machine): about 5 s of wall time for 0.5 s of
simulated time.  Starting 200 runtimes at once is ~120,000 MQTT deliveries (each runtime's status
reaches every other runtime several times: on joining, when its front door opens, when the file
system or the leadership moves).  A delivered status costs the receiving runtime's Membership a
look at that one entry (it was a pass over the whole view, O(N^3) for the simulation and 20-30 s
of wall time, before statuses were handled incrementally).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from oneos.testing.cluster import Cluster

N = 200


@pytest.mark.slow
def test_two_hundred_runtimes_converge_on_one_leader(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    wall = time.perf_counter()
    runtimes = cluster.add_runtimes(N)
    took = cluster.run_until(cluster.converged, timeout=10, what=f"{N} runtimes agree on one leader")
    wall = time.perf_counter() - wall
    [leader] = cluster.leaders()
    assert leader.id == runtimes[0].id and leader.epoch == 1
    for runtime in runtimes:
        assert len(runtime.live_ids()) == N, runtime
        assert runtime.leader_seen() == leader.id, runtime
    assert len(cluster.broker.sessions) == N
    assert took <= 1.0, "one settle time after everyone joined"
    print(
        f"\n{N} runtimes converged in {took:.3f}s simulated, {wall:.1f}s wall; broker routed "
        f"{cluster.broker.published} messages, {cluster.broker.delivered} deliveries"
    )
