"""The spawn path's shortcuts: remembered PATH lookups, posix_spawn with a working directory,
no /proc read at start, the process table's job index, and RPC to this process's own server.

All deterministic: time is a task.Clock or MemoryReactorClock, no process is
started (the reactor records spawnProcess), the bus is the in-memory one.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock

from oneos.agents import manager as agents_manager
from oneos.agents.manager import LOOKUP_TTL, AgentManager, AgentSpec, Lookups, _in_directory
from oneos.agents.program import ProgramError
from oneos.errors import NotPermitted, RPCTimeout
from oneos.pubsub import topics
from oneos.pubsub.rpc import RPCClient, RPCServer, Unanswered
from oneos.scheduler.service import ProcessTable, SchedulerService
from test_membership import FakeBus


def outcome(d: defer.Deferred) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "expected the Deferred to have fired"
    return out[0]


# -- Lookups -----------------------------------------------------------------------------------------------


def test_a_lookup_is_remembered_for_its_ttl_then_asked_again():
    clock = task.Clock()
    lookups, asked = Lookups(clock.seconds), []

    def compute() -> str:
        asked.append(1)
        return f"answer {len(asked)}"

    assert lookups.get("k", compute) == "answer 1"
    clock.advance(LOOKUP_TTL - 0.1)
    assert lookups.get("k", compute) == "answer 1" and len(asked) == 1
    clock.advance(0.1)
    assert lookups.get("k", compute) == "answer 2", "an expired answer is looked up again"


def test_an_answer_that_no_longer_holds_is_asked_again_and_a_failure_is_never_remembered():
    clock = task.Clock()
    lookups = Lookups(clock.seconds)
    assert lookups.get("k", lambda: "old", valid=lambda v: False) == "old"
    assert lookups.get("k", lambda: "new", valid=lambda v: v == "new") == "new", "invalid: asked again"
    assert lookups.get("none", lambda: None) is None
    assert lookups.get("none", lambda: "found") == "found", "None (not found) is not remembered"

    def failing() -> str:
        raise ProgramError("x: command not found")

    with pytest.raises(ProgramError):
        lookups.get("f", failing)
    assert lookups.get("f", lambda: "installed") == "installed"


def test_lookups_keep_at_most_their_size_forgetting_the_oldest():
    lookups = Lookups(task.Clock().seconds, size=2)
    for key in ("a", "b", "c"):
        lookups.get(key, lambda key=key: key.upper())
    assert list(lookups._entries) == ["b", "c"]


class Reactor(task.Clock):
    """Records spawnProcess instead of starting anything."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(
        self, proto: Any, executable: str, args: Any, env: Any = None, path: Any = None, **kw: Any
    ) -> None:
        self.spawned.append({"executable": executable, "args": list(args), "path": path})


@pytest.fixture
def program(tmp_path):
    exe = tmp_path / "prog"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    return exe


def test_a_program_is_resolved_once_per_ttl_and_never_run_once_it_is_gone(program, monkeypatch):
    resolved: list[str] = []
    real = agents_manager.resolve_argv

    def counting(program: str, args: list[str], path: Any = None, cwd: Any = None) -> list[str]:
        resolved.append(program)
        return real(program, args, path=path, cwd=cwd)

    monkeypatch.setattr(agents_manager, "resolve_argv", counting)
    reactor = Reactor()
    manager = AgentManager(reactor, "rt-1")
    manager.spawn(AgentSpec(str(program), ["a"]))
    manager.spawn(AgentSpec(str(program), ["b"]))
    assert resolved == [str(program)], "the second spawn reused the lookup"
    assert [s["args"][-2:] for s in reactor.spawned] == [[str(program), "a"], [str(program), "b"]]
    program.unlink()
    with pytest.raises(ProgramError, match="no such file"):
        manager.spawn(AgentSpec(str(program)))
    assert len(reactor.spawned) == 2


# -- posix_spawn with a working directory -------------------------------------------------------------------


