"""File-system calls in one hop, in the simulated network: the direct channel opens, follows a failover,
and an old server fenced off by its lease never answers on it.

The cluster's in-memory TCP carries the channel as it carries streams, so
this is the production code end to end (oneos/pubsub/direct.py), with time
simulated.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from oneos.fs.client import FSClient
from oneos.testing.cluster import Cluster, SimRuntime


def settle(cluster: Cluster, d: defer.Deferred, timeout: float = 15.0) -> Any:
    """Run the cluster until *d* fires; its result, or its failure (not raised)."""
    cluster.run_until(lambda: d.called, timeout, "the call to be answered")
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def elect(cluster: Cluster, n: int = 3) -> list[SimRuntime]:
    runtimes = cluster.add_runtimes(n)
    cluster.run_until(cluster.converged, timeout=10, what=f"{n} runtimes agree on one leader")
    return runtimes


def fs_service(runtime: SimRuntime) -> Any:
    return runtime.service.fs_role.getServiceNamed("fs")


def open_channel(cluster: Cluster, fs: FSClient) -> Any:
    route = fs.rpc.route("fs")
    assert route is not None

    def ready() -> bool:
        fs.stat("/").addErrback(lambda f: None)
        return route.ready

    cluster.run_until(ready, timeout=30, what="the direct channel to open")
    return route


def test_calls_take_the_channel_and_follow_the_tree_to_the_new_server(cluster: Cluster) -> None:
    a, b, c = elect(cluster)
    assert a.service.fs_role.holding
    fs = FSClient(c.service.rpc, c.reactor)
    route = open_channel(cluster, fs)
    assert route.server.startswith(f"{a.ip}:") and fs_service(a).direct.connections == 1
    before = route.sent
    assert settle(cluster, fs.write_small("/tmp/one-hop", b"hello")).path == "/tmp/one-hop"
    listing = settle(cluster, fs.list_stat("/tmp"))
    assert [e.name for e in listing.entries] == ["one-hop"]
    assert route.sent == before + 2  # both went straight to a

    cluster.kill(a.id)
    cluster.run_until(lambda: not route.ready, timeout=1, what="the channel to notice the reset")
    cluster.run_until(lambda: cluster.converged([b, c]) and b.service.fs_role.holding, timeout=10, what="fs moves")
    route = open_channel(cluster, fs)
    assert route.server.startswith(f"{b.ip}:") and route.opened == 2
    assert settle(cluster, fs.read_small("/tmp/one-hop")) == b"hello"


def test_a_server_cut_off_past_its_lease_never_answers_on_its_channel(cluster: Cluster) -> None:
    a, b, c = elect(cluster)
    fs = FSClient(c.service.rpc, c.reactor, timeout=5)
    route = open_channel(cluster, fs)
    old = fs_service(a)
    ran_on_a: list[float] = []
    stat = old.server.handlers["stat"]

    def recording(*args: Any, **kw: Any) -> Any:
        ran_on_a.append(cluster.clock.seconds())
        return stat(*args, **kw)

    old.server.handlers["stat"] = recording
    cut = cluster.clock.seconds()
    cluster.partition(a.id)
    late = fs.stat("/tmp")  # waits in the network with the rest of a's traffic
    # a's lease lapses (2 s without the broker): it cuts its channels then, before anyone takes over
    cluster.run_until(lambda: old.direct.connections == 0, timeout=2.5, what="a to cut its channels")
    failure = settle(cluster, late, timeout=10)
    assert isinstance(failure, Failure)  # timed out on the channel, as it would have over the bus
    assert not route.ready  # in doubt: the next calls go over the bus
    cluster.run_until(lambda: cluster.converged([b, c]) and b.service.fs_role.holding, timeout=15, what="b serves")
    cluster.heal(a.id)
    cluster.run_until(lambda: not a.service.fs_role.holding, timeout=10, what="a to have given the tree up")
    cluster.run(3)
    # the request that waited in the network reached a only after its lease had lapsed: refused, never run
    assert [t for t in ran_on_a if t > cut] == []
    route = open_channel(cluster, fs)
    assert route.server.startswith(f"{b.ip}:")
    assert settle(cluster, fs.stat("/tmp")).is_dir
