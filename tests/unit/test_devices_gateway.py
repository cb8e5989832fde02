"""The device gateway (oneos/devices/gateway.py) and its program-side module (oneos_device), without a network.

The gateway's connections run on StringTransport with a fake devices RPC and
fake transfers on task.Clock: the request line and its checks, the token's
life, what a malformed line gets, both directions of a stream with their
back-pressure, and how each end is told.  The module is driven through a
socketpair whose other end holds what a gateway would have sent.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, error, task
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from oneos.agents.manager import AgentManager, AgentSpec
from oneos.devices import gateway as gw
from oneos.devices.errors import DeviceError
from oneos.devices.program import oneos_device
from oneos.runtime.status import DeviceStatus, RuntimeStatus
from oneos.transfer import DATA, END, ERROR, FrameParser, TransferError, frame


def _live() -> list[RuntimeStatus]:
    return [
        RuntimeStatus("rt-1", "i1", devices=(DeviceStatus("led", "out", "gpio"), DeviceStatus("cam0", "in", "video"))),
        RuntimeStatus("rt-2", "i2", devices=(DeviceStatus("rnd", "in", "random"), DeviceStatus("cam0", "in", "video"))),
    ]


class FakeRPC:
    """The device methods of every runtime: an offer per call, or the error set for that device."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.failing: dict[str, BaseException] = {}
        self.pending: defer.Deferred | None = None

    def call(self, target: str, method: str, timeout: float | None = None, **args: Any) -> defer.Deferred:
        self.calls.append((target, method, args))
        if args.get("name") in self.failing:
            return defer.fail(self.failing[args["name"]])
        answer = {"host": "10.0.0.2", "port": 7000, "token": f"{method}:{args.get('name')}"}
        if self.pending is not None:
            d, self.pending = self.pending, None
            return d.addCallback(lambda _: answer)
        return defer.succeed(answer)


class FakeTransfers:
    """``receive`` / ``send`` keep the sink or source they are given and a Deferred the test fires."""

    def __init__(self) -> None:
        self.sinks: list[Any] = []
        self.sources: list[Any] = []
        self.results: list[defer.Deferred] = []
        self.cancelled = 0

    def _result(self) -> defer.Deferred:
        def cancel(d: defer.Deferred) -> None:
            self.cancelled += 1

        d: defer.Deferred = defer.Deferred(cancel)
        self.results.append(d)
        return d

    def receive(self, reactor: Any, host: str, port: int, token: str, sink: Any, **kw: Any) -> defer.Deferred:
        self.sinks.append((token, sink))
        return self._result()

    def send(self, reactor: Any, host: str, port: int, token: str, source: Any, **kw: Any) -> defer.Deferred:
        self.sources.append((token, source))
        return self._result()


class Transport(StringTransport):
    """A TCP connection as the gateway uses it: StringTransport plus the half-close."""

    def __init__(self) -> None:
        super().__init__()
        self.write_closed = False
        self.aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


@pytest.fixture
def logged():
    events: list[str] = []

    def observe(event: dict) -> None:
        events.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def gate():
    clock = MemoryReactorClock()
    rpc, transfers = FakeRPC(), FakeTransfers()
    gateway = gw.DeviceGateway(clock, "rt-1", rpc, _live, receive=transfers.receive, send=transfers.send)
    gateway.startService()
    gateway.listen()
    yield gateway, rpc, transfers, clock
    gateway.stopService()


def connect(gateway: gw.DeviceGateway) -> tuple[Any, Transport]:
    factory = gateway.port.factory if hasattr(gateway.port, "factory") else gateway.reactor.tcpServers[-1][1]
    proto = factory.buildProtocol(None)
    transport = Transport()
    proto.makeConnection(transport)
    return proto, transport


def answer(transport: Transport) -> tuple[str, list[tuple[bytes, bytes]]]:
    """The answer line and the frames after it."""
    line, _, rest = transport.value().partition(b"\n")
    return line.decode(), FrameParser().feed(rest)


def open_request(token: str, mode: str, path: str, units: int = 0) -> bytes:
    return f"OPEN {token} {mode} {path} {units}\n".encode()


