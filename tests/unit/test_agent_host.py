"""AgentHost (oneos/agents/host.py): its RPC handlers and status publishing, with a fake manager and transfer.

No process is started: the manager is a fake holding fake agents (the real
AgentManager only for the event wiring, fed fake agents), the transfer
server records offers, the bus is the in-memory one, time is a
MemoryReactorClock.  Owner checks: a ``user`` may use only its own agents'
streams (EPERM otherwise), root and the runtime itself (``user=None``) any.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from oneos.agents.host import KEEP_ENDED, AgentHost
from oneos.agents.manager import AgentError, AgentManager, AgentSpec
from oneos.agents.program import ProgramError
from oneos.fs.errors import NotFound
from oneos.fs.store import Stat
from oneos.pubsub import messages, topics
from oneos.pubsub.rpc import RPCServer
from test_membership import FakeBus, request


class FakeStream:
    def __init__(self) -> None:
        self.pulled = 0

    def next(self) -> defer.Deferred:
        self.pulled += 1
        return defer.succeed(b"")


class FakeAgent:
    def __init__(self, agent_id: str, spec: AgentSpec, state: str = "running") -> None:
        self.id, self.spec, self.state = agent_id, spec, state
        self.stdout, self.stderr, self.stdin = FakeStream(), FakeStream(), object()
        self.stdout_to = "attach"
        self.ended_at: float | None = None

    def info(self, measure: bool = True) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "user": self.spec.user, "name": self.spec.name, "memory_mb": 1.0}


class FakeManager:
    """What AgentHost asks of its AgentManager, recording the commands."""

    def __init__(self) -> None:
        self.agents: dict[str, FakeAgent] = {}
        self.commands: list[tuple[str, str, str]] = []
        self.spawned: list[AgentSpec] = []
        self.account = None

    def add(self, agent_id: str, user: str = "", state: str = "running") -> FakeAgent:
        self.agents[agent_id] = FakeAgent(agent_id, AgentSpec(f"/bin/{agent_id}", user=user), state)
        return self.agents[agent_id]

    def get(self, agent_id: str) -> FakeAgent:
        if agent_id not in self.agents:
            raise AgentError(f"no agent {agent_id!r} on runtime rt-a")
        return self.agents[agent_id]

    def live_agents(self) -> list[FakeAgent]:
        return [a for a in self.agents.values() if a.state in ("running", "paused")]

    def kill(self, agent_id: str, grace: float | None = None, reason: str = "") -> FakeAgent:
        self.commands.append(("kill", agent_id, reason))
        return self.get(agent_id)

    def pause(self, agent_id: str) -> FakeAgent:
        self.commands.append(("pause", agent_id, ""))
        return self.get(agent_id)

    def resume(self, agent_id: str) -> FakeAgent:
        self.commands.append(("resume", agent_id, ""))
        return self.get(agent_id)

    def spawn(self, spec: AgentSpec, agent_id: str | None = None) -> FakeAgent:
        self.spawned.append(spec)
        agent = FakeAgent(agent_id or f"a{len(self.spawned)}", spec)
        self.agents[agent.id] = agent
        return agent

    def startService(self) -> None:
        pass

    def stopService(self) -> defer.Deferred:
        return defer.succeed(None)


class FakeTransfer:
    def __init__(self) -> None:
        self.offers: list[dict[str, Any]] = []

    def offer(self, source: Any = None, sink: Any = None) -> tuple[str, defer.Deferred]:
        done: defer.Deferred = defer.Deferred()
        self.offers.append({"source": source, "sink": sink, "done": done, "token": f"t{len(self.offers) + 1}"})
        return self.offers[-1]["token"], done

    def where(self) -> dict[str, Any]:
        return {"host": "10.0.0.1", "port": 4000}


class TreeFS:
    """The OneOS file system as a program's owner sees it: one program file."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def stat(self, path: str) -> defer.Deferred:
        if path not in self.files:
            return defer.fail(NotFound(path))
        return defer.succeed(
            Stat(path=path, kind="file", size=len(self.files[path]), mode=0o755, owner="bob", ctime=1.0, mtime=2.0)
        )

    def read(self, path: str) -> defer.Deferred:
        return defer.succeed(self.files[path])


def agent_host(tmp_path: Path, files: dict[str, bytes] | None = None, username: str | None = None) -> Any:
    reactor = MemoryReactorClock()
    bus = FakeBus(reactor, username=username)
    fs_users: list[str | None] = []
    tree = TreeFS(files or {})

    def fs(user: str | None) -> TreeFS:
        fs_users.append(user)
        return tree

    real_manager = AgentManager(reactor, "rt-a", memory_limit_mb=0)
    host = AgentHost("rt-a", reactor, bus, FakeTransfer(), fs, real_manager, home=tmp_path, interval=2.0)
    # commands go to a fake that records them; events come from the real manager the host listens to
    host.manager = FakeManager()
    host.manager.add("b1", user="bob")
    host.manager.add("n1", user="")
    return host, reactor, bus, fs_users, real_manager


