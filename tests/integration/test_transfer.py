"""Streams over real loopback TCP: integrity, back-pressure, tokens, dying peers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from twisted.internet import defer, reactor, task, threads
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from zope.interface import implementer

from oneos.transfer import ERROR_LINGER, TransferError, TransferServer, receive, send

CHUNK = 256 * 1024
#: Longest any one step of a test may take before it counts as a hang (a deadline, never a pause).
DEADLINE = 30.0


def within(d: defer.Deferred, what: str, seconds: float = DEADLINE) -> defer.Deferred:
    """*d*'s outcome, or an AssertionError naming *what* if it has not come within *seconds*.

    So a transfer that hangs fails its test at once and says where, rather
    than running into trial's timeout.
    """

    def timed_out(failure):
        failure.trap(defer.TimeoutError)
        raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")

    return d.addTimeout(seconds, reactor).addErrback(timed_out)


class PatternSource:
    """Produces *total* bytes of a known pattern; counts how far it ran ahead."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.produced = 0
        self.digest = hashlib.sha256()

    def next(self) -> defer.Deferred:
        n = min(CHUNK, self.total - self.produced)
        data = os.urandom(16) * (n // 16) + os.urandom(n % 16)
        self.produced += n
        self.digest.update(data)
        return defer.succeed(data)


class HashSink:
    """Consumes bytes, optionally slowly; remembers the hash and the lag."""

    def __init__(self, delay: float = 0.0, source: PatternSource | None = None) -> None:
        self.delay = delay
        self.source = source
        self.digest = hashlib.sha256()
        self.received = 0
        self.max_lag = 0
        self.aborted = False

    def write(self, data: bytes) -> defer.Deferred:
        self.digest.update(data)
        self.received += len(data)
        if self.source is not None:
            self.max_lag = max(self.max_lag, self.source.produced - self.received)
        if self.delay:
            return task.deferLater(reactor, self.delay, lambda: None)
        return defer.succeed(None)

    def finish(self) -> defer.Deferred:
        return defer.succeed({"size": self.received})

    def abort(self) -> None:
        self.aborted = True


class TransferTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.server = TransferServer(reactor)
        self.server.startService()
        self.host, self.port = yield self.server.listen()

    def tearDown(self):
        return self.server.stopService()

    @defer.inlineCallbacks
    def test_upload_is_byte_exact(self):
        sink = HashSink()
        token, done = self.server.offer(sink=sink)
        source = PatternSource(20 * 2**20 + 123)
        status = yield send(reactor, self.host, self.port, token, source)
        self.assertEqual(status, {"size": source.total})
        self.assertEqual((yield done), {"size": source.total})
        self.assertEqual(sink.digest.hexdigest(), source.digest.hexdigest())

    @defer.inlineCallbacks
    def test_download_is_byte_exact(self):
        source = PatternSource(20 * 2**20 + 7)
        token, done = self.server.offer(source=source)
        sink = HashSink()
        status = yield receive(reactor, self.host, self.port, token, sink)
        yield done
        self.assertEqual(status, {"size": source.total})
        self.assertEqual(sink.digest.hexdigest(), source.digest.hexdigest())

    @defer.inlineCallbacks
    def test_slow_reader_slows_the_writer(self):
        source = PatternSource(48 * 2**20)
        sink = HashSink(delay=0.002, source=source)
        token, done = self.server.offer(source=source)
        yield receive(reactor, self.host, self.port, token, sink)
        self.assertEqual(sink.received, source.total)
        # Without back-pressure the source would run the whole 48 MiB ahead;
        # with it, only socket buffers and one frame sit in between.
        self.assertLess(sink.max_lag, 12 * 2**20)

    @defer.inlineCallbacks
    def test_unknown_token_is_refused(self):
        with self.assertRaises(TransferError) as e:
            yield receive(reactor, self.host, self.port, "0" * 32, HashSink())
        self.assertEqual(e.exception.kind, "EACCES")

    @defer.inlineCallbacks
    def test_a_token_works_once(self):
        token, done = self.server.offer(source=PatternSource(10))
        yield receive(reactor, self.host, self.port, token, HashSink())
        with self.assertRaises(TransferError):
            yield receive(reactor, self.host, self.port, token, HashSink())

    @defer.inlineCallbacks
    def test_sender_killed_mid_stream_is_an_error_not_a_hang(self):
        sink = HashSink()
        token, done = self.server.offer(sink=sink)
        script = (
            "import socket, struct, sys, time\n"
            f"s = socket.create_connection(({self.host!r}, {self.port}))\n"
            f"s.sendall({token!r}.encode() + b'\\n')\n"
            "block = b'x' * 65536\n"
            "for _ in range(16):\n"
            "    s.sendall(struct.pack('!cI', b'D', len(block)) + block)\n"
            "print('sent', flush=True)\n"
            "time.sleep(600)\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        line = yield threads.deferToThread(proc.stdout.readline)
        self.assertEqual(line.strip(), b"sent")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with self.assertRaises(TransferError) as e:
            yield done
        self.assertEqual(e.exception.kind, "EPIPE")
        self.assertTrue(sink.aborted)

    @defer.inlineCallbacks
    def test_cancelling_a_receive_closes_it_and_the_sender_sees_the_reader_leave(self):
        """A reader that leaves a quiet stream (a pin that never changes) is gone at once, not at the next write."""
        first = defer.Deferred()

        class Quiet:
            def __init__(self) -> None:
                self.calls = 0

            def next(self) -> defer.Deferred:
                self.calls += 1
                return defer.succeed(b"0\n") if self.calls == 1 else defer.Deferred()

        class Sink(HashSink):
            def write(self, data: bytes) -> defer.Deferred:
                if not first.called:
                    first.callback(data)
                return super().write(data)

        token, done = self.server.offer(source=Quiet())
        sink = Sink()
        reading = receive(reactor, self.host, self.port, token, sink)
        self.assertEqual((yield within(first, "the first line")), b"0\n")
        reading.cancel()
        with self.assertRaises(defer.CancelledError):
            yield reading
        with self.assertRaises(TransferError) as e:
            yield within(done, "the sender to see its reader leave")
        self.assertEqual(e.exception.kind, "EPIPE")


def test_unclaimed_token_expires():
    clock = task.Clock()
    server = TransferServer(reactor, clock=clock, token_ttl=5)
    sink = HashSink()
    token, done = server.offer(sink=sink)
    errors = []
    done.addErrback(errors.append)
    clock.advance(5)
    assert errors and errors[0].value.kind == "ETIMEDOUT"
    assert sink.aborted


class FailingSink(HashSink):
    """Accepts a few writes, then fails like a program that closed its input."""

    def write(self, data: bytes) -> defer.Deferred:
        self.received += len(data)
        if self.received > 2 * 2**20:
            return task.deferLater(
                reactor, 0.01, lambda: (_ for _ in ()).throw(TransferError("program closed its input", "EPIPE"))
            )
        return defer.succeed(None)


class FailingSinkTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_sender_learns_that_the_receiver_failed(self):
        server = TransferServer(reactor)
        server.startService()
        host, port = yield server.listen()
        try:
            sink = FailingSink()
            token, done = server.offer(sink=sink)
            done.addErrback(lambda f: None)
            source = PatternSource(64 * 2**20)
            with self.assertRaises(TransferError) as e:
                yield send(reactor, host, port, token, source)
            # the sink's own error, not "the receiver went away" (EPIPE too, so the text tells them apart)
            self.assertEqual((e.exception.kind, str(e.exception)), ("EPIPE", "program closed its input"))
            self.assertLess(source.produced, 32 * 2**20)
        finally:
            yield server.stopService()  # fires once the stream's connection is gone: nothing left behind


NO_SPACE = "/big.bin: no space left on the file store"


class NoSpaceSink(HashSink):
    """Takes *limit* bytes, then fails like a full file store (ENOSPC): at once, or a moment later.

    The early failure is the point: the sender is still writing at full speed
    when the receiver gives up, as with ``oneos fs put`` onto a full disk.
    """

    def __init__(self, limit: int = 0, later: bool = False) -> None:
        super().__init__()
        self.limit = limit
        self.later = later

    def write(self, data: bytes) -> defer.Deferred:
        self.received += len(data)
        if self.received <= self.limit:
            return defer.succeed(None)
        error = TransferError(NO_SPACE, "ENOSPC")
        if self.later:
            return task.deferLater(reactor, 0, lambda: (_ for _ in ()).throw(error))
        return defer.fail(error)


def raw_sender(host: str, port: int, token: str, total: int) -> dict:
    """A blocking sender outside Twisted: the token line, *total* bytes of DATA frames, then read to the end.

    It reports what a careful peer sees of a receiver that fails early: whether
    any of its sends was refused (a RST: the receiver closed with our data
    unread), the frames it read, and how the connection ended (``eof`` for the
    receiver's orderly close, else the error).  Runs in a thread; the socket's
    timeout keeps it from hanging.
    """
    seen: dict = {"send_error": None, "frames": [], "end": None}
    with socket.create_connection((host, port), timeout=DEADLINE) as s:
        block = b"x" * CHUNK
        data = struct.pack("!cI", b"D", len(block)) + block
        try:
            s.sendall(token.encode() + b"\n")
            for _ in range(total // CHUNK):
                s.sendall(data)
        except OSError as e:
            seen["send_error"] = f"{type(e).__name__}: {e}"
        received = b""
        try:
            while True:
                more = s.recv(65536)
                if not more:
                    seen["end"] = "eof"
                    break
                received += more
        except OSError as e:
            seen["end"] = f"{type(e).__name__}: {e}"
    while len(received) >= 5:
        kind, length = struct.unpack("!cI", received[:5])
        seen["frames"].append((kind, received[5 : 5 + length]))
        received = received[5 + length :]
    return seen


@implementer(IHalfCloseableProtocol)
class Stubborn(Protocol):
    """A sender that keeps writing after the receiver's ERROR frame and never closes, not even on its FIN."""

    def __init__(self, token: str, lost: defer.Deferred) -> None:
        self.token = token
        self.lost = lost
        self.got_error: defer.Deferred = defer.Deferred()
        self.received = b""
        self.written = 0
        self.paused = False

    def connectionMade(self) -> None:
        self.transport.write(self.token.encode() + b"\n")
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        block = b"y" * CHUNK
        while not self.paused and self.written < 256 * 2**20:  # bounded, in case nothing stops it
            self.transport.write(struct.pack("!cI", b"D", len(block)) + block)
            self.written += len(block)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.received[:1] == b"X" and not self.got_error.called:
            self.got_error.callback(None)

    def readConnectionLost(self) -> None:
        pass  # stubborn: the receiver's FIN changes nothing

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


class ReceiverErrorTests(unittest.TestCase):
    """A receiver whose sink fails while the sender is still writing: the sender must hear the sink's error.

    The receiver writes an ERROR frame while data is still arriving.  If it
    then closed its socket outright, the kernel would answer the unread and
    still arriving data with a RST, and the RST can destroy the ERROR frame
    before the sender reads it: the sender would report "the receiver went
    away" instead of, say, ENOSPC.  So the receiver half-closes, reads and
    drops what still comes, and the sender, once it reads the frame, stops
    and closes at once; the receiver then closes too.  The server's timers
    run on a clock that is never advanced (except where a test does), so a
    connection that closes did so because its peer did, not because a
    timeout fired.
    """

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.clock = task.Clock()
        self.server = TransferServer(reactor, clock=self.clock)
        self.server.startService()
        self.host, self.port = yield self.server.listen()

    @defer.inlineCallbacks
    def tearDown(self):
        yield within(self.server.stopService(), "the transfer server to stop")
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no timer outlives the server

    @defer.inlineCallbacks
    def assert_failed_for_space(self, done: defer.Deferred, sink: NoSpaceSink):
        """The server's side: the offer failed with the sink's error, the sink was aborted, the connection is gone."""
        with self.assertRaises(TransferError) as e:
            yield within(done, "the receiving side to fail")
        self.assertEqual((e.exception.kind, str(e.exception)), ("ENOSPC", NO_SPACE))
        self.assertTrue(sink.aborted)
        yield within(self.server.connections_closed(), "the receiver's connection to close after the sender's")
        self.assertEqual(self.clock.getDelayedCalls(), [])  # closed by the peer: no close timer fired or waits

    @defer.inlineCallbacks
    def test_a_sender_always_hears_the_receivers_error(self):
        for attempt in range(12):
            sink = NoSpaceSink(limit=(0, 2**20, 3 * 2**20)[attempt % 3], later=attempt % 2 == 1)
            token, done = self.server.offer(sink=sink)
            source = PatternSource(2**30)  # far more than gets through
            with self.assertRaises(TransferError) as e:
                yield within(send(reactor, self.host, self.port, token, source), f"round {attempt}: the sender's error")
            self.assertEqual((e.exception.kind, str(e.exception)), ("ENOSPC", NO_SPACE), f"round {attempt}")
            self.assertLess(source.produced, 64 * 2**20)  # it stopped sending, long before the end
            yield self.assert_failed_for_space(done, sink)

    @defer.inlineCallbacks
    def test_the_receiver_closes_without_a_reset_and_drains_what_still_comes(self):
        """What the sender sees on the wire: all its data accepted, the ERROR frame, then an orderly end (no RST).

        Deterministic where the full-stack race is not: the receiver fails on
        the first frame while megabytes more are on their way.
        """
        for attempt in range(4):
            sink = NoSpaceSink(later=attempt % 2 == 1)
            token, done = self.server.offer(sink=sink)
            seen = yield within(
                threads.deferToThread(raw_sender, self.host, self.port, token, 16 * 2**20),
                f"round {attempt}: the raw sender",
            )
            self.assertIsNone(seen["send_error"], seen)
            self.assertEqual(seen["end"], "eof", seen)
            self.assertEqual(len(seen["frames"]), 1, seen)
            kind, payload = seen["frames"][0]
            self.assertEqual((kind, json.loads(payload)), (b"X", {"kind": "ENOSPC", "message": NO_SPACE}))
            yield self.assert_failed_for_space(done, sink)

    @defer.inlineCallbacks
    def test_a_sender_with_an_unknown_token_hears_why(self):
        """The refusal of an unknown token is an ERROR frame sent while the sender is already streaming, too."""
        for attempt in range(4):
            source = PatternSource(2**30)
            with self.assertRaises(TransferError) as e:
                yield within(send(reactor, self.host, self.port, "0" * 32, source), f"round {attempt}: the refusal")
            self.assertEqual((e.exception.kind, str(e.exception)), ("EACCES", "unknown or expired transfer token"))
            yield within(self.server.connections_closed(), "the refused connection to close")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_a_sender_that_never_closes_is_cut_off_after_the_linger(self):
        """A peer that ignores the ERROR frame cannot hold the connection: it is aborted after ``error_linger``."""
        sink = NoSpaceSink()
        token, done = self.server.offer(sink=sink)
        lost: defer.Deferred = defer.Deferred()
        stubborn = Stubborn(token, lost)
        endpoint = clientFromString(reactor, f"tcp:host={self.host}:port={self.port}")
        yield within(endpoint.connect(Factory.forProtocol(lambda: stubborn)), "connecting")
        with self.assertRaises(TransferError):
            yield within(done, "the receiving side to fail")
        yield within(stubborn.got_error, "the stubborn sender to read the ERROR frame")
        self.clock.advance(ERROR_LINGER - 0.5)
        self.assertFalse(lost.called)  # still lingering: reading and dropping what it sends
        self.clock.advance(1.0)
        yield within(self.server.connections_closed(), "the receiver to abort the connection")
        yield within(lost, "the stubborn sender to see the connection go")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_a_stopping_server_aborts_streams_at_work_and_lets_a_lingering_one_finish(self):
        """``stopService`` leaves no connection and no timer: it aborts a stream at work at once,
        and gives one that is lingering after its ERROR frame the rest of its time (so the frame can be read)."""
        failing_token, failing_done = self.server.offer(sink=NoSpaceSink())
        healthy = StartedSink()
        healthy_token, healthy_done = self.server.offer(sink=healthy)
        lingering, at_work = defer.Deferred(), defer.Deferred()
        endpoint = clientFromString(reactor, f"tcp:host={self.host}:port={self.port}")
        stubborn = Stubborn(failing_token, lingering)
        yield within(endpoint.connect(Factory.forProtocol(lambda: stubborn)), "connecting")
        yield within(endpoint.connect(Factory.forProtocol(lambda: Stubborn(healthy_token, at_work))), "connecting")
        with self.assertRaises(TransferError):
            yield within(failing_done, "the failing stream to fail")
        yield within(stubborn.got_error, "the stubborn sender to read the ERROR frame")
        yield within(healthy.started, "the healthy stream to be under way")

        stopped = []
        stopping = self.server.stopService().addCallback(stopped.append)
        yield within(at_work, "the stream at work to be aborted")
        with self.assertRaises(TransferError) as e:
            yield within(healthy_done, "the aborted stream's receiving side to fail")
        self.assertEqual(e.exception.kind, "EPIPE")
        self.assertTrue(healthy.aborted)
        self.assertEqual(stopped, [])  # the lingering one is still given its time
        self.clock.advance(ERROR_LINGER)
        yield within(stopping, "the server to stop")
        yield within(lingering, "the lingering connection to go")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StartedSink(HashSink):
    """A sink that says when the first data arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.started: defer.Deferred = defer.Deferred()

    def write(self, data: bytes) -> defer.Deferred:
        if not self.started.called:
            self.started.callback(None)
        return super().write(data)


class TLSReceiverErrorTests(unittest.TestCase):
    """The same over TLS: the ERROR frame survives the receiver's close there too.

    TLS has no TCP half-close of its own: the receiver's "stop sending" is
    TLS's close_notify, after which the TLS layer still reads (and the
    receiver drops) what arrives until the sender closes.
    """

    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        from oneos.security import tls

        home = Path(self.mktemp()) / "net"
        tls.create_ca(home)
        tls.issue_own(home, ["127.0.0.1"])
        self.clock = task.Clock()
        self.server = TransferServer(reactor, clock=self.clock, tls=tls.MachineTLS.load(home))
        self.server.startService()
        self.host, self.port = yield self.server.listen()
        self.trust = tls.load_trust(home)

    @defer.inlineCallbacks
    def tearDown(self):
        yield within(self.server.stopService(), "the transfer server to stop")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_a_sender_always_hears_the_receivers_error_over_tls(self):
        for attempt in range(8):
            sink = NoSpaceSink(limit=(0, 2**20)[attempt % 2], later=attempt % 4 >= 2)
            token, done = self.server.offer(sink=sink)
            source = PatternSource(2**30)
            with self.assertRaises(TransferError) as e:
                yield within(
                    send(reactor, self.host, self.port, token, source, tls=self.trust), f"round {attempt}: the error"
                )
            self.assertEqual((e.exception.kind, str(e.exception)), ("ENOSPC", NO_SPACE), f"round {attempt}")
            self.assertLess(source.produced, 64 * 2**20)
            with self.assertRaises(TransferError):
                yield within(done, "the receiving side to fail")
            self.assertTrue(sink.aborted)
            yield within(self.server.connections_closed(), "the receiver's connection to close after the sender's")
            self.assertEqual(self.clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_a_tls_sender_with_an_unknown_token_hears_why(self):
        for attempt in range(3):
            with self.assertRaises(TransferError) as e:
                yield within(
                    send(reactor, self.host, self.port, "0" * 32, PatternSource(2**30), tls=self.trust),
                    f"refusal {attempt}",
                )
            self.assertEqual(e.exception.kind, "EACCES")
            yield within(self.server.connections_closed(), "the refused connection to close")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from oneos.transfer import DATA, END, FrameParser, frame  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=3000), max_size=8),
    st.lists(st.integers(min_value=1, max_value=4000), min_size=1, max_size=50),
)
def test_frames_survive_any_fragmentation(payloads, cuts):
    stream = b"".join(frame(DATA, p) for p in payloads) + frame(END, b"{}")
    parser, got, pos, i = FrameParser(), [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += parser.feed(stream[pos : pos + step])
        pos, i = pos + step, i + 1
    assert got == [(DATA, p) for p in payloads] + [(END, b"{}")]


def test_malformed_frame_is_an_error():
    import pytest

    with pytest.raises(TransferError):
        FrameParser().feed(b"Q\x00\x00\x00\x01x")
    with pytest.raises(TransferError):
        FrameParser().feed(b"D\xff\xff\xff\xff")
