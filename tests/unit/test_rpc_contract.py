"""Each RPC target's client and its server agree, and what crosses the wire is typed.

For every target (``fs``, ``scheduler``, a runtime's agent and device
methods, ``kernel``) the server is built without I/O and its handler table read;
every method of the client is called against a recorder that never
answers, and each request it makes must name a handler that exists with
arguments the handler's signature accepts.  Every method a server opens to
client identities (``clients=``) must exist.  The wire types
(:class:`AgentInfo`, :class:`OutputTarget`, :class:`StageSpec`,
:class:`StreamAddress`; DeviceInfo in test_devices_config.py) round-trip, and a malformed value is a typed error.
Each wire error kind is registered once and rebuilds an error of its kind.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from oneos.agents.client import CLIENT_METHODS as AGENT_CLIENT_METHODS
from oneos.agents.client import AgentsClient
from oneos.agents.info import (
    AgentError,
    AgentInfo,
    BadOutputTarget,
    MalformedAgentInfo,
    OutputTarget,
    PipeInfo,
    exit_status,
)
from oneos.config import load_config
from oneos.devices.client import CLIENT_METHODS as DEVICE_CLIENT_METHODS
from oneos.devices.client import DevicesClient
from oneos.errors import WIRE_ERRORS, RPCError, error_kind, rebuild_error, register_error
from oneos.fs.client import FSClient
from oneos.fs.service import FileSystemService
from oneos.runtime.app import build_runtime
from oneos.runtime.client import KernelClient, KernelPing
from oneos.runtime.kernel import KernelHost
from oneos.scheduler.client import SchedulerClient, StageSpec
from oneos.scheduler.service import SchedulerService
from oneos.scheduler.table import format_pipes
from oneos.transfer import StreamAddress, TransferError

WHERE = StreamAddress("10.0.0.1", 7000, "tok")


class Recorder:
    """An RPC client that records every request and never answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def call(
        self, target: str, method: str, timeout: float | None = None, meta: dict[str, Any] | None = None, **args: Any
    ) -> defer.Deferred:
        self.calls.append((target, method, args))
        return defer.Deferred()


class QuietClient:
    """What a server's constructor needs of the pubsub client: nothing happens."""

    reactor = MemoryReactorClock()

    def subscribe(self, topic: str, callback: Any) -> defer.Deferred:
        return defer.Deferred()

    def publish(self, *args: Any, **kw: Any) -> defer.Deferred:
        return defer.succeed(None)


class Membership:
    id, instance, epoch, interval, synced = "rt-1", "i-1", 1, 2.0, True

    def statuses(self) -> list[Any]:
        return []

    def live(self) -> list[Any]:
        return []

    def on_change(self, listener: Any) -> None:
        pass


def _servers(tmp_path: Any) -> dict[str, Any]:
    """target -> its RPCServer, built without I/O."""
    reactor = MemoryReactorClock()
    runtime = build_runtime(load_config(tmp_path), reactor=reactor).getServiceNamed("runtime")
    fs = FileSystemService(f"sqlite:///{tmp_path}/fs.db", QuietClient(), None, reactor)  # type: ignore[arg-type]
    scheduler = SchedulerService(QuietClient(), Recorder(), Membership(), reactor)
    kernel = KernelHost(QuietClient(), Membership(), {})
    kernel._before_start()
    return {
        "fs": fs.server,
        "scheduler": scheduler.server,
        "runtime": runtime.rpc_service.server,
        "devices": runtime.rpc_service.server,  # a runtime's own target serves the device methods too
        "kernel": kernel.rpc,
    }


#: per client: how to make one, and one call of each of its methods (name -> call)
Calls = dict[str, Callable[[Any], Any]]

