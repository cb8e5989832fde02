"""Spawns in one hop, in the simulated network.

Every runtime serves its own RPC target (the agent methods) on a direct
channel beside its streams; the leader's scheduler sends its commands to
another runtime there once the channel is open.  These check that the
commands take the channel, that the runtime's guard (the epoch fence)
refuses on it exactly as on the bus, that a stopped channel sends the calls
back to the bus, and that a runtime cut off from the broker never runs a
command that waited in the network.  The scheduler's own target is served
on a channel too: a scheduler client's calls take the leader's, and follow
the role to the next leader.

Programs are not started (the simulated hosts have no processes): the
other runtime's ``agent_spawn`` handler is replaced by one that records
the call and answers as a spawn does.  Everything between the scheduler
and that handler is the production code.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from oneos.agents.info import AgentInfo
from oneos.errors import RPCTimeout, StaleEpoch
from oneos.scheduler.client import RETRY_SAFE, TARGET, SchedulerClient
from oneos.testing.cluster import Cluster, SimRuntime


def settle(cluster: Cluster, d: defer.Deferred, timeout: float = 15.0) -> Any:
    """Run the cluster until *d* fires; its result, or its failure (not raised)."""
    cluster.run_until(lambda: d.called, timeout, "the call to be answered")
    out: list[Any] = []
    d.addBoth(out.append)
    return out[0]


def leader_and_other(cluster: Cluster) -> tuple[SimRuntime, SimRuntime]:
    runtimes = cluster.add_runtimes(3)
    cluster.run_until(cluster.converged, timeout=10, what="3 runtimes agree on one leader")
    (leader,) = cluster.leaders()
    return leader, next(r for r in runtimes if r is not leader)


def scheduler_of(runtime: SimRuntime) -> Any:
    return runtime.service.kernel.getServiceNamed("scheduler")


def record_spawns(cluster: Cluster, runtime: SimRuntime) -> list[float]:
    """Replace *runtime*'s ``agent_spawn`` by one that records when it ran and answers as a spawn does."""
    ran: list[float] = []

    def spawn(program: str, args: list[str] | None = None, **_: Any) -> dict[str, Any]:
        ran.append(cluster.clock.seconds())
        agent = AgentInfo(id=f"a{len(ran)}", runtime=runtime.id, program=program, args=tuple(args or ()))
        return agent.encode() | {"state": "running"}

    runtime.service.rpc_service.server.handlers["agent_spawn"] = spawn
    return ran


def spawn_on(scheduler: Any, runtime: SimRuntime) -> defer.Deferred:
    return scheduler.spawn("/bin/true", runtime=runtime.id, stdout="discard", stdin=False)


def open_channel(cluster: Cluster, leader: SimRuntime, other: SimRuntime) -> Any:
    """Spawn on *other* until the leader's channel to it is open; the route."""
    scheduler = scheduler_of(leader)

    def ready() -> bool:
        route = leader.service.rpc.route(other.id)
        if route is not None and route.ready:
            return True
        spawn_on(scheduler, other).addErrback(lambda f: None)
        return False

    cluster.run_until(ready, timeout=30, what="the scheduler's channel to the other runtime to open")
    return leader.service.rpc.route(other.id)


def test_spawns_on_another_runtime_take_its_channel_and_its_fence_holds_there(cluster: Cluster) -> None:
    leader, other = leader_and_other(cluster)
    ran = record_spawns(cluster, other)
    scheduler = scheduler_of(leader)
    assert leader.service.rpc.route(other.id) is None, "no channel before the first command"

    route = open_channel(cluster, leader, other)
    assert route.server.startswith(f"{other.ip}:") and other.service.rpc_service.direct.connections == 1
    assert route.retry_safe >= {"agent_list", "ping"} and "agent_spawn" not in route.retry_safe
    assert leader.service.rpc.route(leader.id) is None, "the leader's own runtime is called in-process"
    before, calls = route.sent, len(ran)
    info = settle(cluster, spawn_on(scheduler, other))
    assert info["runtime"] == other.id and info["id"] in scheduler.table
    assert route.sent == before + 1 and len(ran) == calls + 1, "one spawn, on the channel"

    # a newer term began (as the other runtime hears it): the old term's command is refused on the channel
    other.service.membership.note_epoch(leader.epoch + 1)
    failure = settle(cluster, spawn_on(scheduler, other))
    assert isinstance(failure, Failure) and failure.check(StaleEpoch), failure
    assert route.sent == before + 2 and len(ran) == calls + 1, "sent on the channel, refused there, never run"
    assert route.ready, "a refusal is an answer: the channel stays"


def test_once_the_runtime_stops_its_channel_the_commands_go_over_the_bus(cluster: Cluster) -> None:
    leader, other = leader_and_other(cluster)
    ran = record_spawns(cluster, other)
    scheduler = scheduler_of(leader)
    route = open_channel(cluster, leader, other)
    sent = route.sent

    stopped = other.service.rpc_service.direct.stop()  # as a stopping runtime does; its bus server still answers
    cluster.run_until(lambda: stopped.called and not route.ready, timeout=1, what="the channel to close")
    calls = len(ran)
    for _ in range(3):
        info = settle(cluster, spawn_on(scheduler, other))
        assert info["runtime"] == other.id
    assert len(ran) == calls + 3 and route.sent == sent, "answered over the bus"
    assert route.state == route.WAITING and not route.ready


