"""What a built-in sees: its :class:`Context` (session, grid, streams, job) and its :class:`Input`.

Each built-in is ``async def name(ctx, args) -> int``.  Built-ins run at
the same time as the other stages of their pipeline, so they stream: they
read their standard input a piece at a time (``await ctx.read()``,
``async for chunk in ctx.chunks()``, ``await ctx.readline()``;
``await ctx.input()`` reads it whole, up to :data:`MAX_INPUT`, for the few
that need it all) and write with ``await ctx.send(data)``, which waits
while the reader is behind.  ``ctx.out.write`` / ``ctx.line`` are fine for
small outputs.  A reader that went away makes writes raise
:class:`~oneos.shell.errors.BrokenPipe`: let it propagate (status 141, no
message, as SIGPIPE).  A typed :class:`~oneos.errors.OneOSError` raised
here becomes ``NAME: message`` and status 1.  Every wait goes through
``ctx.job`` so Ctrl-C and a vanished client end it.

A built-in never sees the interpreter: what it may ask of it (``exit``,
``fg``, ``source``, ``help``) is the narrow :class:`Shell`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from twisted.internet import defer, task

from oneos.fs import paths
from oneos.shell.errors import BrokenPipe, ShellError
from oneos.shell.parser import Script
from oneos.shell.session import Grid, Job, Session
from oneos.shell.streams import FileInput, FileOutput

#: Largest input a built-in may read whole (``await ctx.input()``); past it the built-in fails.
MAX_INPUT = 64 * 1024 * 1024
#: Bytes written to a writer without ``drain()`` before the reactor is given a turn.
UNPACED_BURST = 1024 * 1024

Builtin = Callable[["Context", list[str]], Awaitable[int]]


class Shell(Protocol):
    """What a built-in may ask of the interpreter running it (and nothing else)."""

    @property
    def help(self) -> Mapping[str, str]:
        """name -> one line of usage, for ``help``."""

    def exit(self, status: int) -> None:
        """``exit``: end the session with *status* once the current line is done."""

    async def wait_job(self, job: Job) -> int:
        """``fg``: make a background job the foreground one and wait for its status."""

    async def source(self, load: Callable[[], Awaitable[Script]]) -> int:
        """``source``: run the script *load* gives in this session, nested (refused when too deep)."""


class Input:
    """A stream a built-in reads (its standard input, or a file): by chunk, by line, or whole.

    *source* is a transfer-style Source (``next()`` fires with bytes, ``b''``
    at the end) with an optional ``close()``; None reads as empty.  Waits go
    through *job*, so Ctrl-C ends them with CancelledError.
    """

    def __init__(self, source: Any, job: Any, name: str = "standard input") -> None:
        self.source = source
        self.job = job
        self.name = name
        self._buffer = bytearray()
        self._ended = source is None

    async def read(self) -> bytes:
        """The next piece (any size), or b'' at the end."""
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        if self._ended:
            return b""
        data = await self.job.wait(self.source.next())
        if not data:
            self._ended = True
        return bytes(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            data = await self.read()
            if not data:
                return
            yield data

    async def readline(self, limit: int | None = None) -> bytes:
        """The next line with its newline (the last one may lack it); b'' at the end.

        A line longer than *limit* (default MAX_INPUT) is an error, not a
        truncation.
        """
        limit = MAX_INPUT if limit is None else limit
        searched = 0
        while True:
            at = self._buffer.find(b"\n", searched)
            if at >= 0:
                line = bytes(self._buffer[: at + 1])
                del self._buffer[: at + 1]
                return line
            searched = len(self._buffer)
            if searched > limit:
                raise ShellError(f"{self.name}: a line longer than {_size(limit)}")
            if self._ended:
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
            data = await self.job.wait(self.source.next())
            if not data:
                self._ended = True
            self._buffer += data

    async def readall(self, limit: int | None = None) -> bytes:
        """Everything to the end, refusing (with an error, never truncating) past *limit* bytes."""
        limit = MAX_INPUT if limit is None else limit
        parts, size = [], 0
        async for data in self.chunks():
            size += len(data)
            if size > limit:
                self.close()
                raise ShellError(f"{self.name} is larger than {_size(limit)}, too large to read whole")
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Read no more: whoever writes to it stops (BrokenPipe), as a Unix pipe's writer after its reader exits."""
        self._ended = True
        self._buffer.clear()
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n} bytes"


class _OutSink:
    """A transfer Sink into a built-in's output (``cat FILE``), with its back-pressure.

    When the reader has gone (or Ctrl-C), bytes are dropped instead of
    failing the transfer, which would leave its connection open and paused;
    :attr:`gone` fires at that moment so the built-in can stop waiting.
    """

    def __init__(self, ctx: Context, writer: Any) -> None:
        self.ctx = ctx
        self.writer = writer
        self.broken = False
        self.gone: defer.Deferred = defer.Deferred()

    def write(self, data: bytes) -> defer.Deferred:
        if self.broken or self.ctx.job.stopped:
            return defer.succeed(None)
        try:
            self.writer.write(data)
        except BrokenPipe:
            self._broken()
            return defer.succeed(None)
        drain = getattr(self.writer, "drain", None)
        if drain is None:
            return defer.succeed(None)
        return drain().addErrback(self._reader_gone)

    def _reader_gone(self, failure: Any) -> None:
        failure.trap(BrokenPipe)
        self._broken()

    def _broken(self) -> None:
        if not self.broken:
            self.broken = True
            if not self.gone.called:  # (cancelled by Ctrl-C)
                self.gone.callback(None)

    def finish(self) -> defer.Deferred:
        return defer.succeed({})

    def abort(self) -> None:
        pass