FS_CALLS: Calls = {
    "stat": lambda c: c.stat("/a"),
    "exists": lambda c: c.exists("/a"),
    "listdir": lambda c: c.listdir("/"),
    "list_stat": lambda c: c.list_stat("/", parent=True),
    "stat_many": lambda c: c.stat_many(["/a", "/b"]),
    "mkdir": lambda c: c.mkdir("/d", parents=True, exist_ok=True, perm=0o700, owner="ann"),
    "chmod": lambda c: c.chmod("/a", 0o600),
    "chown": lambda c: c.chown("/a", "bob"),
    "access": lambda c: c.access("/a", "w"),
    "remove": lambda c: c.remove("/a", recursive=True),
    "rename": lambda c: c.rename("/a", "/b"),
    "copy": lambda c: c.copy("/a", "/b", recursive=True),
    "glob": lambda c: c.glob("*.txt", cwd="/home"),
    "read_into": lambda c: c.read_into("/a", None, offset=1, length=2),
    "write_from": lambda c: c.write_from("/a", None, mode="append"),
    "read_small": lambda c: c.read_small("/a"),
    "write_small": lambda c: c.write_small("/a", b"x", exclusive=True),
    "read": lambda c: c.read("/a", 0, 10),
    "write": lambda c: c.write("/a", b"x"),
}

SCHEDULER_CALLS: Calls = {
    "spawn": lambda c: c.spawn(
        "sleep",
        ["1"],
        runtime="rt-1",
        tags=["fast"],
        memory_mb=10,
        restart="on-failure",
        env={"A": "1"},
        stdout=OutputTarget.file("/o", append=True),
        stderr=OutputTarget.discard(),
        stdin=False,
        stdin_file="/i",
        user="ann",
        near=["cam0"],
        timeout=3,
    ),
    "pipeline": lambda c: c.pipeline(
        [
            StageSpec(
                "a",
                ("1",),
                "rt-1",
                ("t",),
                "ann",
                {"A": "1"},
                OutputTarget.attach(),
                OutputTarget.attach(),
                "/i",
                ("cam0",),
            ),
            StageSpec("b"),
        ]
    ),
    "explain": lambda c: c.explain("a.py", runtime="rt-1", tags=["t"], memory_mb=5, near=["cam0"]),
    "ps": lambda c: c.ps(all=True),
    "pipes": lambda c: c.pipes(),
    "kill": lambda c: c.kill("a1", grace=1.0, user="ann"),
    "pause": lambda c: c.pause("a1", user="ann"),
    "resume": lambda c: c.resume("a1", user="ann"),
    "locate": lambda c: c.locate("a1"),
}

AGENTS_CALLS: Calls = {
    "spawn": lambda c: c.spawn(
        "rt-1",
        "sleep",
        ["1"],
        cwd="/tmp",
        env={"A": "1"},
        memory_mb=1,
        restart="always",
        stdout=OutputTarget.file("/o"),
        stdin=False,
        agent_id="a1",
        stderr=OutputTarget.discard(),
        stdin_file="/i",
        job="j",
        incarnation=2,
        history={"n": 1},
        user="ann",
    ),
    "kill": lambda c: c.kill("rt-1", "a1", grace=2.0, reason="why"),
    "pause": lambda c: c.pause("rt-1", "a1"),
    "resume": lambda c: c.resume("rt-1", "a1"),
    "list_agents": lambda c: c.list_agents("rt-1"),
    "attach": lambda c: c.attach("rt-1", "a1", "stderr"),
    "stdin": lambda c: c.stdin("rt-1", "a1", source="x@rt-2"),
    "pipe_out": lambda c: c.pipe_out("rt-1", "a1", StreamAddress("h", 1, "t", tls=True), to="a2@rt-2"),
}

DEVICES_CALLS: Calls = {
    "list_devices": lambda c: c.list_devices("rt-1"),
    "read": lambda c: c.read("rt-1", "cam0", units=3),
    "write": lambda c: c.write("rt-1", "led"),
    "pipe_out": lambda c: c.pipe_out("rt-1", "cam0", StreamAddress("h", 1, "t", tls=True), units=1, to="a2@rt-2"),
}

KERNEL_CALLS: Calls = {
    "ping": lambda c: c.ping(),
    "runtimes": lambda c: c.runtimes(timeout=2),
}

