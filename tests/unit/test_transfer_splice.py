"""The kernel path for pipe bytes (oneos/splice.py) and how streams choose it (oneos/transfer.py).

The pumps run on real pipes and a real socketpair of this process, driven
by hand: :class:`FDReactor` keeps the readers and writers a pump asks for
and calls the ready ones (``select`` with no wait) until nothing is ready.
No thread, no timer, no sleep: what a pump does depends only on what is
in the kernel's buffers, which the test fills and drains itself.

What the wire looks like does not change (a spliced DATA frame is the
same bytes as a copied one), so "negotiation" is checked as interoperation:
the ordinary frame parser reads what a splice sender writes, and a splice
receiver reads what the ordinary sender writes, cut anywhere.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from oneos import splice
from oneos.agents.host import StageOutput
from oneos.agents.manager import InputClosed, OutputStream
from oneos.transfer import (
    DATA,
    END,
    ERROR,
    HEADER,
    MAX_FRAME,
    FrameParser,
    TransferError,
    _data_header,
    _data_length,
    _lend_input,
    _lend_output,
    frame,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="os.splice: Linux, Python 3.10+")

F_SETPIPE_SZ = 1031


class FDReactor:
    """The fd part of a reactor, run by hand: ``run()`` calls ready readers and writers until none is."""

    def __init__(self) -> None:
        self.readers: list[Any] = []
        self.writers: list[Any] = []
        self.clock = task.Clock()
        self.callLater = self.clock.callLater

    def addReader(self, r: Any) -> None:
        if r not in self.readers:
            self.readers.append(r)

    def addWriter(self, w: Any) -> None:
        if w not in self.writers:
            self.writers.append(w)

    def removeReader(self, r: Any) -> None:
        if r in self.readers:
            self.readers.remove(r)

    def removeWriter(self, w: Any) -> None:
        if w in self.writers:
            self.writers.remove(w)

    def run(self, limit: int = 10_000) -> int:
        """Call what is ready until nothing is; the number of calls (a pump that spins would hit *limit*)."""
        calls = 0
        while calls < limit:
            readable, writable, _ = select.select(self.readers, self.writers, [], 0)
            if not readable and not writable:
                return calls
            for d in readable:
                if d in self.readers:
                    d.doRead()
                    calls += 1
            for d in writable:
                if d in self.writers:
                    d.doWrite()
                    calls += 1
        raise AssertionError("the pump never settled")


class FakeTransport:
    """What a pump asks of the TCP transport under it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.producer: Any = None
        self.paused = False
        self.aborted = False

    def getHandle(self) -> socket.socket:
        return self.sock

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert self.producer is None, "a second producer"
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def abortConnection(self) -> None:
        self.aborted = True


class FdWatch:
    """A readiness watch on one fd for the fake pipes below."""

    def __init__(self, fd: int, call: Callable[[], None]) -> None:
        self.fd, self.call = fd, call

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.call()


class Output:
    """A PipeOutput over an os.pipe the test writes into (the program's side)."""

    def __init__(self, reactor: FDReactor, buffered: bytes = b"") -> None:
        self.fd, self.write_fd = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self.write_fd, False)
        self.reactor = reactor
        self.buffered = buffered
        self.watch: FdWatch | None = None
        self.count = 0
        self.exited = False
        self.eof = False
        self.released = False
        self.verdict: defer.Deferred = defer.Deferred()

    def take_buffered(self) -> bytes:
        data, self.buffered = self.buffered, b""
        return data

    def start(self, readable: Callable[[], None]) -> None:
        self.watch = FdWatch(self.fd, readable)
        self.resume()

    def pause(self) -> None:
        self.reactor.removeReader(self.watch)

    def resume(self) -> None:
        if not self.eof:
            self.reactor.addReader(self.watch)

    @property
    def watched(self) -> bool:
        return self.watch in self.reactor.readers

    def moved(self, n: int) -> None:
        self.count += n

    def at_eof(self) -> None:
        self.eof = True
        self.pause()

    def ended(self) -> defer.Deferred:
        return self.verdict

    def release(self) -> None:
        self.released = True
        self.pause()

    def write(self, data: bytes) -> int:
        """What the program manages to write now (its pipe may be full)."""
        try:
            return os.write(self.write_fd, data)
        except BlockingIOError:
            return 0

    def close_program_side(self) -> None:
        os.close(self.write_fd)