# -- tokens ------------------------------------------------------------------------------------------
def test_a_program_gets_an_address_its_own_token_and_the_module_on_its_path(gate):
    gateway, *_ = gate
    env = gateway.grant("a1", "ann")
    assert env[gw.ENV_ADDRESS] == gateway.address and env[gw.ENV_ADDRESS].endswith(":0")
    assert len(env[gw.ENV_TOKEN]) == 64 and env[gw.ENV_TOKEN] != gateway.grant("a2", "ann")[gw.ENV_TOKEN]
    assert (Path(env["PYTHONPATH"]) / "oneos_device.py").is_file()
    # a second grant of the same agent replaces the first (the old token opens nothing)
    again = gateway.grant("a1", "ann")
    assert again[gw.ENV_TOKEN] != env[gw.ENV_TOKEN]
    assert gateway._granted(env[gw.ENV_TOKEN]) is None and gateway._granted(again[gw.ENV_TOKEN]).user == "ann"


def test_no_gateway_yet_means_empty_variables_not_inherited_ones():
    gateway = gw.DeviceGateway(MemoryReactorClock(), "rt-1", FakeRPC(), _live)
    assert gateway.grant("a1", "ann") == {gw.ENV_ADDRESS: "", gw.ENV_TOKEN: ""}


def test_a_token_dies_with_its_agent_and_its_opens_under_way_stop(gate):
    gateway, rpc, transfers, _ = gate
    token = gateway.grant("a1", "ann")[gw.ENV_TOKEN]
    rpc.pending = pending = defer.Deferred()  # the device's runtime has not answered yet
    proto, transport = connect(gateway)
    proto.dataReceived(open_request(token, "r", "rt-2/rnd"))
    gateway.revoke("a1")
    assert transport.aborted
    proto.connectionLost(Failure(error.ConnectionDone()))
    pending.callback(None)  # the answer arrives after all: its stream is claimed and ended at once
    assert transfers.cancelled == 1
    late, transport = connect(gateway)
    late.dataReceived(open_request(token, "r", "rt-2/rnd"))
    assert transport.value().startswith(b"ERR EACCES unknown or expired agent token")


def test_the_agent_manager_puts_the_grant_in_the_environment_and_revokes_it_at_the_end():
    class Env:
        def __init__(self) -> None:
            self.granted: list[tuple[str, str]] = []
            self.revoked: list[str] = []

        def grant(self, agent_id: str, user: str) -> dict[str, str]:
            self.granted.append((agent_id, user))
            return {"ONEOS_DEVICES": "127.0.0.1:5", "ONEOS_AGENT_TOKEN": "t" * 64, "PYTHONPATH": "/gw"}

        def revoke(self, agent_id: str) -> None:
            self.revoked.append(agent_id)

    class Reactor(task.Clock):
        def __init__(self) -> None:
            super().__init__()
            self.spawned: list[dict[str, str]] = []

        def spawnProcess(self, proto: Any, program: str, args: Any, env: Any = None, **kw: Any) -> None:
            self.spawned.append(env)

    env, reactor = Env(), Reactor()
    manager = AgentManager(reactor, "rt-1", program_env=env)
    agent = manager.spawn(AgentSpec("sh", ["-c", "true"], env={"PATH": os.defpath, "PYTHONPATH": "/mine"}, user="ann"))
    assert env.granted == [(agent.id, "ann")]
    spawned = reactor.spawned[0]
    assert spawned["ONEOS_DEVICES"] == "127.0.0.1:5" and spawned["ONEOS_AGENT_TOKEN"] == "t" * 64
    assert spawned["PYTHONPATH"] == os.pathsep.join(("/gw", "/mine"))  # in front of the program's own
    agent.processEnded(Failure(error.ProcessDone(0)))
    assert env.revoked == [agent.id]


# -- the request line ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line, why",
    [
        (b"GET / HTTP/1.1\r\n", "expected 'OPEN TOKEN r|w PATH UNITS'"),
        (b"OPEN nothex r rt-2/rnd 0\n", "the token is not a token"),
        (b"OPEN " + b"a" * 64 + b" x rt-2/rnd 0\n", "neither r nor w"),
        (b"OPEN " + b"a" * 64 + b" r rt-2/rnd -1\n", "a bad path or unit count"),
        (b"OPEN \xff\xfe r p 0\n", "not ASCII"),
        (b"x" * (gw.MAX_REQUEST + 1), "no end of line"),
    ],
)
def test_a_malformed_request_is_logged_and_dropped(gate, logged, line, why):
    gateway, rpc, *_ = gate
    proto, transport = connect(gateway)
    proto.dataReceived(line)
    assert transport.value() == b"ERR EPROTO malformed request\n" and transport.disconnecting
    assert any("dropped a malformed request" in e and why in e for e in logged), logged
    assert rpc.calls == []


