"""Pipe bytes moved in the kernel: a child's pipe into a stream socket and back, with ``os.splice``.

Without this, every byte of a pipe between two programs on two runtimes is
read into the sending runtime (one copy), framed (another), written to the
socket (a third), read by the receiving runtime, cut out of its frame and
written to the next program's stdin: two Python processes doing bulk
copies, a few hundred MB/s at full CPU.  On Linux, ``splice(2)`` moves
pages between a pipe and a socket without them ever reaching user space,
so the runtimes only decide *how many* bytes go where.

The wire does not change.  A frame is ``kind | length | payload``
(oneos/transfer.py); a spliced DATA frame is the same bytes: the sender
writes the 5-byte header for *n* bytes it knows are waiting in the child's
pipe (``FIONREAD``; nobody else reads that pipe, so they stay there), then
splices exactly those *n* bytes into the socket.  The receiver reads a
header and splices exactly *length* bytes from the socket into the next
child's stdin.  So each side chooses for itself, and a runtime that splices
talks to one that copies (an older one, a TLS stream, a sink that is a
file) in either direction: nothing to negotiate.

Both pumps run on the reactor's readiness (level-triggered, non-blocking
fds), never blocking it, and keep the stream's rules:

* back-pressure: the sender splices only while the socket takes bytes
  (else it stops reading the child's pipe, so the program blocks on
  write); the receiver reads the socket only while the next program's
  pipe has room;
* counts: each side reports the bytes it moved (the process table's
  stdout/stdin bytes, ``oneos pipes``);
* ends: the sender's pump ends when the pipe does (and its owner says
  how the program ended); the receiver hands the connection back to the
  frame parser at the first frame that is not DATA (END, ERROR, or a
  malformed one), so the ordinary code judges it;
* errors: a peer that vanishes or a program that closes its input ends the
  stream with an error, never with a silent truncation.

What the pumps need from a child's pipe is :class:`PipeOutput` and
:class:`PipeInput` (oneos/agents/manager.py provides them); the frame
format is given by the caller, so this module knows nothing of it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import sys
import termios
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

#: Environment switch: ``ONEOS_SPLICE=0`` makes every stream take the copying path (benchmarks, debugging).
ENV = "ONEOS_SPLICE"
#: Bytes a pump moves per wakeup before it lets the reactor run other work (it is called again at once
#: while its fds stay ready: readiness is level-triggered).
STEP_BYTES = 8 * 1024 * 1024
#: Bytes a sender reads into memory from the pipe of a program that has exited while the socket is full,
#: so the program's end is reported without waiting for a slow reader (what is left is one pipe buffer).
DRAIN_LIMIT = 2 * 1024 * 1024
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
#: A sender woken with less than this in the pipe waits COALESCE_DELAY for more before framing it, so a
#: program that writes in small pieces (``head`` writes 8 KiB at a time) still moves in large frames:
#: each frame costs the two runtimes a wakeup and a few system calls whatever its size.
COALESCE_BYTES = 64 * 1024
#: Seconds a small amount waits for more (the reactor's timers are about as fine as 1 ms).
COALESCE_DELAY = 0.001
#: errors of a socket whose peer has gone
_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTUNREACH}


def available() -> bool:
    """Can this process splice?  Linux with ``os.splice`` (Python 3.10+), and not switched off by ``ONEOS_SPLICE``."""
    if not sys.platform.startswith("linux") or not hasattr(os, "splice"):
        return False
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "no", "off", "false")


def stream_socket(transport: Any) -> socket.socket | None:
    """The socket under *transport* if bytes may be spliced into or out of it, else None.

    Only a plain TCP transport qualifies: TLS must see every byte, and the
    test suite's simulated network has no socket at all.
    """
    handle = getattr(transport, "getHandle", None)
    if handle is None:
        return None
    try:
        sock = handle()
    except Exception:
        return None
    if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM or sock.fileno() < 0:
        return None
    return sock


def readable_bytes(fd: int) -> int:
    """How many bytes wait in the pipe *fd* (``FIONREAD``)."""
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


class PipeOutput(Protocol):
    """A child's output pipe lent to a :class:`SpliceSender` (oneos.agents.manager provides one).

    While lent, the pipe's readiness calls the pump instead of reading
    into memory.
    """

    fd: int

    def take_buffered(self) -> bytes:
        """What was already read into memory before the pump took over (it goes first)."""
        ...

    def start(self, readable: Callable[[], None]) -> None:
        """Call *readable* whenever the pipe is readable (until :meth:`release`), and start watching it."""
        ...

    def pause(self) -> None:
        """Stop watching the pipe (the socket is full: the program will block on write)."""
        ...

    def resume(self) -> None:
        """Watch the pipe again."""
        ...

    def moved(self, n: int) -> None:
        """*n* more bytes of the pipe were sent (counts)."""
        ...

    @property
    def exited(self) -> bool:
        """The program has exited: what is left in the pipe is bounded."""
        ...

    def at_eof(self) -> None:
        """The pipe reached its end: close it (the program's output ended)."""
        ...

    def ended(self) -> defer.Deferred:
        """After the end: fires (None) for a clean end, or fails with why the output is cut short."""
        ...

    def release(self) -> None:
        """The pump is done: give the pipe back to its owner (reading into memory again, unless it ended)."""
        ...


class PipeInput(Protocol):
    """A child's input pipe lent to a :class:`SpliceReceiver` (oneos.agents.manager provides one)."""

    fd: int

    def start(self, closed: Callable[[], None]) -> None:
        """Call *closed* if the program closes its input (until :meth:`release`)."""
        ...

    def moved(self, n: int) -> None:
        """*n* more bytes were written into the pipe (counts)."""
        ...

    def closed_error(self) -> BaseException:
        """The error a stream ends with when the program no longer reads its input."""
        ...

    def release(self) -> None:
        """The pump is done with the pipe: its owner writes and closes it again."""
        ...


ErrorFactory = Callable[[str, str], BaseException]


@implementer(IReadDescriptor, IWriteDescriptor)
class _Watch:
    """One fd's readiness for the reactor, calling *ready* (a pump's step); the pump adds and removes it.

    The fd belongs to someone else (the socket to its transport, the pipe
    to the process): the pump always removes this watch before that owner
    closes it or watches the same direction itself.
    """

    def __init__(self, fd: int, ready: Callable[[], None], what: str) -> None:
        self.fd = fd
        self.ready = ready
        self.what = what

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.ready()

    def doWrite(self) -> None:
        self.ready()

    def connectionLost(self, reason: Failure) -> None:
        """Nothing to close: the fd is not ours."""

    def logPrefix(self) -> str:
        return f"splice {self.what}"


class SpliceSender:
    """Sends a child's output pipe down a stream socket as DATA frames, the payload spliced.

    *header(n)* is the frame header for *n* payload bytes; *first* is sent
    before anything (a client's token line).  *on_done(None)* once the pipe
    ended cleanly and every byte is on the socket (the caller then writes
    the END frame), or *on_done(failure)*.  Registered as the transport's
    producer only to hear ``stopProducing`` when the connection goes: the
    transport itself writes nothing while the pump runs.
    """

    def __init__(
        self,
        reactor: Any,
        transport: Any,
        sock: socket.socket,
        pipe: PipeOutput,
        header: Callable[[int], bytes],
        max_chunk: int,
        on_done: Callable[[Failure | None], None],
        error: ErrorFactory,
        first: bytes = b"",
        coalesce: float = COALESCE_DELAY,
    ) -> None:
        self.reactor = reactor
        self.transport = transport
        self.sock = sock
        self.sock_fd = sock.fileno()
        self.pipe = pipe
        self.header = header
        #: seconds a small amount in the pipe waits for more (0: frame it at once)
        self.coalesce = coalesce
        self._coalescing: Any = None
        #: the last wait for more is over: frame what is there, however little
        self._waited = False
        self.max_chunk = max_chunk
        self.on_done = on_done
        self.error = error
        #: bytes that go before anything else: the token line, what was buffered, headers, a drained tail
        self.pending = bytearray(first)
        #: payload bytes of the current frame still in the pipe
        self.frame_left = 0
        self.eof = False
        self.finished = False
        #: payload bytes sent (buffered ones included)
        self.bytes = 0
        self._watch = _Watch(self.sock_fd, self._step, "socket")
        self._watching_socket = False
        self._ending = False
        buffered = pipe.take_buffered()
        for i in range(0, len(buffered), max_chunk):
            chunk = buffered[i : i + max_chunk]
            self.pending += header(len(chunk))
            self.pending += chunk
            self.bytes += len(chunk)
        transport.registerProducer(self, True)
        pipe.start(self._step)
        self._step()

    # -- the pump ---------------------------------------------------------------------------------
    def _step(self) -> None:
        if self.finished:
            return
        try:
            self._pump()
        except Exception as e:  # a bug must end the stream with a reason, never wedge it
            log.failure("the spliced stream failed")
            self._finish(Failure(self.error(f"the stream failed: {e}", "EIO")), abort=True)

    def _pump(self) -> None:
        budget = STEP_BYTES
        while budget > 0 and not self.finished:
            if self.pending:
                try:
                    sent = self.sock.send(self.pending, socket.MSG_MORE if self.frame_left else 0)
                except (BlockingIOError, InterruptedError):
                    self._wait_socket()
                    return
                except OSError as e:
                    self._gone(e)
                    return
                del self.pending[:sent]
                budget -= sent
                if self.pending:
                    self._wait_socket()
                    return
                continue
            if self.frame_left:
                try:
                    moved = os.splice(self.pipe.fd, self.sock_fd, self.frame_left, flags=_FLAGS)
                except (BlockingIOError, InterruptedError):
                    self._wait_socket()  # the bytes are in the pipe: it is the socket that is full
                    return
                except OSError as e:
                    self._gone(e)
                    return
                if moved == 0:
                    raise RuntimeError("the pipe ended before the bytes counted in it")
                self.frame_left -= moved
                self.bytes += moved
                self.pipe.moved(moved)
                budget -= moved
                continue
            if self.eof:
                self._end()
                return
            waiting = readable_bytes(self.pipe.fd)
            if 0 < waiting < COALESCE_BYTES and self.coalesce and not self._waited and not self.pipe.exited:
                self._wait_for_more()
                return
            self._waited = False
            if waiting:
                self.frame_left = min(waiting, self.max_chunk)
                self.pending += self.header(self.frame_left)
                continue
            # Nothing counted: the pipe's end, a wakeup with nothing to read, or bytes that just came.
            try:
                data = os.read(self.pipe.fd, self.max_chunk)
            except (BlockingIOError, InterruptedError):
                self._wait_pipe()
                return
            except OSError:
                data = b""  # as Twisted treats a failing pipe: its end
            self._took(data)
        if self.finished:
            return
        if self.pending or self.frame_left:
            self._wait_socket()
        elif self.eof:
            self._end()
        else:
            self._wait_pipe()

    def _took(self, data: bytes) -> None:
        """Bytes read into memory from the pipe (b'': its end) join the pending ones, framed."""
        if not data:
            self.eof = True
            self.pipe.at_eof()
            return
        self.pipe.moved(len(data))
        self.bytes += len(data)
        if self.frame_left:
            self.frame_left -= len(data)
        else:
            self.pending += self.header(len(data))
        self.pending += data

    def _drain(self) -> None:
        """The program has exited and the socket is full: read its remaining output into memory (bounded).

        So the program's end is seen (and reported) now, as on the copying
        path, instead of whenever a slow reader gets to it.
        """
        while not self.eof and len(self.pending) < DRAIN_LIMIT:
            try:
                data = os.read(self.pipe.fd, self.frame_left or self.max_chunk)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data and self.frame_left:
                raise RuntimeError("the pipe ended before the bytes counted in it")
            self._took(data)

    def _wait_socket(self) -> None:
        if self.pipe.exited and not self.eof:
            self._drain()
        if self.pipe.exited and not self.eof and len(self.pending) < DRAIN_LIMIT:
            self.pipe.resume()
        else:
            self.pipe.pause()
        if not self._watching_socket:
            self._watching_socket = True
            self.reactor.addWriter(self._watch)

    def _wait_pipe(self) -> None:
        self._unwatch_socket()
        if not self.eof:
            self.pipe.resume()

    def _wait_for_more(self) -> None:
        """A little is in the pipe: let the program add to it for a moment, then send what is there."""
        self._unwatch_socket()
        self.pipe.pause()
        if self._coalescing is None:
            self._coalescing = self.reactor.callLater(self.coalesce, self._waited_for_more)

    def _waited_for_more(self) -> None:
        self._coalescing = None
        self._waited = True
        self._step()

    def _unwatch_socket(self) -> None:
        if self._watching_socket:
            self._watching_socket = False
            self.reactor.removeWriter(self._watch)

    def _end(self) -> None:
        """Every byte is on the socket and the pipe ended: ask how the program ended, then report."""
        if self._ending:
            return
        self._ending = True
        self._unwatch_socket()
        self.pipe.ended().addCallbacks(lambda _: self._finish(None), self._finish)

    def _gone(self, error: OSError) -> None:
        if error.errno in _GONE:
            self._finish(Failure(self.error("the receiver went away", "EPIPE")))
        else:
            self._finish(Failure(self.error(f"cannot send the stream: {error.strerror or error}", "EIO")), abort=True)

    def _finish(self, failure: Failure | None, abort: bool = False) -> None:
        if self.finished:
            return
        midframe = bool(self.frame_left or self.pending)
        self._release()
        if failure is not None and (abort or midframe):
            # An ERROR frame cannot follow part of a frame: cut the connection, the peer sees it vanish.
            self.transport.abortConnection()
        self.on_done(failure)

    def _release(self) -> None:
        self.finished = True
        self._unwatch_socket()
        if self._coalescing is not None:
            if self._coalescing.active():
                self._coalescing.cancel()
            self._coalescing = None
        self.pipe.release()
        self.transport.unregisterProducer()

    def stop(self) -> None:
        """Send nothing more and report nothing: the far side has already said how the stream ended."""
        if not self.finished:
            self._release()

    # -- IPushProducer: the transport writes nothing while we pump, so only its loss matters ------
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        if not self.finished:
            self._release()
            self.on_done(Failure(self.error("the receiver went away", "EPIPE")))


class SpliceReceiver:
    """Takes DATA frames off a stream socket and splices their payload into a child's input pipe.

    It reads the socket itself (the transport is paused meanwhile) until a
    frame is not DATA: then it gives the connection back with the bytes it
    read of that frame (*on_handback(leftover)*: the caller resumes the
    transport and parses them).  *data_length(header)* is the payload length
    of a DATA frame header, or None for any other.  *on_failed(failure)*: the
    program closed its input, or the sender vanished in mid-frame.
    """

    def __init__(
        self,
        reactor: Any,
        transport: Any,
        sock: socket.socket,
        pipe: PipeInput,
        header_size: int,
        data_length: Callable[[bytes], int | None],
        max_chunk: int,
        on_handback: Callable[[bytes], None],
        on_failed: Callable[[Failure], None],
        error: ErrorFactory,
    ) -> None:
        self.reactor = reactor
        self.transport = transport
        self.sock = sock
        self.sock_fd = sock.fileno()
        self.pipe = pipe
        self.header_size = header_size
        self.data_length = data_length
        self.max_chunk = max_chunk
        self.on_handback = on_handback
        self.on_failed = on_failed
        self.error = error
        #: bytes already read off the socket (by the transport, with the token line) not yet used
        self.memory = memoryview(b"")
        self.head = bytearray()
        self.frame_left = 0
        self.finished = False
        #: payload bytes delivered into the pipe
        self.bytes = 0
        self._socket_watch = _Watch(self.sock_fd, self._step, "socket")
        self._pipe_watch = _Watch(pipe.fd, self._step, "pipe")
        self._watching: _Watch | None = None

    def start(self, initial: bytes = b"") -> None:
        """Take over the connection: *initial* is what the transport already read after the token line."""
        self.memory = memoryview(initial)
        self.transport.pauseProducing()
        self.transport.registerProducer(self, True)
        self.pipe.start(self._closed)
        self._step()

    def _step(self) -> None:
        if self.finished:
            return
        try:
            self._pump()
        except Exception as e:
            log.failure("the spliced stream failed")
            self._fail(self.error(f"the stream failed: {e}", "EIO"))

    def _pump(self) -> None:
        budget = STEP_BYTES
        while budget > 0 and not self.finished:
            if self.frame_left and self.memory:
                try:
                    written = os.write(self.pipe.fd, self.memory[: self.frame_left])
                except (BlockingIOError, InterruptedError):
                    self._wait(self._pipe_watch)
                    return
                except OSError:
                    self._closed()
                    return
                self.memory = self.memory[written:]
                self._delivered(written)
                budget -= written
                continue
            if self.frame_left:
                try:
                    moved = os.splice(self.sock_fd, self.pipe.fd, min(self.frame_left, self.max_chunk), flags=_FLAGS)
                except (BlockingIOError, InterruptedError):
                    if self._blocked_side() is not None:
                        return
                    budget -= 64 * 1024  # both sides look ready: try again, a bounded number of times
                    continue
                except OSError as e:
                    if e.errno == errno.EPIPE:
                        self._closed()
                    else:
                        self._vanished()
                    return
                if moved == 0:
                    self._vanished()
                    return
                self._delivered(moved)
                budget -= moved
                continue
            need = self.header_size - len(self.head)
            if self.memory:
                self.head += self.memory[:need]
                self.memory = self.memory[need:]
            else:
                try:
                    data = self.sock.recv(need)
                except (BlockingIOError, InterruptedError):
                    self._wait(self._socket_watch)
                    return
                except OSError:
                    data = b""
                if not data:
                    self._handback()  # the sender left between frames: the transport sees the close and says so
                    return
                self.head += data
            if len(self.head) < self.header_size:
                continue
            length = self.data_length(bytes(self.head))
            if length is None:
                self._handback()
                return
            self.head.clear()
            self.frame_left = length
        if not self.finished:
            self._wait(self._pipe_watch if self.frame_left and self.memory else self._socket_watch)

    def _delivered(self, n: int) -> None:
        self.frame_left -= n
        self.bytes += n
        self.pipe.moved(n)

    def _blocked_side(self) -> _Watch | None:
        """After a splice found nothing to do: wait for whichever side is not ready (None: both are)."""
        poller = select.poll()
        poller.register(self.pipe.fd, select.POLLOUT)
        poller.register(self.sock_fd, select.POLLIN)
        ready = dict(poller.poll(0))
        if not ready.get(self.pipe.fd, 0) & (select.POLLOUT | select.POLLERR | select.POLLHUP):
            self._wait(self._pipe_watch)
            return self._pipe_watch
        if not ready.get(self.sock_fd, 0):
            self._wait(self._socket_watch)
            return self._socket_watch
        return None

    def _wait(self, watch: _Watch) -> None:
        """Be called when *watch*'s fd is ready: the socket readable or the pipe writable (never both)."""
        if self._watching is watch:
            return
        self._unwatch()
        self._watching = watch
        if watch is self._socket_watch:
            self.reactor.addReader(watch)
        else:
            self.reactor.addWriter(watch)

    def _unwatch(self) -> None:
        watch, self._watching = self._watching, None
        if watch is self._socket_watch:
            self.reactor.removeReader(watch)
        elif watch is self._pipe_watch:
            self.reactor.removeWriter(watch)

    def _release(self) -> None:
        self.finished = True
        self._unwatch()
        self.pipe.release()
        self.transport.unregisterProducer()

    def _handback(self) -> None:
        leftover = bytes(self.head) + bytes(self.memory)
        self._release()
        self.on_handback(leftover)

    def _closed(self) -> None:
        """The program no longer reads its input."""
        if not self.finished:
            self._fail(self.pipe.closed_error())

    def _vanished(self) -> None:
        self._fail(self.error("the sender vanished before the end of the stream", "EPIPE"))

    def _fail(self, error: BaseException) -> None:
        if not self.finished:
            self._release()
            self.on_failed(Failure(error))

    def stop(self) -> None:
        """Stop at once, reporting nothing (the connection is being closed by its owner)."""
        if not self.finished:
            self._release()

    # -- IPushProducer: registered only to hear the connection's loss ------------------------------
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self._vanished()
