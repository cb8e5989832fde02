"""The reconnecting client, driven deterministically: fake TCP, task.Clock time."""

import random

import pytest
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from oneos.errors import PubSubUnavailable, RPCError, RPCTimeout
from oneos.pubsub import messages, mqtt, topics
from oneos.pubsub.address import parse_broker_url
from oneos.pubsub.client import PubSubClient
from oneos.pubsub.rpc import RPCClient, RPCServer


class TCPStringTransport(StringTransport):
    """A StringTransport that, like TCP, accepts socket options."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled


class FakeBroker:
    """Plays the broker's side of one fake connection."""

    def __init__(self, reactor: MemoryReactorClock, client: PubSubClient | None = None, index: int = -1):
        host, port, factory, timeout, bind = reactor.tcpClients[index]
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        self.transport = TCPStringTransport()
        self.proto.makeConnection(self.transport)
        self.parser = mqtt.PacketParser()

    def received(self):
        data = self.transport.value()
        self.transport.clear()
        return self.parser.feed(data)

    def send(self, data: bytes, piece: int = 0):
        """Deliver *data*, in pieces of *piece* bytes if given (as TCP may cut it)."""
        for i in range(0, len(data), piece or len(data) or 1):
            self.proto.dataReceived(data[i : i + (piece or len(data))])

    def accept(self):
        [connect] = self.received()
        assert connect.type == mqtt.CONNECT
        self.send(mqtt.encode_connack(0))
        return connect

    def lose(self):
        self.proto.connectionLost(Failure(ConnectionRefusedError("gone")))


@pytest.fixture
def reactor():
    return MemoryReactorClock()


@pytest.fixture
def client(reactor):
    c = PubSubClient("mqtt://broker.example:1884", reactor, client_id="me", keepalive=2, rng=random.Random(1))
    c.startService()
    return c


def test_url_parsing():
    a = parse_broker_url("mqtt://user:pw@10.0.0.5:1999")
    assert (a.host, a.port, a.username, a.password) == ("10.0.0.5", 1999, "user", "pw")
    assert parse_broker_url("mqtt://h").port == 1883
    # userinfo is percent-encoded: a client identity USER@TAG and a password with ':' or '@' in it
    b = parse_broker_url("mqtt://alice%40laptop:p%3Aw%40x@h:1")
    assert (b.username, b.password) == ("alice@laptop", "p:w@x")
    with pytest.raises(Exception, match="pubsub"):
        parse_broker_url("http://h")


def test_small_packets_are_not_delayed(reactor, client):
    broker = FakeBroker(reactor, client)
    assert broker.transport.nodelay is True  # Nagle + delayed ACK would add ~40 ms per RPC hop


def test_connects_and_flushes_queued_publish(reactor, client):
    assert reactor.tcpClients[0][:2] == ("broker.example", 1884)
    sent = client.publish("a/b", b"x", qos=0)
    assert not sent.called
    broker = FakeBroker(reactor, client)
    ready = client.whenConnected()
    broker.accept()
    assert ready.called and sent.called and client.connected
    [pub] = broker.received()
    assert (pub.topic, pub.payload) == ("a/b", b"x")


def test_qos1_publish_fires_on_puback_and_is_resent_after_reconnect(reactor, client):
    broker = FakeBroker(reactor, client)
    broker.accept()
    d = client.publish("a/b", b"x", qos=1)
    [pub] = broker.received()
    assert not d.called
    broker.lose()
    assert not client.connected
    reactor.advance(10)  # backoff elapses: a new connection attempt
    broker2 = FakeBroker(reactor, client)
    broker2.accept()
    [resent] = broker2.received()
    assert resent.dup and resent.packet_id == pub.packet_id
    broker2.send(mqtt.encode_ack(mqtt.PUBACK, resent.packet_id))
    assert d.called


def test_subscribe_delivers_and_acks_qos1(reactor, client):
    broker = FakeBroker(reactor, client)
    broker.accept()
    got = []
    d = client.subscribe("a/+", got.append)
    [sub] = broker.received()
    assert sub.type == mqtt.SUBSCRIBE
    broker.send(mqtt.encode_suback(sub.packet_id, [1]))
    assert d.called
    broker.send(mqtt.encode_publish("a/b", b"hi", qos=1, retain=True, packet_id=9))
    assert got[0].payload == b"hi" and got[0].retain
    [ack] = broker.received()
    assert (ack.type, ack.packet_id) == (mqtt.PUBACK, 9)


def test_subscriptions_are_renewed_after_reconnect(reactor, client):
    broker = FakeBroker(reactor, client)
    broker.accept()
    client.subscribe("x/#", lambda m: None)
    broker.received()
    broker.lose()
    reactor.advance(10)
    broker2 = FakeBroker(reactor, client)
    broker2.accept()
    [sub] = broker2.received()
    assert sub.type == mqtt.SUBSCRIBE and b"x/#" in sub.payload