def outcome(d: Any) -> Any:
    out: list = []
    defer.maybeDeferred(lambda: d).addBoth(out.append)
    assert out, "expected the Deferred to have fired"
    return out[0]


# -- owner checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["attach", "stdin", "pipe_out"])
def test_another_users_agent_is_refused_with_eperm(tmp_path, method):
    host, *_ = agent_host(tmp_path)
    extra = {"host": "10.0.0.2", "port": 5000, "token": "x"} if method == "pipe_out" else {}
    with pytest.raises(AgentError, match="agent b1 belongs to bob, not alice") as e:
        getattr(host, method)("b1", user="alice", **extra)
    assert e.value.kind == "EPERM"
    with pytest.raises(AgentError, match="belongs to nobody, not alice"):
        getattr(host, method)("n1", user="alice", **extra)
    assert host.transfer.offers == [] and host.reactor.tcpClients == []


@pytest.mark.parametrize("user", ["bob", "root", None])
def test_the_owner_root_and_the_runtime_itself_may_attach(tmp_path, user):
    host, *_ = agent_host(tmp_path)
    where = host.attach("b1", stream="stderr", user=user)
    assert where == {"host": "10.0.0.1", "port": 4000, "token": "t1"}
    assert host.transfer.offers[0]["source"] is host.manager.agents["b1"].stderr


def test_an_unknown_agent_is_esrch_not_eperm(tmp_path):
    host, *_ = agent_host(tmp_path)
    with pytest.raises(AgentError) as e:
        host.attach("zz", user="alice")
    assert e.value.kind == "ESRCH"


def test_over_rpc_a_client_acts_as_its_own_user_whatever_user_it_names(tmp_path):
    host, _, bus, _, _ = agent_host(tmp_path, username="rt-a")  # identities on
    server = RPCServer(
        bus, "rt-a", host.handlers(), clients=("agent_attach", "agent_stdin", "agent_pipe_out")
    )  # as the runtime's own target declares it
    server.start()
    forged = request(bus, "rt-a", "agent_attach", caller="alice@laptop", agent_id="b1", user="bob")
    assert forged["ok"] is False and forged["error"]["kind"] == "EPERM"
    assert request(bus, "rt-a", "agent_attach", caller="bob@laptop", agent_id="b1")["result"]["token"] == "t1"
    assert request(bus, "rt-a", "agent_attach", caller="root@admin-box", agent_id="b1")["ok"]
    killed = request(bus, "rt-a", "agent_kill", caller="bob@laptop", agent_id="b1")
    assert killed["ok"] is False and "for runtimes, not clients" in killed["error"]["message"]
    assert request(bus, "rt-a", "agent_kill", caller="rt-b", agent_id="b1")["ok"]
    assert host.manager.commands == [("kill", "b1", "")]


# -- the handlers ----------------------------------------------------------------------------------------------


def test_pause_resume_kill_and_list_reach_the_manager(tmp_path):
    host, *_ = agent_host(tmp_path)
    h = host.handlers()
    assert h["agent_pause"](agent_id="b1")["id"] == "b1"
    assert h["agent_resume"](agent_id="b1")["id"] == "b1"
    assert h["agent_kill"](agent_id="b1", reason="superseded")["state"] == "running"
    assert host.manager.commands == [("pause", "b1", ""), ("resume", "b1", ""), ("kill", "b1", "superseded")]
    assert sorted(a["id"] for a in h["agent_list"]()) == ["b1", "n1"]


def test_a_broken_input_stream_stops_the_program_naming_its_source(tmp_path):
    host, *_ = agent_host(tmp_path)
    host.stdin("b1", source="grep@rt-b", user="bob")
    host.stdin("n1")  # no source: the shell feeding it
    assert host.transfer.offers[0]["sink"] is host.manager.agents["b1"].stdin
    host.transfer.offers[0]["done"].errback(AgentError("peer vanished", "EPIPE"))
    host.transfer.offers[1]["done"].errback(AgentError("peer vanished", "EPIPE"))
    assert host.manager.commands == [("kill", "b1", "its input from grep@rt-b broke: peer vanished")]


def test_a_cancelled_input_stream_is_no_breakage(tmp_path):
    host, *_ = agent_host(tmp_path)
    host.stdin("b1", source="grep@rt-b")
    host.transfer.offers[0]["done"].errback(defer.CancelledError())
    assert host.manager.commands == []


