"""File-system calls in one hop with real processes: a runtime's fs service on its direct channel.

* many calls pipelined on the channel answer exactly as the same calls over the bus;
* the channel acts as the identity its ticket was issued to over the bus (a client identity stays its user),
  and a forged, reused or expired ticket is refused before anything runs;
* a runtime of a TLS network serves the channel with TLS, checked against the network's CA (the fs
  service's, the runtime's own target's and the scheduler's);
* a 3-runtime grid (one SQLite tree): killing the runtime serving the tree mid-run makes the client fall back
  to the bus, and then take the channel of the new server.

The runtimes are real ``oneosd`` processes (the grid: ``oneos grid``); the client is an FSClient in the
test process, on the test's reactor.  Every process started is stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from oneos.fs import paths
from oneos.fs.client import FSClient, Listing
from oneos.fs.errors import FSError, InvalidArgument, PermissionDenied
from oneos.fs.service import FileSystemService
from oneos.pubsub import direct, messages, topics
from oneos.pubsub.client import PubSubClient
from oneos.pubsub.rpc import RPCClient, RPCServer
from oneos.security import credentials, tls
from oneos.testing.brokers import free_port
from oneos.testing.runtimes import EmbeddedRuntime, statuses, wait_for

DEADLINE = 30.0


@defer.inlineCallbacks
def until(check: Any, what: str, seconds: float = DEADLINE) -> Any:
    """Poll *check* on the reactor until it is true; fail naming *what* after the deadline."""
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.05, lambda: None)  # polling interval, not synchronisation


def outcome(d: defer.Deferred) -> defer.Deferred:
    """A call's result, or ('error', kind, message): what a caller would see, comparable across routes."""

    def failed(f: Failure) -> Any:
        e = f.value
        return ("error", getattr(e, "kind", type(e).__name__), str(e))

    return d.addErrback(failed)


def comparable(value: Any) -> Any:
    """*value* with its errors as (class, kind, message), so answers of two routes compare equal."""
    if isinstance(value, BaseException):
        return (type(value).__name__, getattr(value, "kind", ""), str(value))
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, Listing):
        return (value.stat, value.entries, value.parent, comparable(value.error))
    return value


class Clients:
    """Broker connections of one test, each logged in as an identity of the network; all closed at the end."""

    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.network = credentials.load(home)
        assert self.network is not None and self.network.secret, f"no network secret in {home}"
        self.pubsubs: list[PubSubClient] = []
        self.rpcs: list[RPCClient] = []

    @defer.inlineCallbacks
    def connect(self, name: str) -> Any:
        """A connected pubsub client logged in as identity *name* (a runtime id, or USER@TAG)."""
        assert self.network is not None
        found = credentials.identity(self.network, name)
        client = PubSubClient(self.url, reactor, keepalive=5)
        client.address = dataclasses.replace(client.address, username=found.username, password=found.password)
        self.pubsubs.append(client)
        client.startService()
        yield client.whenConnected()
        return client

    def fs(self, client: PubSubClient, *, direct_channel: bool = True, **kw: Any) -> FSClient:
        """An FSClient on its own RPC client (so its route, bus or direct, is its own)."""
        rpc = RPCClient(client, reactor, default_timeout=10)
        self.rpcs.append(rpc)
        return FSClient(rpc, reactor, timeout=10, direct=direct_channel, **kw)

    @defer.inlineCallbacks
    def close(self) -> Any:
        for rpc in self.rpcs:
            yield rpc.close()
        for client in self.pubsubs:
            if client.running:
                yield client.stopService()


@defer.inlineCallbacks
def open_channel(fs: FSClient) -> Any:
    """Make calls until the client's direct channel is open; its route."""
    route = fs.rpc.route("fs")
    assert route is not None

    def ready() -> bool:
        if not route.ready:
            fs.stat("/").addErrback(lambda f: None)
        return route.ready

    yield until(ready, f"the direct channel to open ({route.last_error})")
    return route


class RawChannel(Protocol):
    """A hand-played client of the direct channel: sends what it is told, keeps the frames it gets."""

    def __init__(self) -> None:
        self.decoder = direct.FrameDecoder()
        self.frames: list[dict[str, Any]] = []
        self.closed = False
        self.connected_d: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.connected_d.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.frames += [messages.decode(b) for b in self.decoder.feed(data)]

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True


@defer.inlineCallbacks
def raw_connect(host: str, port: int) -> Any:
    from twisted.internet.endpoints import TCP4ClientEndpoint

    proto = RawChannel()
    yield TCP4ClientEndpoint(reactor, host, port).connect(Factory.forProtocol(lambda: proto))
    return proto


