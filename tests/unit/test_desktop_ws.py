"""The desktop's websocket (oneos.desktop.ws, oneos.desktop.terminal) without sockets.

A :class:`Browser` speaks real websocket frames to the real Autobahn
protocol over a StringTransport: the HTTP upgrade with its cookie and
Origin, masked client frames in, server frames out.  Behind it are fakes
of what a runtime gives the desktop: an in-memory file tree that checks
who asks, the scheduler and agent RPC clients, the broker's retained agent
statuses, the membership, and the streams (transfer.receive/send).  Time is
a task.Clock: the pipes poll, the session checks, the terminals' reattach
window.  Terminals are the real ShellTerminal on insults with a real
interpreter over the in-memory tree.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from oneos.agents.info import AgentError, AgentInfo, OutputTarget, PipeInfo
from oneos.desktop import protocol as wire
from oneos.desktop import ws
from oneos.desktop.context import DesktopContext
from oneos.desktop.sessions import SessionStore
from oneos.desktop.terminal import REATTACH, SCROLLBACK, Scrollback
from oneos.desktop.ws import DesktopFactory, DesktopHub
from oneos.devices.errors import DeviceError
from oneos.devices.info import DeviceInfo
from oneos.errors import RPCTimeout
from oneos.fs import errors as fs_errors
from oneos.fs.store import Stat
from oneos.pubsub import messages, mqtt, topics
from oneos.pubsub.client import Message
from oneos.runtime.status import DEAD, DeviceStatus, RuntimeStatus
from oneos.shell.interpreter import Interpreter
from oneos.shell.session import Grid, Session
from oneos.testing.shell import FakeFS
from oneos.transfer import StreamAddress, TransferError

ORIGIN = "http://127.0.0.1:3000"
HOST = "127.0.0.1:3000"


# -- fakes of the runtime -----------------------------------------------------------------------------------


class Tree(FakeFS):
    """The in-memory tree with owners, mtimes that move only when told, and /root closed to all but root."""

    def __init__(self) -> None:
        super().__init__()
        self.mtimes: dict[str, float] = {}
        self.clock = 1000.0
        self.calls: list[tuple[str, str, str]] = []

    def _stat(self, path: str) -> Stat:
        st = super()._stat(path)
        return Stat(st.path, st.kind, st.size, st.mode, "ann", st.ctime, self.mtimes.get(path, 1.0))

    def write(self, path: str, data: bytes, mode: str = "truncate") -> defer.Deferred:
        self.clock += 1
        self.mtimes[path] = self.clock
        return super().write(path, data, mode)

    def rename(self, src: str, dst: str) -> defer.Deferred:
        self._stat(src)
        for p in [p for p in self.files if p == src or p.startswith(src + "/")]:
            self.files[dst + p[len(src) :]] = self.files.pop(p)
        return defer.succeed(self._stat(dst))


class UserFS:
    """The tree as one user sees it (the FSClient of ``grid.for_user(user).fs``)."""

    def __init__(self, tree: Tree, user: str) -> None:
        self.tree = tree
        self.user = user

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.tree, name)

        def call(path: str, *args: Any, **kw: Any) -> Any:
            self.tree.calls.append((self.user, name, path))
            if self.user != "root" and (path == "/root" or path.startswith("/root/")):
                return defer.fail(fs_errors.PermissionDenied(path))
            return defer.maybeDeferred(method, path, *args, **kw)

        return call


class FakeGrid:
    def __init__(self, tree: Tree, client: Any) -> None:
        self.tree = tree
        self.client = client
        self.rpc = None
        self.users: list[str] = []

    def for_user(self, user: str) -> Any:
        self.users.append(user)
        grid = Grid(UserFS(self.tree, user), None, self.client, None)
        return grid


class FakeSubscription:
    def __init__(self, broker: FakeBroker, topic_filter: str, callback: Any) -> None:
        self.broker = broker
        self.topic_filter = topic_filter
        self.callback = callback

    def cancel(self) -> defer.Deferred:
        if self in self.broker.subs:
            self.broker.subs.remove(self)
        return defer.succeed(None)


class FakeBroker:
    """The pubsub client: retained messages and subscriptions (the barrier answers at once)."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self.subs: list[FakeSubscription] = []

    def subscribe(self, topic_filter: str, callback: Any) -> defer.Deferred:
        sub = FakeSubscription(self, topic_filter, callback)
        self.subs.append(sub)
        for topic, payload in list(self.retained.items()):
            if mqtt.topic_matches(topic_filter, topic):
                callback(Message(topic, payload, retain=True))
        return defer.succeed(sub)

    def barrier(self) -> defer.Deferred:
        return defer.succeed(None)

    def publish(self, topic: str, payload: bytes) -> None:
        if payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)
        for sub in list(self.subs):
            if mqtt.topic_matches(sub.topic_filter, topic):
                sub.callback(Message(topic, payload))

    def agent_status(self, info: AgentInfo) -> None:
        body = {k: v for k, v in info.encode().items()}
        self.publish(topics.agent(info.runtime, info.id), messages.encode("agent.status", **body))


class FakeMembership:
    def __init__(self) -> None:
        self.view: dict[str, RuntimeStatus] = {}
        self.listeners: list[Any] = []

    def set(self, rid: str, **fields: Any) -> None:
        old = self.view.get(rid) or RuntimeStatus(id=rid, instance=f"i-{rid}")
        self.view[rid] = old.with_(**fields)

    def statuses(self) -> list[RuntimeStatus]:
        return sorted(self.view.values(), key=lambda s: s.id)

    def live(self) -> list[RuntimeStatus]:
        return [s for s in self.statuses() if s.alive]

    def on_change(self, listener: Any) -> None:
        self.listeners.append(listener)

    def changed(self) -> None:
        for listener in list(self.listeners):
            listener()


class FakeScheduler:
    """SchedulerClient: a process table; kill/pause/resume check the owner as the scheduler does."""

    def __init__(self) -> None:
        self.table: dict[str, AgentInfo] = {}
        self.calls: list[tuple[str, Any]] = []
        self.pipes_rows: list[PipeInfo] = []
        self.pipes_error: Exception | None = None
        self.hang = False
        self._next = 0

    def add(self, agent_id: str, user: str = "ann", runtime: str = "rt-1", **fields: Any) -> AgentInfo:
        info = AgentInfo(id=agent_id, runtime=runtime, name="gen.py", user=user, state="running", **fields)
        self.table[agent_id] = info
        return info

    def locate(self, agent_id: str) -> defer.Deferred:
        self.calls.append(("locate", agent_id))
        if agent_id not in self.table:
            return defer.fail(AgentError(f"no agent {agent_id!r} in the network"))
        return defer.succeed(self.table[agent_id])

    def ps(self, all: bool = False) -> defer.Deferred:
        if self.hang:
            return defer.Deferred()
        self.calls.append(("ps", all))
        return defer.succeed([i for i in self.table.values() if all or not i.ended])

    def spawn(self, program: str, args: Any = (), *, runtime: Any = None, tags: Any = (), user: Any = None):
        self.calls.append(("spawn", (program, list(args), runtime, list(tags), user)))
        self._next += 1
        return defer.succeed(self.add(f"a{self._next}", user=user, runtime=runtime or "rt-1", program=program))

    def pipeline(self, stages: list[Any]) -> defer.Deferred:
        self.calls.append(("pipeline", stages))
        infos = []
        for stage in stages:
            self._next += 1
            infos.append(self.add(f"a{self._next}", user=stage.user, runtime=stage.runtime or "rt-1"))
        return defer.succeed(infos)

    def _control(self, what: str, agent_id: str, user: Any) -> defer.Deferred:
        self.calls.append((what, (agent_id, user)))
        info = self.table.get(agent_id)
        if info is None:
            return defer.fail(AgentError(f"no agent {agent_id!r} in the network"))
        if user not in (None, "root") and info.user != user:
            return defer.fail(AgentError(f"agent {agent_id} belongs to {info.user}, not {user}", "EPERM"))
        return defer.succeed(info)

    def kill(self, agent_id: str, user: Any = None) -> defer.Deferred:
        return self._control("kill", agent_id, user)

    def pause(self, agent_id: str, user: Any = None) -> defer.Deferred:
        return self._control("pause", agent_id, user)

    def resume(self, agent_id: str, user: Any = None) -> defer.Deferred:
        return self._control("resume", agent_id, user)

    def pipes(self) -> defer.Deferred:
        self.calls.append(("pipes", None))
        if self.pipes_error is not None:
            return defer.fail(self.pipes_error)
        return defer.succeed(list(self.pipes_rows))


