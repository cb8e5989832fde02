"""Our broker (amqtt as a Twisted service) with our client, over real TCP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from twisted.internet import defer, reactor, threads
import pytest
from twisted.trial import unittest

from oneos.broker.service import BrokerError, BrokerService
from oneos.errors import RPCTimeout
from oneos.pubsub import mqtt
from oneos.pubsub.client import PubSubClient
from oneos.pubsub.rpc import RPCClient, RPCServer

DEADLINE = 20.0


def within(d: defer.Deferred, what: str, seconds: float = DEADLINE) -> defer.Deferred:
    """Fail with a message naming *what* if *d* has not fired by the deadline."""
    timer = reactor.callLater(seconds, lambda: d.called or d.errback(AssertionError(f"timed out waiting for {what}")))
    return d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])


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


class BrokerTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.broker = BrokerService("tcp:0:interface=127.0.0.1")
        self.broker.startService()
        host, self.port = yield within(self.broker.whenListening(), "the broker to listen")
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.clients: list[PubSubClient] = []

    @defer.inlineCallbacks
    def tearDown(self):
        for c in self.clients:
            if c.running:
                yield c.stopService()
        yield self.broker.stopService()

    @defer.inlineCallbacks
    def client(self, **kw) -> PubSubClient:
        c = PubSubClient(self.url, reactor, **kw)
        self.clients.append(c)
        c.startService()
        yield within(c.whenConnected(), "the client to connect")
        return c

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
    def test_will_published_when_a_client_is_killed(self):
        watcher = yield self.client()
        inbox = Inbox()
        yield watcher.subscribe("wills/#", inbox)
        script = (
            "import socket, sys, time\n"
            "sys.path.insert(0, '.')\n"
            "from oneos.pubsub import mqtt\n"
            f"s = socket.create_connection(('127.0.0.1', {self.port}))\n"
            "s.sendall(mqtt.encode_connect('victim', 60, will=mqtt.Will('wills/victim', b'gone', 1, False)))\n"
            "s.recv(4)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        line = yield within(threads.deferToThread(proc.stdout.readline), "the victim to connect")
        self.assertEqual(line.strip(), b"ready")
        got = inbox.next("the will")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        m = yield got
        self.assertEqual((m.topic, m.payload), ("wills/victim", b"gone"))

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
        self.assertIn(f"could not listen on 127.0.0.1:{self.port}", str(e.exception))
        yield other.stopService()


def test_bad_listen_endpoints_are_refused():
    for bad in ("unix:/tmp/x", "tcp:notaport", "tcp:1883:backlog=5", "tcp:70000"):
        with pytest.raises(BrokerError):
            BrokerService(bad)


def _run(*argv):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)


def test_twistd_lists_both_plugins():
    out = _run("-m", "oneos.twistd", "--help").stdout
    assert "oneosd" in out and "oneospsd" in out


def test_psd_help_shows_the_plugin_options():
    result = _run("-m", "oneos.cli.main", "psd", "--help")
    assert result.returncode == 0
    for option in ("--port", "--interface", "--websocket-port", "--port-file"):
        assert option in result.stdout


def test_oneospsd_process_serves_clients(amqtt_broker):
    with socket.create_connection((amqtt_broker.host, amqtt_broker.port), timeout=10) as s:
        s.sendall(mqtt.encode_connect("probe", 10))
        [ack] = mqtt.PacketParser().feed(s.recv(4))
    assert ack.type == mqtt.CONNACK and ack.return_code == 0


def test_oneosd_help_tells_the_truth():
    out = _run("-m", "oneos.twistd", "oneosd", "--help").stdout
    for option in ("--pubsub", "--store", "--kernel", "--no-kernel", "--memory", "--id", "--broker", "--keepalive"):
        assert option in out


def test_oneosd_bad_config_is_one_plain_line(tmp_path):
    (tmp_path / "config.json").write_text('{"memory_mb": "lots"}')
    result = subprocess.run([sys.executable, "-m", "oneos.twistd", "-n", "--pidfile=", "oneosd"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "ONEOS_HOME": str(tmp_path)}, cwd=tmp_path)
    assert result.returncode != 0
    assert "config field 'memory_mb'" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