class Input:
    """A PipeInput over an os.pipe the test reads (the next program's side)."""

    def __init__(self) -> None:
        self.read_fd, self.fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.fd, False)
        self.count = 0
        self.closed: Callable[[], None] | None = None
        self.released = False

    def start(self, closed: Callable[[], None]) -> None:
        self.closed = closed

    def moved(self, n: int) -> None:
        self.count += n

    def closed_error(self) -> BaseException:
        return InputClosed()

    def release(self) -> None:
        self.released = True

    def read_all(self) -> bytes:
        out = b""
        while True:
            try:
                more = os.read(self.read_fd, 1 << 20)
            except BlockingIOError:
                return out
            if not more:
                return out
            out += more


def socket_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def read_available(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            more = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not more:
            return out
        out += more


def error(message: str, kind: str) -> TransferError:
    return TransferError(message, kind)


class SenderRig:
    """A SpliceSender from an Output pipe into one end of a socketpair; the test holds the other end."""

    def __init__(self, buffered: bytes = b"", first: bytes = b"", coalesce: float = 0.0) -> None:
        self.reactor = FDReactor()
        self.ours, self.peer = socket_pair()
        self.transport = FakeTransport(self.ours)
        self.pipe = Output(self.reactor, buffered)
        self.done: list[Failure | None] = []
        self.sender = splice.SpliceSender(
            self.reactor,
            self.transport,
            self.ours,
            self.pipe,
            _data_header,
            MAX_FRAME,
            self.done.append,
            error,
            first=first,
            coalesce=coalesce,
        )
        self.wire = b""

    def flow(self, data: bytes) -> None:
        """Write *data* as the program would, running the pump and reading the peer until all of it went."""
        view = memoryview(data)
        while view:
            view = view[self.pipe.write(view[: 1 << 16]) :]
            self.reactor.run()
            self.wire += read_available(self.peer)

    def settle(self) -> None:
        for _ in range(50):
            calls = self.reactor.run()
            more = read_available(self.peer)
            self.wire += more
            if not calls and not more:
                return

    def close(self) -> None:
        for s in (self.ours, self.peer):
            s.close()
        for fd in (self.pipe.fd, self.pipe.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def payload(frames: list[tuple[bytes, bytes]]) -> bytes:
    assert all(kind == DATA for kind, _ in frames), [kind for kind, _ in frames]
    return b"".join(p for _, p in frames)


# -- the frame form -------------------------------------------------------------------------------


def test_a_spliced_data_header_is_an_ordinary_frame_header():
    assert _data_header(5) + b"hello" == frame(DATA, b"hello")
    assert _data_length(_data_header(MAX_FRAME)) == MAX_FRAME
    assert _data_length(frame(END, b"")[: HEADER.size]) is None
    assert _data_length(frame(ERROR, b"x")[: HEADER.size]) is None
    assert _data_length(HEADER.pack(DATA, MAX_FRAME + 1)) is None  # malformed: the parser says why


# -- choosing the path -----------------------------------------------------------------------------


class Lender:
    def __init__(self) -> None:
        self.asked = 0

    def next(self) -> defer.Deferred:
        return defer.succeed(b"")

    def splice_out(self) -> object:
        self.asked += 1
        return object()

    def splice_in(self) -> object:
        self.asked += 1
        return object()


def test_a_stream_splices_only_a_lent_pipe_over_a_plain_socket(monkeypatch):
    monkeypatch.delenv(splice.ENV, raising=False)
    ours, peer = socket_pair()
    try:
        lender = Lender()
        assert _lend_output(FakeTransport(ours), lender) is not None
        assert _lend_input(FakeTransport(ours), lender) is not None
        # the simulated network (no socket), a source that is not a pipe: copied
        assert _lend_output(StringTransport(), lender) is None
        assert _lend_output(FakeTransport(ours), FakeSourceWithoutPipe()) is None
        monkeypatch.setenv(splice.ENV, "0")
        assert _lend_output(FakeTransport(ours), lender) is None
        assert _lend_input(FakeTransport(ours), lender) is None
        assert lender.asked == 2  # the pipe is lent only when it will be used
    finally:
        ours.close()
        peer.close()


def test_a_tls_stream_is_never_spliced(monkeypatch):
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    monkeypatch.delenv(splice.ENV, raising=False)
    tls = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)
    lender = Lender()
    assert _lend_output(tls, lender) is None and _lend_input(tls, lender) is None
    assert lender.asked == 0


class FakeSourceWithoutPipe:
    def next(self) -> defer.Deferred:
        return defer.succeed(b"")


# -- the sender --------------------------------------------------------------------------------------


def test_the_sender_frames_the_pipe_byte_exact_after_the_token_line_and_what_was_buffered():
    rig = SenderRig(buffered=b"early output\n", first=b"TOKEN\n")
    try:
        data = hashlib.sha256(b"seed").digest() * 100_000  # 3.2 MB
        rig.flow(data)
        rig.pipe.close_program_side()
        rig.settle()
        assert rig.pipe.eof and rig.done == []  # the end waits for how the program ended
        rig.pipe.verdict.callback(None)
        assert rig.done == [None]
        assert rig.wire.startswith(b"TOKEN\n")
        frames = FrameParser().feed(rig.wire[len(b"TOKEN\n") :])
        assert payload(frames) == b"early output\n" + data
        assert all(len(p) <= MAX_FRAME for _, p in frames)
        assert rig.pipe.count == len(data)  # the buffered bytes were counted when they were read
        assert rig.sender.bytes == len(data) + len(b"early output\n")
        assert rig.pipe.released and rig.transport.producer is None and not rig.reactor.writers
    finally:
        rig.close()


def test_a_little_output_waits_a_moment_for_more_so_frames_stay_large():
    """A program writing in small pieces still moves in big frames; a lone small write goes within the delay."""
    rig = SenderRig(coalesce=0.001)
    try:
        rig.pipe.write(b"a" * 8192)
        rig.settle()
        assert rig.wire == b"" and not rig.pipe.watched  # waiting for more, the pipe left alone meanwhile
        rig.pipe.write(b"b" * 8192)
        rig.reactor.clock.advance(0.001)
        rig.settle()
        assert FrameParser().feed(rig.wire) == [(DATA, b"a" * 8192 + b"b" * 8192)]  # one frame, not two
        rig.wire = b""
        rig.pipe.write(b"c" * splice.COALESCE_BYTES)  # enough at once: framed without waiting
        rig.settle()
        assert payload(FrameParser().feed(rig.wire)) == b"c" * splice.COALESCE_BYTES
        rig.sender.stop()
        assert rig.reactor.clock.getDelayedCalls() == []
    finally:
        rig.close()


def test_a_full_socket_stops_the_pipe_being_read_until_the_peer_reads():
    rig = SenderRig()
    try:
        fcntl_size(rig.pipe.write_fd, 64 * 1024)
        written = 0
        for _ in range(2000):  # the program writes as fast as it can; nobody reads the socket
            n = rig.pipe.write(b"z" * 65536)
            written += n
            rig.reactor.run()
            if not n and not rig.pipe.watched:
                break
        assert not rig.pipe.watched, "the sender kept reading a pipe it cannot send"
        assert rig.reactor.writers, "the sender waits for the socket to take bytes"
        assert rig.pipe.write(b"z") == 0  # the program is blocked: back-pressure reached it
        assert written < 64 * 2**20  # bounded by kernel buffers, not by the program
        rig.settle()  # the peer reads: the pipe is read again, everything arrives
        assert payload(FrameParser().feed(rig.wire)) == b"z" * written
        assert rig.pipe.watched
    finally:
        rig.close()


def fcntl_size(fd: int, size: int) -> None:
    import fcntl

    fcntl.fcntl(fd, F_SETPIPE_SZ, size)


def test_a_program_killed_mid_stream_ends_the_stream_with_its_error_at_a_frame_boundary():
    rig = SenderRig()
    try:
        rig.flow(b"partial output")
        rig.pipe.close_program_side()
        rig.settle()
        rig.pipe.verdict.errback(TransferError("gen on rt-1 was killed by signal 9", "EPIPE"))
        [failure] = rig.done
        assert failure is not None and "signal 9" in failure.getErrorMessage()
        assert not rig.transport.aborted  # the caller can still send the ERROR frame: the last DATA frame is whole
        assert payload(FrameParser().feed(rig.wire)) == b"partial output"
    finally:
        rig.close()


def test_a_receiver_that_goes_away_fails_the_sender():
    rig = SenderRig()
    try:
        rig.flow(b"x" * 1000)
        rig.peer.close()
        rig.pipe.write(b"y" * 100_000)
        rig.reactor.run()
        [failure] = rig.done
        assert failure.check(TransferError) and failure.value.kind == "EPIPE"
        assert "went away" in failure.getErrorMessage()
        assert rig.pipe.released and not rig.reactor.writers
    finally:
        rig.close()


def test_losing_the_connection_reports_through_stop_producing_and_stop_reports_nothing():
    rig = SenderRig()
    try:
        rig.flow(b"abc")
        rig.transport.producer.stopProducing()
        [failure] = rig.done
        assert failure.value.kind == "EPIPE"
    finally:
        rig.close()
    rig = SenderRig()
    try:
        rig.flow(b"abc")
        rig.sender.stop()  # the far side already said how it ended
        rig.pipe.write(b"more")
        rig.reactor.run()
        assert rig.done == [] and rig.pipe.released and not rig.reactor.readers and not rig.reactor.writers
    finally:
        rig.close()


def test_an_exited_programs_last_output_is_read_into_memory_when_the_socket_is_full():
    """So its end (and exit) is seen at once, as on the copying path, however slow the reader: bounded."""
    rig = SenderRig()
    try:
        fcntl_size(rig.pipe.write_fd, 1 << 20)
        for _ in range(2000):  # fill the socket and the pipe
            n = rig.pipe.write(b"q" * 65536)
            rig.reactor.run()
            if not n:
                break
        assert not rig.pipe.eof
        rig.pipe.close_program_side()
        rig.pipe.exited = True
        rig.pipe.resume()  # what the process does when the program exits (processExited)
        rig.reactor.run()
        assert rig.pipe.eof, "the pipe's end was not read"
        assert len(rig.sender.pending) <= splice.DRAIN_LIMIT + MAX_FRAME
        rig.settle()
        rig.pipe.verdict.callback(None)
        assert rig.done == [None]
        frames = FrameParser().feed(rig.wire)
        assert set(payload(frames)) == {ord("q")} and len(payload(frames)) == rig.pipe.count
    finally:
        rig.close()


# -- the receiver --------------------------------------------------------------------------------------


class ReceiverRig:
    def __init__(self) -> None:
        self.reactor = FDReactor()
        self.ours, self.peer = socket_pair()
        self.transport = FakeTransport(self.ours)
        self.pipe = Input()
        self.handed_back: list[bytes] = []
        self.failed: list[Failure] = []
        self.receiver = splice.SpliceReceiver(
            self.reactor,
            self.transport,
            self.ours,
            self.pipe,
            HEADER.size,
            _data_length,
            MAX_FRAME,
            self.handed_back.append,
            self.failed.append,
            error,
        )
        self.out = b""

    def send(self, data: bytes, piece: int = 1 << 16) -> None:
        """The sender writes *data* (cut in *piece*s); the pump runs and the program reads as it comes."""
        view = memoryview(data)
        while view:
            try:
                sent = self.peer.send(view[:piece])
            except BlockingIOError:
                sent = 0
            view = view[sent:]
            self.reactor.run()
            self.out += self.pipe.read_all()
        for _ in range(50):  # until the pump has nothing left to move
            calls = self.reactor.run()
            more = self.pipe.read_all()
            self.out += more
            if not calls and not more:
                return

    def close(self) -> None:
        for s in (self.ours, self.peer):
            s.close()
        for fd in (self.pipe.fd, self.pipe.read_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def test_the_receiver_delivers_data_frames_and_hands_back_at_the_end():
    rig = ReceiverRig()
    try:
        data = os.urandom(3 * MAX_FRAME + 12345)
        frames = b"".join(frame(DATA, data[i : i + MAX_FRAME]) for i in range(0, len(data), MAX_FRAME))
        head, rest = frames[:1000], frames[1000:]
        rig.receiver.start(head)  # what the transport read with the token line
        assert rig.transport.paused and rig.transport.producer is rig.receiver
        rig.send(rest + frame(END, b"{}"))
        assert rig.out == data
        assert rig.pipe.count == len(data) == rig.receiver.bytes
        [leftover] = rig.handed_back
        assert FrameParser().feed(leftover + read_available(rig.ours)) == [(END, b"{}")]
        assert rig.failed == [] and rig.pipe.released and rig.transport.producer is None
        assert not rig.reactor.readers and not rig.reactor.writers
    finally:
        rig.close()


def test_a_full_pipe_stops_the_socket_being_read():
    rig = ReceiverRig()
    try:
        fcntl_size(rig.pipe.fd, 64 * 1024)
        rig.receiver.start()
        big = frame(DATA, b"w" * MAX_FRAME) * 8
        view = memoryview(big)
        while view:  # nobody reads the pipe
            try:
                view = view[rig.peer.send(view[: 1 << 16]) :]
            except BlockingIOError:
                break
            rig.reactor.run()
        rig.reactor.run()
        assert rig.reactor.writers and not rig.reactor.readers, "it waits for the pipe, not the socket"
        assert rig.pipe.count < 2 * MAX_FRAME  # a pipe counts slots, not bytes: a few pages each, still bounded
        got = rig.pipe.read_all()
        rig.reactor.run()
        assert rig.reactor.readers or rig.pipe.count > len(got)  # room again: the socket is read again
    finally:
        rig.close()


def test_a_program_that_closes_its_input_fails_the_stream_with_its_own_error():
    rig = ReceiverRig()
    try:
        rig.receiver.start()
        rig.send(frame(DATA, b"a" * 100))
        os.close(rig.pipe.read_fd)  # `head -c 100` has read enough and exits
        rig.peer.send(frame(DATA, b"b" * 100))
        rig.reactor.run()
        [failure] = rig.failed
        assert failure.check(InputClosed) and failure.value.kind == "EPIPE"
        assert rig.pipe.released and not rig.reactor.readers and not rig.reactor.writers
    finally:
        rig.close()


def test_the_process_saying_the_input_closed_fails_it_too():
    rig = ReceiverRig()
    try:
        rig.receiver.start()
        assert rig.pipe.closed is not None
        rig.pipe.closed()  # StdinSink.stopProducing: Twisted saw the program close its input
        [failure] = rig.failed
        assert failure.check(InputClosed)
    finally:
        rig.close()


def test_a_sender_that_vanishes_mid_frame_is_an_error_and_between_frames_the_parser_decides():
    rig = ReceiverRig()
    try:
        rig.receiver.start()
        rig.peer.send(frame(DATA, b"c" * 1000)[:600])
        rig.reactor.run()
        rig.peer.close()
        rig.reactor.run()
        [failure] = rig.failed
        assert failure.value.kind == "EPIPE" and "vanished" in failure.getErrorMessage()
    finally:
        rig.close()
    rig = ReceiverRig()
    try:
        rig.receiver.start()
        rig.send(frame(DATA, b"c" * 1000))
        rig.peer.close()
        rig.reactor.run()
        assert rig.failed == [] and rig.handed_back == [b""]  # the transport reads the close and fails the stream
    finally:
        rig.close()


def test_a_malformed_frame_is_handed_to_the_parser_which_refuses_it():
    rig = ReceiverRig()
    try:
        rig.receiver.start(b"Q\x00\x00\x00\x01x")
        [leftover] = rig.handed_back
        with pytest.raises(TransferError) as e:
            FrameParser().feed(leftover)
        assert e.value.kind == "EPROTO"
    finally:
        rig.close()


def test_losing_the_connection_fails_a_receiver():
    rig = ReceiverRig()
    try:
        rig.receiver.start()
        rig.transport.producer.stopProducing()
        [failure] = rig.failed
        assert failure.value.kind == "EPIPE"
    finally:
        rig.close()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=300_000),
    st.integers(min_value=1, max_value=100_000),
)
def test_a_splice_receiver_reads_an_ordinary_senders_frames_cut_anywhere(sizes, initial, piece):
    """Interoperation, the receiving way: frames written by the copying path, however TCP cuts them."""
    data = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    stream = b"".join(frame(DATA, d) for d in data) + frame(END, b'{"ok": 1}')
    rig = ReceiverRig()
    try:
        rig.receiver.start(stream[:initial])
        rig.send(stream[initial:], piece)
        assert rig.out == b"".join(data)
        [leftover] = rig.handed_back  # what the pump read of the END frame; the transport reads the rest
        assert FrameParser().feed(leftover + read_available(rig.ours)) == [(END, b'{"ok": 1}')]
    finally:
        rig.close()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300_000), min_size=1, max_size=5))