def request(corr: str, method: str, **args: Any) -> bytes:
    return direct.encode_frame(messages.encode("rpc.request", id=corr, method=method, args=args, meta={}))


def scratch(case: unittest.TestCase) -> Path:
    """A fresh directory, removed after the test (trial's ``mktemp`` would put it under the working directory)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="oneos-direct-"))
    case.addCleanup(shutil.rmtree, path, True)
    return path


class ListingTests(unittest.TestCase):
    """``list_stat`` and ``stat_many`` on a real SQLite store: for every user, what ``stat`` and ``listdir`` say.

    The handlers are called as the RPC layer calls them (the caller's verified user), with no broker.
    """

    timeout = 60

    async def setUp(self):
        directory = scratch(self)
        self.svc = FileSystemService(f"sqlite:///{directory}/fs.db", client=None, transfer=None, reactor=reactor)
        self.svc.running = True
        self.svc.server.start = lambda: defer.succeed(None)  # type: ignore[method-assign]
        self.svc._open()
        await until(lambda: self.svc.store is not None, "the store to open")
        self.addCleanup(self.svc.stopService)
        for user in ("alice", "bob"):
            await self.svc.mkdir(f"/home/{user}", owner=user, perm=0o700)
        await self.svc.write_small("/home/bob/secret", "c2VjcmV0", user="bob")
        await self.svc.mkdir("/home/bob/open", user="bob", perm=0o755)

    async def separately(self, path: str, user: str | None, parent: bool) -> Any:
        """What stat, then listdir (and the parent's stat), say: the old two or three round trips."""
        try:
            st = await self.svc.stat(path, user=user)
        except Exception as e:
            return ("stat failed", type(e).__name__, str(e))
        out: dict[str, Any] = {"stat": st, "entries": None}
        if parent:
            out["parent"] = st if st["path"] == "/" else await self.svc.stat(paths.dirname(st["path"]), user=user)
        if st["kind"] == "dir":
            try:
                out["entries"] = await self.svc.listdir(path, user=user)
            except FSError as e:
                out["error"] = {"kind": e.code, "message": str(e)}
        return out

    async def together(self, path: str, user: str | None, parent: bool) -> Any:
        try:
            return await self.svc.list_stat(path, parent=parent, user=user)
        except Exception as e:
            return ("stat failed", type(e).__name__, str(e))

    async def test_list_stat_says_what_stat_and_listdir_say(self):
        for user in (None, "root", "alice", "bob"):
            for path in ("/", "/home", "/home/bob", "/home/bob/secret", "/home/bob/open", "/nope", "/etc/oneos"):
                for parent in (False, True):
                    want = await self.separately(path, user, parent)
                    got = await self.together(path, user, parent)
                    self.assertEqual(got, want, (user, path, parent))
        listing = Listing.decode(await self.svc.list_stat("/home/bob", user="alice"))
        self.assertEqual((listing.stat.owner, listing.entries), ("bob", None))
        with self.assertRaises(PermissionDenied):
            listing.entries_or_raise()

    async def test_stat_many_says_what_each_stat_says_in_order(self):
        wanted = ["/home/bob/secret", "/nope", "/home", "/etc/oneos/users.json", "/etc/oneos", "bad\x00path"]
        for user in (None, "root", "alice", "bob"):
            rows = await self.svc.stat_many(wanted, user=user)
            for path, row in zip(wanted, rows, strict=True):
                try:
                    self.assertEqual(row, {"stat": await self.svc.stat(path, user=user)}, (user, path))
                except FSError as e:
                    self.assertEqual(row, {"error": {"kind": e.code, "message": str(e)}}, (user, path))
        with self.assertRaises(InvalidArgument):
            await self.svc.stat_many(["/"] * 2001)


class OneRuntimeTests(unittest.TestCase):
    """One embedded runtime (its own broker, identities on) for the class; clients per test."""

    timeout = 120
    runtime: EmbeddedRuntime
    root: Path

    @classmethod
    def setUpClass(cls) -> None:
        import tempfile

        cls.root = Path(tempfile.mkdtemp(prefix="oneos-direct-"))
        cls.runtime = EmbeddedRuntime(cls.root)
        try:
            wait_for(
                "the fs service on its direct channel",
                lambda: (
                    "fs calls are served in one hop" in cls.runtime.log() and "file system serving" in cls.runtime.log()
                ),
                deadline=90,
                logs=cls.runtime.log,
            )
        except BaseException:
            cls.runtime.stop()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.runtime.stop()
        import shutil

        shutil.rmtree(cls.root, ignore_errors=True)

    def setUp(self) -> None:
        self.clients = Clients(self.runtime.url, self.runtime.home)

    def tearDown(self) -> defer.Deferred:
        return self.clients.close()

    @defer.inlineCallbacks
    def test_pipelined_calls_on_the_channel_answer_as_the_bus_does(self):
        pubsub = yield self.clients.connect("solo")  # the runtime's owner: the runtime's identity
        bus = self.clients.fs(pubsub, direct_channel=False)
        one_hop = self.clients.fs(pubsub)
        yield bus.mkdir("/tmp/pipelined", exist_ok=True)
        names = [f"/tmp/pipelined/f{i:03d}" for i in range(40)]
        for i, name in enumerate(names):
            yield bus.write_small(name, b"x" * i)
        route = yield open_channel(one_hop)
        sent_before = route.sent

        def calls(fs: FSClient) -> list[defer.Deferred]:
            out: list[defer.Deferred] = []
            for name in names:
                out += [fs.stat(name), fs.exists(name), fs.stat(name + ".missing")]
            out += [
                fs.list_stat("/tmp/pipelined", parent=True),
                fs.listdir("/tmp/pipelined"),
                fs.stat_many([*names, "/nope", "/etc/oneos/users.json"]),
                fs.glob("f0*", cwd="/tmp/pipelined"),
                fs.read_small(names[7]),
                fs.list_stat("/etc/oneos"),  # the kernel's area: stat yes, listing no
            ]
            return [outcome(d) for d in out]

        over_bus = yield defer.gatherResults(calls(bus))
        pipelined = calls(one_hop)  # all sent before any answer comes
        self.assertGreaterEqual(len(route._channels and next(iter(route._channels)).pending), 100)
        over_channel = yield defer.gatherResults(pipelined)
        self.assertEqual(comparable(over_channel), comparable(over_bus))
        self.assertEqual(route.sent - sent_before, len(pipelined))  # every one of them took the channel
        self.assertEqual(route.opened, 1)
        self.assertEqual(over_channel[-1].error.kind, "EACCES")
        self.assertEqual([type(x).__name__ for x in over_channel[-4][-2:]], ["NotFound", "PermissionDenied"])

    @defer.inlineCallbacks
    def test_the_channel_acts_as_the_identity_of_its_ticket(self):
        owner = yield self.clients.connect("solo")
        admin = self.clients.fs(owner, direct_channel=False)
        yield admin.mkdir("/home/bob", exist_ok=True, perm=0o700, owner="bob")
        yield admin.write_small("/home/bob/secret", b"bob's")
        yield admin.chown("/home/bob/secret", "bob")
        alice = yield self.clients.connect("alice@laptop")
        # alice's client claims to act as root, for the kernel: the server pins her to alice either way
        claims = self.clients.fs(alice, system=True, user="root")
        route = yield open_channel(claims)
        self.assertEqual(route.channel.caller, "alice@laptop")
        for call in (lambda: claims.stat("/home/bob/secret"), lambda: claims.read_small("/etc/oneos/users.json")):
            with self.assertRaises(PermissionDenied):
                yield call()
        with self.assertRaises(PermissionDenied):
            yield claims.list_stat("/home/bob").addCallback(lambda listing: listing.entries_or_raise())
        # what she may do, she does, as herself
        made = yield claims.mkdir("/tmp/alice-made", exist_ok=True)
        self.assertEqual(made.owner, "alice")

    @defer.inlineCallbacks
    def test_forged_and_reused_tickets_are_refused_and_nothing_after_them_runs(self):
        pubsub = yield self.clients.connect("solo")
        bus_rpc = RPCClient(pubsub, reactor)
        self.clients.rpcs.append(bus_rpc)
        answer = yield bus_rpc.call("fs", direct.TICKET_METHOD)
        ticket = direct.Ticket.decode(answer)
        good = yield raw_connect(ticket.host, ticket.port)
        good.transport.write(ticket.ticket.encode() + b"\n")
        yield until(lambda: good.frames, "rpc.ready")
        self.assertEqual((good.frames[0]["type"], good.frames[0]["caller"]), ("rpc.ready", "solo"))
        for bad_ticket in (ticket.ticket, "0" * len(ticket.ticket)):  # reused, then forged
            bad = yield raw_connect(ticket.host, ticket.port)
            bad.transport.write(bad_ticket.encode() + b"\n" + request("1", "mkdir", path="/tmp/forged"))
            yield until(lambda: bad.closed, "the server to close a refused connection")  # noqa: B023
            self.assertEqual([(f["ok"], f["error"]["kind"]) for f in bad.frames], [(False, "EACCES")])
        good.transport.write(request("2", "exists", path="/tmp/forged"))
        yield until(lambda: len(good.frames) == 2, "the answer on the good channel")
        self.assertEqual((good.frames[1]["id"], good.frames[1]["result"]), ("2", False))  # never made
        good.transport.loseConnection()
        yield until(lambda: good.closed, "the good channel to close")

    @defer.inlineCallbacks
    def test_an_expired_ticket_is_refused(self):
        # the runtime's tickets last 30 s: an in-process server on a real socket, with a short one
        class Bus:
            address = type("A", (), {"username": None})()

        Bus.reactor = reactor  # type: ignore[attr-defined]
        rpc = RPCServer(Bus(), "fs", {"ping": lambda: "pong"})  # type: ignore[arg-type]
        rpc.active = True
        server = direct.DirectServer(reactor, rpc, ticket_ttl=0.2)
        yield server.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.stop)
        where = server.ticket("rt-x")
        yield task.deferLater(reactor, 0.4, lambda: None)
        late = yield raw_connect(where["host"], where["port"])
        late.transport.write(where["ticket"].encode() + b"\n" + request("1", "ping"))
        yield until(lambda: late.closed, "the refusal")
        self.assertEqual([(f["ok"], f["error"]["kind"]) for f in late.frames], [(False, "EACCES")])


class TLSRuntimeTests(unittest.TestCase):
    """A runtime whose home has a certificate serves the channel with TLS; the client checks it."""

    timeout = 120

    @defer.inlineCallbacks
    def test_the_channel_uses_tls_when_the_streams_do(self):
        from oneos import transfer

        root = scratch(self)
        home = root / "embedded"
        tls.create_ca(home)
        tls.issue_own(home, ["127.0.0.1"])
        runtime = EmbeddedRuntime(root)
        self.addCleanup(runtime.stop)
        yield until(lambda: "fs calls are served in one hop" in runtime.log(), "the fs service", 90)
        clients = Clients(runtime.url, home)
        self.addCleanup(clients.close)
        transfer.use_client_trust(tls.load_trust(home))
        self.addCleanup(transfer.use_client_trust, None)
        pubsub = yield clients.connect("solo")
        fs = clients.fs(pubsub)
        route = yield open_channel(fs)
        self.assertTrue(route.channel.ticket.tls)
        made = yield fs.mkdir("/tmp/over-tls", exist_ok=True)
        self.assertEqual(made.path, "/tmp/over-tls")
        # a client trusting another CA cannot open it, and keeps working over the bus
        other = root / "other"
        tls.create_ca(other)
        transfer.use_client_trust(tls.load_trust(other))
        stranger = clients.fs(pubsub)

        def refused() -> bool:
            stranger.stat("/").addErrback(lambda f: None)  # calls, so that a channel is tried
            return stranger.rpc.route("fs").state == "waiting"

        yield until(refused, "the TLS failure")
        self.assertIn("its certificate did not verify", stranger.rpc.route("fs").last_error)
        self.assertTrue((yield stranger.stat("/tmp/over-tls")).is_dir)

        # the runtime's own target (the agents' methods) and the scheduler serve their channels with TLS too
        transfer.use_client_trust(tls.load_trust(home))
        rpc = RPCClient(pubsub, reactor, default_timeout=10)
        clients.rpcs.append(rpc)
        for target, method in (("solo", "ping"), ("scheduler", "ps")):
            route = rpc.enable_direct(target)
            assert route is not None

            def ready(target: str = target, method: str = method, route: Any = route) -> bool:
                if not route.ready:
                    rpc.call(target, method).addErrback(lambda f: None)
                return route.ready

            yield until(ready, f"the direct channel to {target} ({route.last_error})")
            self.assertTrue(route.channel.ticket.tls)
            sent = route.sent
            yield rpc.call(target, method)
            self.assertEqual(route.sent, sent + 1)


class GridFailoverTests(unittest.TestCase):
    """``oneos grid --runtimes 3``: one SQLite tree every runtime can serve; the server is SIGKILLed mid-run."""

    timeout = 240

    def setUp(self) -> None:
        root = scratch(self)
        self.me = root / "me"
        port = free_port()
        self.url = f"mqtt://127.0.0.1:{port}"
        self.log_path = root / "grid.log"
        self.log = open(self.log_path, "wb")
        self.grid = subprocess.Popen(
            [sys.executable, "-m", "oneos.cli.main", "grid", "--runtimes", "3", "--dir", str(root / "grid")]
            + ["--port", str(port), "--ssh-port", str(free_port())],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, ONEOS_HOME=str(self.me)),
        )

        self.addCleanup(self.stop_grid)  # also when the wait below fails (tearDown would not run)
        wait_for("a grid of 3 with one fs server", self.serving, deadline=150, logs=self.grid_log)

    def stop_grid(self) -> None:
        self.grid.send_signal(signal.SIGTERM)
        try:
            self.grid.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.grid.kill()
            self.grid.wait()
        self.log.close()

    def grid_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def serving(self) -> dict[str, Any] | None:
        """The one runtime serving the tree once all three are alive (``oneos status``, before any client)."""
        try:
            view = statuses(self.url, env={"ONEOS_HOME": str(self.me)})
        except AssertionError:
            return None  # the grid has not written its credentials or started its broker yet
        alive = [s for s in view.values() if s["state"] == "alive"]
        servers = [s for s in alive if s.get("fs_serving")]
        return servers[0] if len(alive) == 3 and len(servers) == 1 else None

    @defer.inlineCallbacks
    def test_killing_the_fs_server_falls_back_to_the_bus_then_takes_the_new_server_s_channel(self):
        first = self.serving()
        assert first is not None
        clients = Clients(self.url, self.me)
        self.addCleanup(clients.close)
        pubsub = yield clients.connect("oneos-admin")
        view: dict[str, dict[str, Any]] = {}

        def on_status(message: Any) -> None:
            if message.payload:
                body = json.loads(message.payload)
                view[body["id"]] = body

        yield pubsub.subscribe(topics.ALL_STATUS, on_status)
        fs = clients.fs(pubsub)
        fs.timeout = 3.0
        yield fs.write_small("/tmp/before", b"written before the kill")
        route = yield open_channel(fs)
        old_server = route.server
        self.assertEqual(route.server.rsplit(":", 1)[0], first["address"])

        results: list[tuple[float, str, Any]] = []
        running = [True]

        @defer.inlineCallbacks
        def keep_calling() -> Any:
            while running[0]:
                way = "direct" if route.ready else "bus"
                got = yield outcome(fs.stat("/tmp/before"))
                results.append((time.monotonic(), way, got))
                yield task.deferLater(reactor, 0.05, lambda: None)

        calling = keep_calling()
        yield until(lambda: len(results) >= 5, "calls before the kill")
        os.kill(first["pid"], signal.SIGKILL)
        killed_at = time.monotonic()

        def new_server() -> dict[str, Any] | None:
            found = [
                s for s in view.values() if s["state"] == "alive" and s.get("fs_serving") and s["id"] != first["id"]
            ]
            return found[0] if len(found) == 1 else None

        yield until(
            lambda: new_server() is not None and route.ready and route.server != old_server,
            "a new fs server and a channel to it",
            60,
        )
        later = len(results)
        yield until(lambda: len(results) >= later + 5, "calls after the failover", 30)
        running[0] = False
        yield calling
        server = new_server()
        assert server is not None
        self.assertEqual(route.server.rsplit(":", 1)[0], server["address"])
        self.assertEqual(route.opened, 2)
        ok = [r for r in results if not (isinstance(r[2], tuple) and r[2][0] == "error")]
        failed = [r for r in results if isinstance(r[2], tuple) and r[2][0] == "error"]
        self.assertTrue(all(r[2].path == "/tmp/before" for r in ok))
        # after the kill: over the bus while there was no channel, failing only while nobody served the tree
        after = [r for r in results if r[0] > killed_at]
        back = next(r[0] for r in after if r[1] == "direct")
        print(
            f"after the kill: {len(after)} calls, {sum(r[1] == 'bus' for r in after)} over the bus, "
            f"{len(failed)} failed ({sorted({r[2][1] for r in failed})}); on the new server's channel "
            f"{back - killed_at:.1f}s after the kill"
        )
        self.assertIn("bus", {r[1] for r in after})
        self.assertEqual(results[-1][1], "direct")
        self.assertTrue(all(r[0] > killed_at for r in failed), failed)
        self.assertTrue(all(r[2][1] in ("RPCTimeout", "EIO", "KernelUnavailable") for r in failed), failed)