def test_a_working_directory_moves_into_the_childs_chain_after_setsid(monkeypatch):
    monkeypatch.setattr(agents_manager, "chdir_helper", lambda: "/usr/bin/env")
    run = ["/usr/bin/setsid", "/usr/bin/setpriv", "--pdeathsig", "KILL", "--", "/bin/pwd"]
    assert _in_directory(run, "/srv", wrapped=True) == (
        [
            "/usr/bin/setsid",
            "/usr/bin/env",
            "-C",
            "/srv",
            "--",
            "/usr/bin/setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            "/bin/pwd",
        ],
        None,
    )
    assert _in_directory(["/bin/pwd"], "/srv", wrapped=False) == (
        ["/usr/bin/env", "-C", "/srv", "--", "/bin/pwd"],
        None,
    )


def test_without_the_helper_or_with_a_command_env_would_misread_twisted_gets_the_directory(monkeypatch):
    monkeypatch.setattr(agents_manager, "chdir_helper", lambda: None)
    assert _in_directory(["/bin/pwd"], "/srv", wrapped=False) == (["/bin/pwd"], "/srv")
    monkeypatch.setattr(agents_manager, "chdir_helper", lambda: "/usr/bin/env")
    assert _in_directory(["/odd/a=b"], "/srv", wrapped=False) == (["/odd/a=b"], "/srv")
    assert _in_directory(["/usr/bin/setsid", "/odd/a=b"], "/srv", wrapped=True) == (
        ["/usr/bin/setsid", "/odd/a=b"],
        "/srv",
    )


def test_no_directory_or_the_runtimes_own_needs_no_helper(monkeypatch):
    monkeypatch.setattr(agents_manager, "chdir_helper", lambda: pytest.fail("not needed"))
    assert _in_directory(["/bin/pwd"], None, wrapped=False) == (["/bin/pwd"], None)
    assert _in_directory(["/bin/pwd"], os.getcwd(), wrapped=False) == (["/bin/pwd"], None)


def test_a_spawn_with_a_directory_asks_twisted_for_none(program, tmp_path, monkeypatch):
    monkeypatch.setattr(agents_manager, "chdir_helper", lambda: "/usr/bin/env")
    reactor = Reactor()
    AgentManager(reactor, "rt-1").spawn(AgentSpec(str(program), cwd=str(tmp_path)))
    [spawned] = reactor.spawned
    assert spawned["path"] is None, "no directory for Twisted: it uses posix_spawn"
    at = spawned["args"].index("-C")
    assert spawned["args"][at - 1 : at + 3] == ["/usr/bin/env", "-C", str(tmp_path), "--"]
    assert spawned["args"][-1] == str(program)


# -- nothing measured at start ------------------------------------------------------------------------------


def test_the_start_reads_nothing_of_the_child_from_proc(program, monkeypatch):
    opened: list[int] = []
    monkeypatch.setattr(agents_manager.psutil, "Process", lambda pid: opened.append(pid))
    events: list[dict[str, Any]] = []
    manager = AgentManager(Reactor(), "rt-1")
    manager.on_event(events.append)
    agent = manager.spawn(AgentSpec(str(program)))

    class Transport:
        pid = 4242
        pipes: dict[int, Any] = {}

        def closeStdin(self) -> None:
            pass

    agent.makeConnection(Transport())
    assert agent.info(measure=False)["cpu_percent"] == 0.0
    assert events[0]["event"] == "started" and events[0]["memory_mb"] == 0.0
    assert opened == [], "neither the start nor its event opened /proc"
    agent.info()
    assert opened == [4242], "the first measure opens it"


# -- the process table's job index --------------------------------------------------------------------------