def test_a_request_that_never_comes_is_dropped(gate, logged):
    gateway, _, _, clock = gate
    proto, transport = connect(gateway)
    proto.dataReceived(b"OPEN abc")
    clock.advance(gw.REQUEST_TIMEOUT)
    assert transport.disconnecting and any("no request line within" in e for e in logged)


def test_an_unknown_token_learns_nothing(gate, logged):
    gateway, rpc, *_ = gate
    gateway.grant("a1", "ann")
    proto, transport = connect(gateway)
    proto.dataReceived(open_request("0" * 64, "r", "rt-2/rnd"))
    assert transport.value() == b"ERR EACCES unknown or expired agent token (the program has ended?)\n"
    assert rpc.calls == [] and any("unknown or expired agent token" in e for e in logged)


def test_a_program_without_an_owner_may_not_use_devices(gate):
    gateway, rpc, *_ = gate
    token = gateway.grant("a1", "")[gw.ENV_TOKEN]
    proto, transport = connect(gateway)
    proto.dataReceived(open_request(token, "r", "rt-2/rnd"))
    assert transport.value().startswith(b"ERR EACCES agent a1 has no OneOS owner") and rpc.calls == []


@pytest.mark.parametrize(
    "path, expected",
    [
        ("nothing", "ERR ENOENT no device 'nothing' on any live runtime"),
        ("cam0", "ERR ENOTUNIQ device 'cam0' is on several runtimes (rt-1, rt-2): open /dev/RUNTIME/cam0"),
        ("/dev/rt-9/rnd", "ERR ENOENT no device /dev/rt-9/rnd (runtime rt-9 is not running)"),
        ("/dev/rt-2/a/b", "ERR EINVAL '/dev/rt-2/a/b' is not RUNTIME/NAME (or /dev/RUNTIME/NAME)"),
    ],
)
def test_a_path_that_names_no_one_device_is_refused_with_its_errno(gate, path, expected):
    gateway, rpc, *_ = gate
    token = gateway.grant("a1", "ann")[gw.ENV_TOKEN]
    proto, transport = connect(gateway)
    proto.dataReceived(open_request(token, "r", path))
    assert transport.value().decode() == expected + "\n" and transport.disconnecting
    assert rpc.calls == []


def test_the_devices_runtime_refusal_reaches_the_program_as_its_errno(gate):
    gateway, rpc, *_ = gate
    token = gateway.grant("a1", "bob")[gw.ENV_TOKEN]
    rpc.failing["rnd"] = DeviceError("device rnd on rt-2: permission denied: user bob may not read it", "EACCES")
    proto, transport = connect(gateway)
    proto.dataReceived(open_request(token, "r", "/dev/rt-2/rnd"))
    assert transport.value() == b"ERR EACCES device rnd on rt-2: permission denied: user bob may not read it\n"
    # asked as the program's owner: the device's owner and mode are checked against them
    assert rpc.calls == [("rt-2", "device_read", {"name": "rnd", "user": "bob"})]


# -- reading --------------------------------------------------------------------------------------------
def test_reading_relays_frames_at_the_programs_pace_and_ends_with_the_devices_end(gate):
    gateway, rpc, transfers, _ = gate
    token = gateway.grant("a1", "ann")[gw.ENV_TOKEN]
    proto, transport = connect(gateway)
    proto.dataReceived(open_request(token, "r", "rnd", units=3))  # a bare name: the one live runtime with it
    assert rpc.calls == [("rt-2", "device_read", {"name": "rnd", "units": 3, "user": "ann"})]
    assert transport.value() == b"OK rt-2/rnd\n" and transport.producer is proto and transport.streaming
    (token_used, sink), result = transfers.sinks[0], transfers.results[0]
    assert token_used == "device_read:rnd"
    assert sink.write(b"abc").called  # the socket takes it: the transfer may read on
    transport.producer.pauseProducing()  # the program reads slowly: its socket is full
    waiting = sink.write(b"def")
    assert not waiting.called  # the transfer stops reading until there is room
    transport.producer.resumeProducing()
    assert waiting.called
    result.callback({"units": 3})
    line, frames = answer(transport)
    assert frames == [(DATA, b"abc"), (DATA, b"def"), (END, b'{"units": 3}')]
    assert transport.disconnecting and transport.producer is None


def test_a_stream_that_fails_mid_way_tells_the_program_why(gate):
    gateway, _, transfers, _ = gate
    token = gateway.grant("a1", "ann")[gw.ENV_TOKEN]
    proto, transport = connect(gateway)
    proto.dataReceived(open_request(token, "r", "rt-2/cam0"))
    _, sink = transfers.sinks[0]
    sink.write(b"frame")
    transfers.results[0].errback(TransferError("device cam0 on rt-2 failed: /dev/video0: No such device", "ENODEV"))
    _, frames = answer(transport)
    assert frames[0] == (DATA, b"frame") and frames[1][0] == ERROR
    assert json.loads(frames[1][1]) == {
        "kind": "ENODEV",
        "message": "device cam0 on rt-2 failed: /dev/video0: No such device",
    }
    assert transport.disconnecting