def test_an_ordinary_parser_reads_what_a_splice_sender_writes(writes):
    """Interoperation, the sending way: a copying receiver (an older runtime) sees ordinary frames."""
    rig = SenderRig()
    try:
        data = b"".join(bytes([i % 251]) * n for i, n in enumerate(writes))
        rig.flow(data)
        rig.pipe.close_program_side()
        rig.settle()
        rig.pipe.verdict.callback(None)
        frames = FrameParser().feed(rig.wire)
        assert payload(frames) == data and rig.done == [None]
    finally:
        rig.close()


# -- the program's side: lending its pipes, and how its output ended ----------------------------


class FakeReader:
    """Twisted's ProcessReader as OutputStream lends it."""

    def __init__(self) -> None:
        self.fd = 99
        self.connected = True
        self.disconnecting = False
        self.reading = True
        self.lost = False
        self.doRead: Any = self.normal

    def normal(self) -> None:
        return None

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        if not self.disconnecting:
            self.reading = True

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.reading = False
        self.lost = True


def test_an_output_stream_lends_its_pipe_once_with_what_it_buffered_and_takes_it_back():
    reader = FakeReader()
    paused: list[str] = []
    stream = OutputStream(lambda: paused.append("pause"), lambda: paused.append("resume"), lambda: reader)
    stream.feed(b"before ")
    lent = stream.splice_out()
    assert lent is not None and stream.splice_out() is None  # one pump at a time
    assert lent.take_buffered() == b"before " and lent.fd == 99
    calls: list[int] = []
    lent.start(lambda: calls.append(1))
    reader.doRead()
    assert calls == [1] and reader.reading
    lent.moved(10)
    assert stream.total == len(b"before ") + 10
    assert not lent.exited
    stream.no_more_pausing()
    assert lent.exited
    lent.release()
    assert reader.doRead == reader.normal and stream.splice_out() is not None  # reading into memory again