def test_pipe_out_connects_to_the_next_stage_and_notes_where_output_goes(tmp_path):
    host, reactor, *_ = agent_host(tmp_path)
    assert host.pipe_out("b1", "10.0.0.2", 5000, "tok", to="wc@rt-b", user="bob") == {"ok": True}
    assert str(host.manager.agents["b1"].stdout_to) == "pipe:wc@rt-b"
    assert [(h, p) for h, p, *_ in reactor.tcpClients] == [("10.0.0.2", 5000)]


def test_spawn_fetches_a_program_from_the_tree_as_its_owner(tmp_path):
    host, _, _, fs_users, _ = agent_host(tmp_path, files={"/home/bob/hello.sh": b"echo hi\n"})
    info = outcome(host.spawn("/home/bob/hello.sh", ["x"], user="bob", stdout="discard", env={"A": "1"}))
    assert info["user"] == "bob" and info["name"] == "hello.sh"
    [spec] = host.manager.spawned
    assert Path(spec.program).read_bytes() == b"echo hi\n" and os.access(spec.program, os.X_OK)
    assert Path(spec.program).is_relative_to(tmp_path / "cache")
    assert spec.env["ONEOS_RUNTIME"] == "rt-a" and spec.env["A"] == "1" and spec.args == ["x"]
    assert fs_users == ["bob"], "the program is read with its owner's rights"
    assert host.manager.agents[info["id"]].stdout.pulled >= 1, "discarded output is drained"


def test_spawn_of_a_program_nowhere_fails_before_anything_runs(tmp_path):
    host, *_ = agent_host(tmp_path)
    failure = outcome(host.spawn("/no/such/prog", user="bob"))
    assert failure.check(ProgramError) and "no such file on runtime rt-a or in the OneOS file system" in str(
        failure.value
    )
    missing_input = outcome(host.spawn("/bin/sh", stdin_file="/home/bob/in.txt", user="bob"))
    assert missing_input.check(NotFound) and host.manager.spawned == []


# -- status publishing -------------------------------------------------------------------------------------------


def agent_status(bus: FakeBus, agent_id: str) -> dict[str, Any] | None:
    payload = bus.broker.retained.get(topics.agent("rt-a", agent_id))
    return messages.decode(payload, "agent.status") if payload else None


def test_every_event_publishes_the_agents_status_retained(tmp_path):
    host, _, bus, _, real = agent_host(tmp_path)
    agent = FakeAgent("c1", AgentSpec("/bin/true", user="carol"))
    real.agents["c1"] = agent
    real._emit(agent, "started")  # the manager's event, as the real one reports it
    status = agent_status(bus, "c1")
    assert status["state"] == "running" and status["user"] == "carol" and "event" not in status
    agent.state = "paused"
    real._emit(agent, "paused")
    assert agent_status(bus, "c1")["state"] == "paused"


def test_an_ended_agents_status_is_cleared_after_a_while_unless_it_runs_again(tmp_path):
    host, reactor, bus, _, real = agent_host(tmp_path)
    host.manager = real  # the clearing looks the agent up in the manager that reported it
    gone = FakeAgent("c1", AgentSpec("/bin/true"), state="exited")
    back = FakeAgent("c2", AgentSpec("/bin/true"), state="exited")
    real.agents.update(c1=gone, c2=back)
    real._emit(gone, "exited")
    real._emit(back, "exited")
    back.state = "running"  # started again under the same id before the delay ran out
    reactor.advance(KEEP_ENDED - 1)
    assert agent_status(bus, "c1")["state"] == "exited"
    reactor.advance(1)
    assert agent_status(bus, "c1") is None and topics.agent("rt-a", "c1") not in bus.broker.retained
    assert agent_status(bus, "c2") is not None


def test_live_agents_are_republished_every_interval_while_connected(tmp_path):
    host, reactor, bus, _, _ = agent_host(tmp_path)
    host.manager.add("e1", user="bob", state="exited")
    host.startService()
    reactor.advance(2.0)
    assert {agent_status(bus, i)["id"] for i in ("b1", "n1")} == {"b1", "n1"} and agent_status(bus, "e1") is None
    bus.connected = False
    n = len(bus.published)
    reactor.advance(2.0)
    assert len(bus.published) == n, "nothing is queued while cut off"
    host.stopService()


def test_after_a_reconnect_recent_ended_agents_are_said_again_and_old_ones_not(tmp_path):
    host, reactor, bus, _, _ = agent_host(tmp_path)
    recent = host.manager.add("r1", state="exited")
    recent.ended_at = time.time() - 10
    old = host.manager.add("o1", state="exited")
    old.ended_at = time.time() - KEEP_ENDED - 10
    host.startService()
    bus.broker.retained.clear()  # the broker restarted and forgot
    bus.disconnect()
    bus.reconnect()
    assert {k.rsplit("/", 1)[-1] for k in bus.broker.retained} == {"b1", "n1", "r1"}
    host.stopService()