def test_the_job_index_follows_every_way_of_writing_the_table():
    table = ProcessTable()
    table["a"] = {"id": "a", "job": "j", "incarnation": 0}
    table.setdefault("b", {"id": "b", "job": "j", "incarnation": 1})
    table.update({"c": {"id": "c"}})
    assert [r["id"] for r in table.of_job("j")] == ["a", "b"] and [r["id"] for r in table.of_job("c")] == ["c"]
    table["b"] = {"id": "b", "job": "k", "incarnation": 1}  # a row moved to another job
    assert [r["id"] for r in table.of_job("j")] == ["a"] and [r["id"] for r in table.of_job("k")] == ["b"]
    table.pop("a")
    del table["b"]
    assert table.of_job("j") == [] and table.of_job("k") == [] and table.pop("zz", None) is None
    table.clear()
    assert table.of_job("c") == [] and not table


def test_the_scheduler_finds_a_later_incarnation_from_the_index():
    class Members:
        epoch = 1

        def live(self) -> list[Any]:
            return []

    s = SchedulerService(None, None, Members(), task.Clock())
    old = {"id": "x1", "runtime": "rt-a", "state": "running", "job": "x1", "incarnation": 0}
    s.table["x1"] = old
    for n in range(50):
        s.table[f"o{n}"] = {"id": f"o{n}", "runtime": "rt-b", "state": "exited", "incarnation": 5}
    assert s._newer(old) is None, "other jobs' rows are not this one's"
    s.table["x2"] = new = {"id": "x2", "runtime": "rt-b", "state": "running", "job": "x1", "incarnation": 1}
    assert s._newer(old) is new and s._newer(new) is None


# -- RPC to this process's own server -----------------------------------------------------------------------


def bus_pair(
    username: str | None = None, guard: Any = None
) -> tuple[MemoryReactorClock, FakeBus, RPCServer, RPCClient]:
    reactor = MemoryReactorClock()
    bus = FakeBus(reactor, "rt-a", username=username)
    seen: list[Any] = []

    def echo(items: Any = None, user: str | None = None) -> dict[str, Any]:
        seen.append(items)
        return {"items": items, "user": user}

    def refuse() -> None:
        raise NotPermitted("not for you")

    server = RPCServer(bus, "rt-a", {"echo": echo, "refuse": refuse}, guard=guard)
    server.seen = seen  # type: ignore[attr-defined]
    server.start()
    return reactor, bus, server, RPCClient(bus, reactor)


def test_a_call_to_our_own_server_skips_the_broker_and_answers_a_turn_later():
    reactor, bus, server, client = bus_pair()
    d = client.call_here("rt-a", "echo", items=(1, 2))
    assert not d.called, "never answered inside the call"
    reactor.advance(0)
    assert outcome(d) == {"items": [1, 2], "user": None}, "as over the bus: JSON copies"
    assert server.seen == [[1, 2]]  # type: ignore[attr-defined]
    assert bus.published == [], "nothing went through the broker"


def test_a_typed_error_comes_back_typed_and_a_silent_server_hands_the_call_to_the_bus():
    reactor, bus, server, client = bus_pair(guard=lambda method, meta: (_ for _ in ()).throw(Unanswered("lease")))
    d = client.call_here("rt-a", "echo", timeout=3)
    reactor.advance(0)
    assert not d.called and any(t == topics.rpc("rt-a", "rt-a") for t, *_ in bus.published), "sent on the bus"
    reactor.advance(3)
    assert outcome(d).check(RPCTimeout), "nobody answered there either"
    reactor, bus, server, client = bus_pair()
    d = client.call_here("rt-a", "refuse")
    reactor.advance(0)
    assert outcome(d).check(NotPermitted)


def test_a_client_identity_keeps_its_rights_in_process():
    reactor, bus, server, client = bus_pair(username="ann@laptop")
    bus.identity = "ann@laptop"
    d = client.call_here("rt-a", "echo")
    reactor.advance(0)
    assert outcome(d).check(NotPermitted), "echo is not open to clients, here as on the bus"


def test_without_a_server_here_or_once_it_stopped_the_call_takes_the_bus():
    reactor, bus, server, client = bus_pair()
    client.call_here("rt-b", "echo")
    assert [t for t, *_ in bus.published if t.startswith("oneos/v1/rpc/")] == [topics.rpc("rt-b", "rt-a")]
    server.stop()
    d = client.call_here("rt-a", "echo")
    assert [t for t, *_ in bus.published if t.startswith("oneos/v1/rpc/")][-1] == topics.rpc("rt-a", "rt-a")
    reactor.advance(6)
    assert outcome(d).check(RPCTimeout)


