"""Streams over real loopback TCP: integrity, back-pressure, tokens, dying peers."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from oneos.transfer import TransferError, TransferServer, receive, send

CHUNK = 256 * 1024


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
            self.assertEqual(e.exception.kind, "EPIPE")
            self.assertLess(source.produced, 32 * 2**20)
        finally:
            yield server.stopService()


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