class Context:
    """One built-in invocation: its session, input and output, the job it belongs to.

    *shell* is the little a built-in may ask of the interpreter running it
    (:class:`Shell`); everything else a built-in needs is here: the session
    (cwd, variables, jobs), the grid (``ctx.fs``, ``ctx.grid.rpc``), its
    streams, the job whose waits Ctrl-C cancels.
    """

    def __init__(
        self,
        shell: Shell,
        session: Session,
        grid: Grid,
        name: str,
        stdin: Any,
        out: Any,
        err: Any,
        assignments: dict[str, str],
        job: Job | None = None,
    ) -> None:
        self.shell = shell
        self.session = session
        self.grid = grid
        self.fs = grid.fs
        self.name = name
        self.out = out
        self.err = err
        self.assignments = assignments
        self.job = job if job is not None else Job(0, name)
        #: standard input: the previous stage's pipe, a '< FILE', the session's input (first stage), or nothing
        self.stdin = Input(stdin, self.job)
        self._unpaced = 0

    # -- input ------------------------------------------------------------------
    async def read(self) -> bytes:
        """The next piece of standard input, b'' at its end."""
        return await self.stdin.read()

    def chunks(self) -> AsyncIterator[bytes]:
        """``async for chunk in ctx.chunks()``: standard input a piece at a time."""
        return self.stdin.chunks()

    async def readline(self) -> bytes:
        return await self.stdin.readline()

    async def input(self, limit: int | None = None) -> bytes:
        """All of standard input, for built-ins that need it whole; an error past *limit* (MAX_INPUT)."""
        return await self.stdin.readall(limit)

    def close_input(self) -> None:
        self.stdin.close()

    def open_input(self, path: str) -> Input:
        """A OneOS file (or a device under /dev) as a stream, opened at the first read (a missing one fails that read)."""
        from oneos.shell.devices import DeviceInput, is_device_path

        if is_device_path(path):
            return Input(DeviceInput(self.grid, path, self.job), self.job, path)
        return Input(FileInput(self.fs, path), self.job, path)

    # -- output -----------------------------------------------------------------
    async def send(self, data: bytes, writer: Any = None) -> None:
        """Write *data* (to ctx.out by default) and wait until the writer has room again.

        BrokenPipe when its reader has gone.  A writer without ``drain()``
        (a session terminal without back-pressure) is not waited on, but
        the reactor gets a turn every UNPACED_BURST bytes so Ctrl-C and
        other sessions are served.
        """
        writer = self.out if writer is None else writer
        writer.write(data)
        drain = getattr(writer, "drain", None)
        if drain is not None:
            await self.job.wait(drain())
            return
        self._unpaced += len(data)
        if self._unpaced >= UNPACED_BURST:
            self._unpaced = 0
            if self.grid.reactor is not None:
                await self.sleep(0)
            elif self.job.stopped:
                raise defer.CancelledError()

    async def copy_file(self, path: str, offset: int = 0, length: int | None = None) -> None:
        """Stream a OneOS file (or a byte range) to ctx.out, at the reader's pace; BrokenPipe if the reader goes."""
        sink = _OutSink(self, self.out)
        if offset or length is not None:
            reading = self.fs.read_into(path, sink, offset, length)
        else:
            reading = self.fs.read_into(path, sink)
        # Whichever comes first: the end of the file, or the reader going away (the rest of the
        # transfer is then drained in the background, dropped).
        either = defer.DeferredList(
            [reading, sink.gone], fireOnOneCallback=True, fireOnOneErrback=True, consumeErrors=True
        )
        try:
            await self.job.wait(either)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        if sink.broken:
            raise BrokenPipe(f"{self.name}: the reader has gone")

    def open_output(self, path: str, append: bool = False) -> Any:
        """A OneOS file written as a stream (``tee``): ``write``/``drain``, then ``await finish()``."""
        return FileOutput(self.fs, path, append)

    async def sleep(self, seconds: float) -> None:
        """Wait on the reactor's clock; Ctrl-C (or the client leaving) ends the wait with CancelledError."""
        await self.job.wait(task.deferLater(self.grid.reactor, seconds, lambda: None))

    def path(self, p: str) -> str:
        return paths.normalise(p, self.session.cwd)

    def write(self, text: str) -> None:
        self.out.write(text.encode("utf-8", "replace"))

    def line(self, text: str = "") -> None:
        self.write(text + "\n")

    def error(self, text: str) -> None:
        self.err.write(f"{self.name}: {text}\n".encode("utf-8", "replace"))