def test_a_runtime_cut_off_never_runs_a_command_that_waited_in_the_network(cluster: Cluster) -> None:
    leader, other = leader_and_other(cluster)
    ran = record_spawns(cluster, other)
    scheduler = scheduler_of(leader)
    route = open_channel(cluster, leader, other)
    direct = other.service.rpc_service.direct
    cut = cluster.now
    cluster.partition(other.id)
    late = spawn_on(scheduler, other)  # on the channel: waits in the network with the rest of its traffic
    # the other runtime hears no broker: past its lease it cuts its channels, before anyone gives up on it
    cluster.run_until(lambda: direct.connections == 0, timeout=2.5, what="the cut-off runtime to cut its channels")
    failure = settle(cluster, late, timeout=10)
    assert isinstance(failure, Failure) and failure.check(RPCTimeout), "timed out, as over the bus"
    assert not route.ready, "in doubt: the next commands go over the bus"

    cluster.heal(other.id)
    cluster.run_until(cluster.converged, timeout=15, what="the runtime to be back")
    cluster.run(3)
    # the spawn that waited in the network reached a closed connection: never run, then or later
    assert [t for t in ran if t > cut] == []
    route = open_channel(cluster, leader, other)
    assert route.opened == 2 and [t for t in ran if t > cut], "a new channel, and spawns run again"


def test_a_runtime_serves_its_target_before_it_announces_itself(cluster: Cluster) -> None:
    leader, _ = leader_and_other(cluster)
    late = cluster.add_runtime(start=False)
    served: list[tuple[bool, bool]] = []
    publish = late.service.membership.publish

    def first_publish(status: Any = None) -> defer.Deferred:
        rpc = late.service.rpc_service
        served.append((rpc.server.active and rpc.server._sub is not None, rpc.direct is not None and rpc.direct.port))
        return publish(status)

    late.service.membership.publish = first_publish  # type: ignore[method-assign]
    answers: list[defer.Deferred] = []

    def ping_when_seen() -> None:
        if not answers and late.id in leader.live_ids():
            answers.append(leader.service.rpc.call(late.id, "ping"))  # the moment the leader sees it alive

    leader.service.membership.on_change(ping_when_seen)
    cluster.start(late.id)
    cluster.run_until(lambda: bool(answers), timeout=10, what="the leader to see the new runtime")
    assert served and served[0][0] and served[0][1], "subscribed and listening before its first status went out"
    assert settle(cluster, answers[0]) == {"id": late.id, "instance": late.service.instance}


def test_scheduler_calls_take_the_leader_s_channel_and_follow_the_role_to_the_next_leader(cluster: Cluster) -> None:
    leader, other = leader_and_other(cluster)
    scheduler = SchedulerClient(other.service.rpc, timeout=5)
    route = other.service.rpc.route(TARGET)
    assert route is not None and route.retry_safe == frozenset(RETRY_SAFE)
    assert not {"spawn", "pipeline", "kill", "pause", "resume"} & route.retry_safe

    def ready() -> bool:
        scheduler.ps().addErrback(lambda f: None)
        return route.ready

    cluster.run_until(ready, timeout=30, what="the channel to the scheduler to open")
    assert route.server.startswith(f"{leader.ip}:") and scheduler_of(leader).direct.connections == 1
    before = route.sent
    assert settle(cluster, scheduler.ps()) == []
    assert route.sent == before + 1

    # the leader is cut off: past its lease it cuts the channels, so nothing late is answered there
    cluster.partition(leader.id)
    old = scheduler_of(leader).direct
    late = scheduler.ps()
    cluster.run_until(lambda: old.connections == 0, timeout=2.5, what="the old leader to cut its channels")
    failure = settle(cluster, late)
    assert isinstance(failure, Failure) and failure.check(RPCTimeout), "timed out, as over the bus"
    assert not route.ready
    # once another runtime leads, the calls find its scheduler: over the bus, then on its channel
    rest = [r for r in cluster.alive() if r is not leader]
    cluster.run_until(lambda: cluster.converged(rest), timeout=15, what="another runtime to lead")
    (new,) = [r for r in rest if r.leading]
    cluster.run_until(ready, timeout=30, what="the channel to the new scheduler to open")
    assert route.server.startswith(f"{new.ip}:") and route.opened == 2
    assert settle(cluster, scheduler.ps()) == []


def test_a_clean_stop_with_channels_open_both_ways_leaves_nothing_running(cluster: Cluster) -> None:
    leader, other = leader_and_other(cluster)
    record_spawns(cluster, other)
    open_channel(cluster, leader, other)  # the leader's scheduler -> the other runtime
    scheduler = SchedulerClient(other.service.rpc, timeout=5)
    route = other.service.rpc.route(TARGET)

    def ready() -> bool:
        scheduler.ps().addErrback(lambda f: None)
        return route.ready

    cluster.run_until(ready, timeout=30, what="the other runtime's channel to the scheduler to open")
    # the leader's scheduler marks the other's agents lost as it goes: their clearing is not left behind either
    for runtime in (other, leader):
        settle(cluster, cluster.stop(runtime.id))
        assert runtime.exited == {"timers": [], "connections": [], "ports": []}
