"""Resource hygiene, driven deterministically: idle timeouts and size limits on task.Clock and StringTransport.

Covers issue 9 item 5: connections that never log in or never present a
token are closed; oversized MQTT messages are refused when published and
skipped (not a reconnect loop) when received; a write stream that goes
quiet, fails or is aborted gives its upload's space back.
"""

from __future__ import annotations

import random

import pytest
from twisted.conch.ssh import factory as ssh_factory
from twisted.conch.ssh import keys
from twisted.conch.ssh.service import SSHService
from twisted.conch.telnet import ITelnetProtocol, TelnetProtocol, TelnetTransport
from twisted.cred import portal as cred_portal
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from oneos.fs.errors import StoreUnavailable
from oneos.fs.service import FileSystemService, UploadAbandoned, _WriterSink
from oneos.pubsub import mqtt
from oneos.pubsub.client import MessageTooLarge, PubSubClient
from oneos.shell.ssh import SSHTransport
from oneos.shell.telnet import TelnetLogin
from oneos.transfer import StreamFactory, TransferServer
from test_pubsub_client import FakeBroker, TCPStringTransport


@pytest.fixture
def logged():
    """Text of every log event emitted during the test."""
    lines: list[str] = []

    def observe(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# -- MQTT codec: oversized PUBLISH skipped, not buffered ------------------------------------


def test_oversized_publish_is_skipped_as_it_arrives():
    parser = mqtt.PacketParser(max_packet=1000, skip_oversize=True)
    big = mqtt.encode_publish("t/x", b"z" * 50_000, qos=1, retain=True, packet_id=7)
    data = big + mqtt.encode_publish("t/y", b"ok") + mqtt.encode_simple(mqtt.PINGRESP)
    out = []
    for i in range(0, len(data), 333):
        out += parser.feed(data[i : i + 333])
        assert len(parser._buffer) <= 1000  # never holds the big one
    assert [p.type for p in out] == [mqtt.PUBLISH, mqtt.PUBLISH, mqtt.PINGRESP]
    skipped, small = out[0], out[1]
    assert skipped.oversize == 2 + 3 + 2 + 50_000 and skipped.payload == b""
    assert (skipped.topic, skipped.packet_id, skipped.qos, skipped.retain) == ("t/x", 7, 1, True)
    assert (small.topic, small.payload, small.oversize) == ("t/y", b"ok", 0)


def test_oversized_publish_in_one_piece_and_other_oversized_packets():
    parser = mqtt.PacketParser(max_packet=100, skip_oversize=True)
    [p] = parser.feed(mqtt.encode_publish("a", b"x" * 500))
    assert p.oversize and p.packet_id is None and p.topic == "a"
    with pytest.raises(mqtt.MalformedPacket):  # only PUBLISH may be skipped
        mqtt.PacketParser(max_packet=10, skip_oversize=True).feed(mqtt.encode_suback(1, [0] * 50))


# -- the client: refuses to publish too much, drops what is too large ----------------------


@pytest.fixture
def reactor():
    return MemoryReactorClock()


def connected_client(reactor, **kw):
    c = PubSubClient("mqtt://broker.example:1884", reactor, client_id="me", keepalive=2, rng=random.Random(1), **kw)
    c.startService()
    broker = FakeBroker(reactor)
    broker.accept()
    return c, broker


def test_publishing_over_the_limit_is_a_clear_error_and_sends_nothing(reactor):
    client, broker = connected_client(reactor, max_message=1000)
    failures = []
    client.publish("t/x", b"x" * 1001, qos=1).addErrback(failures.append)
    assert failures and failures[0].check(MessageTooLarge)
    assert "1001 bytes" in str(failures[0].value) and "1000-byte limit" in str(failures[0].value)
    assert broker.received() == []
    ok = client.publish("t/x", b"x" * 1000, qos=0)
    assert ok.called and broker.received()[0].payload == b"x" * 1000


def test_default_limit_is_one_mib(reactor):
    client, _ = connected_client(reactor)
    assert client.max_message == 1024 * 1024


def test_an_oversized_message_is_dropped_logged_and_acknowledged_not_a_reconnect(reactor, logged):
    client, broker = connected_client(reactor, max_message=10_000)
    got = []
    client.subscribe("t/#", got.append)
    [sub] = broker.received()
    broker.send(mqtt.encode_suback(sub.packet_id, [1]))
    big = mqtt.encode_publish("t/big", b"B" * 200_000, qos=1, retain=True, packet_id=42)
    broker.send(big, piece=4096)
    broker.send(mqtt.encode_publish("t/small", b"s", qos=0))
    assert [m.topic for m in got] == ["t/small"]
    [ack] = broker.received()
    assert (ack.type, ack.packet_id) == (mqtt.PUBACK, 42)
    assert client.connected and not broker.transport.disconnecting
    assert any("dropped a" in line and "t/big" in line and "10000-byte" in line for line in logged)


def test_a_message_at_the_limit_with_a_long_topic_is_delivered(reactor):
    client, broker = connected_client(reactor, max_message=1000)
    got = []
    client.subscribe("#", got.append)
    [sub] = broker.received()
    broker.send(mqtt.encode_suback(sub.packet_id, [1]))
    topic = "t/" + "x" * 3000
    broker.send(mqtt.encode_publish(topic, b"p" * 1000, qos=0))
    assert len(got) == 1 and len(got[0].payload) == 1000


def test_keepalive_waits_while_a_large_message_is_still_arriving(reactor):
    client, broker = connected_client(reactor, max_message=10_000)
    reactor.advance(1.0)  # idle: a PINGREQ goes out
    assert [p.type for p in broker.received()] == [mqtt.PINGREQ]
    big = mqtt.encode_publish("t/big", b"B" * 100_000)
    for i in range(0, 60_000, 10_000):  # bytes keep coming, slower than the keep-alive
        reactor.advance(0.5)
        broker.send(big[i : i + 10_000])
    assert client.connected and not broker.transport.disconnected
    reactor.advance(1.0)
    reactor.advance(1.0)  # then nothing at all: a dead broker is still dropped
    assert broker.transport.disconnected


# -- streams: a connection that never sends its token line ------------------------------------


def stream_connection(clock, **kw):
    server = TransferServer(None, clock=clock, **kw)
    factory = StreamFactory()
    factory.server = server
    conn = factory.buildProtocol(None)
    transport = TCPStringTransport()
    conn.makeConnection(transport)
    return server, conn, transport


def test_a_stream_connection_without_a_token_line_is_closed(logged):
    clock = task.Clock()
    _, conn, transport = stream_connection(clock)
    conn.dataReceived(b"abc")  # part of a line is not a line
    clock.advance(9.9)
    assert not transport.disconnected
    clock.advance(0.2)
    assert transport.disconnected  # aborted: such a peer may not read either
    assert any("no token line within 10s" in line for line in logged)


def test_a_token_line_in_time_stops_the_clock():
    clock = task.Clock()
    server, conn, transport = stream_connection(clock, token_line_timeout=2.0, token_ttl=60)

    class Sink:
        def write(self, data):
            return defer.succeed(None)

        def finish(self):
            return defer.succeed({})

        def abort(self):
            pass

    token, _ = server.offer(sink=Sink())
    clock.advance(1.5)
    conn.dataReceived(token.encode() + b"\n")
    clock.advance(10)
    assert not transport.disconnected and not transport.disconnecting
    conn.connectionLost(Failure(Exception("bye")))
    assert not clock.getDelayedCalls() or all(
        not c.active() for c in clock.getDelayedCalls() if c.func.__name__ == "_no_token_line"
    )


def test_closing_before_the_timeout_leaves_no_timer():
    clock = task.Clock()
    _, conn, _ = stream_connection(clock)
    conn.connectionLost(Failure(Exception("gone")))
    assert clock.getDelayedCalls() == []


# -- the shell's front doors: login grace ----------------------------------------------------


def ssh_transport(clock, grace=60.0):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    f = ssh_factory.SSHFactory()
    f.protocol = SSHTransport
    f.login_grace = grace
    f.clock = clock
    f.publicKeys = {key.sshType(): key.public()}
    f.privateKeys = {key.sshType(): key}
    f.primes = {}
    t = f.buildProtocol(None)
    transport = TCPStringTransport()
    t.makeConnection(transport)
    return t, transport


def test_ssh_connection_that_never_logs_in_is_disconnected(logged):
    clock = task.Clock()
    t, transport = ssh_transport(clock)
    assert transport.value().startswith(b"SSH-2.0-")
    clock.advance(59)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting  # with an SSH DISCONNECT saying why
    assert b"login grace time exceeded" in transport.value()
    assert any("not logged in within 60s" in line for line in logged)
    clock.advance(5)
    assert transport.disconnected  # a peer that reads nothing is cut


def test_ssh_grace_ends_at_authentication():
    clock = task.Clock()
    t, transport = ssh_transport(clock, grace=10)
    t.avatar = object()  # what conch's userauth sets before starting the connection service
    service = SSHService()
    service.name = b"ssh-connection"
    t.setService(service)
    clock.advance(100)
    assert not transport.disconnecting


def test_ssh_grace_can_be_turned_off():
    clock = task.Clock()
    _, transport = ssh_transport(clock, grace=None)
    clock.advance(10_000)
    assert not transport.disconnecting and clock.getDelayedCalls() == []


@implementer(cred_portal.IRealm)
class _Realm:
    def requestAvatar(self, avatar_id, mind, *interfaces):
        return ITelnetProtocol, TelnetProtocol(), lambda: None


def telnet(clock, grace=60.0):
    portal = cred_portal.Portal(_Realm(), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"pw")])
    proto = TelnetTransport(TelnetLogin, portal, grace, clock)
    transport = TCPStringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_telnet_login_times_out(logged):
    clock = task.Clock()
    proto, transport = telnet(clock)
    assert b"Username: " in transport.value()
    proto.dataReceived(b"alice\r\n")
    proto.dataReceived(b"wrong\r\n")  # a refused try does not restart the clock
    clock.advance(61)
    assert transport.disconnecting and b"Login timed out" in transport.value()
    assert any("telnet: closing the connection" in line for line in logged)