CLIENTS = {
    # server -> (client class, factory(rpc), calls, the target its requests must go to)
    "fs": (FSClient, lambda rpc: FSClient(rpc, MemoryReactorClock(), system=True, user="ann"), FS_CALLS, "fs"),
    "scheduler": (SchedulerClient, lambda rpc: SchedulerClient(rpc), SCHEDULER_CALLS, "scheduler"),
    "runtime": (AgentsClient, lambda rpc: AgentsClient(rpc, meta=lambda: {"epoch": 1}), AGENTS_CALLS, "rt-1"),
    "devices": (DevicesClient, lambda rpc: DevicesClient(rpc, timeout=3), DEVICES_CALLS, "rt-1"),
    "kernel": (KernelClient, lambda rpc: KernelClient(rpc), KERNEL_CALLS, "kernel"),
}

#: methods of a client that make no request
NOT_RPC = {"as_user"}


def _public_methods(cls: type) -> set[str]:
    return {n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")} - NOT_RPC


@pytest.mark.parametrize("server_name", sorted(CLIENTS))
def test_every_client_method_is_exercised(server_name):
    cls, _, calls, _ = CLIENTS[server_name]
    assert _public_methods(cls) == set(calls), "add the new client method to this test's calls"


@pytest.mark.parametrize("server_name", sorted(CLIENTS))
def test_client_requests_name_handlers_that_accept_their_arguments(server_name, tmp_path):
    server = _servers(tmp_path)[server_name]
    _, make, calls, target = CLIENTS[server_name]
    for name, call in calls.items():
        rpc = Recorder()
        call(make(rpc))
        assert rpc.calls, f"{name} made no request"
        for to, method, args in rpc.calls:
            assert to == target, f"{name} called {to!r}"
            handler = server.handlers.get(method)
            assert handler is not None, f"{name} calls {method!r}, which {server_name} does not serve"
            try:
                inspect.signature(handler).bind(**args)
            except TypeError as e:
                pytest.fail(f"{name} -> {method}({', '.join(sorted(args))}): the handler refuses them: {e}")


@pytest.mark.parametrize("server_name", sorted(CLIENTS))
def test_methods_open_to_clients_exist(server_name, tmp_path):
    server = _servers(tmp_path)[server_name]
    assert server.clients, "every target opens something to client identities"
    assert server.clients <= set(server.handlers)


def test_the_runtime_opens_the_agents_stream_methods_to_clients(tmp_path):
    server = _servers(tmp_path)["runtime"]
    assert set(AGENT_CLIENT_METHODS) <= server.clients
    assert set(DEVICE_CLIENT_METHODS) <= server.clients
    assert {"agent_spawn", "agent_kill", "agent_list"}.isdisjoint(server.clients)


# -- what crosses the wire ---------------------------------------------------------------------


def _record(**over: Any) -> dict[str, Any]:
    base = {
        "id": "a1",
        "name": "sleep",
        "program": "sleep",
        "args": ["1"],
        "runtime": "rt-1",
        "state": "running",
        "pid": 42,
        "exit_code": None,
        "signal": None,
        "reason": "",
        "cpu_percent": 1.5,
        "memory_mb": 2.0,
        "uptime": 3.25,
        "restart": "no",
        "job": "a1",
        "user": "ann",
        "incarnation": 0,
        "history": {},
        "stdin_bytes": 1,
        "stdout_bytes": 2,
        "stderr_bytes": 3,
        "stdout_to": "pipe:a2@rt-2",
    }
    return {**base, **over}


def test_agent_info_round_trips_and_keeps_unknown_keys():
    record = _record(placement="least loaded", next_restart_at=12.5)
    info = AgentInfo.decode(record)
    assert info.stdout_to == OutputTarget.pipe("a2@rt-2") and info.args == ("1",)
    assert info.extra == {"placement": "least loaded", "next_restart_at": 12.5}
    assert info.encode() == record and list(info.encode())[:22] == list(_record())


def test_a_partial_record_has_defaults():
    info = AgentInfo.decode({"id": "a1", "runtime": "rt-1", "state": "exited", "exit_code": 3})
    assert (info.name, info.stdout_to, exit_status(info)) == ("", OutputTarget.attach(), 3)


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"runtime": "rt-1"},
        {"id": "a1"},
        _record(pid="x"),
        _record(args="ab"),
        _record(memory_mb="big"),
        _record(stdout_to="somewhere"),
        _record(history=[1]),
        _record(incarnation=True),
    ],
)
def test_a_malformed_record_is_a_typed_error(bad):
    with pytest.raises(MalformedAgentInfo):
        AgentInfo.decode(bad)


