"""What runs beside the election in a cluster: the file tree across a failover, the front doors, a clean
stop, and the harness's promise that one scenario always plays out the same way."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from oneos.fs.client import FSClient
from oneos.testing.cluster import Cluster, SimRuntime


def result_of(cluster: Cluster, d: defer.Deferred, timeout: float = 10.0) -> Any:
    """Run the cluster until *d* fires; its result (or its exception, raised)."""
    cluster.run_until(lambda: d.called, timeout, "the call to be answered")
    out: list[Any] = []
    d.addBoth(out.append)
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def elect(cluster: Cluster, n: int = 3) -> list[SimRuntime]:
    runtimes = cluster.add_runtimes(n)
    cluster.run_until(cluster.converged, timeout=10, what=f"{n} runtimes agree on one leader")
    return runtimes


def test_the_file_tree_survives_the_leader_and_follows_the_new_one(cluster: Cluster) -> None:
    a, b, c = elect(cluster)
    from_c = FSClient(c.service.rpc, c.reactor)
    big = bytes(range(256)) * 4096 * 3  # 3 MiB: content streams over TCP between runtimes, not over the broker
    result_of(cluster, from_c.write_small("/tmp/hello", b"written before the failover"))
    result_of(cluster, from_c.write("/tmp/big", big))
    cluster.kill(a.id)
    cluster.run_until(lambda: cluster.converged([b, c]) and b.service.fs_role.holding, timeout=10, what="fs moves")
    assert result_of(cluster, from_c.read_small("/tmp/hello")) == b"written before the failover"
    assert result_of(cluster, from_c.read("/tmp/big")) == big


def test_every_runtime_opens_its_ssh_front_door_with_the_network_host_key(make_cluster: Any) -> None:
    cluster = make_cluster(ssh=True)
    runtimes = cluster.add_runtimes(3)
    cluster.run_until(
        lambda: cluster.converged() and all(r.service.shell.ssh_address for r in runtimes),
        timeout=10,
        what="front doors open",
    )
    assert [r.service.shell.ssh_address for r in runtimes] == [f"{r.ip}:2222" for r in runtimes]
    # one host key for the network, kept in the tree; each runtime pins its public half at home
    published = {(r.config.home / "ssh_host_key.pub").read_bytes() for r in runtimes}
    assert len(published) == 1


def test_a_clean_stop_says_left_leaves_nothing_running_and_hands_over_the_kernel(cluster: Cluster) -> None:
    a, b, c = elect(cluster)
    for runtime in (c, a):
        stopped = cluster.stop(runtime.id)
        result_of(cluster, stopped)
        assert runtime.exited == {"timers": [], "connections": [], "ports": []}
        assert not runtime.alive
    assert b.live_ids() == [b.id]
    assert {s.state for s in b.service.membership.statuses() if s.id != b.id} == {"left"}
    # the leader left cleanly, but the others cannot tell a clean exit from a lease still running: they wait
    took = cluster.run_until(lambda: cluster.converged([b]), timeout=10, what="b takes over")
    assert took == 2.5 and b.epoch == 2


def scenario(cluster: Cluster) -> list[tuple[float, tuple[tuple[str, int], ...], tuple[bool, ...]]]:
    """Faults one after another; the trace of who leads (and who is connected) at every instant."""
    trace: list[tuple[float, tuple[tuple[str, int], ...], tuple[bool, ...]]] = []
    runtimes = cluster.add_runtimes(4)

    def record() -> bool:
        state = (
            tuple((r.id, r.epoch) for r in cluster.leaders()),
            tuple(r.alive and r.service.client.connected for r in runtimes),
        )
        if not trace or trace[-1][1:] != state:
            trace.append((round(cluster.now - cluster.start_time, 6), *state))
        return False

    cluster.run_until(lambda: record() or cluster.converged(), timeout=10)
    cluster.kill(runtimes[0].id)
    cluster.run_until(lambda: record() or cluster.converged(), timeout=10)
    cluster.restart_broker(down=3)
    cluster.run_until(lambda: record() or cluster.converged(), timeout=30)
    cluster.partition(runtimes[1].id)
    cluster.run_until(lambda: record() or cluster.converged(runtimes[2:]), timeout=30)
    cluster.heal(runtimes[1].id)
    cluster.run_until(lambda: record() or cluster.converged(), timeout=30)
    cluster.run(5)
    return trace


def test_a_scenario_plays_out_the_same_way_every_time(make_cluster: Any) -> None:
    first, second = make_cluster(), make_cluster()
    trace = scenario(first)
    assert len(trace) > 8, trace
    assert scenario(second) == trace
    assert (first.broker.published, first.broker.delivered) == (second.broker.published, second.broker.delivered)