def test_telnet_grace_ends_at_login():
    clock = task.Clock()
    proto, transport = telnet(clock, grace=5)
    proto.dataReceived(b"alice\r\n")
    proto.dataReceived(b"pw\r\n")
    clock.advance(100)
    assert not transport.disconnecting


# -- the file-system service: uploads that fail or go quiet ---------------------------------


class FakeWriter:
    def __init__(self, path="/f"):
        self.path = path
        self.written: list[bytes] = []
        self.pending: defer.Deferred | None = None
        self.aborted = 0
        self.touched = 0
        self.committed = False

    def write(self, data):
        self.written.append(data)
        self.pending = defer.Deferred()
        return self.pending

    def commit(self):
        self.committed = True

        class S:
            def to_dict(self):
                return {"size": 1}

        return defer.succeed(S())

    def abort(self):
        self.aborted += 1
        return defer.succeed(None)

    def keep_alive(self):
        self.touched += 1
        return defer.succeed(None)


def test_a_quiet_write_stream_is_discarded_after_the_timeout(logged):
    clock = task.Clock()
    writer = FakeWriter("/big")
    ended = []
    sink = _WriterSink(writer, clock, 60.0, ended.append)
    clock.advance(30)
    d = sink.write(b"a")
    clock.advance(100)  # the store takes its time with this chunk: not the peer's silence
    assert writer.aborted == 0
    writer.pending.callback(None)
    clock.advance(59)
    assert writer.aborted == 0
    clock.advance(2)
    assert writer.aborted == 1 and ended == [sink]
    assert any("write to /big abandoned: no data for 60s" in line for line in logged)
    late = []
    sink.write(b"more").addErrback(late.append)
    assert late and late[0].check(UploadAbandoned) and late[0].value.code == "ETIMEDOUT"
    assert d.called