class FakeAgents:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def attach(self, runtime: str, agent_id: str, stream: str = "stdout") -> defer.Deferred:
        self.calls.append(("attach", agent_id, stream))
        return defer.succeed(StreamAddress("127.0.0.1", 9, f"{agent_id}-{stream}"))

    def stdin(self, runtime: str, agent_id: str) -> defer.Deferred:
        self.calls.append(("stdin", agent_id, runtime))
        return defer.succeed(StreamAddress("127.0.0.1", 9, f"{agent_id}-stdin"))


class FakeDevices:
    """DevicesClient: ``as_user`` views that record who asks; refusals as the devices' runtimes give them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str, str, str]] = []
        #: (runtime, name) -> the error device_read / device_write answers
        self.refuse: dict[tuple[str, str], Exception] = {}
        #: runtime -> its device_list answer, or the error it fails with
        self.lists: dict[str, Any] = {}
        self.user: str | None = None
        self._reads = 0

    def as_user(self, user: str | None) -> FakeDevices:
        view = FakeDevices.__new__(FakeDevices)
        view.__dict__ = self.__dict__.copy()
        view.user = user
        view.calls = self.calls
        view._parent = self  # type: ignore[attr-defined]
        return view

    def read(self, runtime: str, name: str, units: int = 0) -> defer.Deferred:
        self.calls.append((self.user, "read", runtime, name))
        if (runtime, name) in self.refuse:
            return defer.fail(self.refuse[(runtime, name)])
        parent = getattr(self, "_parent", self)
        parent._reads += 1
        return defer.succeed(StreamAddress("127.0.0.1", 9, f"{runtime}/{name}#{parent._reads}"))

    def write(self, runtime: str, name: str) -> defer.Deferred:
        self.calls.append((self.user, "write", runtime, name))
        if (runtime, name) in self.refuse:
            return defer.fail(self.refuse[(runtime, name)])
        return defer.succeed(StreamAddress("127.0.0.1", 9, f"{runtime}/{name}<"))

    def list_devices(self, runtime: str) -> defer.Deferred:
        self.calls.append((self.user, "list", runtime, ""))
        answer = self.lists.get(runtime, [])
        return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer)


class Streams:
    """transfer.receive and transfer.send: the sinks and sources the desktop hands over, by token."""

    def __init__(self) -> None:
        self.sinks: dict[str, Any] = {}
        self.sources: dict[str, Any] = {}
        self.done: dict[str, defer.Deferred] = {}

    def receive(self, reactor: Any, host: str, port: int, token: str, sink: Any, **kw: Any) -> defer.Deferred:
        self.sinks[token] = sink
        d = self.done[token] = defer.Deferred()
        return d

    def send(self, reactor: Any, host: str, port: int, token: str, source: Any, **kw: Any) -> defer.Deferred:
        self.sources[token] = source
        d = self.done[token] = defer.Deferred()
        return d

    def write(self, token: str, data: bytes) -> None:
        # a sink that paces its stream may see its wait cancelled when the reader leaves
        self.sinks[token].write(data).addErrback(lambda f: f.trap(defer.CancelledError))

    def end(self, token: str) -> None:
        self.sinks[token].finish()
        self.done[token].callback({})

    def pull(self, token: str) -> list[bytes]:
        """What the source gives until it would wait (b'' is its end)."""
        got: list[bytes] = []
        source = self.sources[token]
        while True:
            d = source.next()
            if not d.called:
                d.addBoth(lambda _: None)
                return got
            data = d.result
            got.append(data)
            if not data:
                return got


class FakeShell:
    """ShellService's part the terminals use: interpreters over the tree, as the user."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.interpreters: list[Interpreter] = []
        self.forgotten: list[Interpreter] = []

    def new_interpreter(self, user: str, out: Any, err: Any) -> Interpreter:
        interp = Interpreter(Session(user, home="/home"), Grid(UserFS(self.tree, user), None, None, None), out, err)
        self.interpreters.append(interp)
        return interp

    def prepare(self, interp: Any) -> defer.Deferred:
        return defer.succeed(None)

    def forget(self, interp: Any) -> None:
        self.forgotten.append(interp)


# -- a browser that speaks websocket frames -------------------------------------------------------------


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked frame, as a browser sends it."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Unmasked server frames in *data*, and what is left of an incomplete one."""
    frames = []
    while len(data) >= 2:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        pos = 2
        if n == 126:
            if len(data) < 4:
                break
            n, pos = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            if len(data) < 10:
                break
            n, pos = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < pos + n:
            break
        frames.append((opcode, data[pos : pos + n]))
        data = data[pos + n :]
    return frames, data