class SchedulerRPC:
    """The RPC client as the scheduler's commands see it: records which way each call went."""

    def __init__(self) -> None:
        self.used: list[tuple[str, str]] = []
        self.direct: list[tuple[str, frozenset[str]]] = []

    def call(self, target: str, method: str, **kw: Any) -> defer.Deferred:
        self.used.append(("call", target))
        return defer.succeed({"id": "a1", "runtime": target, "state": "running"})

    def call_here(self, target: str, method: str, **kw: Any) -> defer.Deferred:
        self.used.append(("here", target))
        return defer.succeed({"id": "a2", "runtime": target, "state": "running"})

    def enable_direct(self, target: str, *, retry_safe: Any = ()) -> None:
        self.direct.append((target, frozenset(retry_safe)))


class Members:
    id = "rt-a"
    epoch = 1


def test_the_scheduler_commands_its_own_runtime_in_process_and_others_on_their_direct_channels():
    from oneos.agents.client import RETRY_SAFE

    rpc = SchedulerRPC()
    s = SchedulerService(None, rpc, Members(), task.Clock())
    s.agents.kill("rt-a", "a2")
    s.agents.kill("rt-b", "a1")
    assert rpc.used == [("here", "rt-a"), ("call", "rt-b")]
    assert rpc.direct == [("rt-b", frozenset(RETRY_SAFE))], "another runtime's channel, with its read-only methods"
    assert not {"agent_spawn", "agent_kill", "agent_stdin", "agent_pipe_out"} & set(RETRY_SAFE), "they change things"


def test_a_scheduler_told_not_to_use_direct_channels_sends_its_commands_over_the_bus():
    rpc = SchedulerRPC()
    s = SchedulerService(None, rpc, Members(), task.Clock(), direct_commands=False)
    s.agents.kill("rt-b", "a1")
    assert rpc.used == [("call", "rt-b")] and rpc.direct == []


def test_loader_variables_are_set_only_after_privileges_drop():
    from oneos.agents.manager import AgentError, loader_variable, session_argv, split_loader_env

    env = {"PATH": "/bin", "LD_PRELOAD": "/tmp/evil.so", "MALLOC_CHECK_": "3", "GLIBC_TUNABLES": "x", "HOME": "/h"}
    safe, late = split_loader_env(env)
    assert safe == {"PATH": "/bin", "HOME": "/h"}
    assert late == {"LD_PRELOAD": "/tmp/evil.so", "MALLOC_CHECK_": "3", "GLIBC_TUNABLES": "x"}
    assert loader_variable("LD_LIBRARY_PATH") and not loader_variable("OLD_PRELOAD")

    class Account:
        uid, gid = 65534, 65534

    tools = {"setsid": "/usr/bin/setsid", "setpriv": "/usr/bin/setpriv", "env": "/usr/bin/env"}
    argv = session_argv(["/usr/bin/id", "-u"], Account(), tools.get, {"LD_PRELOAD": "/tmp/evil.so"})
    assert argv is not None
    cut = argv.index("--")  # setpriv's options end: everything before runs as root, with no loader variable
    assert not any("LD_" in a for a in argv[:cut])
    assert argv[cut + 1 :] == ["/usr/bin/env", "--", "LD_PRELOAD=/tmp/evil.so", "/usr/bin/id", "-u"]
    assert session_argv(["/usr/bin/id"], Account(), tools.get, {}) == [
        "/usr/bin/setsid",
        "/usr/bin/setpriv",
        "--pdeathsig",
        "KILL",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        "--",
        "/usr/bin/id",
    ]
    with pytest.raises(AgentError, match="safely"):
        session_argv(["/opt/a=b/prog"], Account(), tools.get, {"LD_PRELOAD": "x"})