def test_a_reader_that_leaves_ends_the_devices_stream_at_once(gate):
    gateway, _, transfers, _ = gate
    token = gateway.grant("a1", "ann")[gw.ENV_TOKEN]
    proto, transport = connect(gateway)
    proto.dataReceived(open_request(token, "r", "rt-2/rnd"))
    _, sink = transfers.sinks[0]
    transport.producer.pauseProducing()
    waiting = sink.write(b"x")
    failed: list[Any] = []
    waiting.addErrback(failed.append)
    proto.connectionLost(Failure(error.ConnectionDone()))
    assert transfers.cancelled == 1  # the device's runtime sees its reader leave now, not at its next unit
    assert failed and failed[0].check(TransferError)
    assert sink.write(b"more").addErrback(lambda f: f.value.kind).result == "EPIPE"


# -- writing ------------------------------------------------------------------------------------------------
def test_writing_pauses_a_fast_program_and_ends_with_the_devices_answer(gate):
    gateway, rpc, transfers, _ = gate
    token = gateway.grant("a1", "ann")[gw.ENV_TOKEN]
    proto, transport = connect(gateway)
    proto.dataReceived(open_request(token, "w", "/dev/rt-1/led"))
    assert rpc.calls == [("rt-1", "device_write", {"name": "led", "user": "ann"})]
    assert transport.value() == b"OK rt-1/led\n" and transport.producerState == "producing"
    _, source = transfers.sources[0]
    first = source.next()
    assert not first.called
    proto.dataReceived(b"1\n")
    assert first.result == b"1\n"
    proto.dataReceived(b"x" * (gw.HIGH_WATER + 1))  # the transfer is not asking: the socket is paused
    assert transport.producerState == "paused"
    assert len(source.next().result) == gw.HIGH_WATER + 1 and transport.producerState == "producing"
    proto.readConnectionLost()  # the program's half-close: the end of its stream
    assert source.next().result == b""
    transfers.results[0].callback({"bytes": gw.HIGH_WATER + 3, "device": "led"})
    _, frames = answer(transport)
    assert frames == [(END, json.dumps({"bytes": gw.HIGH_WATER + 3, "device": "led"}).encode())]
    assert transport.disconnecting


def test_a_writer_refused_mid_stream_gets_the_reason_before_the_close(gate):
    gateway, _, transfers, clock = gate
    token = gateway.grant("a1", "ann")[gw.ENV_TOKEN]
    proto, transport = connect(gateway)
    proto.dataReceived(open_request(token, "w", "rt-1/led"))
    refusal = "device led on rt-1: GPIO pin 17 takes lines of 0 or 1, not 'on'"
    transfers.results[0].errback(DeviceError(refusal, "EINVAL"))
    _, frames = answer(transport)
    assert frames == [(ERROR, json.dumps({"kind": "EINVAL", "message": refusal}).encode())]
    # the program may still be writing: half-close, keep reading (dropping it), abort after the linger
    assert transport.write_closed and not transport.disconnecting
    proto.dataReceived(b"still writing")
    clock.advance(gw.LINGER)
    assert transport.aborted


def test_a_writer_that_breaks_off_makes_the_devices_stream_fail_not_end(gate):
    gateway, _, transfers, _ = gate
    token = gateway.grant("a1", "ann")[gw.ENV_TOKEN]
    proto, transport = connect(gateway)
    proto.dataReceived(open_request(token, "w", "rt-1/led"))
    _, source = transfers.sources[0]
    waiting = source.next()
    proto.connectionLost(Failure(error.ConnectionLost()))  # a RST, not a half-close
    assert waiting.addErrback(lambda f: f.value.kind).result == "EPIPE"


def test_stopping_the_gateway_ends_every_connection_and_token(gate):
    gateway, *_ = gate
    token = gateway.grant("a1", "ann")[gw.ENV_TOKEN]
    proto, transport = connect(gateway)
    gateway.stopService()
    assert transport.aborted and gateway._granted(token) is None and gateway.address == ""


