"""Byte streams between the stages of a pipeline, and between stages and files or the session.

The stages of a pipeline run at the same time, so the bytes between them
*stream*: consecutive built-ins are joined by a bounded in-memory
:class:`StreamPipe` (a writer that awaits ``drain()`` waits for its reader;
a reader that stops early makes its writer fail with
:class:`~oneos.shell.errors.BrokenPipe`, the shell's SIGPIPE, status 141).
The other classes adapt a pipe to the transfer layer's *Source* / *Sink*
protocols (:mod:`oneos.transfer`) and to the file system's streamed
``read_into`` / ``write_from``:

* :class:`PipeReader`: a pipe's reading end as a Source (a stage's input);
* :class:`PipeSink`: a program's output into a pipe (a program feeding a built-in);
* :class:`FileInput`: a OneOS file as a Source (``< FILE``, ``cat FILE``);
* :class:`FileOutput`: a built-in's output streamed into a OneOS file (``> FILE``, ``tee FILE``);
* :class:`WriterSink`: a program's output onto a session writer (the terminal).

Output goes to *writers*: anything with ``write(bytes)``, and optionally
``drain() -> Deferred`` firing when the writer has room again (pipes and
files have it; a session writer that offers it gives back-pressure up to
the terminal).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer

from oneos.shell.errors import BrokenPipe, ShellError

#: Bytes a pipe between two stages holds before its writer must wait (back-pressure).
PIPE_LIMIT = 1024 * 1024
#: Largest piece a pipe hands its reader at once (small writes are joined up to this).
PIPE_CHUNK = 256 * 1024


class Writer(Protocol):
    """Where output goes.  ``write`` never blocks; writers with back-pressure also have
    ``drain() -> Deferred`` (fires when there is room again, fails with BrokenPipe when
    the reader has gone)."""

    def write(self, data: bytes) -> Any: ...


class StreamPipe:
    """A bounded in-memory byte stream between two stages that run at the same time.

    Why: the stages of a pipeline run concurrently, so bytes must flow while
    they are produced, and a fast writer must wait for a slow reader instead
    of filling the shell's memory; a reader that stops early (``head``) must
    stop its writer, as SIGPIPE does.

    Writer side: :meth:`write` queues bytes and never blocks (it raises
    :class:`BrokenPipe` once the reader has gone); :meth:`drain` fires once
    at most *limit* bytes wait, so a writer awaiting it goes at the reader's
    pace.  :meth:`close` ends the stream once every writer has closed (one to
    start with, more with :meth:`add_writer`, e.g. a program's stdout and
    stderr); :meth:`fail` ends it with an error the reader gets.

    Reader side: :meth:`next` fires with bytes, or ``b''`` at the end, which
    makes the pipe a transfer *Source* (``fs.write_from``, a program's stdin);
    :meth:`close_reader` drops what is queued and breaks the pipe for writers.
    """

    def __init__(self, name: str = "pipe", limit: int = PIPE_LIMIT) -> None:
        self.name = name
        self.limit = limit
        self.writers = 1
        self.reader_closed = False
        #: bytes written so far (for tests and messages)
        self.carried = 0
        self._chunks: deque[bytes] = deque()
        self.size = 0
        self._error: BaseException | None = None
        self._reader: defer.Deferred | None = None
        self._room: list[defer.Deferred] = []

    def __repr__(self) -> str:
        return f"<StreamPipe {self.name} queued={self.size} writers={self.writers} reader_closed={self.reader_closed}>"

    @property
    def ended(self) -> bool:
        """No writer is left: once the queue is read, the reader sees the end."""
        return self.writers <= 0

    # -- the writers' side -------------------------------------------------------
    def add_writer(self) -> None:
        self.writers += 1

    def write(self, data: bytes) -> None:
        if self.reader_closed:
            raise BrokenPipe(f"{self.name}: the reader has gone")
        if not data:
            return
        if self.ended:
            raise ShellError(f"{self.name}: written after its end")
        self.carried += len(data)
        reader, self._reader = self._reader, None
        if reader is not None:  # the reader is waiting, so nothing is queued: hand it over
            reader.callback(bytes(data))
            return
        self._chunks.append(bytes(data))
        self.size += len(data)

    def drain(self) -> defer.Deferred:
        """Fires when at most *limit* bytes wait (at once if so); fails with BrokenPipe if the reader goes."""
        if self.reader_closed:
            return defer.fail(BrokenPipe(f"{self.name}: the reader has gone"))
        if self.size <= self.limit:
            return defer.succeed(None)

        def cancelled(d: defer.Deferred) -> None:
            if d in self._room:
                self._room.remove(d)

        d: defer.Deferred = defer.Deferred(cancelled)
        self._room.append(d)
        return d

    def close(self) -> None:
        """One writer is done; the stream ends when the last one is."""
        if self.writers <= 0:
            return
        self.writers -= 1
        if self.writers == 0:
            self._wake_at_end()

    def fail(self, error: BaseException) -> None:
        """End the stream with *error*: the reader gets it after what is queued."""
        if self.ended:
            return
        self._error = error
        self.writers = 0
        self._wake_at_end()

    # -- the reader's side -------------------------------------------------------
    def next(self) -> defer.Deferred:
        if self._chunks:
            return defer.succeed(self._take())
        if self.ended or self.reader_closed:
            error, self._error = self._error, None
            return defer.fail(error) if error is not None else defer.succeed(b"")
        if self._reader is not None:
            return defer.fail(ShellError(f"{self.name}: a pipe has one reader at a time"))

        def cancelled(d: defer.Deferred) -> None:
            if self._reader is d:
                self._reader = None

        self._reader = defer.Deferred(cancelled)
        return self._reader

    def close_reader(self) -> None:
        """Nothing more will be read: drop the queue; writers get BrokenPipe (a waiting read ends)."""
        if self.reader_closed:
            return
        self.reader_closed = True
        self._chunks.clear()
        self.size = 0
        room, self._room = self._room, []
        for d in room:
            d.errback(BrokenPipe(f"{self.name}: the reader has gone"))
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.callback(b"")

    def abort(self) -> None:
        """Ctrl-C: both ends stop at once (writers get BrokenPipe, the reader the end)."""
        self.close_reader()
        self.writers = 0

    def _take(self) -> bytes:
        first = self._chunks.popleft()
        parts, size = [first], len(first)
        while self._chunks and size + len(self._chunks[0]) <= PIPE_CHUNK:
            chunk = self._chunks.popleft()
            parts.append(chunk)
            size += len(chunk)
        self.size -= size
        if self._room and self.size <= self.limit:
            # Taken before waking the writers: what they write now queues behind it.
            room, self._room = self._room, []
            for d in room:
                d.callback(None)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _wake_at_end(self) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        error, self._error = self._error, None
        if error is not None:
            reader.errback(error)
        else:
            reader.callback(b"")


class PipeReader:
    """The reading end of a :class:`StreamPipe` as a Source with ``close()`` (one stage's input)."""

    def __init__(self, pipe: StreamPipe) -> None:
        self.pipe = pipe

    def next(self) -> defer.Deferred:
        return self.pipe.next()

    def close(self) -> None:
        self.pipe.close_reader()


class PipeSink:
    """A program's output into a pipe, as a transfer Sink (a program feeding a built-in).

    ``write`` waits for room in the pipe, so the transfer stops reading its
    socket and the program is slowed down across the network.  When the
    reader has gone, data is dropped and *on_broken* is called once (the
    shell then stops the program, as SIGPIPE would): failing the sink
    instead would leave the transfer's connection open and paused.  The
    end of the transfer, clean or not, closes this writer's share of the
    pipe; a failure is reported by whoever awaits the transfer.
    """

    def __init__(self, pipe: StreamPipe, on_broken: Callable[[], Any] | None = None) -> None:
        self.pipe = pipe
        pipe.add_writer()
        self.on_broken = on_broken
        self.broken = False
        self.closed = False

    def write(self, data: bytes) -> defer.Deferred:
        if self.broken or self.closed or self.pipe.reader_closed:
            self._broken()
            return defer.succeed(None)
        self.pipe.write(data)
        return self.pipe.drain().addErrback(self._reader_gone)

    def _reader_gone(self, failure: Any) -> None:
        failure.trap(BrokenPipe)
        self._broken()

    def _broken(self) -> None:
        if not self.broken:
            self.broken = True
            if self.on_broken is not None:
                self.on_broken()

    def finish(self) -> defer.Deferred:
        self._close()
        return defer.succeed({})

    def abort(self) -> None:
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pipe.close()


class _FillSink:
    """A file's bytes into a :class:`FileInput`'s pipe; after the reader has gone, drops them.

    Dropping (rather than failing the transfer) because a failed sink leaves
    the transfer's connection and the store's reader open; draining the rest
    ends both.  Memory stays bounded either way.
    """

    def __init__(self, pipe: StreamPipe) -> None:
        self.pipe = pipe

    def write(self, data: bytes) -> defer.Deferred:
        if self.pipe.reader_closed:
            return defer.succeed(None)
        self.pipe.write(data)
        return self.pipe.drain().addErrback(lambda f: f.trap(BrokenPipe) and None)

    def finish(self) -> defer.Deferred:
        return defer.succeed({})

    def abort(self) -> None:
        pass  # the transfer's failure reaches the reader through FileInput


class FileInput:
    """A OneOS file as a stream a built-in reads (``< FILE``, ``wc FILE``, ``head FILE``).

    Opened at the first read, so a built-in that never reads never opens it.
    A read failure (no such file, transfer broken) reaches the reader as the
    error, after the bytes that did arrive.
    """

    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.path = path
        self.pipe = StreamPipe(path)
        self.started = False

    def next(self) -> defer.Deferred:
        if not self.started:
            self.started = True
            d = self.fs.read_into(self.path, _FillSink(self.pipe))
            d.addCallbacks(lambda _: self.pipe.close(), lambda f: self.pipe.fail(f.value))
        return self.pipe.next()

    def close(self) -> None:
        self.pipe.close_reader()


class PipedOutput:
    """A built-in's output streamed through a bounded pipe to whatever *consume* starts reading it.

    If the consumer fails early, later writes raise BrokenPipe (the reader
    end is closed), so the built-in stops, and :meth:`finish` returns the
    error.  Subclasses say what reads the pipe and how an error is named.
    """

    def __init__(self, label: str, consume: Callable[[StreamPipe], defer.Deferred], limit: int = PIPE_LIMIT) -> None:
        self.label = label
        self.pipe = StreamPipe(label, limit=limit)
        self.error: BaseException | None = None
        self.done: defer.Deferred = consume(self.pipe)
        self.done.addErrback(self._failed)

    def _describe(self, error: BaseException) -> BaseException:
        return error

    def _failed(self, failure: Any) -> None:
        self.error = self._describe(failure.value)
        self.pipe.close_reader()

    def write(self, data: bytes) -> None:
        self.pipe.write(data)

    def drain(self) -> defer.Deferred:
        return self.pipe.drain()

    async def finish(self) -> BaseException | None:
        """End the stream and wait for the consumer to take it; the error if that failed."""
        self.pipe.close()
        await self.done
        return self.error


class FileOutput(PipedOutput):
    """A built-in's output streamed into a OneOS file through ``fs.write_from``.

    Nothing is held whole: the file service reads the pipe as the built-in
    writes it.  The file appears (or is replaced) when :meth:`finish` closes
    the stream; if the write fails early (no such directory...) later writes
    raise BrokenPipe, so the built-in stops, and :meth:`finish` returns the error.
    """

    def __init__(self, fs: Any, path: str, append: bool) -> None:
        self.path = path
        mode = "append" if append else "truncate"
        super().__init__(f"{'>>' if append else '>'} {path}", lambda pipe: fs.write_from(path, pipe, mode))


class WriterSink:
    """A transfer sink writing to a session writer (the terminal), waiting on its ``drain()`` if it has one."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def write(self, data: bytes) -> defer.Deferred:
        try:
            self.writer.write(data)
        except Exception as e:
            return defer.fail(e)
        drain = getattr(self.writer, "drain", None)
        return drain() if drain is not None else defer.succeed(None)

    def finish(self) -> defer.Deferred:
        return defer.succeed({})

    def abort(self) -> None:
        pass