def test_a_finished_or_aborted_stream_stops_its_clock():
    clock = task.Clock()
    w1, w2 = FakeWriter(), FakeWriter()
    done = []
    s1 = _WriterSink(w1, clock, 60.0, done.append)
    s1.finish()
    s2 = _WriterSink(w2, clock, 60.0, done.append)
    s2.abort()
    clock.advance(1000)
    assert w1.committed and w1.aborted == 0 and w2.aborted == 1 and done == [s1, s2]
    assert clock.getDelayedCalls() == []


class FakeStore:
    def __init__(self):
        self.calls: list = []
        self.leftovers = 0
        self.broken = False
        self.closed = False

    def discard_leftovers(self):
        self.calls.append("leftovers")
        self.leftovers = 0
        return defer.succeed(1)

    def collect_garbage(self, stale_after):
        self.calls.append(("gc", stale_after))
        if self.broken:
            return defer.fail(StoreUnavailable("file store test", "gone"))
        return defer.succeed(0)

    def stat(self, path):
        if self.broken:
            return defer.fail(StoreUnavailable("file store test", "gone"))
        return defer.succeed(None)

    def close(self):
        self.closed = True
        return defer.succeed(None)


def fs_service(clock):
    svc = FileSystemService("sqlite:///:memory:", client=None, transfer=None, reactor=clock)
    svc.running = True
    return svc


def test_maintenance_keeps_live_uploads_retries_failed_discards_and_collects():
    clock = task.Clock()
    svc = fs_service(clock)
    store = svc.store = FakeStore()
    store.leftovers = 2
    writer = FakeWriter()
    svc.writers.add(_WriterSink(writer, clock, 60.0, svc.writers.discard))
    svc._collect()
    assert writer.touched == 1
    assert store.calls == ["leftovers", ("gc", 120.0)]
    assert svc.gc_interval == 30.0 and svc.upload_timeout == 60.0


def test_a_lost_store_is_closed_and_opened_again(logged):
    clock = task.Clock()
    svc = fs_service(clock)
    store = svc.store = FakeStore()
    store.broken = True
    writer = FakeWriter()
    svc.writers.add(_WriterSink(writer, clock, 60.0, svc.writers.discard))
    svc._collect()
    assert svc.store is None and store.closed and writer.aborted == 1
    assert isinstance(svc.last_error, StoreUnavailable)
    assert svc._retry is not None and svc._retry.active()  # opening again, with backoff
    assert any("file store lost" in line for line in logged)


def test_a_store_that_still_reads_is_kept():
    clock = task.Clock()
    svc = fs_service(clock)
    store = svc.store = FakeStore()

    def gc_fails(stale_after):
        return defer.fail(StoreUnavailable("file store test", "busy"))

    store.collect_garbage = gc_fails
    svc._collect()
    assert svc.store is store and svc._retry is None