# -- the program's module -----------------------------------------------------------------------------------------
def device(mode: str, *frames_sent: bytes) -> tuple[oneos_device.Device, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.sendall(b"".join(frames_sent))
    return oneos_device.Device(ours, "/dev/rt-2/rnd", mode, "rt-2/rnd"), theirs


def test_the_module_reads_the_data_then_the_clean_end():
    dev, theirs = device("r", frame(DATA, b"abc"), frame(DATA, b"def\nghi\n"), frame(END, b"{}"))
    with dev:
        assert dev.read(2) == b"ab"
        assert dev.readline() == b"cdef\n"
        assert dev.read() == b"ghi\n"
        assert dev.read(10) == b""
    assert dev.closed
    theirs.close()


def test_the_module_raises_a_failure_with_its_errno_after_the_data_that_came():
    failure = json.dumps({"kind": "ENODEV", "message": "device cam0 on rt-2 failed: gone"}).encode()
    dev, theirs = device("r", frame(DATA, b"abc"), frame(ERROR, failure))
    assert dev.read(100) == b"abc"
    with pytest.raises(OSError) as raised:
        dev.read(100)
    assert raised.value.errno == errno.ENODEV and "device cam0 on rt-2 failed: gone" in str(raised.value)
    dev.close()
    theirs.close()


def test_the_module_does_not_take_a_lost_connection_for_the_end():
    dev, theirs = device("r", frame(DATA, b"abc"))
    theirs.close()
    assert dev.read(100) == b"abc"
    with pytest.raises(OSError) as raised:
        dev.read(100)
    assert raised.value.errno == errno.EPIPE and "before its end" in str(raised.value)
    dev.close()


def test_the_module_writes_then_waits_for_the_devices_answer_at_close():
    dev, theirs = device("w")
    assert dev.write(b"1\n") == 2
    theirs.sendall(frame(END, b'{"bytes": 2, "device": "led"}'))  # what the gateway sends once it has the answer
    dev.close()
    assert dev.status == {"bytes": 2, "device": "led"}
    assert theirs.recv(100) == b"1\n" and theirs.recv(100) == b""  # then the program's half-close
    theirs.close()


def test_the_module_raises_a_refused_write():
    refusal = json.dumps({"kind": "EINVAL", "message": "GPIO pin 17 takes lines of 0 or 1, not 'on'"}).encode()
    dev, theirs = device("w", frame(ERROR, refusal))
    with pytest.raises(OSError) as raised:
        dev.write(b"on\n")
    assert raised.value.errno == errno.EINVAL and "not 'on'" in str(raised.value)
    with pytest.raises(OSError):
        dev.close()
    assert dev.closed
    theirs.close()


def test_the_module_opens_with_one_request_line_and_maps_refusals_to_errnos(monkeypatch):
    monkeypatch.delenv(oneos_device.ENV_ADDRESS, raising=False)
    with pytest.raises(OSError) as raised:
        oneos_device.open("rnd")
    assert raised.value.errno == errno.ENODEV and "ONEOS_DEVICES" in str(raised.value)
    monkeypatch.setenv(oneos_device.ENV_ADDRESS, "127.0.0.1:9")
    monkeypatch.setenv(oneos_device.ENV_TOKEN, "ab" * 32)
    peer: dict[str, socket.socket] = {}

    def gateway_says(*lines: bytes) -> None:
        """The next connection's gateway end has already sent *lines*; the test reads the request from it."""

        def connect(address: Any, timeout: Any = None) -> socket.socket:
            ours, peer["theirs"] = socket.socketpair()
            peer["theirs"].sendall(b"".join(lines))
            return ours

        monkeypatch.setattr(oneos_device.socket, "create_connection", connect)

    gateway_says(b"ERR ENOENT no device 'nope' on any live runtime\n")
    with pytest.raises(FileNotFoundError) as missing:
        oneos_device.open("nope")
    assert str(missing.value) == "[Errno 2] no device 'nope' on any live runtime"
    assert peer["theirs"].recv(1000) == b"OPEN " + b"ab" * 32 + b" r nope 0\n"
    gateway_says(b"ERR EACCES device rnd on rt-2: permission denied\n")
    with pytest.raises(PermissionError):
        oneos_device.open("rt-2/rnd", units=1)
    assert peer["theirs"].recv(1000).endswith(b" r rt-2/rnd 1\n")
    gateway_says(b"OK rt-1/led\n" + frame(END, b"{}"))
    with oneos_device.open("/dev/rt-1/led", "w") as led:
        assert led.address == "rt-1/led" and led.writable() and not led.readable()
    with pytest.raises(ValueError):
        oneos_device.open("two words")
    for theirs in peer.values():
        theirs.close()
