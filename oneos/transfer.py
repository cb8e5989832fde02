"""Byte streams between machines over TCP, with back-pressure and tokens.

Bulk data never rides the broker: a service that wants to send or receive a
stream (file content now, pipes later) registers a one-time *token* with a
:class:`TransferServer` and tells the peer, over RPC, where to connect.  The
peer connects, presents the token, and the bytes flow as frames:

    1 byte kind | 4 bytes big-endian length | payload

``D`` carries data, ``E`` ends the stream with a JSON status, ``X`` ends it
with a JSON error ``{"kind", "message"}``.  Each side stops reading its
socket while the other end is busy (Twisted producer/consumer), so a slow
reader slows the writer and memory stays bounded; a connection that closes
before ``E`` is an error on both sides, never a hang.

A receiver that fails (its sink refuses the data: a full disk, a program
that closed its input) answers with ``X`` while the sender is still
sending.  It must not simply close then: the kernel answers data that
arrives for (or sits unread in) a closed socket with a RST, and a RST can
destroy the ``X`` frame before the sender reads it, which would then only
see "the receiver went away".  So the receiver closes *lingering*: it
stops its side of the connection (a TCP half-close; TLS's close_notify),
reads and drops whatever still arrives until the sender closes, and aborts
if that takes longer than ``error_linger`` seconds.  A sender that reads
``X`` stops sending and closes at once, which ends the linger.

Pipes between programs: when the source is a program's output pipe (or
the sink a program's input pipe), the stream is plain TCP and the system
has ``splice(2)``, the payload of DATA frames moves between the pipe and
the socket in the kernel (oneos/splice.py), never entering this process.
The frames on the wire are the same bytes either way, so each side chooses
for itself (``ONEOS_SPLICE=0`` turns it off) and nothing is negotiated.

TLS: a server given this machine's certificate (a runtime whose home has
``tls/cert.pem``, see oneos/security/tls.py) listens with TLS only and says
so in :meth:`TransferServer.where` (``"tls": true``); a client told so
(``send``/``receive`` with ``tls=``) connects with TLS and checks the
server's certificate against the network's CA and the address it dialled.
A certificate that does not verify fails the transfer at once with an
error naming the address.  Without a certificate everything is plain TCP
(the one-machine loopback default).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, serverFromString, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from oneos import splice
from oneos.errors import OneOSError

log = Logger()

DATA, END, ERROR = b"D", b"E", b"X"
HEADER = struct.Struct("!cI")
#: Largest frame accepted; senders cut data into frames of at most this.
MAX_FRAME = 1024 * 1024
TOKEN_BYTES = 16
#: Bytes taken from the socket per read (Twisted's default is 64 KiB).
READ_SIZE = 1024 * 1024
#: Seconds a connection to the server may take to send its token line before it is closed.
TOKEN_LINE_TIMEOUT = 10.0
#: TCP keepalive on every stream connection: a peer that falls silent without closing (its machine
#: cut off the network or powered off: no FIN, no RST) fails the stream after about
#: IDLE + COUNT * INTERVAL seconds (11 s) instead of never.  A live peer's kernel answers the probes
#: even while its program is paused, so back-pressure never trips it.
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3
#: Seconds a server connection that sent an ERROR frame waits (reading and dropping what still
#: arrives) for its peer to close before aborting; a peer of this module closes on reading the frame.
ERROR_LINGER = 5.0


#: glibc's mallopt parameters, and what a runtime sets them to (see keep_stream_buffers)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024
_buffers_kept = False


def keep_stream_buffers() -> None:
    """Let this process reuse the memory of freed stream buffers instead of giving it back to the kernel.

    Why: on the copying path every chunk of a stream is a fresh 256 KiB to
    1 MiB bytes object.  glibc's defaults serve such blocks with ``mmap``
    (or trim the heap's top as soon as they are freed), so each chunk costs
    page faults and the kernel zeroing fresh pages: measured, that was two
    thirds of a runtime's CPU time per GB piped.  Serving blocks up to 4 MiB
    from the heap and keeping up to 32 MiB of freed heap halves it.  Once
    per process, glibc only, and never over the operator's own
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``.
    """
    global _buffers_kept
    if _buffers_kept:
        return
    _buffers_kept = True
    if not sys.platform.startswith("linux") or any(
        name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: others' mallopt differs or does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


class TransferError(OneOSError):
    """A stream failed: refused token, peer vanished, or the far side reported an error."""

    def __init__(self, message: str, kind: str = "EIO") -> None:
        super().__init__(message)
        self.kind = kind
        self.code = kind


class Source(TypingProtocol):
    """What a sender reads from: ``next()`` fires with bytes, or b'' at the end."""

    def next(self) -> defer.Deferred: ...


class Sink(TypingProtocol):
    """What a receiver writes to."""

    def write(self, data: bytes) -> defer.Deferred: ...

    def finish(self) -> defer.Deferred: ...  # fires with a JSON-able status

    def abort(self) -> Any: ...


def _tcp(transport: Any) -> Any:
    """The TCP transport under a TLS one (socket options and buffer sizes live there)."""
    return transport.transport if isinstance(transport, TLSMemoryBIOProtocol) else transport


def _keep_alive(tcp: Any) -> None:
    """Turn on TCP keepalive with the short timers above (Linux names them; elsewhere the system's).

    Why: a receiver sends nothing while it waits for the next frame, so TCP
    alone never notices a sender whose machine vanished, and the stream (a
    ``oneos devices cat``, a pipe) would wait forever.  Transports without a
    socket (the test suite's simulated network) are left alone.
    """
    set_keep_alive = getattr(tcp, "setTcpKeepAlive", None)
    if set_keep_alive is None:
        return
    set_keep_alive(True)
    handle = getattr(tcp, "getHandle", None)
    sock = handle() if handle is not None else None
    if not isinstance(sock, socket.socket) or not hasattr(socket, "TCP_KEEPIDLE"):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    except OSError:
        pass  # the system's timers then: slower to notice a dead peer, never wrong about a live one


#: the network CA clients check TLS stream servers against when a caller passes ``tls=True``
#: (set by a runtime of a TLS network; otherwise $ONEOS_HOME/tls/ca.pem is read when needed)
_client_trust: Any = None


def _transport(protocol: Protocol) -> ITCPTransport:
    """*protocol*'s transport, there from ``makeConnection`` on.

    Twisted types ``Protocol.transport`` as ``ITransport | None``; a stream
    connection's is TCP or TLS over TCP, and both provide ITCPTransport
    (``abortConnection``, ``loseConnection``).
    """
    assert protocol.transport is not None, "not connected yet"
    return cast(ITCPTransport, protocol.transport)  # Twisted's typing: ITransport, too general here


def use_client_trust(trust: Any) -> None:
    """Make *trust* (an ``oneos.security.tls.Trust``, or None) the default for ``send``/``receive`` with ``tls=True``."""
    global _client_trust
    _client_trust = trust


@dataclass(frozen=True)
class StreamAddress:
    """Where to connect for one offered stream: the transfer server's host and port, the token, TLS or not.

    On the wire it is the object RPC answers carry (``read_open``,
    ``agent_attach``, ``agent_stdin``): ``{host, port, token}``, plus
    ``tls: true`` when the server listens with TLS.
    """

    host: str
    port: int
    token: str
    tls: bool = False

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "port": self.port, "token": self.token}
        if self.tls:
            out["tls"] = True
        return out

    @classmethod
    def decode(cls, where: object) -> StreamAddress:
        """Read an offer; a malformed one is a TransferError (EINVAL), not a KeyError."""
        if not isinstance(where, dict):
            raise TransferError(f"a stream offer is an object, not {type(where).__name__}", "EINVAL")
        host, port, token = where.get("host"), where.get("port"), where.get("token")
        if not (isinstance(host, str) and isinstance(token, str) and isinstance(port, int)) or isinstance(port, bool):
            raise TransferError(f"a stream offer needs host, port and token: {sorted(where)}", "EINVAL")
        return cls(host, port, token, bool(where.get("tls")))

    @property
    def address(self) -> str:
        """``host:port``, as messages show it."""
        return f"{self.host}:{self.port}"

    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`send`/:func:`receive` for it: ``{"tls": True}`` or ``{}``."""
        return {"tls": True} if self.tls else {}


def tls_of(where: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`send`/:func:`receive` for a stream offer *where*: ``{"tls": True}`` or ``{}``."""
    return {"tls": True} if where.get("tls") else {}


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


class FrameParser:
    """Splits a byte stream into (kind, payload) frames; bounded buffering.

    Bulk data passes through here, so it copies as little as it can: the
    pieces of an incomplete frame are only joined once the frame is whole,
    and each payload is copied once out of the received data.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._need = 0

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        if self._parts:
            self._parts.append(data)
            self._size += len(data)
            if self._size < self._need:
                return []
            data = b"".join(self._parts)
            self._parts, self._size = [], 0
        view = memoryview(data)
        out = []
        pos, end = 0, len(data)
        need = HEADER.size
        while end - pos >= HEADER.size:
            kind, length = HEADER.unpack_from(data, pos)
            if kind not in (DATA, END, ERROR) or length > MAX_FRAME:
                raise TransferError(f"malformed frame (kind {kind!r}, length {length})", "EPROTO")
            start = pos + HEADER.size
            if end - start < length:
                need = HEADER.size + length
                break
            out.append((kind, view[start : start + length].tobytes()))
            pos = start + length
            need = HEADER.size
        if pos < end:
            self._parts, self._size, self._need = [view[pos:].tobytes()], end - pos, need
        return out


def _data_header(length: int) -> bytes:
    """The header of a DATA frame whose *length* payload bytes follow (spliced, on the kernel path)."""
    return HEADER.pack(DATA, length)


def _data_length(header: bytes) -> int | None:
    """The payload length of a DATA frame *header*; None for any other frame (the parser judges those)."""
    kind, length = HEADER.unpack(header)
    return length if kind == DATA and length <= MAX_FRAME else None


def _lend_output(transport: Any, source: Source) -> tuple[socket.socket, splice.PipeOutput] | None:
    """The socket and the child's pipe, when *source*'s bytes can be spliced into *transport* (see oneos/splice.py).

    A source offers its pipe with ``splice_out()`` (an agent's output); any
    other source, a TLS stream, a transport without a socket, a system
    without ``splice`` or ``ONEOS_SPLICE=0``: None, and the bytes are copied.
    """
    lend = getattr(source, "splice_out", None)
    if lend is None or isinstance(transport, TLSMemoryBIOProtocol) or not splice.available():
        return None
    sock = splice.stream_socket(transport)
    if sock is None:
        return None
    pipe = lend()
    return None if pipe is None else (sock, pipe)


def _lend_input(transport: Any, sink: Sink) -> tuple[socket.socket, splice.PipeInput] | None:
    """The socket and the child's pipe, when *transport*'s bytes can be spliced into *sink* (``splice_in()``)."""
    lend = getattr(sink, "splice_in", None)
    if lend is None or isinstance(transport, TLSMemoryBIOProtocol) or not splice.available():
        return None
    sock = splice.stream_socket(transport)
    if sock is None:
        return None
    pipe = lend()
    return None if pipe is None else (sock, pipe)


def _peer(transport: Any) -> str:
    peer = transport.getPeer()
    return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"


def error_payload(error: BaseException) -> bytes:
    kind = getattr(error, "code", None) or getattr(error, "kind", None) or type(error).__name__
    text = str(error) if isinstance(error, OneOSError) else f"{type(error).__name__}: {error}"
    return json.dumps({"kind": kind, "message": text}).encode()


def error_from_payload(payload: bytes) -> TransferError:
    try:
        body = json.loads(payload)
        return TransferError(str(body["message"]), str(body["kind"]))
    except (ValueError, KeyError, TypeError):
        return TransferError("the far side failed without saying why")


class _Pump:
    """Sends a Source down a transport as frames, pausing when the transport is full."""

    def __init__(self, transport: Any, source: Source, on_done: Callable[[Failure | None], None]) -> None:
        self.transport = transport
        self.source = source
        self.on_done = on_done
        self.paused = False
        self.busy = False
        self.finished = False
        self.bytes = 0
        transport.registerProducer(self, True)
        self._next()

    def _next(self) -> None:
        if self.paused or self.busy or self.finished:
            return
        self.busy = True
        self.source.next().addCallbacks(self._got, self._failed)

    def _got(self, data: bytes) -> None:
        self.busy = False
        if self.finished:
            return
        if not data:
            self._finish(None)
            return
        for i in range(0, len(data), MAX_FRAME):
            chunk = data[i : i + MAX_FRAME]  # the data itself, not a copy, when it fits in one frame
            # header and payload apart: the transport joins its buffer once anyway, so no copy is made here
            self.transport.writeSequence((HEADER.pack(DATA, len(chunk)), chunk))
        self.bytes += len(data)
        self._next()

    def _failed(self, failure: Failure) -> None:
        self.busy = False
        self._finish(failure)

    def _finish(self, failure: Failure | None) -> None:
        if self.finished:
            return
        self.finished = True
        self.transport.unregisterProducer()
        self.on_done(failure)

    def stop(self) -> None:
        """Send nothing more and report nothing: the far side has already said how the stream ended."""
        if not self.finished:
            self.finished = True
            self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._next()

    def stopProducing(self) -> None:
        self._finish(Failure(TransferError("the receiver went away", "EPIPE")))


class _Receiver:
    """Feeds incoming DATA frames to a Sink, pausing the socket while the sink is busy."""

    def __init__(self, transport: Any, sink: Sink) -> None:
        self.transport = transport
        self.sink = sink
        self.queue: deque[tuple[bytes, bytes]] = deque()
        self.busy = False
        self.done: defer.Deferred = defer.Deferred()
        self.bytes = 0
        #: True once END or ERROR has arrived (even if not yet processed)
        self.ended = False
        #: inside _drain's call to the sink: a write that completes at once lets the loop go on
        self._writing = False
        #: we paused the transport for a sink write still under way
        self._paused = False

    def frames(self, frames: list[tuple[bytes, bytes]]) -> None:
        self.queue.extend(frames)
        self.ended = self.ended or any(kind != DATA for kind, _ in frames)
        self._drain()

    def _drain(self) -> None:
        while self.queue and not self.busy and not self.done.called:
            kind, payload = self.queue.popleft()
            if kind == DATA:
                self.busy = True
                self.bytes += len(payload)
                self._writing = True
                self.sink.write(payload).addCallbacks(self._written, self._fail)
                self._writing = False
                if self.busy and not self.done.called:
                    # The sink is still busy: stop reading until it is done.  (A write that completed at
                    # once costs no pause and resume, which are two epoll changes per frame.)
                    self._paused = True
                    self.transport.pauseProducing()
            elif kind == END:
                self.busy = True
                self.sink.finish().addCallbacks(self.done.callback, self._fail)
            else:
                self._fail(Failure(error_from_payload(payload)))

    def _written(self, _: Any) -> None:
        self.busy = False
        if self._writing:
            return  # _drain's loop takes the next frame
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        self._drain()

    def _fail(self, failure: Failure) -> None:
        if not self.done.called:
            try:
                self.sink.abort()
            except Exception:
                log.failure("aborting a sink failed")
            self.done.errback(failure)

    def lost(self) -> None:
        if not self.ended:
            self._fail(Failure(TransferError("the sender vanished before the end of the stream", "EPIPE")))


@dataclass
class Offer:
    """A registered stream: exactly one of *source* (we send) or *sink* (we receive)."""

    source: Source | None = None
    sink: Sink | None = None
    timer: IDelayedCall | None = None
    result: defer.Deferred | None = None


@implementer(IHalfCloseableProtocol)
class _ServerConnection(Protocol):
    """Server side: read the token line, then send or receive.

    A connection that sends no token line within the server's
    ``token_line_timeout`` (a port scan, a peer that died after connecting)
    is closed rather than held open forever.

    Half-closeable (plain TCP): after an ERROR frame it closes lingering
    (see the module's docstring), so it must hear of the peer's half of the
    close (``readConnectionLost``) rather than have it end everything.
    """

    def __init__(self, server: TransferServer) -> None:
        self.server = server
        self.buffer = b""
        self.parser = FrameParser()
        self.receiver: _Receiver | None = None
        #: takes DATA frames straight into a child's pipe while it runs (oneos/splice.py)
        self.splicer: splice.SpliceReceiver | None = None
        self.offer: Offer | None = None
        self._line_timer: IDelayedCall | None = None
        #: our last frame is written and we are closing: what still arrives is dropped
        self.closing = False
        #: aborts a closing connection whose peer does not close in time
        self._close_timer: IDelayedCall | None = None
        self._gone = False
        self._waiting: list[defer.Deferred] = []

    def connectionMade(self) -> None:
        self.server._connections.add(self)
        tcp = _tcp(self.transport)
        tcp.setTcpNoDelay(True)  # the final status frame is small; do not let it wait
        tcp.bufferSize = READ_SIZE
        _keep_alive(tcp)
        timeout = getattr(self.server, "token_line_timeout", TOKEN_LINE_TIMEOUT)
        if timeout:
            self._line_timer = self.server.clock.callLater(timeout, self._no_token_line, timeout)

    def _no_token_line(self, timeout: float) -> None:
        self._line_timer = None
        peer = _transport(self).getPeer()
        log.info(
            "closing a stream connection from {peer}: no token line within {t:g}s",
            peer=f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
            t=timeout,
        )
        _transport(self).abortConnection()  # it sends nothing; it may read nothing either

    def _stop_line_timer(self) -> None:
        if self._line_timer is not None and self._line_timer.active():
            self._line_timer.cancel()
        self._line_timer = None

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return  # the stream is over for us; we only wait for the peer to close
        if self.offer is None:
            self.buffer += data
            if b"\n" not in self.buffer:
                if len(self.buffer) > 128:
                    self._stop_line_timer()
                    _transport(self).loseConnection()
                return
            self._stop_line_timer()
            line, rest = self.buffer.split(b"\n", 1)
            self.buffer = b""
            self.offer = self.server._claim(line.decode("ascii", "replace").strip())
            if self.offer is None:
                # a sender streams right after its token line: the refusal must survive that too
                self._fail_and_linger(TransferError("unknown or expired transfer token", "EACCES"))
                return
            if self.offer.source is not None:
                lent = _lend_output(self.transport, self.offer.source)
                if lent is None:
                    _Pump(self.transport, self.offer.source, self._sent)
                    return
                log.info("stream to {peer}: bytes move in the kernel (splice)", peer=_peer(self.transport))
                sock, out = lent
                splice.SpliceSender(
                    self.server.reactor, self.transport, sock, out, _data_header, MAX_FRAME, self._sent, TransferError
                )
                return
            assert self.offer.sink is not None
            self.receiver = _Receiver(self.transport, self.offer.sink)
            self.receiver.done.addCallbacks(self._received, self._receive_failed)
            lent_in = _lend_input(self.transport, self.offer.sink)
            if lent_in is not None:
                log.info("stream from {peer}: bytes move in the kernel (splice)", peer=_peer(self.transport))
                sock, into = lent_in
                self.splicer = splice.SpliceReceiver(
                    self.server.reactor,
                    self.transport,
                    sock,
                    into,
                    HEADER.size,
                    _data_length,
                    MAX_FRAME,
                    self._handback,
                    self._splice_failed,
                    TransferError,
                )
                self.splicer.start(rest)
                return
            data = rest
        if self.splicer is not None:
            return  # the splice pump reads the socket itself (the transport is paused)
        if self.receiver is not None and data:
            try:
                self.receiver.frames(self.parser.feed(data))
            except TransferError as e:
                self.receiver._fail(Failure(e))

    def _handback(self, leftover: bytes) -> None:
        """The splice pump met a frame that is not DATA: the frame parser takes the connection back."""
        self.splicer = None
        transport: Any = _transport(self)  # TCP: a producer too (resumeProducing), which ITCPTransport does not say
        transport.resumeProducing()
        if leftover:
            self.dataReceived(leftover)

    def _splice_failed(self, failure: Failure) -> None:
        """The program closed its input, or the sender vanished mid-frame: the stream fails as on the copying path."""
        self.splicer = None
        if self.receiver is not None:
            self.receiver._fail(failure)

    def _sent(self, failure: Failure | None) -> None:
        # The peer only receives (it sent nothing after its token line), so a plain close loses nothing.
        assert self.offer is not None and self.offer.result is not None
        self.closing = True
        if failure is None:
            _transport(self).write(frame(END, b"{}"))
            self.offer.result.callback(None)
        else:
            _transport(self).write(frame(ERROR, error_payload(failure.value)))
            if not self.offer.result.called:
                self.offer.result.errback(failure)
        _transport(self).loseConnection()

    def _received(self, status: Any) -> None:
        # The peer sent END and nothing after it, so a plain close loses nothing.
        self.closing = True
        _transport(self).write(frame(END, json.dumps(status).encode()))
        _transport(self).loseConnection()
        assert self.offer is not None and self.offer.result is not None
        self.offer.result.callback(status)

    def _receive_failed(self, failure: Failure) -> None:
        # tcp.Connection and the TLS protocol both have ``connected``; no interface declares it.
        # (Not when the connection's loss is what failed the receiver: nobody is left to tell.)
        if not self._gone and getattr(_transport(self), "connected", False):
            self._fail_and_linger(failure.value)
        assert self.offer is not None and self.offer.result is not None
        if not self.offer.result.called:
            self.offer.result.errback(failure)

    def _fail_and_linger(self, error: BaseException) -> None:
        """Send *error* as our last frame and close without letting a RST destroy it.

        The peer may still be sending: it learns of the failure only from this
        frame.  Closing the socket now, with its data unread or still arriving,
        would make the kernel answer with a RST, which can destroy the frame
        before the peer reads it.  So: end our side after the frame (TCP
        half-close; over TLS, close_notify: TLSMemoryBIOProtocol has no
        half-close, but after its loseConnection it keeps reading until the peer
        closes), read again if the receiver had paused reading, drop whatever
        arrives, and wait for the peer to close -- it does on reading the frame
        -- or abort after the server's ``error_linger`` seconds.
        """
        if self.closing:
            return
        self.closing = True
        transport: Any = _transport(self)
        transport.write(frame(ERROR, error_payload(error)))
        transport.resumeProducing()  # paused while the sink was busy: unread data would mean a RST
        if isinstance(transport, TLSMemoryBIOProtocol):
            transport.loseConnection()
        else:
            transport.loseWriteConnection()
        self._close_within(self.server.error_linger)

    def _close_within(self, seconds: float) -> None:
        """Abort the connection if it is still open in *seconds*."""
        if self._close_timer is None and not self._gone:
            self._close_timer = self.server.clock.callLater(seconds, self._close_timed_out, seconds)

    def _close_timed_out(self, seconds: float) -> None:
        self._close_timer = None
        peer = _transport(self).getPeer()
        log.info(
            "aborting a stream connection from {peer}: it did not close within {t:g}s of the stream's end",
            peer=f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}",
            t=seconds,
        )
        _transport(self).abortConnection()

    def readConnectionLost(self) -> None:
        """The peer closed its side (plain TCP; over TLS the TLS layer turns this into connectionLost)."""
        if self.closing:
            _transport(self).loseConnection()  # it has our last frame: the close is complete
        else:
            # it left before the stream's end; nothing more can come, and what we would send
            # is no use: close at once, as before half-closes were heard (connectionLost says why)
            _transport(self).abortConnection()

    def writeConnectionLost(self) -> None:
        """Our side ended after the ERROR frame; the peer's close, or the close timer, ends the rest."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._gone = True
        self._stop_line_timer()
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        self.server._connections.discard(self)
        if self.receiver is not None:
            self.receiver.lost()
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def closed(self) -> defer.Deferred:
        """A Deferred firing (None) once the connection is gone."""
        if self._gone:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def stop(self) -> defer.Deferred:
        """End the connection for a stopping server; fires once it is gone.

        One still at work (waiting for its token, mid-stream) is aborted; one
        closing after its last frame gets until its close timer (armed now if
        it had none), so its peer can still read that frame.
        """
        if not self._gone:
            if self.closing:
                self._close_within(self.server.error_linger)
            else:
                _transport(self).abortConnection()
        return self.closed()


class StreamFactory(Factory):
    """Builds server connections (named, as twistd logs 'StreamFactory starting on PORT')."""

    noisy = False
    server: TransferServer

    def buildProtocol(self, addr: Any) -> _ServerConnection:
        return _ServerConnection(self.server)


class TransferServer(service.Service):
    """Listens on an endpoint and serves registered one-time streams."""

    name = "transfer"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        reactor: Any,
        endpoint: str = "tcp:0:interface=127.0.0.1",
        token_ttl: float = 30.0,
        clock: Any = None,
        token_line_timeout: float | None = TOKEN_LINE_TIMEOUT,
        tls: Any = None,
        error_linger: float = ERROR_LINGER,
    ) -> None:
        self.reactor = reactor
        #: this machine's TLS (``oneos.security.tls.MachineTLS``: its ``server`` context factory is used);
        #: None: plain TCP.  Read when listening.
        self.tls = tls
        self.clock = clock or reactor
        self.endpoint = endpoint
        self.token_ttl = token_ttl
        #: seconds a connection may take to send its token line (None: no limit)
        self.token_line_timeout = token_line_timeout
        #: seconds a connection that ended with an error waits for its peer to close (see the module docstring)
        self.error_linger = error_linger
        self._connections: set[_ServerConnection] = set()
        self.port: Any = None
        #: the host peers are told to connect to when we listen on every interface
        self.advertise = "127.0.0.1"
        self._offers: dict[str, Offer] = {}

    @property
    def address(self) -> tuple[str, int]:
        host = self.port.getHost()
        return host.host, host.port

    def where(self) -> dict[str, Any]:
        """Host and port a peer should connect to (the advertised host replaces a wildcard interface)."""
        host, port = self.address
        if host in ("0.0.0.0", "::", ""):
            host = self.advertise
        if self.tls is not None:
            return {"host": host, "port": port, "tls": True}
        return {"host": host, "port": port}

    @property
    def stream_address(self) -> str:
        """``host:port`` as peers should use it ('' before listening)."""
        if self.port is None:
            return ""
        where = self.where()
        host = f"[{where['host']}]" if ":" in where["host"] else where["host"]
        return f"{host}:{where['port']}"

    @defer.inlineCallbacks
    def listen(self) -> Any:
        """Start listening; fires with (host, port)."""
        factory: Any = StreamFactory()
        factory.server = self
        if self.tls is not None:
            factory = TLSMemoryBIOFactory(self.tls.server, False, factory)
            factory.noisy = False
        self.port = yield serverFromString(self.reactor, self.endpoint).listen(factory)
        return self.address

    def startService(self) -> None:
        super().startService()
        keep_stream_buffers()

    def stopService(self) -> defer.Deferred:
        """Stop listening, expire unclaimed offers and end every stream connection; fires once all are gone.

        A stopped server keeps no socket and no timer (see :meth:`_ServerConnection.stop`).
        """
        super().stopService()
        for token in list(self._offers):
            self._expire(token)
        port, self.port = self.port, None
        gone = defer.DeferredList([connection.stop() for connection in list(self._connections)])
        stopped = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        return stopped.addCallback(lambda _: gone).addCallback(lambda _: None)

    def connections_closed(self) -> defer.Deferred:
        """Fires (None) once every stream connection open now has closed (by itself: nothing is closed here)."""
        return defer.DeferredList([connection.closed() for connection in list(self._connections)]).addCallback(
            lambda _: None
        )

    def offer(self, source: Source | None = None, sink: Sink | None = None) -> tuple[str, defer.Deferred]:
        """Register a stream; returns (token, Deferred firing when it completed)."""
        token = secrets.token_hex(TOKEN_BYTES)
        result: defer.Deferred = defer.Deferred()
        entry = Offer(source, sink, self.clock.callLater(self.token_ttl, self._expire, token), result)
        self._offers[token] = entry
        return token, result

    def _claim(self, token: str) -> Offer | None:
        entry = self._offers.pop(token, None)
        if entry is not None and entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        return entry

    def _expire(self, token: str) -> None:
        entry = self._offers.pop(token, None)
        if entry is None:
            return
        if entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        if entry.sink is not None:
            entry.sink.abort()
        if entry.result is not None and not entry.result.called:
            # The usual cause across machines: the peer cannot reach the address we advertise.
            log.warn(
                "nobody claimed a stream at {address} within {ttl:.0f}s (can the peer reach this address? "
                "see the 'address' setting and listen.pipe)",
                address=self.stream_address,
                ttl=self.token_ttl,
            )
            entry.result.errback(
                TransferError(
                    f"nobody connected to stream address {self.stream_address} within {self.token_ttl:.0f}s",
                    "ETIMEDOUT",
                )
            )


class _ClientConnection(Protocol):
    """Client side of one stream: present the token, then send or receive."""

    def __init__(self, token: str, source: Source | None, sink: Sink | None, reactor: Any = None) -> None:
        self.token = token
        self.source = source
        self.sink = sink
        #: the reactor a splice pump watches its fds with (set by _connect)
        self.reactor = reactor
        #: ``host:port`` and the CA file, set when connecting with TLS (for messages)
        self.address = ""
        self.trust_source = ""
        self.parser = FrameParser()
        #: cancelling it ends the stream at once (a reader that left): see _cancel
        self.result: defer.Deferred = defer.Deferred(self._cancel)
        self.receiver: _Receiver | None = None
        self.pump: _Pump | splice.SpliceSender | None = None
        self.sent_all = False
        self.cancelled = False
        #: the connection attempt, until it succeeds
        self.connecting: defer.Deferred | None = None

    def _cancel(self, _: defer.Deferred) -> None:
        """The caller gave up on the stream: close the connection (or stop connecting), so the far side
        sees its peer leave now rather than at the next write into a sink nobody reads."""
        self.cancelled = True
        if self.transport is not None:
            _transport(self).abortConnection()
        elif self.connecting is not None:
            self.connecting.cancel()

    def connectionMade(self) -> None:
        if self.cancelled:
            _transport(self).abortConnection()
            return
        tcp = _tcp(self.transport)
        tcp.setTcpNoDelay(True)  # the final status frame is small; do not let it wait
        tcp.bufferSize = READ_SIZE
        _keep_alive(tcp)
        line = self.token.encode() + b"\n"
        reactor = self.reactor or getattr(self.transport, "reactor", None)
        lent = _lend_output(self.transport, self.source) if self.source is not None and reactor else None
        if lent is not None:
            log.info("stream to {peer}: bytes move in the kernel (splice)", peer=_peer(self.transport))
            sock, out = lent
            self.pump = splice.SpliceSender(
                reactor, self.transport, sock, out, _data_header, MAX_FRAME, self._sent, TransferError, first=line
            )
            return
        _transport(self).write(line)
        if self.source is not None:
            self.pump = _Pump(self.transport, self.source, self._sent)
        else:
            assert self.sink is not None
            self.receiver = _Receiver(self.transport, self.sink)
            self.receiver.done.addCallbacks(self._finish, self._receive_failed)

    def _sent(self, failure: Failure | None) -> None:
        if failure is None:
            self.sent_all = True
            _transport(self).write(frame(END, b"{}"))
        else:
            if self.trust_source and failure.check(TransferError) and failure.value.kind == "EPIPE":
                return  # the TLS transport stopped us as the connection went: connectionLost says why
            _transport(self).write(frame(ERROR, error_payload(failure.value)))
            self._fail(failure)
            _transport(self).loseConnection()

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.parser.feed(data)
        except TransferError as e:
            self._fail(Failure(e))
            _transport(self).abortConnection()
            return
        if self.receiver is not None:
            self.receiver.frames(frames)
            return
        if not frames or self.result.called:
            return
        # A sender hears one frame, the receiver's verdict, and then has nothing more to send.
        kind, payload = frames[0]
        if self.pump is not None:
            self.pump.stop()
        if kind == END:
            try:
                self._finish(json.loads(payload or b"{}"))
            except ValueError:
                self._finish({})
            _transport(self).loseConnection()
            return
        if kind == ERROR:
            self._fail(Failure(error_from_payload(payload)))
        else:
            self._fail(Failure(TransferError("the receiver sent data to a sender", "EPROTO")))
        # The receiver failed and is only waiting, dropping what it reads, for us to close:
        # close at once (its linger ends with it), and drop what is still queued rather than send it.
        _transport(self).abortConnection()

    def _finish(self, status: Any) -> None:
        if not self.result.called:
            self.result.callback(status)

    def _fail(self, failure: Failure) -> None:
        if not self.result.called:
            self.result.errback(failure)

    def _receive_failed(self, failure: Failure) -> None:
        # Our sink gave up (a local reader went away): close, so the sender sees it at once.
        self._fail(failure)
        _transport(self).abortConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.trust_source and reason is not None and not (self.receiver is not None and self.receiver.ended):
            from oneos.security.tls import describe_tls_failure

            problem = describe_tls_failure(reason, "its", self.trust_source)
            if problem is not None:
                kind = "EACCES" if "certificate" in problem else "EPROTO"
                error = Failure(TransferError(f"stream address {self.address} (TLS): {problem}", kind))
                if self.receiver is not None:
                    self.receiver._fail(error)
                self._fail(error)
                return
        if self.receiver is not None:
            self.receiver.lost()  # the receiver's own outcome decides
            return
        self._fail(Failure(TransferError("the connection closed before the transfer finished", "EPIPE")))


def _trust(tls: Any) -> Any:
    """The CA a TLS stream client checks against: *tls* itself, or (for True) the default."""
    if tls is not True:
        return tls
    if _client_trust is not None:
        return _client_trust
    from oneos.security import tls as machine_tls

    return machine_tls.load_trust(machine_tls.default_home())


def _connect(reactor: Any, host: str, port: int, proto: _ClientConnection, tls: Any = None) -> defer.Deferred:
    h = host.replace(":", "\\:")
    endpoint = clientFromString(reactor, f"tcp:host={h}:port={port}:timeout=10")
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls:
        try:
            trust = _trust(tls)
        except OneOSError as e:
            proto._fail(Failure(TransferError(f"stream address {shown} uses TLS, but {e}", "EACCES")))
            return proto.result
        endpoint = wrapClientTLS(trust.client_creator(host), endpoint)
        proto.address = shown
        proto.trust_source = (
            getattr(trust, "source", None) or getattr(getattr(trust, "trust", None), "source", "") or "the network's CA"
        )
    proto.reactor = reactor
    d = proto.connecting = endpoint.connect(Factory.forProtocol(lambda: proto))

    def attempted(result: Any) -> Any:
        proto.connecting = None
        return result

    d.addBoth(attempted)
    d.addErrback(
        lambda f: proto._fail(
            Failure(TransferError(f"cannot connect to stream address {shown}: {f.getErrorMessage()}", "ECONNREFUSED"))
        )
    )
    return proto.result


def send(reactor: Any, host: str, port: int, token: str, source: Source, *, tls: Any = None) -> defer.Deferred:
    """Stream *source* to a server's registered sink; fires with the sink's status.

    *tls*: None/False for plain TCP; True to connect with TLS checking the
    server against the network's CA (the runtime's, else
    ``$ONEOS_HOME/tls/ca.pem``); or an ``oneos.security.tls.Trust`` to check
    against.  A stream offer says which (:func:`tls_of`).
    """
    return _connect(reactor, host, port, _ClientConnection(token, source, None), tls)


def receive(reactor: Any, host: str, port: int, token: str, sink: Sink, *, tls: Any = None) -> defer.Deferred:
    """Stream a server's registered source into *sink*; fires with the sink's status (*tls*: as for :func:`send`).

    Cancelling the Deferred closes the connection at once: the sender sees its reader leave.
    """
    return _connect(reactor, host, port, _ClientConnection(token, None, sink), tls)
