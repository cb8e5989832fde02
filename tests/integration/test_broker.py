"""Our broker (amqtt as a Twisted service) over real TCP, in-process and as ``twistd oneospsd``.

In-process tests run the service on an ephemeral port in the test's asyncio
reactor and talk to it with OneOS's own client and with a raw MQTT protocol
(for packet-level checks of the amqtt fixes: keep-alive, take-over,
retained-message leaks).  Waiting is always on an event with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from oneos.broker.service import BrokerError, BrokerService, parse_listen
from oneos.errors import RPCTimeout
from oneos.pubsub import mqtt
from oneos.pubsub.client import PubSubClient
from oneos.pubsub.rpc import RPCClient, RPCServer
from oneos.testing.brokers import BrokerProcess, free_port

DEADLINE = 20.0


def within(d: defer.Deferred, what: str, seconds: float = DEADLINE) -> defer.Deferred:
    """*d*'s result, or an AssertionError naming *what* if it has not come by the deadline."""
    result: defer.Deferred = defer.Deferred()
    timer = reactor.callLater(seconds, lambda: result.errback(AssertionError(f"timed out waiting for {what}")))

    def arrived(outcome):
        if timer.active():
            timer.cancel()
            result.callback(outcome)  # a Failure here runs result's errbacks

    d.addBoth(arrived)
    return result


class Inbox:
    """Collects messages; ``next()`` waits for the next one."""

    def __init__(self) -> None:
        self.messages: list = []
        self.waiters: list[defer.Deferred] = []

    def __call__(self, message) -> None:
        self.messages.append(message)
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.callback(message)

    def next(self, what: str = "a message") -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiters.append(d)
        return within(d, what)


class RawMQTT(Protocol):
    """A bare MQTT 3.1.1 connection: send bytes, await packets by type, see the close."""

    def __init__(self) -> None:
        self.parser = mqtt.PacketParser()
        self.received: list[mqtt.Packet] = []
        self.unread: list[mqtt.Packet] = []
        self.waiting: list[tuple[int, defer.Deferred]] = []
        self.closed: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        for packet in self.parser.feed(data):
            self.received.append(packet)
            self.unread.append(packet)
        self._match()

    def connectionLost(self, reason=None) -> None:
        self.closed.callback(time.monotonic())

    def _match(self) -> None:
        for ptype, d in list(self.waiting):
            packet = next((p for p in self.unread if p.type == ptype), None)
            if packet is not None:
                self.unread.remove(packet)
                self.waiting.remove((ptype, d))
                d.callback(packet)

    def expect(self, ptype: int, what: str) -> defer.Deferred:
        """The next unread packet of *ptype* (already received or yet to come)."""
        d: defer.Deferred = defer.Deferred()
        self.waiting.append((ptype, d))
        self._match()
        return within(d, what)

    def publishes(self) -> list[mqtt.Packet]:
        return [p for p in self.received if p.type == mqtt.PUBLISH]

    def send(self, data: bytes) -> None:
        self.transport.write(data)


@defer.inlineCallbacks
def raw_client(port: int, client_id: str, keepalive: int = 60, will: mqtt.Will | None = None, host: str = "127.0.0.1"):
    cls = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    proto = yield connectProtocol(cls(reactor, host, port), RawMQTT())
    proto.send(mqtt.encode_connect(client_id, keepalive, will=will))
    ack = yield proto.expect(mqtt.CONNACK, f"CONNACK for {client_id}")
    assert ack.return_code == 0, ack
    return proto


@defer.inlineCallbacks
def raw_subscribe(proto: RawMQTT, topic_filter: str, qos: int = 1, packet_id: int = 1):
    proto.send(mqtt.encode_subscribe(packet_id, [(topic_filter, qos)]))
    ack = yield proto.expect(mqtt.SUBACK, f"SUBACK for {topic_filter}")
    return ack


class BrokerTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.broker = BrokerService("tcp:0:interface=127.0.0.1")
        self.broker.startService()
        host, self.port = yield within(self.broker.whenListening(), "the broker to listen")
        self.assertEqual(host, "127.0.0.1")
        self.assertNotEqual(self.port, 0)
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.clients: list[PubSubClient] = []
        self.raws: list[RawMQTT] = []

    @defer.inlineCallbacks
    def tearDown(self):
        for c in self.clients:
            if c.running:
                yield c.stopService()
        for r in self.raws:
            if r.transport.connected:
                r.transport.abortConnection()
        yield self.broker.stopService()

    @defer.inlineCallbacks
    def client(self, **kw) -> PubSubClient:
        c = PubSubClient(self.url, reactor, **kw)
        self.clients.append(c)
        c.startService()
        yield within(c.whenConnected(), "the client to connect")
        return c

    @defer.inlineCallbacks
    def raw(self, client_id: str, **kw) -> RawMQTT:
        proto = yield raw_client(self.port, client_id, **kw)
        self.raws.append(proto)
        return proto

    @defer.inlineCallbacks
    def test_publish_subscribe_qos0_and_qos1(self):
        a = yield self.client()
        b = yield self.client()
        inbox = Inbox()
        yield b.subscribe("t/+", inbox)
        got = inbox.next()
        yield a.publish("t/1", b"zero", qos=0)
        m = yield got
        self.assertEqual((m.topic, m.payload), ("t/1", b"zero"))
        got = inbox.next()
        yield within(a.publish("t/2", b"one", qos=1), "PUBACK")
        m = yield got
        self.assertEqual(m.payload, b"one")

    @defer.inlineCallbacks
    def test_qos1_publish_is_acknowledged_with_its_packet_id(self):
        sub = yield self.raw("sub")
        yield raw_subscribe(sub, "q/#", qos=1)
        pub = yield self.raw("pub")
        pub.send(mqtt.encode_publish("q/x", b"payload", qos=1, packet_id=4242))
        ack = yield pub.expect(mqtt.PUBACK, "PUBACK")
        self.assertEqual(ack.packet_id, 4242)
        m = yield sub.expect(mqtt.PUBLISH, "the QoS 1 message")
        self.assertEqual((m.topic, m.payload, m.qos), ("q/x", b"payload", 1))
        sub.send(mqtt.encode_ack(mqtt.PUBACK, m.packet_id))

    @defer.inlineCallbacks
    def test_retained_message_and_clearing_it(self):
        a = yield self.client()
        yield a.publish("r/x", b"kept", qos=1, retain=True)
        b = yield self.client()
        inbox = Inbox()
        got = inbox.next("the retained message")
        yield b.subscribe("r/#", inbox)
        m = yield got
        self.assertTrue(m.retain)
        self.assertEqual(m.payload, b"kept")
        yield a.publish("r/x", b"", qos=1, retain=True)  # empty retained payload clears it
        c = yield self.client()
        inbox2 = Inbox()
        yield c.subscribe("r/#", inbox2)
        yield c.barrier()
        self.assertEqual([m for m in inbox2.messages if m.retain], [])

    @defer.inlineCallbacks
    def test_retained_messages_go_only_to_their_subscribers(self):
        """amqtt replayed every retained message any client subscribed to on each CONNECT."""
        owner = yield self.raw("owner")
        owner.send(mqtt.encode_publish("private/x", b"kept", qos=0, retain=True))
        listener = yield self.raw("listener")
        yield raw_subscribe(listener, "private/#", qos=0)
        first = yield listener.expect(mqtt.PUBLISH, "the retained message")
        self.assertEqual((first.topic, first.retain), ("private/x", True))
        newcomer = yield self.raw("newcomer")
        yield raw_subscribe(newcomer, "elsewhere/#", qos=0)  # replays happen before this SUBACK
        self.assertEqual(newcomer.publishes(), [])

    @defer.inlineCallbacks
    def test_will_published_when_a_client_is_killed(self):
        watcher = yield self.client()
        inbox = Inbox()
        yield watcher.subscribe("wills/#", inbox)
        script = (
            "import socket, sys, time\n"
            "from oneos.pubsub import mqtt\n"
            f"s = socket.create_connection(('127.0.0.1', {self.port}))\n"
            "s.sendall(mqtt.encode_connect('victim', 60, will=mqtt.Will('wills/victim', b'gone', 1, False)))\n"
            "s.recv(4)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        line = yield within(threads.deferToThread(proc.stdout.readline), "the victim to connect")
        self.assertEqual(line.strip(), b"ready")
        got = inbox.next("the will")
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        m = yield got
        latency = time.monotonic() - killed
        proc.wait()
        self.assertEqual((m.topic, m.payload), ("wills/victim", b"gone"))
        # the kernel closes a killed process's sockets, so amqtt sees EOF at once
        self.assertLess(latency, 2.0)

    @defer.inlineCallbacks
    def test_clean_disconnect_sends_no_will(self):
        watcher = yield self.client()
        inbox = Inbox()
        yield watcher.subscribe("wills/#", inbox)
        polite = yield self.client(will=mqtt.Will("wills/polite", b"gone", 1, False))
        yield polite.stopService()
        yield watcher.barrier()
        self.assertEqual(inbox.messages, [])

    @defer.inlineCallbacks
    def test_silent_client_is_dropped_after_one_and_a_half_keepalives(self):
        """amqtt never enforced keep-alive: a half-open connection kept its will forever."""
        watcher = yield self.raw("watcher")
        yield raw_subscribe(watcher, "wills/#", qos=0)
        connected = time.monotonic()
        silent = yield self.raw("silent", keepalive=1, will=mqtt.Will("wills/silent", b"gone", 0, False))
        closed_at = yield within(silent.closed, "the silent client to be dropped")
        will = yield watcher.expect(mqtt.PUBLISH, "the silent client's will")
        self.assertEqual((will.topic, will.payload), ("wills/silent", b"gone"))
        self.assertGreaterEqual(closed_at - connected, 1.0)  # not before its keep-alive ran out

    @defer.inlineCallbacks
    def test_pinging_client_is_kept(self):
        watcher = yield self.raw("watcher")
        yield raw_subscribe(watcher, "wills/#", qos=0)
        lively = yield self.raw("lively", keepalive=1, will=mqtt.Will("wills/lively", b"gone", 0, False))
        pings = task.LoopingCall(lively.send, mqtt.encode_simple(mqtt.PINGREQ))
        pings.start(0.5)
        try:
            for n in range(6):  # three seconds: twice the 1.5 s limit
                yield lively.expect(mqtt.PINGRESP, f"PINGRESP {n}")
        finally:
            pings.stop()
        self.assertFalse(lively.closed.called)
        self.assertEqual(watcher.publishes(), [])

    @defer.inlineCallbacks
    def test_client_id_takeover_closes_the_old_connection_and_sends_its_will_first(self):
        """amqtt left the old connection open and sent its (retained) will whenever it died."""
        watcher = yield self.raw("watcher")
        yield raw_subscribe(watcher, "status/#", qos=0)
        old = yield self.raw("rt", will=mqtt.Will("status/rt", b"dead", 0, True))
        new = yield self.raw("rt", will=mqtt.Will("status/rt", b"dead", 0, True))
        yield within(old.closed, "the old connection to be closed")
        will = yield watcher.expect(mqtt.PUBLISH, "the old connection's will")
        self.assertEqual(will.payload, b"dead")
        new.send(mqtt.encode_publish("status/rt", b"alive", qos=1, retain=True, packet_id=1))
        yield new.expect(mqtt.PUBACK, "PUBACK of the new status")
        late = yield self.raw("late")
        yield raw_subscribe(late, "status/#", qos=0)
        retained = yield late.expect(mqtt.PUBLISH, "the retained status")
        self.assertEqual(retained.payload, b"alive")
        self.assertFalse(new.closed.called)

    @defer.inlineCallbacks
    def test_rpc_round_trip_and_timeout_over_a_real_broker(self):
        server_client = yield self.client()
        server = RPCServer(server_client, "svc", {"echo": lambda text: text.upper()})
        yield server.start()
        caller = yield self.client()
        rpc = RPCClient(caller, reactor)
        answer = yield within(rpc.call("svc", "echo", text="hi"), "the echo reply")
        self.assertEqual(answer, "HI")
        with self.assertRaises(RPCTimeout) as e:
            yield rpc.call("nobody-serves-this", "ping", timeout=0.5)
        self.assertIn("no answer from 'nobody-serves-this'", str(e.exception))

    @defer.inlineCallbacks
    def test_port_in_use_is_a_clear_error(self):
        other = BrokerService(f"tcp:{self.port}:interface=127.0.0.1")
        other.startService()
        with self.assertRaises(BrokerError) as e:
            yield within(other.whenListening(), "the bind failure")
        self.assertEqual(
            str(e.exception),
            f"the MQTT broker could not listen on 127.0.0.1:{self.port}: address already in use "
            "(is another broker running there?)",
        )
        yield other.stopService()


class ListenerTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_websocket_listener(self):
        import websockets.asyncio.client

        broker = BrokerService("tcp:0:interface=127.0.0.1", websocket="tcp:0:interface=127.0.0.1")
        broker.startService()
        self.addCleanup(broker.stopService)
        yield within(broker.whenListening(), "the broker to listen")
        host, port = broker.websocket_address

        async def connect() -> mqtt.Packet:
            async with websockets.asyncio.client.connect(f"ws://{host}:{port}/", subprotocols=["mqtt"]) as ws:
                await ws.send(mqtt.encode_connect("browser", 30))
                [ack] = mqtt.PacketParser().feed(await ws.recv())
                return ack

        ack = yield within(defer.Deferred.fromFuture(asyncio.ensure_future(connect())), "CONNACK over websockets")
        self.assertEqual((ack.type, ack.return_code), (mqtt.CONNACK, 0))

    @defer.inlineCallbacks
    def test_ipv6_listener(self):
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError:
            raise unittest.SkipTest("no IPv6 loopback here") from None
        broker = BrokerService("tcp6:0:interface=\\:\\:1")
        broker.startService()
        self.addCleanup(broker.stopService)
        host, port = yield within(broker.whenListening(), "the broker to listen on ::1")
        self.assertEqual(host, "::1")
        proto = yield raw_client(port, "v6", host="::1")
        proto.transport.loseConnection()

    @defer.inlineCallbacks
    def test_stop_during_startup_leaves_nothing_listening(self):
        port = free_port()
        broker = BrokerService(f"tcp:{port}:interface=127.0.0.1")
        broker.startService()
        yield within(broker.stopService(), "the stop")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

    @defer.inlineCallbacks
    def test_restart_in_place(self):
        port = free_port()
        broker = BrokerService(f"tcp:{port}:interface=127.0.0.1")
        for _ in range(2):
            broker.startService()
            where = yield within(broker.whenListening(), "the broker to listen")
            self.assertEqual(where, ("127.0.0.1", port))
            proto = yield raw_client(port, "again")
            proto.transport.loseConnection()
            yield within(broker.stopService(), "the stop")


@pytest.mark.parametrize(
    "bad",
    ["unix:/tmp/x", "ssl:8883", "tcp:notaport", "tcp:1883:backlog=5", "tcp:70000", "tcp:1883:interface=::1", "tcp"],
)
def test_bad_listen_endpoints_are_refused(bad):
    with pytest.raises(BrokerError, match="broker listen endpoint"):
        BrokerService(bad)


def test_listen_endpoint_syntax():
    assert parse_listen("tcp:1883") == ("0.0.0.0", 1883)
    assert parse_listen("tcp:0:interface=127.0.0.1") == ("127.0.0.1", 0)
    assert parse_listen("tcp:port=1884:interface=10.0.0.1") == ("10.0.0.1", 1884)
    assert parse_listen("tcp6:1883:interface=\\:\\:1") == ("::1", 1883)
    assert parse_listen("tcp6:1883") == ("::", 1883)


# --------------------------------------------------------------------------
# the reactor, twistd and the command line, as real processes


def _run(*argv: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """*argv* under this interpreter; with *cwd*, ONEOS_HOME is there too (a broker's first start writes its
    network's credentials into its home, which must not be one other tests log in from)."""
    env = dict(os.environ, ONEOS_HOME=str(cwd / "home")) if cwd is not None else None
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def test_install_asyncio_reactor_installs_checks_and_refuses():
    script = (
        "import sys\n"
        "from oneos.reactor import install_asyncio_reactor\n"
        "from oneos.errors import OneOSError\n"
        "install_asyncio_reactor(); install_asyncio_reactor()\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n"
    )
    assert _run("-c", script).stdout.strip() == "AsyncioSelectorReactor"
    refused = (
        "from twisted.internet import pollreactor; pollreactor.install()\n"
        "from oneos.reactor import install_asyncio_reactor\n"
        "install_asyncio_reactor()\n"
    )
    result = _run("-c", refused)
    assert result.returncode != 0
    assert "OneOSError: OneOS needs Twisted's asyncio reactor but PollReactor is already installed" in result.stderr


def test_twistd_with_another_reactor_says_what_to_do(tmp_path):
    result = _run("-m", "oneos.twistd", "-n", "--pidfile=", "--reactor=poll", "oneospsd", "--port", "0", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "run twistd with '--reactor=asyncio' or without '--reactor'" in out
    assert "Traceback" not in out


def test_twistd_lists_both_plugins(tmp_path):
    """The installed ``twistd`` script (not the repo on sys.path via cwd) finds the plugins."""
    script = Path(sys.executable).with_name("twistd")
    argv = [str(script), "--help"] if script.exists() else [sys.executable, "-m", "oneos.twistd", "--help"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path).stdout
    assert "oneosd" in out
    assert "oneospsd" in out and "MQTT 3.1.1 broker" in out


def test_psd_help_shows_the_plugin_options(tmp_path):
    result = _run("-m", "oneos.cli.main", "psd", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "oneospsd" in result.stdout
    for option in ("--port", "--interface", "--websocket-port", "--port-file"):
        assert option in result.stdout


def _connack(host: str, port: int) -> mqtt.Packet:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(mqtt.encode_connect("probe", 10))
        data = b""
        while not (packets := mqtt.PacketParser().feed(data)):
            chunk = s.recv(4)
            assert chunk, "broker closed the connection"
            data += chunk
    return packets[0]


def test_oneospsd_process_serves_clients_and_stops_cleanly(amqtt_broker: BrokerProcess):
    ack = _connack(amqtt_broker.host, amqtt_broker.port)
    assert ack.type == mqtt.CONNACK and ack.return_code == 0
    amqtt_broker.stop()
    # twistd re-raises the signal that stopped it, after a clean shutdown
    assert amqtt_broker.process.returncode in (0, -signal.SIGTERM)
    log = amqtt_broker.log()
    assert "MQTT broker stopped" in log and "Traceback" not in log


def test_oneospsd_restarts_on_the_same_port(amqtt_broker: BrokerProcess):
    port = amqtt_broker.port
    amqtt_broker.kill()
    amqtt_broker.restart()
    assert amqtt_broker.port == port
    assert _connack(amqtt_broker.host, port).return_code == 0


def test_oneospsd_port_in_use_is_one_plain_line(amqtt_broker: BrokerProcess, tmp_path):
    result = _run(
        "-m",
        "oneos.twistd",
        "-n",
        "--pidfile=",
        "oneospsd",
        "--interface",
        "127.0.0.1",
        "--port",
        str(amqtt_broker.port),
        cwd=tmp_path,
        timeout=60,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1
    assert f"could not listen on 127.0.0.1:{amqtt_broker.port}: address already in use" in out
    assert "Traceback" not in out


def test_mosquitto_fixture(mosquitto_broker: BrokerProcess):
    assert _connack(mosquitto_broker.host, mosquitto_broker.port).return_code == 0


def test_oneosd_help_tells_the_truth():
    out = _run("-m", "oneos.twistd", "oneosd", "--help").stdout
    for option in ("--pubsub", "--store", "--kernel", "--no-kernel", "--memory", "--id", "--broker", "--keepalive"):
        assert option in out


def test_oneosd_bad_config_is_one_plain_line(tmp_path):
    (tmp_path / "config.json").write_text('{"memory_mb": "lots"}')
    result = subprocess.run(
        [sys.executable, "-m", "oneos.twistd", "-n", "--pidfile=", "oneosd"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ONEOS_HOME": str(tmp_path)},
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "config field 'memory_mb'" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