@pytest.mark.parametrize(
    "text, target",
    [
        ("attach", OutputTarget.attach()),
        ("discard", OutputTarget.discard()),
        ("file:/home/a b.txt", OutputTarget.file("/home/a b.txt")),
        ("append:/log", OutputTarget.file("/log", append=True)),
        ("pipe:a2@rt-2", OutputTarget.pipe("a2@rt-2")),
        ("pipe:10.0.0.1:7000", OutputTarget.pipe("10.0.0.1:7000")),
    ],
)
def test_output_targets_parse_and_encode(text, target):
    assert OutputTarget.decode(text) == target and target.encode() == text


@pytest.mark.parametrize("text", ["", "file:", "file", "pipe:", "tee:/x", "Attach", 3, None])
def test_a_bad_output_target_is_a_typed_error(text):
    with pytest.raises(BadOutputTarget):
        OutputTarget.decode(text)
    with pytest.raises(MalformedAgentInfo):
        OutputTarget.decode(text)


def test_stage_specs_and_stream_addresses_round_trip():
    stage = StageSpec("a", ("1",), "rt-1", ("t",), "ann", {"A": "1"}, OutputTarget.file("/o"), None, "/i", ("cam0",))
    assert StageSpec.decode(stage.encode()) == stage
    assert stage.encode()["near"] == ["cam0"]
    assert StageSpec("b").encode() == {"program": "b", "args": [], "runtime": None, "tags": [], "user": ""}
    with pytest.raises(MalformedAgentInfo):
        StageSpec.decode({"args": []})
    with pytest.raises(MalformedAgentInfo, match="'near'"):
        StageSpec.decode({"program": "a", "near": "cam0"})
    assert StreamAddress.decode(WHERE.encode()) == WHERE and "tls" not in WHERE.encode()
    assert StreamAddress.decode({"host": "h", "port": 1, "token": "t", "tls": True}).options() == {"tls": True}
    with pytest.raises(TransferError):
        StreamAddress.decode({"host": "h", "token": "t"})
    assert KernelPing.decode(KernelPing("rt-1", "i", 4).encode()) == KernelPing("rt-1", "i", 4)


# -- errors on the wire ------------------------------------------------------------------------


def test_each_wire_kind_rebuilds_an_error_of_its_kind():
    assert {
        "ENOENT",
        "EINVAL",
        "EPERM",
        "ESRCH",
        "EPIPE",
        "ENORUNTIME",
        "NotPermitted",
        "StaleEpoch",
        "KernelUnavailable",
        "ENODEV",
    } <= set(WIRE_ERRORS)
    for kind, factory in WIRE_ERRORS.items():
        error = factory("the message")
        assert error_kind(error) == kind and str(error) == "the message", kind
    assert isinstance(rebuild_error("ESRCH", "no agent"), AgentError)
    unknown = rebuild_error("ENEWKIND", "from a newer peer")
    assert isinstance(unknown, RPCError) and unknown.kind == "ENEWKIND"


def test_a_kind_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        register_error("ENOENT", lambda message: RPCError(message))
    register_error("ESRCH", WIRE_ERRORS["ESRCH"])  # the same factory again is harmless


def test_pipe_rows_round_trip_with_the_keys_oneos_pipes_json_prints():
    pipe = PipeInfo("a1@rt-1", "a2@rt-2", "running", 2048, 1.5)
    assert pipe.encode() == {"from": "a1@rt-1", "to": "a2@rt-2", "state": "running", "bytes": 2048, "mb_per_s": 1.5}
    assert PipeInfo.decode(pipe.encode()) == pipe
    assert "a1@rt-1" in format_pipes([pipe]) and "2048" in format_pipes([pipe])


@pytest.mark.parametrize("bad", [None, [], {"from": "a@b"}, {**PipeInfo("a", "b", "s", 1, 0.0).encode(), "bytes": "x"}])
def test_a_malformed_pipe_row_is_a_typed_error(bad):
    with pytest.raises(MalformedAgentInfo):
        PipeInfo.decode(bad)