class Transport(StringTransport):
    """A StringTransport that, like TCP's, lets a producer be unregistered when none is (Autobahn does so)."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


class Browser:
    """One tab's websocket over a StringTransport; :meth:`read` gives what the server sent since."""

    def __init__(self, desk: Desk, *, origin: str | None = ORIGIN, cookie: str | None = "", host: str = HOST) -> None:
        self.desk = desk
        self.proto = desk.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        self.transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.proto.makeConnection(self.transport)
        if cookie == "":
            cookie = f"oneos_session={desk.session.id}"
        lines = [
            "GET /ws HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version: 13",
        ]
        if origin is not None:
            lines.append(f"Origin: {origin}")
        if cookie is not None:
            lines.append(f"Cookie: {cookie}")
        self.proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = self.transport.value()
        head, _, rest = raw.partition(b"\r\n\r\n")
        self.response = head.decode()
        self.status = int(self.response.split(" ")[1])
        self._buffer = rest
        self.transport.clear()
        self.closed: tuple[int, str] | None = None
        self._next_id = 0
        #: frames read but not yet asked for (the events after an answer)
        self._pending: list[Any] = []

    @property
    def connection(self) -> ws.Connection:
        assert self.proto.connection is not None
        return self.proto.connection

    def send_raw(self, payload: bytes, binary: bool = False) -> None:
        self.proto.dataReceived(client_frame(2 if binary else 1, payload))

    def send(self, op: str, **args: Any) -> int:
        self._next_id += 1
        self.send_raw(json.dumps({"id": self._next_id, "op": op, "args": args}).encode())
        return self._next_id

    def type(self, term: int, data: bytes) -> None:
        self.send_raw(bytes([term]) + data, binary=True)

    def read(self) -> list[Any]:
        """JSON for text frames, (term, bytes) for binary ones, ("close", code) for a close."""
        frames, self._buffer = server_frames(self._buffer + self.transport.value())
        self.transport.clear()
        out, self._pending = self._pending, []
        for opcode, payload in frames:
            if opcode == 1:
                out.append(json.loads(payload))
            elif opcode == 2:
                out.append((payload[0], payload[1:]))
            elif opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.closed = (code, payload[2:].decode())
                out.append(("close", code))
        return out

    def call(self, op: str, **args: Any) -> Any:
        """Send a request and return its answer (which must have come at once)."""
        request_id = self.send(op, **args)
        frames = self.read()
        answers = [f for f in frames if isinstance(f, dict) and f.get("id") == request_id]
        assert len(answers) == 1, f"no answer to {op}"
        self._pending = [f for f in frames if f is not answers[0]]
        return answers[0]

    def ok(self, op: str, **args: Any) -> Any:
        answer = self.call(op, **args)
        assert answer["ok"], answer
        return answer["result"]

    def error(self, op: str, **args: Any) -> dict[str, str]:
        answer = self.call(op, **args)
        assert not answer["ok"], answer
        return answer["error"]

    def events(self, channel: str | None = None) -> list[dict[str, Any]]:
        return [
            f["event"]
            for f in self.read()
            if isinstance(f, dict) and "channel" in f and channel in (None, f["channel"])
        ]

    def terminal_output(self, term: int) -> bytes:
        return b"".join(data for f in self.read() if isinstance(f, tuple) and f[0] == term for data in [f[1]])

    def disconnect(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


class Desk:
    """A runtime's desktop context made of fakes, and the websocket factory over it."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.sessions = SessionStore(self.clock.seconds)
        self.tree = Tree()
        self.broker = FakeBroker()
        self.membership = FakeMembership()
        self.membership.set("rt-1", cpu_percent=1.0)
        self.shell = FakeShell(self.tree)
        self.grid = FakeGrid(self.tree, self.broker)
        self.ctx = DesktopContext(
            reactor=self.clock,
            runtime_id="rt-1",
            home=Path("/nonexistent"),
            sessions=self.sessions,
            shell=self.shell,
            grid=self.grid,
            membership=self.membership,
        )
        self.scheduler = FakeScheduler()
        self.agents = FakeAgents()
        self.devices = FakeDevices()
        self.streams = Streams()
        self.hub = DesktopHub(
            self.ctx,
            scheduler=self.scheduler,
            agents=self.agents,
            devices=self.devices,
            receive=self.streams.receive,
            send=self.streams.send,
        )
        self.factory = DesktopFactory(self.hub)
        # no timers on the global reactor: the handshake and close timeouts and the pings are Autobahn's own
        self.factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0)
        self.session = self.sessions.create("ann")

    def browser(self, **kw: Any) -> Browser:
        browser = Browser(self, **kw)
        assert browser.status == 101, browser.response
        return browser


@pytest.fixture
def desk() -> Desk:
    return Desk()


# -- the handshake ------------------------------------------------------------------------------------------


def test_a_logged_in_page_of_the_same_origin_gets_a_websocket_with_the_security_headers(desk):
    browser = Browser(desk)
    assert browser.status == 101
    assert "Cache-Control: no-store" in browser.response
    assert "X-Frame-Options: DENY" in browser.response
    assert browser.ok("session.whoami") == {"user": "ann", "runtime": "rt-1"}


@pytest.mark.parametrize(
    "kw",
    [
        {"cookie": None},
        {"cookie": "oneos_session=forged"},
        {"cookie": "other=1"},
        {"origin": "http://evil.example:3000"},
        {"origin": "http://127.0.0.1:3001"},
        {"origin": "https://127.0.0.1:3000"},
        {"origin": "null"},
        {"origin": "file://"},
        {"origin": None},
    ],
)
def test_no_session_or_a_foreign_origin_is_refused_with_403(desk, kw):
    browser = Browser(desk, **kw)
    assert browser.status == 403, browser.response
    assert "X-Frame-Options: DENY" in browser.response
    assert browser.transport.disconnecting
    assert browser.proto.connection is None


def test_websockets_per_login_are_limited(desk, monkeypatch):
    monkeypatch.setattr(ws, "MAX_SOCKETS_PER_SESSION", 2)
    first, _ = desk.browser(), desk.browser()
    assert Browser(desk).status == 429
    first.disconnect()
    assert Browser(desk).status == 101


def test_a_revoked_or_expired_session_is_refused(desk):
    desk.sessions.revoke(desk.session.id)
    assert Browser(desk).status == 403
    desk.session = desk.sessions.create("ann")
    desk.clock.advance(desk.sessions.idle + 1)
    assert Browser(desk).status == 403


def test_under_tls_the_origin_is_https(desk):
    desk.ctx.tls = True
    assert Browser(desk, origin="https://127.0.0.1:3000").status == 101
    assert Browser(desk, origin=ORIGIN).status == 403


# -- malformed input ----------------------------------------------------------------------------------------


def test_malformed_frames_are_answered_einval_and_the_connection_stays_open(desk):
    browser = desk.browser()
    for raw, expected_id in [
        (b"not json", None),
        (b"[1,2,3]", None),
        (b'{"op": "fs.list"}', None),
        (b'{"id": "x", "op": "fs.list"}', None),
        (b'{"id": 5, "op": "fs.nope"}', 5),
        (b'{"id": 6, "op": "fs.list", "args": {"path": 7}}', 6),
        (b'{"id": 7, "op": "sub.open", "args": {"channel": "weather"}}', 7),
        (b'{"id": 8, "op": "term.resize", "args": {"term": 3, "cols": 80, "rows": 24}}', 8),
    ]:
        browser.send_raw(raw)
        (answer,) = browser.read()
        assert answer["id"] == expected_id and answer["ok"] is False
        assert answer["error"]["kind"] == "EINVAL", answer
    browser.send_raw(b"\x05typed into no terminal", binary=True)
    (answer,) = browser.read()
    assert answer["error"]["kind"] == "EINVAL" and "no terminal 5" in answer["error"]["message"]
    browser.send_raw(b"", binary=True)
    assert browser.read()[0]["error"]["kind"] == "EINVAL"
    assert browser.ok("session.whoami")["user"] == "ann"
    assert not browser.transport.disconnecting


def test_a_text_frame_over_one_mib_closes_the_websocket(desk):
    browser = desk.browser()
    browser.send_raw(b"x" * (1024 * 1024 + 1))
    assert browser.read() == [("close", 1009)]


def test_requests_in_flight_are_limited(desk):
    browser = desk.browser()
    desk.scheduler.hang = True
    for _ in range(ws.MAX_INFLIGHT):
        browser.send("proc.list")
    assert browser.read() == []
    assert browser.error("proc.list")["kind"] == "EBUSY"


# -- the session ----------------------------------------------------------------------------------------------


def test_messages_keep_the_session_alive_and_its_end_closes_the_websocket(desk):
    browser = desk.browser()
    for _ in range(4):  # 40 minutes of activity: longer than the idle limit
        desk.clock.advance(10 * 60)
        browser.ok("session.whoami")
    desk.clock.advance(desk.sessions.idle + ws.SESSION_CHECK)  # then nothing: the session expires
    assert ("close", ws.CLOSE_SESSION_ENDED) in browser.read()


def test_logout_closes_the_websocket_at_once(desk):
    browser = desk.browser()
    desk.sessions.revoke(desk.session.id)
    assert browser.read() == [("close", ws.CLOSE_SESSION_ENDED)]
    browser.disconnect()
    assert desk.session.on_end == []


# -- files ----------------------------------------------------------------------------------------------------


def test_fs_list_and_stat_as_the_user(desk):
    desk.tree.files["/home/notes.txt"] = b"hello"
    browser = desk.browser()
    listing = browser.ok("fs.list", path="/home")
    assert listing == [
        {"name": "notes.txt", "path": "/home/notes.txt", "kind": "file", "size": 5, "mode": 0o644, "owner": "ann",
         "mtime": 1.0}
    ]  # fmt: skip
    assert browser.ok("fs.stat", path="/home")["kind"] == "dir"
    assert {user for user, _, _ in desk.tree.calls} == {"ann"}


def test_typed_errors_arrive_as_kind_and_message(desk):
    browser = desk.browser()
    assert browser.error("fs.list", path="/nope") == {"kind": "ENOENT", "message": str(fs_errors.NotFound("/nope"))}
    desk.tree.files["/root"] = None
    assert browser.error("fs.list", path="/root")["kind"] == "EACCES"


def test_fs_read_returns_text_and_its_mtime(desk):
    desk.tree.files["/home/a.txt"] = "héllo\n".encode()
    desk.tree.mtimes["/home/a.txt"] = 55.5
    browser = desk.browser()
    assert browser.ok("fs.read", path="/home/a.txt") == {"text": "héllo\n", "mtime": 55.5, "size": 7}


def test_fs_read_refuses_large_binary_and_directories(desk):
    desk.tree.files["/home/big"] = b"x" * (4 * 1024 * 1024 + 1)
    desk.tree.files["/home/bin"] = b"\xff\xfe\x00"
    browser = desk.browser()
    assert browser.error("fs.read", path="/home/big")["kind"] == "EFBIG"
    error = browser.error("fs.read", path="/home/bin")
    assert error["kind"] == "EINVAL" and "download" in error["message"]
    assert browser.error("fs.read", path="/home")["kind"] == "EISDIR"


def test_fs_write_refuses_a_file_changed_since_the_editor_loaded_it(desk):
    browser = desk.browser()
    first = browser.ok("fs.write", path="/home/n.txt", text="one", mtime=None)
    assert desk.tree.files["/home/n.txt"] == b"one" and first["size"] == 3
    second = browser.ok("fs.write", path="/home/n.txt", text="two", mtime=first["mtime"])
    assert desk.tree.files["/home/n.txt"] == b"two" and second["mtime"] > first["mtime"]
    # someone else saves meanwhile: the editor that loaded the first version is refused
    stale = browser.error("fs.write", path="/home/n.txt", text="three", mtime=first["mtime"])
    assert stale["kind"] == "ESTALE" and desk.tree.files["/home/n.txt"] == b"two"
    # a "new file" that exists by now, and a file removed since it was loaded
    assert browser.error("fs.write", path="/home/n.txt", text="x", mtime=None)["kind"] == "ESTALE"
    del desk.tree.files["/home/n.txt"]
    assert browser.error("fs.write", path="/home/n.txt", text="x", mtime=second["mtime"])["kind"] == "ESTALE"
    assert browser.error("fs.write", path="/home", text="x", mtime=1.0)["kind"] == "EISDIR"


def test_fs_mkdir_rename_remove(desk):
    browser = desk.browser()
    assert browser.ok("fs.mkdir", path="/home/d")["kind"] == "dir"
    assert browser.ok("fs.rename", src="/home/d", dst="/home/e")["path"] == "/home/e"
    assert browser.ok("fs.remove", path="/home/e", recursive=True) == {}
    assert "/home/e" not in desk.tree.files and "/home/d" not in desk.tree.files


# -- programs ---------------------------------------------------------------------------------------------


def test_programs_run_as_the_logged_in_user(desk):
    browser = desk.browser()
    info = browser.ok("proc.run", program="/home/gen.py", args=["3"], runtime=None, tags=["fast"])
    assert info["user"] == "ann" and info["runtime"] == "rt-1"
    assert ("spawn", ("/home/gen.py", ["3"], None, ["fast"], "ann")) in desk.scheduler.calls
    infos = browser.ok("proc.pipeline", text="gen.py 3 @rt-2 | wc -c")
    assert [i["runtime"] for i in infos] == ["rt-2", "rt-1"] and {i["user"] for i in infos} == {"ann"}
    (_, stages), *_ = [c for c in desk.scheduler.calls if c[0] == "pipeline"]
    assert [(s.program, s.args, s.user) for s in stages] == [("gen.py", ("3",), "ann"), ("wc", ("-c",), "ann")]
    assert browser.error("proc.pipeline", text="a || b")["kind"] == "EINVAL"
    assert [i["id"] for i in browser.ok("proc.list", all=False)] == [info["id"]] + [i["id"] for i in infos]


def test_kill_pause_resume_carry_the_user_and_the_scheduler_refuses_others_programs(desk):
    desk.scheduler.add("mine")
    desk.scheduler.add("bobs", user="bob")
    browser = desk.browser()
    assert browser.ok("proc.kill", id="mine")["id"] == "mine"
    assert browser.ok("proc.pause", id="mine")["id"] == "mine"
    assert browser.ok("proc.resume", id="mine")["id"] == "mine"
    assert browser.error("proc.kill", id="bobs")["kind"] == "EPERM"
    assert browser.error("proc.kill", id="nobody")["kind"] == "ESRCH"
    assert {user for what, (_, user) in [c for c in desk.scheduler.calls if c[0] in ("kill", "pause")]} == {"ann"}


def test_pipes_list(desk):
    desk.scheduler.pipes_rows = [PipeInfo("a@rt-1", "b@rt-2", "running", 10, 0.5)]
    browser = desk.browser()
    assert browser.ok("pipes.list") == [{"from": "a@rt-1", "to": "b@rt-2", "state": "running", "bytes": 10,
                                         "mb_per_s": 0.5}]  # fmt: skip


def test_proc_stdin_streams_to_the_program_and_eof_ends_it(desk):
    desk.scheduler.add("a1")
    browser = desk.browser()
    assert browser.ok("proc.stdin", id="a1", data="hello\n", eof=False) == {}
    assert browser.ok("proc.stdin", id="a1", data="wörld\n", eof=False) == {}
    assert desk.agents.calls == [("stdin", "a1", "rt-1")]  # one stream for both
    assert desk.streams.pull("a1-stdin") == ["hello\nwörld\n".encode()]
    assert browser.ok("proc.stdin", id="a1", data="", eof=True) == {}
    assert desk.streams.pull("a1-stdin") == [b""]
    desk.streams.done["a1-stdin"].callback({"bytes": 13})
    # the next input opens a new stream (the runtime says whether the program still reads)
    browser.ok("proc.stdin", id="a1", data="more", eof=False)
    assert len([c for c in desk.agents.calls if c[0] == "stdin"]) == 2


def test_proc_stdin_only_for_the_owner_and_bounded(desk):
    desk.scheduler.add("bobs", user="bob")
    desk.scheduler.add("a1")
    browser = desk.browser()
    assert browser.error("proc.stdin", id="bobs", data="x", eof=False)["kind"] == "EPERM"
    assert not [c for c in desk.agents.calls if c[1] == "bobs"]
    big = "x" * (ws.INPUT_HOLD // 2 + 10)
    browser.ok("proc.stdin", id="a1", data=big, eof=False)
    assert browser.error("proc.stdin", id="a1", data=big, eof=False)["kind"] == "EAGAIN"  # the program reads nothing
    desk.streams.pull("a1-stdin")
    browser.ok("proc.stdin", id="a1", data=big, eof=False)  # it read: room again


def test_a_broken_input_stream_fails_the_next_write_and_a_closed_tab_ends_the_input(desk):
    desk.scheduler.add("a1")
    desk.scheduler.add("a2")
    browser = desk.browser()
    browser.ok("proc.stdin", id="a1", data="x", eof=False)
    desk.streams.done["a1-stdin"].errback(TransferError("the program no longer reads its input", "EPIPE"))
    error = browser.error("proc.stdin", id="a1", data="y", eof=False)  # said once ...
    assert error == {"kind": "EPIPE", "message": "the program no longer reads its input"}
    browser.ok("proc.stdin", id="a1", data="y", eof=False)  # ... then a new stream
    assert desk.streams.pull("a1-stdin") == [b"y"]
    browser.ok("proc.stdin", id="a2", data="z", eof=False)
    browser.disconnect()
    assert desk.streams.pull("a2-stdin") == [b"z", b""]


# -- runtimes -------------------------------------------------------------------------------------------------


def test_the_runtimes_channel_pushes_changes_and_a_dead_runtime(desk):
    desk.membership.set("rt-2")
    browser = desk.browser()
    assert [s["id"] for s in browser.ok("runtimes.list")] == ["rt-1", "rt-2"]
    assert browser.ok("sub.open", channel="runtimes") == {}
    (first,) = browser.events("runtimes")
    assert [s["id"] for s in first["statuses"]] == ["rt-1", "rt-2"]
    assert first["statuses"][0]["cpu_percent"] == 1.0 and first["statuses"][0]["state"] == "alive"
    desk.membership.set("rt-2", state=DEAD)
    desk.membership.changed()  # the will arrived
    assert browser.events("runtimes") == [{"status": {**first["statuses"][1], "state": "dead"}}]
    desk.membership.set("rt-1", cpu_percent=50.0)  # no change of the live set: the periodic diff sends it
    assert browser.events("runtimes") == []
    desk.clock.advance(ws.RUNTIMES_INTERVAL)
    (event,) = browser.events("runtimes")
    assert event["status"]["id"] == "rt-1" and event["status"]["cpu_percent"] == 50.0
    browser.ok("sub.close", channel="runtimes")
    desk.membership.set("rt-1", cpu_percent=70.0)
    desk.clock.advance(ws.RUNTIMES_INTERVAL)
    assert browser.events() == []


def test_subscribing_twice_is_harmless_and_unknown_channels_are_refused(desk):
    browser = desk.browser()
    browser.ok("sub.open", channel="runtimes")
    browser.read()
    assert browser.ok("sub.open", channel="runtimes") == {}
    assert browser.events() == []
    assert browser.error("sub.open", channel="output:../../etc")["kind"] == "EINVAL"
    assert browser.ok("sub.close", channel="agents") == {}  # never opened: nothing to do


def test_subscriptions_are_limited_per_connection(desk, monkeypatch):
    monkeypatch.setattr(ws, "MAX_SUBSCRIPTIONS", 2)
    browser = desk.browser()
    browser.ok("sub.open", channel="runtimes")
    browser.ok("sub.open", channel="agents")
    assert browser.error("sub.open", channel="pipes")["kind"] == "EBUSY"


# -- agents ---------------------------------------------------------------------------------------------------


def test_the_agents_channel_sends_the_table_then_every_status(desk):
    desk.membership.set("rt-2")
    desk.broker.agent_status(AgentInfo(id="a1", runtime="rt-1", state="running", user="ann"))
    browser = desk.browser()
    browser.ok("sub.open", channel="agents")
    (first,) = browser.events("agents")
    assert [(a["id"], a["state"]) for a in first["agents"]] == [("a1", "running")]
    desk.broker.agent_status(AgentInfo(id="a2", runtime="rt-2", state="running", user="bob"))
    assert [e["agent"]["id"] for e in browser.events("agents")] == ["a2"]
    desk.broker.agent_status(AgentInfo(id="a1", runtime="rt-1", state="exited", exit_code=0, user="ann"))
    assert [(e["agent"]["id"], e["agent"]["state"]) for e in browser.events("agents")] == [("a1", "exited")]
    # rt-2 dies: its running agent is lost, as oneos ps shows it
    desk.membership.set("rt-2", state=DEAD)
    desk.membership.changed()
    (event,) = browser.events("agents")
    assert event["agent"]["id"] == "a2" and event["agent"]["state"] == "lost"
    # a cleared status
    desk.broker.publish(topics.agent("rt-1", "a1"), b"")
    (event,) = browser.events("agents")
    assert event["agent"]["id"] == "a1" and event["agent"]["gone"] is True
    desk.broker.publish(topics.agent("rt-1", "junk"), b"not json")  # dropped, logged
    assert browser.events() == []


def test_one_broker_subscription_serves_every_websocket_and_ends_with_the_last(desk):
    one, two = desk.browser(), desk.browser()
    one.ok("sub.open", channel="agents")
    two.ok("sub.open", channel="agents")
    assert len([s for s in desk.broker.subs if s.topic_filter == topics.ALL_AGENTS]) == 1
    one.ok("sub.close", channel="agents")
    two.disconnect()
    assert [s for s in desk.broker.subs if s.topic_filter == topics.ALL_AGENTS] == []


# -- pipes ----------------------------------------------------------------------------------------------------


def test_the_pipes_channel_polls_every_two_seconds_until_closed(desk):
    desk.scheduler.pipes_rows = [PipeInfo("a@rt-1", "b@rt-1", "running", 1, 0.0)]
    browser = desk.browser()
    browser.ok("sub.open", channel="pipes")
    assert [len(e["pipes"]) for e in browser.events("pipes")] == [1]
    desk.clock.advance(ws.PIPES_INTERVAL)
    desk.clock.advance(ws.PIPES_INTERVAL)
    assert len(browser.events("pipes")) == 2
    desk.scheduler.pipes_error = AgentError("no kernel leader right now", "KernelUnavailable")
    desk.clock.advance(ws.PIPES_INTERVAL)
    assert browser.events("pipes") == [{"error": "no kernel leader right now"}]
    browser.ok("sub.close", channel="pipes")
    calls = len(desk.scheduler.calls)
    desk.clock.advance(10 * ws.PIPES_INTERVAL)
    assert len(desk.scheduler.calls) == calls and browser.events() == []


def test_a_closed_tab_stops_its_polls(desk):
    browser = desk.browser()
    browser.ok("sub.open", channel="pipes")
    browser.disconnect()
    calls = len(desk.scheduler.calls)
    desk.clock.advance(10 * ws.PIPES_INTERVAL)
    assert len(desk.scheduler.calls) == calls


# -- output ---------------------------------------------------------------------------------------------------


def test_output_streams_as_text_then_the_end_with_the_status(desk):
    desk.scheduler.add("a1")
    browser = desk.browser()
    assert browser.ok("sub.open", channel="output:a1") == {}
    assert sorted(c[2] for c in desk.agents.calls if c[0] == "attach") == ["stderr", "stdout"]
    desk.streams.write("a1-stdout", "hé".encode()[:2])  # a character cut in two
    desk.streams.write("a1-stdout", "hé".encode()[2:] + b"\xff!\n")
    desk.streams.write("a1-stderr", b"warning\n")
    events = browser.events("output:a1")
    assert "".join(e["data"] for e in events if e["stream"] == "stdout") == "hé\ufffd!\n"
    assert [e for e in events if e["stream"] == "stderr"] == [{"stream": "stderr", "data": "warning\n"}]
    desk.streams.end("a1-stdout")
    desk.streams.end("a1-stderr")
    assert browser.events() == []  # the streams ended; the status says how the program did
    desk.broker.agent_status(AgentInfo(id="a1", runtime="rt-1", state="exited", exit_code=3, user="ann"))
    assert browser.events("output:a1") == [{"end": True, "status": 3}]
    # a late subscriber (another tab) gets the end at once, without a second reader
    late = desk.browser()
    late.ok("sub.open", channel="output:a1")
    assert late.events("output:a1") == [{"end": True, "status": 3}]
    assert len([c for c in desk.agents.calls if c[0] == "attach"]) == 2
    desk.clock.advance(ws.KEEP_FINISHED)
    assert desk.hub.outputs == {}


def test_output_of_another_users_program_is_refused(desk):
    desk.scheduler.add("bobs", user="bob")
    browser = desk.browser()
    assert browser.error("sub.open", channel="output:bobs")["kind"] == "EPERM"
    assert browser.error("sub.open", channel="output:nobody")["kind"] == "ESRCH"
    assert desk.agents.calls == []


def test_root_may_watch_any_program(desk):
    desk.scheduler.add("bobs", user="bob")
    desk.session = desk.sessions.create("root")
    browser = desk.browser()
    assert browser.ok("sub.open", channel="output:bobs") == {}


def test_only_attached_streams_are_read(desk):
    desk.scheduler.add("piped", stdout_to=OutputTarget.pipe("b@rt-2"))
    desk.scheduler.add("quiet", stdout_to=OutputTarget.discard())
    browser = desk.browser()
    browser.ok("sub.open", channel="output:piped")
    browser.ok("sub.open", channel="output:quiet")
    assert [(c[1], c[2]) for c in desk.agents.calls] == [("piped", "stderr")]


def test_two_tabs_share_one_reader_and_a_reconnecting_tab_joins_it(desk):
    desk.scheduler.add("a1")
    one, two = desk.browser(), desk.browser()
    one.ok("sub.open", channel="output:a1")
    two.ok("sub.open", channel="output:a1")
    desk.streams.write("a1-stdout", b"both\n")
    assert one.events("output:a1") == two.events("output:a1") == [{"stream": "stdout", "data": "both\n"}]
    one.disconnect()
    desk.streams.write("a1-stdout", b"only two\n")
    assert two.events("output:a1") == [{"stream": "stdout", "data": "only two\n"}]
    again = desk.browser()
    again.ok("sub.open", channel="output:a1")
    desk.streams.write("a1-stdout", b"again\n")
    assert again.events("output:a1") == [{"stream": "stdout", "data": "again\n"}]
    assert len([c for c in desk.agents.calls if c[0] == "attach"]) == 2  # still the first reader


def test_output_ends_with_an_error_when_the_runtime_dies_or_the_stream_breaks(desk):
    desk.membership.set("rt-2")
    desk.scheduler.add("a1", runtime="rt-2")
    desk.scheduler.add("a2")
    browser = desk.browser()
    browser.ok("sub.open", channel="output:a1")
    browser.ok("sub.open", channel="output:a2")
    desk.membership.set("rt-2", state=DEAD)
    desk.membership.changed()
    (event,) = browser.events("output:a1")
    assert "rt-2 is unreachable" in event["error"]
    desk.streams.done["a2-stdout"].errback(TransferError("the sender vanished before the end of the stream", "EPIPE"))
    (event,) = browser.events("output:a2")
    assert "sender vanished" in event["error"]
    desk.streams.write("a2-stderr", b"late\n")
    assert browser.events() == []


def test_an_ended_program_whose_status_is_gone_still_ends(desk):
    desk.scheduler.add("a1")
    browser = desk.browser()
    browser.ok("sub.open", channel="output:a1")
    desk.streams.end("a1-stdout")
    desk.streams.end("a1-stderr")
    desk.scheduler.table["a1"] = AgentInfo(id="a1", runtime="rt-1", state="killed", signal=9, user="ann")
    desk.clock.advance(ws.END_POLL)
    assert browser.events("output:a1") == [{"end": True, "status": 137}]


# -- back-pressure ------------------------------------------------------------------------------------------


def test_output_for_a_browser_that_does_not_read_is_dropped_with_a_marker(desk):
    desk.scheduler.add("a1")
    browser = desk.browser()
    browser.ok("sub.open", channel="output:a1")
    browser.transport.producer.pauseProducing()  # the socket's buffer is full
    chunk = b"y" * 60_000
    for _ in range(100):  # 6 MB while the browser reads nothing
        desk.streams.write("a1-stdout", chunk)
    connection = browser.connection
    assert connection._queued <= ws.EVENT_HOLD
    assert browser.transport.value() == b""
    browser.transport.producer.resumeProducing()
    events = browser.events("output:a1")
    data = [e for e in events if "dropped" not in e]
    (marker,) = [e for e in events if "dropped" in e]
    assert sum(len(e["data"]) for e in data) + marker["dropped"] == 100 * len(chunk)
    assert "dropped" in marker["data"] and events[-1] is marker
    desk.streams.write("a1-stdout", b"fresh\n")
    assert browser.events("output:a1") == [{"stream": "stdout", "data": "fresh\n"}]


def test_the_end_of_a_program_is_never_dropped(desk, monkeypatch):
    monkeypatch.setattr(ws, "EVENT_HOLD", 100)
    desk.scheduler.add("a1")
    browser = desk.browser()
    browser.ok("sub.open", channel="output:a1")
    browser.transport.producer.pauseProducing()
    desk.streams.write("a1-stdout", b"q" * 1000)
    desk.streams.write("a1-stdout", b"r" * 1000)
    desk.streams.end("a1-stdout")
    desk.streams.end("a1-stderr")
    desk.broker.agent_status(AgentInfo(id="a1", runtime="rt-1", state="exited", exit_code=0, user="ann"))
    browser.transport.producer.resumeProducing()
    events = browser.events("output:a1")
    assert events[-2]["dropped"] == 2000 and events[-1] == {"end": True, "status": 0}


def test_a_brief_pause_loses_nothing(desk):
    desk.scheduler.add("a1")
    browser = desk.browser()
    browser.ok("sub.open", channel="output:a1")
    browser.transport.producer.pauseProducing()
    desk.streams.write("a1-stdout", b"a" * 100_000)
    desk.streams.write("a1-stdout", b"b" * 100_000)
    browser.transport.producer.resumeProducing()
    text = "".join(e["data"] for e in browser.events("output:a1"))
    assert text == "a" * 100_000 + "b" * 100_000


def test_a_state_channel_dropped_while_behind_is_sent_whole_again(desk, monkeypatch):
    monkeypatch.setattr(ws, "EVENT_HOLD", 10)
    browser = desk.browser()
    browser.ok("sub.open", channel="runtimes")
    browser.read()
    browser.transport.producer.pauseProducing()
    desk.membership.set("rt-2")
    desk.membership.changed()
    desk.membership.set("rt-3")
    desk.membership.changed()
    browser.transport.producer.resumeProducing()
    events = browser.events("runtimes")
    assert [s["id"] for s in events[-1]["statuses"]] == ["rt-1", "rt-2", "rt-3"]


def test_answers_wait_for_a_browser_that_does_not_read_and_a_hopeless_one_is_closed(desk, monkeypatch):
    browser = desk.browser()
    browser.transport.producer.pauseProducing()
    browser.send("session.whoami")
    assert browser.transport.value() == b""
    browser.transport.producer.resumeProducing()
    assert browser.read()[0]["result"]["user"] == "ann"
    monkeypatch.setattr(ws, "HARD_LIMIT", 1000)
    desk.tree.files["/home/big.txt"] = b"z" * 5000
    browser.transport.producer.pauseProducing()
    browser.send("fs.read", path="/home/big.txt")
    assert browser.connection.closed


# -- terminals ------------------------------------------------------------------------------------------------


def open_terminal(browser: Browser, **args: Any) -> tuple[int, str, bytes]:
    request_id = browser.send("term.open", cols=80, rows=24, **args)
    frames = browser.read()
    (answer,) = [f for f in frames if isinstance(f, dict) and f.get("id") == request_id]
    assert answer["ok"], answer
    term, key = answer["result"]["term"], answer["result"]["key"]
    # the answer comes first, then what the terminal shows
    assert frames.index(answer) == 0
    screen = b"".join(f[1] for f in frames if isinstance(f, tuple) and f[0] == term)
    return term, key, screen


def test_a_terminal_runs_the_shell_as_the_user(desk):
    browser = desk.browser()
    term, key, screen = open_terminal(browser)
    assert term == 0 and len(key) >= 32
    assert b"OneOS shell" in screen and screen.endswith(b"ann@oneos:~$ ")
    browser.type(term, b"ls /\r")
    out = browser.terminal_output(term)
    assert b"home" in out and b"tmp" in out and out.endswith(b"ann@oneos:~$ ")
    assert desk.shell.interpreters[0].session.user == "ann"
    assert ("ann", "list_stat", "/") in desk.tree.calls  # ls: one call, as ann


def test_terminals_resize_close_and_are_limited(desk, monkeypatch):
    browser = desk.browser()
    term, _, _ = open_terminal(browser)
    assert browser.ok("term.resize", term=term, cols=120, rows=40) == {}
    terminal = browser.connection.terms[term]
    assert (terminal.shell_terminal.width, terminal.shell_terminal.height) == (120, 40)
    assert browser.ok("term.close", term=term) == {}
    assert desk.shell.forgotten == desk.shell.interpreters
    assert desk.shell.interpreters[0].gone  # hung up: its programs are stopped
    assert browser.error("term.resize", term=term, cols=80, rows=24)["kind"] == "EINVAL"
    monkeypatch.setattr(ws, "MAX_PER_CONNECTION", 2)
    open_terminal(browser)
    open_terminal(browser)
    assert browser.error("term.open", cols=80, rows=24)["kind"] == "EBUSY"


def test_exit_in_the_shell_ends_the_terminal(desk):
    browser = desk.browser()
    term, _, _ = open_terminal(browser)
    browser.type(term, b"exit 4\r")
    frames = browser.read()
    assert {"channel": "term", "event": {"term": term, "end": True, "status": 4}} in frames
    assert browser.connection.terms == {}
    assert desk.hub.terminals.terminals() == []


def test_a_dropped_websocket_can_reattach_its_terminal_within_a_minute(desk):
    first = desk.browser()
    term, key, _ = open_terminal(first)
    first.type(term, b"cd /tmp\r")
    first.type(term, b"echo before\r")
    first.read()
    first.disconnect()
    desk.clock.advance(REATTACH - 1)
    second = desk.browser()
    number, same_key, screen = open_terminal(second, resume=key)
    assert same_key == key
    assert b"OneOS shell" in screen and b"before" in screen  # the scrollback first
    second.type(number, b"pwd\r")
    assert b"/tmp" in second.terminal_output(number)  # the same shell session
    assert len(desk.shell.interpreters) == 1 and desk.shell.forgotten == []


def test_a_terminal_not_reattached_within_the_window_ends(desk):
    browser = desk.browser()
    _, key, _ = open_terminal(browser)
    browser.disconnect()
    desk.clock.advance(REATTACH)
    assert desk.shell.forgotten == desk.shell.interpreters
    again = desk.browser()
    assert again.error("term.open", cols=80, rows=24, resume=key)["kind"] == "ENOENT"


def test_another_login_cannot_resume_a_terminal(desk):
    browser = desk.browser()
    _, key, _ = open_terminal(browser)
    browser.disconnect()
    desk.session = desk.sessions.create("ann")  # the same user, another login
    assert desk.browser().error("term.open", cols=80, rows=24, resume=key)["kind"] == "ENOENT"


def test_logout_ends_every_terminal_of_the_session_at_once(desk):
    browser = desk.browser()
    open_terminal(browser)
    _, key, _ = open_terminal(browser)
    other = desk.browser()
    open_terminal(other)
    other.disconnect()  # waiting for a reattach
    desk.sessions.revoke(desk.session.id)
    assert len(desk.shell.forgotten) == 3
    assert desk.hub.terminals.terminals() == []


def test_resuming_a_terminal_attached_elsewhere_moves_it(desk):
    one = desk.browser()
    term, key, _ = open_terminal(one)
    two = desk.browser()
    number, _, _ = open_terminal(two, resume=key)
    assert one.connection.terms == {}
    two.type(number, b"echo moved\r")
    assert b"moved" in two.terminal_output(number)
    assert one.read() == []


def test_terminal_output_for_a_browser_that_does_not_read_keeps_the_last_256_kib(desk):
    browser = desk.browser()
    term, _, _ = open_terminal(browser)
    browser.transport.producer.pauseProducing()
    terminal = browser.connection.terms[term]
    terminal._output(b"o" * (SCROLLBACK + 1000))
    terminal._output(b"tail")
    assert browser.transport.value() == b""
    browser.transport.producer.resumeProducing()
    out = browser.terminal_output(term)
    assert b"output dropped" in out and out.endswith(b"tail")
    assert len(out) < SCROLLBACK + 200


def test_the_scrollback_ring():
    ring = Scrollback(10)
    ring.append(b"hello ")
    assert ring.since(0) == (b"hello ", False)
    ring.append(b"world!")
    assert (ring.start, ring.end) == (2, 12)
    assert ring.since(0) == (b"llo world!", True)
    assert ring.since(8) == (b"rld!", False)
    ring.append(b"x" * 25)
    assert ring.since(ring.start) == (b"x" * 10, False) and ring.end == 37


def test_the_hub_stops_everything(desk):
    browser = desk.browser()
    open_terminal(browser)
    desk.scheduler.add("a1")
    browser.ok("sub.open", channel="output:a1")
    desk.hub.stop()
    assert ("close", ws.CLOSE_STOPPING) in browser.read()
    assert desk.shell.forgotten == desk.shell.interpreters and desk.hub.outputs == {}


# -- devices -------------------------------------------------------------------------------------------------

CAM = "device:rt-2/cam0"
BUTTON = "device:rt-2/button"


def jpeg(n: int) -> bytes:
    """A whole JPEG as the splitter sees one: SOI, an SOS segment, entropy-coded bytes, EOI."""
    return b"\xff\xd8\xff\xda\x00\x02" + f"frame {n}".encode() + b"\xff\xd9"


def with_devices(desk: Desk) -> Desk:
    desk.membership.set(
        "rt-2",
        devices=(
            DeviceStatus("cam0", "in", "video"),
            DeviceStatus("button", "in", "gpio"),
            DeviceStatus("led", "out", "gpio"),
        ),
    )
    return desk


def frames_of(browser: Browser, frames: list[Any] | None = None) -> list[tuple[str, bytes]]:
    """The device frames among what the browser got: (channel, JPEG)."""
    got = browser.read() if frames is None else frames
    return [wire.parse_device_frame(bytes([f[0]]) + f[1]) for f in got if isinstance(f, tuple) and f[0] == 255]


def reading(desk: Desk) -> list[str]:
    """The device streams the desktop reads now (their tokens)."""
    return [t for t, d in desk.streams.done.items() if "/" in t and not d.called]


def test_a_camera_s_frames_arrive_whole_as_binary_frames_read_as_the_user(desk):
    with_devices(desk)
    browser = desk.browser()
    assert browser.ok("sub.open", channel=CAM) == {}
    assert desk.devices.calls == [("ann", "read", "rt-2", "cam0")]
    assert browser.events(CAM) == [{"open": True, "video": True}]
    (token,) = reading(desk)
    whole = jpeg(1) + jpeg(2)
    desk.streams.write(token, whole[:5])  # a frame cut anywhere arrives whole, once complete
    assert frames_of(browser) == []
    desk.streams.write(token, whole[5:])
    assert frames_of(browser) == [(CAM, jpeg(1)), (CAM, jpeg(2))]
    # the frames are not terminal output: a terminal open on the same websocket gets none of them
    term, _, _ = open_terminal(browser)
    desk.streams.write(token, jpeg(3))
    got = browser.read()
    assert frames_of(browser, got) == [(CAM, jpeg(3))]
    assert not any(isinstance(f, tuple) and f[0] == term for f in got)


def test_two_tabs_share_one_reader_and_the_last_to_leave_closes_it(desk):
    with_devices(desk)
    one, two = desk.browser(), desk.browser()
    one.ok("sub.open", channel=CAM)
    (token,) = reading(desk)
    desk.streams.write(token, jpeg(1))
    two.ok("sub.open", channel=CAM)
    assert len(desk.devices.calls) == 1  # one reader for both tabs
    assert frames_of(two) == [(CAM, jpeg(1))]  # the newest frame at once, not a black picture until the next
    desk.streams.write(token, jpeg(2))
    assert frames_of(one)[-1] == frames_of(two)[-1] == (CAM, jpeg(2))
    one.disconnect()
    assert reading(desk) == [token]
    two.ok("sub.close", channel=CAM)
    assert reading(desk) == [] and desk.hub.device_feeds == {}
    assert desk.streams.done[token].called  # cancelled: the device's runtime sees its reader leave at once
    # the next subscriber asks the device's runtime again
    two.ok("sub.open", channel=CAM)
    assert len(desk.devices.calls) == 2 and len(reading(desk)) == 1


def test_another_user_gets_a_reader_of_their_own(desk):
    with_devices(desk)
    desk.browser().ok("sub.open", channel=CAM)
    desk.session = desk.sessions.create("bob")
    desk.browser().ok("sub.open", channel=CAM)
    assert [c[0] for c in desk.devices.calls] == ["ann", "bob"] and len(reading(desk)) == 2


def test_a_browser_that_does_not_read_gets_the_newest_frame_and_never_a_backlog(desk):
    with_devices(desk)
    browser = desk.browser()
    browser.ok("sub.open", channel=CAM)
    browser.read()
    (token,) = reading(desk)
    browser.transport.producer.pauseProducing()  # the socket's buffer is full
    for n in range(50):
        desk.streams.write(token, jpeg(n))
    assert browser.transport.value() == b"" and browser.connection._queued == 0
    (sub,) = [s for s in browser.connection.subs.values() if isinstance(s, ws._DeviceSub)]
    assert sub.dropped == 49
    browser.transport.producer.resumeProducing()
    assert frames_of(browser) == [(CAM, jpeg(49))]
    desk.streams.write(token, jpeg(50))
    assert frames_of(browser) == [(CAM, jpeg(50))]


def test_refusals_are_plain_errors_and_the_connection_goes_on(desk):
    with_devices(desk)
    desk.devices.refuse[("rt-2", "cam0")] = DeviceError(
        "device cam0 on rt-2: ann may not read it (mode 0600)", "EACCES"
    )
    browser = desk.browser()
    error = browser.error("sub.open", channel=CAM)
    assert error == {"kind": "EACCES", "message": "device cam0 on rt-2: ann may not read it (mode 0600)"}
    assert desk.hub.device_feeds == {}
    # answered here, without asking anyone: no such device, no such runtime, the wrong side
    asked = len(desk.devices.calls)
    assert browser.error("sub.open", channel="device:rt-2/nope")["kind"] == "ENOENT"
    assert "not running" in browser.error("sub.open", channel="device:rt-9/cam0")["message"]
    assert browser.error("sub.open", channel="device:rt-2/led")["kind"] == "EACCES"
    assert browser.error("device.write", runtime="rt-2", name="button", data="1\n")["kind"] == "EACCES"
    assert len(desk.devices.calls) == asked
    assert browser.ok("session.whoami")["user"] == "ann"
    # refused once, asked again next time: the owner may have changed the mode
    del desk.devices.refuse[("rt-2", "cam0")]
    assert browser.ok("sub.open", channel=CAM) == {}


def test_the_channel_ends_with_the_reason_when_the_device_fails_or_its_runtime_dies(desk):
    with_devices(desk)
    browser = desk.browser()
    browser.ok("sub.open", channel=CAM)
    browser.ok("sub.open", channel=BUTTON)
    browser.read()
    (cam,) = [t for t in reading(desk) if "cam0" in t]
    failure = TransferError(
        "device cam0 on rt-2 failed: ffmpeg exited with status 1: /dev/video0: No such device", "ENODEV"
    )
    desk.streams.done[cam].errback(failure)
    (event,) = browser.events(CAM)
    assert event == {"error": f"device cam0 on rt-2: {failure}", "kind": "ENODEV"}
    assert CAM not in browser.connection.subs  # ended by itself: a new sub.open asks again
    desk.membership.set("rt-2", state=DEAD)
    desk.membership.changed()
    (event,) = browser.events(BUTTON)
    assert event["kind"] == "EPIPE" and "rt-2 is unreachable" in event["error"]
    assert reading(desk) == [] and desk.hub.device_feeds == {}
    assert browser.error("sub.open", channel=CAM)["kind"] == "ENOENT"  # its devices went with it


def test_a_stream_broken_mid_read_names_the_runtime(desk):
    with_devices(desk)
    browser = desk.browser()
    browser.ok("sub.open", channel=CAM)
    browser.read()
    (token,) = reading(desk)
    desk.streams.done[token].errback(TransferError("the sender vanished before the end of the stream", "EPIPE"))
    (event,) = browser.events(CAM)
    assert event["kind"] == "EPIPE" and "did runtime rt-2 stop?" in event["error"]


def test_the_end_of_a_device_is_never_dropped(desk, monkeypatch):
    monkeypatch.setattr(ws, "EVENT_HOLD", 10)
    with_devices(desk)
    browser = desk.browser()
    browser.ok("sub.open", channel=BUTTON)
    browser.read()
    (token,) = reading(desk)
    browser.transport.producer.pauseProducing()
    desk.streams.write(token, b"1\n")  # dropped: the browser is behind
    desk.streams.end(token)
    browser.transport.producer.resumeProducing()
    events = browser.events(BUTTON)
    assert events[-1] == {"end": True}


def test_a_pin_s_value_arrives_as_text_paced_and_a_late_tab_gets_the_current_value(desk):
    with_devices(desk)
    browser = desk.browser()
    browser.ok("sub.open", channel=BUTTON)
    assert browser.events(BUTTON) == [{"open": True, "video": False}]
    (token,) = reading(desk)
    sink = desk.streams.sinks[token]
    written = sink.write(b"0\n")
    assert browser.events(BUTTON) == [{"data": "0\n", "bytes": 2}]
    assert not written.called  # the stream waits: at most one event per interval
    desk.clock.advance(ws.DEVICE_TEXT_INTERVAL)
    assert written.called
    sink.write(b"1\n").addErrback(lambda f: f.trap(defer.CancelledError))
    late = desk.browser()
    late.ok("sub.open", channel=BUTTON)
    assert late.events(BUTTON) == [{"open": True, "video": False}, {"data": "0\n1\n", "bytes": 4}]
    # a fast device's flood is cut to the newest text
    desk.clock.advance(ws.DEVICE_TEXT_INTERVAL)
    paced = sink.write(b"x" * (ws.DEVICE_TEXT + 10))
    (event,) = late.events(BUTTON)
    assert len(event["data"]) == ws.DEVICE_TEXT and event["dropped"] == 10
    # leaving while the stream waits for its pace closes it too
    browser.ok("sub.close", channel=BUTTON)
    late.ok("sub.close", channel=BUTTON)
    assert reading(desk) == []
    assert paced.called and isinstance(paced.result, Failure) and paced.result.check(defer.CancelledError)
    paced.addErrback(lambda f: None)


def test_device_write_streams_the_data_as_the_user(desk):
    with_devices(desk)
    browser = desk.browser()
    request = browser.send("device.write", runtime="rt-2", name="led", data="1\n")
    assert desk.devices.calls == [("ann", "write", "rt-2", "led")]
    assert desk.streams.pull("rt-2/led<") == [b"1\n", b""]
    desk.streams.done["rt-2/led<"].callback({"bytes": 2, "device": "led"})
    (answer,) = [f for f in browser.read() if f.get("id") == request]
    assert answer["result"] == {"bytes": 2, "device": "led"}
    desk.devices.refuse[("rt-2", "led")] = DeviceError("device led on rt-2: ann may not write it", "EACCES")
    assert browser.error("device.write", runtime="rt-2", name="led", data="0\n") == {
        "kind": "EACCES",
        "message": "device led on rt-2: ann may not write it",
    }
    desk.devices.refuse.clear()
    request = browser.send("device.write", runtime="rt-2", name="led", data="2\n")
    desk.streams.done["rt-2/led<"].errback(TransferError("device led: '2' is not 0 or 1", "EINVAL"))
    (answer,) = [f for f in browser.read() if f.get("id") == request]
    assert answer["error"] == {"kind": "EINVAL", "message": "device led: '2' is not 0 or 1"}


def test_devices_list_asks_every_live_runtime_with_devices_as_the_user(desk):
    with_devices(desk)
    desk.membership.set("rt-3", devices=(DeviceStatus("rnd", "in", "random"),))
    desk.membership.set("rt-4", devices=(DeviceStatus("x", "in", "random"),), state=DEAD)
    cam = DeviceInfo("rt-2", "cam0", "in", "video", readers=2, unit="frame")
    desk.devices.lists = {"rt-2": [cam], "rt-3": RPCTimeout("rt-3", "device_list", 10)}
    browser = desk.browser()
    result = browser.ok("devices.list")
    assert result["devices"] == [cam.encode()]
    assert [(e["runtime"], e["kind"]) for e in result["errors"]] == [("rt-3", "RPCTimeout")]
    assert sorted(c[2] for c in desk.devices.calls) == ["rt-2", "rt-3"]  # rt-1 has none, rt-4 is dead
    assert {c[0] for c in desk.devices.calls} == {"ann"}


def test_the_hub_stops_its_device_readers(desk):
    with_devices(desk)
    browser = desk.browser()
    browser.ok("sub.open", channel=CAM)
    desk.hub.stop()
    assert reading(desk) == [] and desk.hub.device_feeds == {}
