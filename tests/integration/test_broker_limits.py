"""Our broker's limits over real TCP, in process: the CONNECT deadline and the message size limit.

amqtt waits for a CONNECT forever and reads, retains and forwards a PUBLISH
of any size; ``_FixedBroker`` closes a connection that sends no CONNECT in
time and cuts oversized publishes out of the stream (logged, acknowledged,
never retained or forwarded), as Mosquitto's ``message_size_limit`` does.
"""

from __future__ import annotations

import time

import pytest
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

import test_broker as tb
from oneos.broker.service import BrokerError, BrokerService
from oneos.pubsub import mqtt
from oneos.pubsub.client import PubSubClient


class LimitTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.broker = BrokerService("tcp:0:interface=127.0.0.1", max_message=1000, connect_timeout=0.5)
        self.broker.startService()
        _, self.port = yield tb.within(self.broker.whenListening(), "the broker to listen")
        self.raws: list[tb.RawMQTT] = []
        self.clients: list[PubSubClient] = []
        self.logged: list[str] = []
        self.observer = lambda event: self.logged.append(formatEvent(event))
        globalLogPublisher.addObserver(self.observer)

    @defer.inlineCallbacks
    def tearDown(self):
        globalLogPublisher.removeObserver(self.observer)
        for c in self.clients:
            if c.running:
                yield c.stopService()
        for r in self.raws:
            if r.transport.connected:
                r.transport.abortConnection()
        yield self.broker.stopService()

    @defer.inlineCallbacks
    def raw(self, client_id: str, **kw):
        proto = yield tb.raw_client(self.port, client_id, **kw)
        self.raws.append(proto)
        return proto

    @defer.inlineCallbacks
    def bare(self):
        proto = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), tb.RawMQTT())
        self.raws.append(proto)
        return proto

    @defer.inlineCallbacks
    def alive(self, proto: tb.RawMQTT, what: str):
        proto.send(mqtt.encode_simple(mqtt.PINGREQ))
        yield proto.expect(mqtt.PINGRESP, f"PINGRESP ({what})")

    # -- CONNECT deadline -------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_a_connection_that_sends_no_connect_is_closed(self):
        start = time.monotonic()
        silent = yield self.bare()
        partial = yield self.bare()
        partial.send(mqtt.encode_connect("slow", 60)[:5])  # a CONNECT that never completes
        for proto in (silent, partial):
            closed_at = yield tb.within(proto.closed, "the broker to close a connection without CONNECT", 10)
            self.assertGreaterEqual(closed_at - start, 0.4)
        self.assertTrue(any("no CONNECT within 0.5s" in line for line in self.logged))

    @defer.inlineCallbacks
    def test_a_connected_client_is_not_timed_out(self):
        proto = yield self.raw("fine")
        yield task.deferLater(reactor, 1.2, lambda: None)
        yield self.alive(proto, "after the CONNECT deadline")

    # -- message size ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_an_oversized_publish_is_dropped_acknowledged_and_never_retained(self):
        sub = yield self.raw("sub")
        yield tb.raw_subscribe(sub, "t/#")
        pub = yield self.raw("pub")
        pub.send(mqtt.encode_publish("t/big", b"B" * 5000, qos=1, retain=True, packet_id=5))
        pub.send(mqtt.encode_publish("t/ok", b"small", qos=1, packet_id=6))
        acks = []
        for _ in range(2):
            acks.append((yield pub.expect(mqtt.PUBACK, "PUBACK")))
        self.assertEqual(sorted(a.packet_id for a in acks), [5, 6])
        got = yield sub.expect(mqtt.PUBLISH, "the small message")
        self.assertEqual(got.topic, "t/ok")
        yield self.alive(pub, "the publisher stays connected")
        yield self.alive(sub, "the subscriber stays connected")
        self.assertEqual([p.topic for p in sub.publishes()], ["t/ok"])
        late = yield self.raw("late")
        yield tb.raw_subscribe(late, "t/#")
        yield self.alive(late, "after subscribing")
        self.assertEqual(late.publishes(), [])  # nothing retained
        self.assertTrue(any("dropped a" in line and "t/big" in line and "1000-byte" in line for line in self.logged))

    @defer.inlineCallbacks
    def test_qos0_and_qos2_oversized_publishes(self):
        pub = yield self.raw("pub")
        pub.send(mqtt.encode_publish("t/a", b"x" * 3000, qos=0))
        body = b"\x00\x03t/b\x00\x09" + b"y" * 3000  # QoS 2, packet id 9
        pub.send(bytes([0x34]) + mqtt._encode_length(len(body)) + body)
        rec = yield pub.expect(mqtt.PUBREC, "PUBREC")
        self.assertEqual(rec.packet_id, 9)
        pub.send(mqtt.encode_ack(mqtt.PUBREL, 9))
        comp = yield pub.expect(mqtt.PUBCOMP, "PUBCOMP")
        self.assertEqual(comp.packet_id, 9)
        yield self.alive(pub, "after both")

    @defer.inlineCallbacks
    def test_the_limit_is_on_the_payload_not_the_topic(self):
        sub = yield self.raw("sub")
        yield tb.raw_subscribe(sub, "#")
        pub = yield self.raw("pub")
        topic = "t/" + "x" * 2000
        pub.send(mqtt.encode_publish(topic, b"p" * 1000, qos=1, packet_id=1))
        got = yield sub.expect(mqtt.PUBLISH, "a 1000-byte payload under a long topic")
        self.assertEqual((got.topic, len(got.payload)), (topic, 1000))

    @defer.inlineCallbacks
    def test_a_slow_oversized_publish_does_not_count_as_silence(self):
        pub = yield self.raw("slowpoke", keepalive=1)  # dropped after 2 s of real silence
        data = mqtt.encode_publish("t/big", b"S" * 200_000, qos=1, packet_id=3)
        step = len(data) // 10 + 1
        for i in range(0, len(data), step):
            pub.send(data[i : i + step])
            yield task.deferLater(reactor, 0.35, lambda: None)  # 3.5 s in all
        ack = yield pub.expect(mqtt.PUBACK, "PUBACK of the slow oversized publish")
        self.assertEqual(ack.packet_id, 3)
        self.assertTrue(pub.transport.connected)

    @defer.inlineCallbacks
    def test_our_client_against_the_limit(self):
        a = PubSubClient(f"mqtt://127.0.0.1:{self.port}", reactor, max_message=100_000)
        self.clients.append(a)
        a.startService()
        yield tb.within(a.whenConnected(), "the client to connect")
        inbox = tb.Inbox()
        yield a.subscribe("t/#", inbox)
        yield a.publish("t/big", b"x" * 50_000, qos=1)  # acknowledged, dropped by the broker
        yield a.publish("t/ok", b"y", qos=1)
        got = yield inbox.next("the small message")
        self.assertEqual(got.topic, "t/ok")
        self.assertTrue(a.connected)


def test_limits_must_be_positive():
    with pytest.raises(BrokerError):
        BrokerService("tcp:0", max_message=0)
    with pytest.raises(BrokerError):
        BrokerService("tcp:0", connect_timeout=-1)


def test_defaults():
    b = BrokerService("tcp:0")
    assert (b.max_message, b.connect_timeout) == (1024 * 1024, 10.0)


def test_oneospsd_options():
    from oneos.broker import tap as plugin

    opts = plugin.Options()
    opts.parseOptions(["--max-message", "2048", "--connect-timeout", "3"])
    assert (opts["max-message"], opts["connect-timeout"]) == (2048, 3.0)
    opts = plugin.Options()
    opts.parseOptions([])
    assert (opts["max-message"], opts["connect-timeout"]) == (1024 * 1024, 10.0)
    with pytest.raises(usage.UsageError):
        plugin.Options().parseOptions(["--max-message", "-1"])