def test_refused_subscription_fails_plainly(reactor, client):
    broker = FakeBroker(reactor, client)
    broker.accept()
    d = client.subscribe("forbidden/#", lambda m: None)
    [sub] = broker.received()
    broker.send(mqtt.encode_suback(sub.packet_id, [0x80]))
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(PubSubUnavailable)


def test_keepalive_pings_and_drops_a_silent_broker(reactor, client):
    broker = FakeBroker(reactor, client)
    broker.accept()
    reactor.advance(1.0)
    [ping] = broker.received()
    assert ping.type == mqtt.PINGREQ
    broker.send(mqtt.encode_simple(mqtt.PINGRESP))
    reactor.advance(1.0)
    assert broker.received()[0].type == mqtt.PINGREQ
    assert not broker.transport.disconnecting
    reactor.advance(1.0)  # no PINGRESP this time
    assert broker.transport.disconnecting


def test_backoff_grows_and_is_capped(reactor, client):
    delays = []
    for _ in range(8):
        host, port, factory, timeout, bind = reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        pending = [c for c in reactor.getDelayedCalls() if c.active()]
        delays.append(max(c.getTime() for c in pending) - reactor.seconds())
        reactor.advance(delays[-1])
    assert delays[0] < delays[2] < delays[4]
    assert max(delays) <= client.max_delay * 1.2
    assert client.last_error


def test_refused_connack_retries(reactor, client):
    broker = FakeBroker(reactor, client)
    broker.received()
    broker.send(mqtt.encode_connack(5))
    assert not client.connected and broker.transport.disconnecting
    broker.lose()
    assert client.last_error == "not authorised"


def test_malformed_bytes_drop_the_connection_not_the_client(reactor, client):
    broker = FakeBroker(reactor, client)
    broker.accept()
    broker.send(b"\xf0\x00")
    assert broker.transport.disconnecting


def test_handler_exception_does_not_stop_delivery(reactor, client):
    broker = FakeBroker(reactor, client)
    broker.accept()
    got = []

    def bad(m):
        raise RuntimeError("boom")

    client.subscribe("t", bad)
    client.subscribe("t", got.append)
    for sub in broker.received():
        broker.send(mqtt.encode_suback(sub.packet_id, [1]))
    broker.send(mqtt.encode_publish("t", b"1"))
    assert [m.payload for m in got] == [b"1"]


def test_rpc_timeout_names_target_and_method(reactor, client):
    rpc = RPCClient(client, reactor)
    d = rpc.call("nobody", "ping", timeout=2)
    errors = []
    d.addErrback(errors.append)
    reactor.advance(2.1)
    assert errors and errors[0].check(RPCTimeout)
    assert "'nobody'" in str(errors[0].value) and "'ping'" in str(errors[0].value)


def test_rpc_round_trip_and_remote_error(reactor, client):
    broker = FakeBroker(reactor, client)
    broker.accept()

    def fail():
        raise RPCError("no such file", kind="ENOENT")

    server = RPCServer(client, "rt-1", {"add": lambda a, b: a + b, "fail": fail})
    server.start()
    rpc = RPCClient(client, reactor)
    results, errors = [], []
    rpc.call("rt-1", "add", a=2, b=3).addCallback(results.append)
    rpc.call("rt-1", "fail").addErrback(errors.append)
    rpc.call("rt-1", "nope").addErrback(errors.append)
    # Play the broker: ack subscriptions, echo every publish to subscribers.
    for _ in range(5):
        for p in broker.received():
            if p.type == mqtt.SUBSCRIBE:
                broker.send(mqtt.encode_suback(p.packet_id, [1]))
            elif p.type == mqtt.PUBLISH:
                broker.send(mqtt.encode_ack(mqtt.PUBACK, p.packet_id))
                broker.send(mqtt.encode_publish(p.topic, p.payload, qos=0))
    assert results == [5]
    assert [e.value.kind for e in errors] == ["ENOENT", "NoSuchMethod"]
    assert "no such file" in str(errors[0].value)


def test_rpc_server_drops_malformed_requests(reactor, client):
    broker = FakeBroker(reactor, client)
    broker.accept()
    server = RPCServer(client, "rt-1", {"ping": lambda: "pong"})
    server.start()
    [sub] = broker.received()
    broker.send(mqtt.encode_suback(sub.packet_id, [1]))
    for junk in [
        b"not json",
        b"[1,2]",
        messages.encode("rpc.request", id="x"),
        b'{"v": 99, "type": "rpc.request"}',
        messages.encode("rpc.request", id="x", method="ping", reply_to="elsewhere/topic"),
    ]:
        broker.send(mqtt.encode_publish(topics.rpc("rt-1", "rt-2"), junk))
    assert broker.received() == []  # nothing answered, nothing crashed


def test_stop_sends_disconnect_so_no_will(reactor, client):
    broker = FakeBroker(reactor, client)
    broker.accept()
    d = client.stopService()
    [p] = broker.received()
    assert p.type == mqtt.DISCONNECT
    broker.lose()
    assert d.called