def test_an_output_stream_with_a_reader_waiting_or_no_pipe_is_not_lent():
    reader = FakeReader()
    stream = OutputStream(lambda: None, lambda: None, lambda: reader)
    stream.next()  # someone pulls already
    assert stream.splice_out() is None
    assert OutputStream(lambda: None, lambda: None).splice_out() is None
    reader.disconnecting = True
    assert OutputStream(lambda: None, lambda: None, lambda: reader).splice_out() is None


def test_the_end_of_a_lent_pipe_closes_it_and_asks_how_the_program_ended():
    reader = FakeReader()
    stream = OutputStream(lambda: None, lambda: None, lambda: reader)
    verdict: defer.Deferred = defer.Deferred()
    lent = stream.splice_out(ended=lambda: verdict)
    assert lent is not None
    lent.start(lambda: None)
    lent.at_eof()
    assert reader.lost
    assert lent.ended() is verdict
    lent.release()
    assert reader.doRead != reader.normal or reader.lost  # an ended pipe is not read again


class StageAgent:
    """What StageOutput reads of an agent."""

    def __init__(self) -> None:
        self.state = "running"
        self.signal: int | None = None
        self.reason = ""
        self.id = "a1"
        self.ended: defer.Deferred = defer.Deferred()
        self.stdout = OutputStream(lambda: None, lambda: None)
        self.spec = type("Spec", (), {"name": "gen"})()
        self.manager = type("Manager", (), {"runtime_id": "rt-1"})()

    def end(self, signal: int | None = None) -> None:
        self.state = "killed" if signal else "exited"
        self.signal = signal
        self.ended.callback(self)


def test_a_stage_output_killed_by_a_signal_ends_with_an_error_and_an_exit_ends_cleanly():
    clock = task.Clock()
    killed = StageAgent()
    verdict = StageOutput(killed, clock).verdict()  # type: ignore[arg-type]
    assert not verdict.called  # the output ended; the exit has not been seen yet
    killed.end(signal=9)
    failures: list[Failure] = []
    verdict.addErrback(failures.append)
    assert "killed by signal 9" in failures[0].getErrorMessage() and "gen on rt-1" in failures[0].getErrorMessage()
    assert killed.ended.result is killed  # the shared Deferred's result is untouched

    exited = StageAgent()
    verdict = StageOutput(exited, clock).verdict()  # type: ignore[arg-type]
    exited.end()
    assert verdict.called and verdict.result is None
    assert clock.getDelayedCalls() == []


def test_a_program_that_closes_its_output_but_runs_on_ends_the_stream_cleanly_after_the_wait():
    clock = task.Clock()
    agent = StageAgent()
    verdict = StageOutput(agent, clock, wait=2.0).verdict()  # type: ignore[arg-type]
    clock.advance(1.9)
    assert not verdict.called
    clock.advance(0.2)
    assert verdict.called and verdict.result is None
    agent.end(signal=9)  # too late to matter, and harmless
    assert clock.getDelayedCalls() == []


def test_the_copying_path_waits_for_the_same_verdict():
    clock = task.Clock()
    agent = StageAgent()
    output = StageOutput(agent, clock)  # type: ignore[arg-type]
    agent.stdout.feed(b"data")
    assert output.next().result == b"data"
    agent.stdout.end()
    outcome: list[Any] = []
    output.next().addBoth(outcome.append)
    assert outcome == []  # the end waits for the exit
    agent.end(signal=15)
    [failure] = outcome
    assert isinstance(failure, Failure) and "signal 15" in failure.getErrorMessage()


# -- the copying path's allocator ------------------------------------------------------------------


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.gnu_get_libc_version = object()

        def mallopt(param: int, value: int) -> int:
            self.calls.append((param, value))
            return 1

        self.mallopt = mallopt


def test_a_runtime_keeps_freed_stream_buffers_once_unless_the_operator_chose(monkeypatch):
    import ctypes

    from oneos import transfer

    libc = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(transfer, "_buffers_kept", False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    transfer.keep_stream_buffers()
    transfer.keep_stream_buffers()
    assert libc.calls == [(-3, transfer.MMAP_THRESHOLD), (-1, transfer.TRIM_THRESHOLD)]  # once per process

    libc.calls.clear()
    monkeypatch.setattr(transfer, "_buffers_kept", False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    transfer.keep_stream_buffers()
    assert libc.calls == []
