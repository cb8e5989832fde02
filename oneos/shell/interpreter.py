"""Runs shell lines: one :class:`Session` per login, one :class:`Interpreter` per terminal.

The interpreter turns the parser's AST (:mod:`oneos.shell.parser`) into
actions on the grid:

* built-in commands (:mod:`oneos.shell.builtins`) run here, in the shell
  service, against the OneOS file system through :class:`FSClient`;
* anything else is an *agent* started through the scheduler (RPC target
  ``scheduler``), its output streamed back over the runtimes' TCP transfer
  servers, exactly as ``oneos run`` does; consecutive external stages of a
  pipeline are wired runtime to runtime (never through the shell).

Every stage of a pipeline runs at the same time, as in a Unix shell, and
the bytes between stages *stream*: consecutive built-ins are joined by
bounded in-memory :class:`StreamPipe` objects (a writer that awaits
``drain()`` waits for its reader; a reader that stops early makes its
writer fail with :class:`BrokenPipe`, the shell's SIGPIPE, status 141), a
built-in feeding a program is that program's stdin transfer *Source*, and a
program feeding a built-in writes through a transfer *Sink* into the
built-in's input pipe.  A built-in's ``> FILE`` streams into
``fs.write_from`` and its ``< FILE`` comes from ``fs.read_into``, so no
output, however large, sits whole in the shell's memory.  A stream that
fails (cannot connect, peer gone before the end) is reported as
``oneos: WHAT: ERROR`` and makes the pipeline's status non-zero: nothing
is lost silently.

What the client sends while a command runs (piped into ``ssh host CMD``, or
typed at the terminal) reaches the first stage of the foreground pipeline
through :class:`SessionInput`: a program's stdin is streamed to its runtime
(``agent_stdin`` + :func:`oneos.transfer.send`, as ``oneos run`` does), a
built-in reads it as a stream like any other input.  Background jobs and
stages reading ``< FILE`` do not take it.

Output goes to *writers*: anything with ``write(bytes)``, and optionally
``drain() -> Deferred`` firing when the writer has room again (pipes and
files have it; a session writer that offers it gives back-pressure up to
the terminal, one that does not is written to at the producer's pace, with
the reactor given a turn every :data:`UNPACED_BURST` bytes).  Errors that are
:class:`OneOSError` become one plain line on the error writer; anything else
is logged with its traceback and shown as an internal error, never killing
the session.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from oneos.errors import OneOSError, describe
from oneos.fs import paths
from oneos.shell.expand import expand_word, glob_pattern
from oneos.shell.parser import AndOr, Command, Pipeline, Script, ShellSyntaxError, parse

log = Logger()

#: Bytes a pipe between two stages holds before its writer must wait (back-pressure).
PIPE_LIMIT = 1024 * 1024
#: Largest piece a pipe hands its reader at once (small writes are joined up to this).
PIPE_CHUNK = 256 * 1024
#: Largest input a built-in may read whole (``await ctx.input()``); past it the built-in fails.
MAX_INPUT = 64 * 1024 * 1024
#: Seconds a program's input stream may take to end once the program has (a peer gone silent).
STDIN_GRACE = 10.0
#: Bytes written to a writer without ``drain()`` before the reactor is given a turn.
UNPACED_BURST = 1024 * 1024
#: Lines kept in a session's history.
HISTORY_SIZE = 1000
#: Nesting limit for ``source`` (a file sourcing itself must not recurse forever).
MAX_SOURCE_DEPTH = 16
#: Bytes of session input held for the program before the front end is asked to pause its client.
INPUT_LIMIT = 1024 * 1024
#: Largest piece handed to a reader at once (the transfer cuts frames anyway).
INPUT_CHUNK = 64 * 1024
#: Interpreters whose first argument may name a OneOS script (``python3 /home/app.py``).
SCRIPT_RUNNERS = {"python3": ".py", "python": ".py", "node": ".js", "sh": ".sh"}

STATUS_NOT_FOUND = 127
STATUS_CANNOT_RUN = 126
STATUS_SYNTAX = 2
#: 128 + SIGPIPE: a stage whose reader went away (never the pipeline's status unless it is the last stage)
STATUS_BROKEN_PIPE = 141


class Writer(Protocol):
    """Where output goes.  ``write`` never blocks; writers with back-pressure also have
    ``drain() -> Deferred`` (fires when there is room again, fails with BrokenPipe when
    the reader has gone)."""

    def write(self, data: bytes) -> Any: ...


class ShellError(OneOSError):
    """A command cannot be run as written (bad redirection, unsupported form)."""


class BrokenPipe(ShellError):
    """The reader of a pipe has gone: the writer should stop, quietly (the shell's SIGPIPE, status 141)."""

    code = kind = "EPIPE"


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


class FileOutput:
    """A built-in's output streamed into a OneOS file through ``fs.write_from``.

    Nothing is held whole: the file service reads the pipe as the built-in
    writes it.  The file appears (or is replaced) when :meth:`finish` closes
    the stream; if the write fails early (no such directory...) later writes
    raise BrokenPipe, so the built-in stops, and :meth:`finish` returns the error.
    """

    def __init__(self, fs: Any, path: str, append: bool) -> None:
        self.path = path
        self.label = f"{'>>' if append else '>'} {path}"
        self.pipe = StreamPipe(self.label)
        self.error: BaseException | None = None
        self.done: defer.Deferred = fs.write_from(path, self.pipe, "append" if append else "truncate")
        self.done.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        self.error = failure.value
        self.pipe.close_reader()

    def write(self, data: bytes) -> None:
        self.pipe.write(data)

    def drain(self) -> defer.Deferred:
        return self.pipe.drain()

    async def finish(self) -> BaseException | None:
        """End the stream and wait for the file; the error if writing it failed."""
        self.pipe.close()
        await self.done
        return self.error


class _RunState:
    """What the stages of one pipeline run share: whether any stream failed."""

    def __init__(self) -> None:
        self.failed = False


class _FileDest:
    """``> PATH`` / ``>> PATH``: a OneOS file (one object per redirection, so 2>&1 can share it)."""

    def __init__(self, path: str, append: bool) -> None:
        self.path = path
        self.append = append

    def __repr__(self) -> str:
        return f"{'>>' if self.append else '>'} {self.path}"


class _Terminal:
    """The session's own stdout or stderr."""

    def __init__(self, name: str) -> None:
        self.name = name


class _Pipe:
    """Into the next stage of the pipeline."""


TERMINAL_OUT, TERMINAL_ERR, PIPE = _Terminal("stdout"), _Terminal("stderr"), _Pipe()


@dataclass
class Stage:
    """One pipeline stage once expanded: argv, environment, where its streams go."""

    argv: list[str]
    assignments: dict[str, str]
    stdin_file: str | None
    stdout: Any
    stderr: Any
    runtime: str | None = None
    tags: tuple[str, ...] = ()
    builtin: Callable[..., Any] | None = None


@dataclass
class Job:
    """An and-or list being run: its agents and waits, so they can be stopped; its result."""

    number: int
    text: str
    agents: list[dict[str, Any]] = field(default_factory=list)
    done: defer.Deferred | None = None
    status: int | None = None
    #: started with '&': never reads the session's input
    background: bool = False
    #: set by Ctrl-C / hangup; built-ins that wait (tail -f, reading input) end with 130
    stopped: bool = False
    #: what the job's built-ins are waiting on, cancelled when it is stopped
    waiting: set[defer.Deferred] = field(default_factory=set)
    #: pipes between the stages running now, broken when it is stopped (nothing waits on them after)
    pipes: list[StreamPipe] = field(default_factory=list)

    async def wait(self, d: defer.Deferred) -> Any:
        """Await *d* unless the job is stopped meanwhile (then CancelledError, as Ctrl-C should)."""
        if self.stopped:
            d.cancel()
            d.addErrback(lambda f: None)  # (its CancelledError is this one)
            raise defer.CancelledError()
        self.waiting.add(d)
        try:
            return await d
        finally:
            self.waiting.discard(d)


_EOF = None  # a terminal's Ctrl-D, queued in SessionInput between data chunks


class SessionInput:
    """Bytes the session's client sends while commands run, for the foreground pipeline's stdin.

    The SSH/telnet front end feeds it (:meth:`feed`, :meth:`end_of_input`,
    :meth:`close`); the interpreter hands one :meth:`reader` at a time (a
    transfer *Source*) to the first stage of a foreground pipeline.

    Two kinds of end, because a pipe and a terminal differ: :meth:`close` is
    the channel's EOF (``ssh host CMD < file``) and is final, every later
    reader sees EOF at once; :meth:`end_of_input` is a terminal's Ctrl-D and
    ends only the current reader's input, the next program reads fresh
    typing, as on a tty.

    Input waits here until a reader takes it (the program may still be
    starting).  Past *limit* bytes the front end's *pause* is called, so a
    fast client cannot fill the shell's memory while a program reads slowly;
    *resume* once the backlog is taken.  Without *pause*, input past the
    limit is dropped and :meth:`feed` returns False.
    """

    def __init__(self, limit: int = INPUT_LIMIT, pause: Callable[[], Any] | None = None,
                 resume: Callable[[], Any] | None = None) -> None:
        self.limit = limit
        self._pause = pause
        self._resume = resume
        self.paused = False
        self.closed = False
        self._chunks: deque[bytes | None] = deque()
        self._size = 0
        self._reader: _InputReader | None = None
        self._waiting: defer.Deferred | None = None

    # -- the front end's side ------------------------------------------------------
    def feed(self, data: bytes) -> bool:
        if self.closed or not data:
            return True
        if self._pause is None and self._size + len(data) > self.limit:
            return False
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        if self._size > self.limit and not self.paused and self._pause is not None:
            self.paused = True
            self._pause()
        return True

    def end_of_input(self) -> None:
        """Ctrl-D at a terminal: the current (or next) reader's input ends here."""
        if not self.closed:
            self._chunks.append(_EOF)
            self._wake()

    def close(self) -> None:
        """The client will send nothing more (channel EOF or gone)."""
        self.closed = True
        self._wake()

    def discard(self) -> None:
        """Drop what no program read (a terminal's typing during a command that did not want it)."""
        self._chunks.clear()
        self._size = 0
        self._maybe_resume()

    # -- the interpreter's side ----------------------------------------------------
    def reader(self) -> _InputReader:
        """A Source for one stage; any earlier reader is ended first (one reader at a time)."""
        if self._reader is not None:
            self._release(self._reader)
        self._reader = _InputReader(self)
        return self._reader

    def _next(self, reader: _InputReader) -> defer.Deferred:
        if reader.ended or reader is not self._reader:
            return defer.succeed(b"")
        if self._chunks:
            return defer.succeed(self._take(reader))
        if self.closed:
            reader.ended = True
            return defer.succeed(b"")

        def cancelled(d: defer.Deferred) -> None:
            if self._waiting is d:
                self._waiting = None

        self._waiting = defer.Deferred(cancelled)
        return self._waiting

    def _take(self, reader: _InputReader) -> bytes:
        first = self._chunks.popleft()
        if first is _EOF:
            reader.ended = True
            return b""
        parts, size = [first], len(first)
        while self._chunks and self._chunks[0] is not _EOF and size < INPUT_CHUNK:
            chunk = self._chunks.popleft()
            assert chunk is not None
            parts.append(chunk)
            size += len(chunk)
        self._size -= size
        self._maybe_resume()
        return b"".join(parts)

    def _wake(self) -> None:
        d, reader = self._waiting, self._reader
        if d is None or reader is None or not (self._chunks or self.closed):
            return
        self._waiting = None
        if self._chunks:
            d.callback(self._take(reader))
        else:
            reader.ended = True
            d.callback(b"")

    def _release(self, reader: _InputReader) -> None:
        reader.ended = True
        if self._reader is reader:
            self._reader = None
            d, self._waiting = self._waiting, None
            if d is not None:
                d.callback(b"")

    def _maybe_resume(self) -> None:
        if self.paused and self._size <= self.limit // 2:
            self.paused = False
            if self._resume is not None:
                self._resume()


class _InputReader:
    """One stage's view of the session input: a transfer Source ending at EOF or :meth:`close`."""

    def __init__(self, feed: SessionInput) -> None:
        self.feed = feed
        self.ended = False

    def next(self) -> defer.Deferred:
        return self.feed._next(self)

    def close(self) -> None:
        """The stage is over: stop taking input (a pending read ends with EOF)."""
        self.feed._release(self)


class Session:
    """What one login keeps between lines: user, cwd, variables, history, jobs."""

    def __init__(self, user: str, home: str | None = None, env: dict[str, str] | None = None) -> None:
        self.user = user
        self.home = home or "/home"
        self.cwd = self.home
        self.env: dict[str, str] = {"USER": user, "HOME": self.home, "PWD": self.cwd, "SHELL": "oneos", "PS1": "\\u@oneos:\\w$ "}
        self.env.update(env or {})
        #: names passed to agents in their environment (``export``)
        self.exported: set[str] = set()
        self.status = 0
        self.history: list[str] = []
        self.jobs: dict[int, Job] = {}
        self._next_job = 1

    def new_job(self, text: str) -> Job:
        job = Job(self._next_job, text)
        self._next_job += 1
        return job

    def set_cwd(self, path: str) -> None:
        self.env["OLDPWD"] = self.cwd
        self.cwd = path
        self.env["PWD"] = path

    def prompt(self) -> str:
        """PS1 with ``\\u`` (user), ``\\w`` (cwd, ~ for home) and ``\\W`` (its last name)."""
        cwd = self.cwd
        short = "~" + cwd[len(self.home):] if paths.is_within(cwd, self.home) else cwd
        ps1 = self.env.get("PS1", "$ ")
        return ps1.replace("\\u", self.user).replace("\\w", short).replace("\\W", paths.basename(cwd) or "/")

    def agent_env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k in self.exported}
        env.update(extra)
        env["ONEOS_CWD"] = self.cwd
        env["ONEOS_USER"] = self.user
        return env


class Grid:
    """What the interpreter needs of the network: files, RPC, the broker, a clock.

    In the shell service these are the runtime's own objects; tests may pass
    fakes.
    """

    def __init__(self, fs: Any, rpc: Any, client: Any, reactor: Any) -> None:
        self.fs = fs
        self.rpc = rpc
        self.client = client
        self.reactor = reactor

    def for_user(self, user: str) -> Grid:
        """The same network for one login: every file operation is made, and checked, as *user*."""
        return Grid(self.fs.as_user(user), self.rpc, self.client, self.reactor)



class Interpreter:
    """Executes lines for one session, writing to *out* and *err*."""

    def __init__(self, session: Session, grid: Grid, out: Writer, err: Writer) -> None:
        from oneos.shell.builtins import BUILTINS

        self.session = session
        self.grid = grid
        self.out = out
        self.err = err
        self.builtins = BUILTINS
        self.foreground: Job | None = None
        #: set by ``exit``: the status the session should end with
        self.exit_status: int | None = None
        #: called with text to clear the screen etc. (interactive terminals set it)
        self.on_clear: Callable[[], None] | None = None
        #: what the client sends, for foreground programs (set by the front end; None: empty input)
        self.input: SessionInput | None = None
        self._depth = 0
        #: Ctrl-C during the current line: the rest of it is not run (as bash)
        self.interrupted = False
        #: the client went away: nothing more is run (a line may still be waiting for the home directory)
        self.gone = False

    # -- entry points ---------------------------------------------------------
    def execute(self, line: str, record: bool = True) -> defer.Deferred:
        """Run *line*; fires with its exit status (never fails)."""
        return defer.Deferred.fromCoroutine(self._execute(line, record))

    async def _execute(self, line: str, record: bool) -> int:
        self.interrupted = False
        if record and line.strip():
            self.session.history.append(line.rstrip("\n"))
            del self.session.history[:-HISTORY_SIZE]
        try:
            script = parse(line)
        except ShellSyntaxError as e:
            self.error(f"oneos: {e}")
            self.session.status = STATUS_SYNTAX
            return STATUS_SYNTAX
        return await self.run_script(script)

    async def run_script(self, script: Script) -> int:
        for item in script.items:
            if self.exit_status is not None or self.interrupted or self.gone:
                break
            if item.background:
                self._start_background(item)
                self.session.status = 0
            else:
                job = Job(0, _text(item))  # foreground: no job number
                outer, self.foreground = self.foreground, job  # 'source' nests run_script
                try:
                    await self._run_and_or(item, job)
                finally:
                    self.foreground = outer
        return self.session.status

    def interrupt(self) -> None:
        """Ctrl-C: stop the command in the foreground (its agents, and built-ins that wait) and the rest of the line."""
        self.interrupted = True
        if self.foreground is not None:
            self._stop(self.foreground)

    def hangup(self) -> None:
        """The client went away: stop every agent this session started, and run nothing more."""
        self.gone = True
        self.interrupt()
        for job in list(self.session.jobs.values()):
            self._stop(job)
        if self.input is not None:
            self.input.close()

    def _stop(self, job: Job) -> None:
        job.stopped = True
        for d in list(job.waiting):
            d.cancel()
        for pipe in list(job.pipes):
            pipe.abort()
        for info in job.agents:
            self.grid.rpc.call("scheduler", "kill", agent_id=info["id"], grace=2.0).addErrback(lambda f: None)

    def error(self, text: str) -> None:
        self.err.write(text.encode("utf-8", "replace") + b"\n")

    # -- jobs -----------------------------------------------------------------
    def _start_background(self, item: AndOr) -> None:
        job = self.session.new_job(_text(item))
        job.background = True
        self.session.jobs[job.number] = job

        def finished(status: int) -> int:
            job.status = status
            self.out.write(f"[{job.number}] done ({status})  {job.text}\n".encode())
            return status

        job.done = defer.Deferred.fromCoroutine(self._run_and_or(item, job, background=True)).addCallback(finished)
        self.out.write(f"[{job.number}] started  {job.text}\n".encode())

    async def wait_job(self, job: Job) -> int:
        """``fg``: make *job* the foreground one and wait for it."""
        self.foreground = job
        try:
            assert job.done is not None
            status = await job.done
        finally:
            self.foreground = None
            self.session.jobs.pop(job.number, None)
        return int(status)

    # -- and-or lists and pipelines -------------------------------------------
    async def _run_and_or(self, item: AndOr, job: Job, background: bool = False) -> int:
        status = await self._run_pipeline(item.first, job)
        for op, pipeline in item.rest:
            if self.exit_status is not None or job.stopped:
                break
            if (op == "&&") == (status == 0):
                status = await self._run_pipeline(pipeline, job)
        return status

    async def _run_pipeline(self, pipeline: Pipeline, job: Job) -> int:
        try:
            status = await self._pipeline(pipeline, job)
        except OneOSError as e:
            self.error(f"oneos: {describe(e)}")
            status = _status_for(e)
        except defer.CancelledError:
            status = 130
        except Exception as e:  # a bug here must not end the session
            log.failure("shell command failed")
            self.error(f"oneos: internal error: {describe(e)}")
            status = 1
        if job.stopped:
            status = 130  # Ctrl-C, as bash reports SIGINT, however the agents were stopped (SIGTERM)
        self.session.status = status
        return status

    async def _pipeline(self, pipeline: Pipeline, job: Job) -> int:
        """Run every stage at once, joined by streams; the status is the last stage's (bash without pipefail).

        The pipeline is cut into *units*: each built-in is one, and
        consecutive programs are one (they are wired runtime to runtime).
        Adjacent units are joined by a :class:`StreamPipe`.  A stream that
        failed anywhere turns a status of 0 into 1.
        """
        stages = []
        last = len(pipeline.stages) - 1
        for i, command in enumerate(pipeline.stages):
            stages.append(await self._stage(command, piped_in=i > 0, piped_out=i < last))
        if len(stages) == 1 and not stages[0].argv:
            return await self._bare(stages[0], pipeline.stages[0])
        units: list[list[Stage]] = []
        for stage in stages:
            if units and stage.builtin is None and units[-1][0].builtin is None:
                units[-1].append(stage)
            else:
                units.append([stage])
        if job.stopped:
            return 130
        names = [" ".join(unit[-1].argv[:1]) for unit in units]
        pipes = [StreamPipe(f"pipe from {names[i]} to {names[i + 1]}") for i in range(len(units) - 1)]
        job.pipes.extend(pipes)
        state = _RunState()
        # The session's input goes to the first stage only, and never to background jobs.
        reader = self.input.reader() if self.input is not None and not job.background and stages[0].stdin_file is None else None
        try:
            running = []
            for i, unit in enumerate(units):
                stdin: Any = reader if i == 0 else PipeReader(pipes[i - 1])
                stdout = pipes[i] if i < len(pipes) else None
                running.append(defer.Deferred.fromCoroutine(self._unit(unit, job, stdin, stdout, state)))
            statuses = [await d for d in running]
        finally:
            if reader is not None:
                reader.close()
            for pipe in pipes:
                job.pipes.remove(pipe)
        status = statuses[-1]
        if state.failed and status == 0:
            status = 1
        return status

    async def _unit(self, unit: list[Stage], job: Job, stdin: Any, stdout: StreamPipe | None, state: _RunState) -> int:
        """One built-in, or consecutive programs; always closes its ends of the pipes (never raises)."""
        try:
            if unit[0].builtin is not None:
                return await self._builtin(unit[0], job, stdin, stdout)
            return await self._external(unit, job, stdin, stdout, state)
        except BrokenPipe:
            return STATUS_BROKEN_PIPE
        except OneOSError as e:
            self.error(f"oneos: {describe(e)}")
            return _status_for(e)
        except defer.CancelledError:
            return 130
        except Exception as e:  # a bug here must not end the session (nor hang the other stages)
            log.failure("shell command failed")
            self.error(f"oneos: internal error: {describe(e)}")
            return 1
        finally:
            if stdout is not None:
                stdout.close()
            if stdin is not None:
                stdin.close()  # a writer still writing gets BrokenPipe, as on SIGPIPE

    async def _bare(self, stage: Stage, command: Command) -> int:
        """``NAME=value`` (sets shell variables) or ``> FILE`` (creates/truncates it)."""
        self.session.env.update(stage.assignments)
        for dest in {id(d): d for d in (stage.stdout, stage.stderr)}.values():
            if isinstance(dest, _FileDest):
                await self.grid.fs.write(dest.path, b"", "append" if dest.append else "truncate")
        return 0

    # -- expansion ------------------------------------------------------------
    async def _stage(self, command: Command, piped_in: bool, piped_out: bool) -> Stage:
        env, status = self.session.env, self.session.status
        argv: list[str] = []
        for word in command.words:
            pattern = glob_pattern(word, env, status)
            if pattern is not None:
                matches = await self.grid.fs.glob(pattern, self.session.cwd)
                if matches:
                    argv.extend(_display(m, pattern, self.session.cwd) for m in matches)
                    continue
            argv.append(expand_word(word, env, status))
        assignments = {a.name: expand_word(a.value, env, status) for a in command.assignments}
        stdin_file: str | None = None
        stdout: Any = PIPE if piped_out else TERMINAL_OUT
        stderr: Any = TERMINAL_ERR
        for r in command.redirects:
            if r.op == ">&":
                if (r.fd, r.target) == (2, 1):
                    stderr = stdout
                elif (r.fd, r.target) == (1, 2):
                    stdout = stderr
                elif r.fd != r.target:
                    raise ShellError(f"{r.fd}>&{r.target}: only 2>&1 and 1>&2 are supported")
                continue
            assert not isinstance(r.target, int)
            target = expand_word(r.target, env, status)
            if not target:
                raise ShellError("a redirection needs a file name")
            path = paths.normalise(target, self.session.cwd)
            if r.op == "<":
                if r.fd != 0:
                    raise ShellError(f"{r.fd}<: only standard input (0) can be read from a file")
                if piped_in:
                    raise ShellError("a stage cannot read both from a pipe and from a file ('<')")
                stdin_file = path
            else:
                dest = _FileDest(path, r.op == ">>")
                if r.fd == 1:
                    stdout = dest
                elif r.fd == 2:
                    stderr = dest
                else:
                    raise ShellError(f"{r.fd}>: only standard output (1) and error (2) can be redirected")
        placed = command.placement.runtime is not None or bool(command.placement.tags)
        builtin = self.builtins.get(argv[0]) if argv and not placed else None
        return Stage(argv, assignments, stdin_file, stdout, stderr, command.placement.runtime, command.placement.tags, builtin)

    # -- built-ins ------------------------------------------------------------
    async def _builtin(self, stage: Stage, job: Job, stdin: Any, pipe: StreamPipe | None) -> int:
        """Run one built-in; its status.

        *stdin*: a Source with ``close()`` (the previous stage's pipe, the
        session's input for a first stage) or None; a ``< FILE`` replaces it.
        *pipe*: where PIPE output goes.  ``> FILE`` outputs stream into the
        file while the built-in runs and are complete when it returns.
        """
        from oneos.fs.errors import IsADirectory
        from oneos.shell.builtins import Context

        files: dict[int, FileOutput] = {}

        def writer(dest: Any) -> Writer:
            if dest is TERMINAL_OUT:
                return self.out
            if dest is TERMINAL_ERR:
                return self.err
            if dest is PIPE:
                assert pipe is not None
                return pipe
            if id(dest) not in files:  # one stream per redirection, so 2>&1 shares it
                files[id(dest)] = FileOutput(self.grid.fs, dest.path, dest.append)
            return files[id(dest)]

        source = stdin
        if stage.stdin_file is not None:
            st = await self.grid.fs.stat(stage.stdin_file)  # a missing file is an error even if it is never read
            if st.is_dir:
                raise IsADirectory(stage.stdin_file)
            source = FileInput(self.grid.fs, stage.stdin_file)
        status = 1
        try:
            ctx = Context(self, stage.argv[0], source, writer(stage.stdout), writer(stage.stderr), stage.assignments,
                          job=job)
            try:
                status = await stage.builtin(ctx, stage.argv[1:])  # type: ignore[misc]
            except BrokenPipe:
                status = STATUS_BROKEN_PIPE
            except OneOSError as e:
                try:
                    ctx.error(describe(e))
                except BrokenPipe:
                    pass
                status = _status_for(e)
            except defer.CancelledError:  # Ctrl-C while it waited; what it wrote to files is still kept
                status = 130
        finally:
            if source is not None and source is not stdin:
                source.close()
            for out in files.values():
                error = await out.finish()
                if error is not None:
                    text = describe(error)
                    self.error(f"oneos: {text}" if out.path in text else f"oneos: {out.label}: {text}")
                    status = 1
        return int(status or 0)

    # -- programs -------------------------------------------------------------
    async def _resolve(self, argv: list[str]) -> tuple[str, list[str]]:
        """Map OneOS script paths to absolute paths the runtimes can fetch.

        ``python3 app.py`` in /home becomes program ``/home/app.py`` (its
        interpreter follows from the extension); ``./tool.sh`` and
        ``bin/x.py`` are taken from the cwd.  Anything else is a program on
        the runtime's host, found on its PATH.
        """
        from oneos.agents.program import interpreter_for

        program, args = argv[0], argv[1:]
        ext = SCRIPT_RUNNERS.get(program)
        if ext and args and args[0].endswith(ext) and not args[0].startswith("-"):
            path = paths.normalise(args[0], self.session.cwd)
            if await self.grid.fs.exists(path):
                await self.grid.fs.access(path, "r")  # its runtime fetches it: the user must be able to read it
                return path, args[1:]
        if "/" in program or interpreter_for(program):
            path = paths.normalise(program, self.session.cwd)
            if await self.grid.fs.exists(path):
                await self.grid.fs.access(path, "r")
                return path, args
        return program, args

    async def _external(self, stages: list[Stage], job: Job, stdin: Any, pipe: StreamPipe | None,
                        state: _RunState) -> int:
        """Start *stages* as agents, wire them, stream their input and output; the last one's status.

        The first program's stdin is *stdin* (a built-in's output pipe, or the
        session's input), else empty.  The last program's PIPE output goes
        into *pipe* (the next built-in's input).  Every stream is awaited and
        a failed one is reported (``oneos: WHAT: ERROR``) and marks *state*
        failed, so the pipeline cannot end with 0 after losing bytes.
        """
        from oneos.cli.run import exit_status
        from oneos.fs.client import BytesSource
        from oneos.transfer import send, tls_of

        rpc, reactor = self.grid.rpc, self.grid.reactor
        infos: list[dict[str, Any]] = []
        waits: list[tuple[defer.Deferred, Any]] = []
        streams: list[defer.Deferred] = []
        stdin_sent: defer.Deferred | None = None
        #: agents stopped because a stream of theirs failed (already reported; their status is then 1, not 143)
        stopped_for_streams: set[str] = set()
        #: agents stopped because the built-in reading them went away (SIGPIPE: nothing to report)
        sigpiped: set[str] = set()

        def kill(info: dict[str, Any]) -> None:
            rpc.call("scheduler", "kill", agent_id=info["id"], grace=1.0).addErrback(lambda f: None)

        def watch(stream: tuple[str, dict[str, Any], defer.Deferred], info: dict[str, Any]) -> defer.Deferred:
            """Report a stream's failure when it happens, and stop its program: its output has nowhere
            to go (it would block, or run on for nothing)."""
            what, where, done = stream

            def failed(failure: Any) -> None:
                self._stream_failed(what, where, failure.value, job, state)
                stopped_for_streams.add(info["id"])
                kill(info)

            return done.addErrback(failed)

        def reader_gone(info: dict[str, Any]) -> None:
            sigpiped.add(info["id"])
            kill(info)

        try:
            for i, stage in enumerate(stages):
                if i > 0 and stage.stdin_file:
                    raise ShellError("only the first program of a pipeline can read a file with '<'")
                if stage.stdout is PIPE and stage.stderr is PIPE and i < len(stages) - 1:
                    raise ShellError("2>&1 into a pipe is supported for built-ins and the last program before one only")
                program, args = await self._resolve(stage.argv)
                merged = isinstance(stage.stdout, _FileDest) and stage.stderr is stage.stdout
                stdout_mode = _file_mode(stage.stdout) if isinstance(stage.stdout, _FileDest) and not merged else "attach"
                stderr_mode = _file_mode(stage.stderr) if isinstance(stage.stderr, _FileDest) and not merged else "attach"
                # The program's runtime reads '< FILE' and writes '> FILE' for it (as the kernel): check
                # them as this session's user first, and create the outputs as the user's, as a shell
                # opens them before it starts a program.
                if stage.stdin_file:
                    await self.grid.fs.access(stage.stdin_file, "r")
                if not merged:
                    for dest in {id(d): d for d in (stage.stdout, stage.stderr)}.values():
                        if isinstance(dest, _FileDest):
                            await self.grid.fs.write(dest.path, b"", "append" if dest.append else "truncate")
                info = await rpc.call("scheduler", "spawn", timeout=20.0, program=program, args=args,
                                      runtime=stage.runtime, tags=list(stage.tags),
                                      env=self.session.agent_env(stage.assignments), stdout=stdout_mode,
                                      stdin=True, stderr=stderr_mode, stdin_file=stage.stdin_file,
                                      user=self.session.user)
                infos.append(info)
                job.agents.append(info)
                waits.append(await self._watch(info))
            # runtime-to-runtime pipes between consecutive programs
            for left, right in zip(infos, infos[1:]):
                where = await rpc.call(right["runtime"], "agent_stdin", agent_id=right["id"],
                                       source=f"{left['name']}@{left['runtime']}")
                await rpc.call(left["runtime"], "agent_pipe_out", agent_id=left["id"], to=f"{right['id']}@{right['runtime']}", **where)
            if not stages[0].stdin_file:
                first = infos[0]
                where = await rpc.call(first["runtime"], "agent_stdin", agent_id=first["id"])
                source = stdin if stdin is not None else BytesSource(b"")
                stdin_sent = send(reactor, where["host"], where["port"], where["token"], source, **tls_of(where))
                stdin_sent.addErrback(self._stdin_failed, f"input of {_label(stages[0], first)}", where, stdin,
                                      lambda: (stopped_for_streams.add(first["id"]), kill(first)), job, state)
            for i, (stage, info) in enumerate(zip(stages, infos)):
                label = _label(stage, info)
                if isinstance(stage.stdout, _FileDest) and stage.stderr is stage.stdout:
                    # '> FILE 2>&1': both streams into one pipe the file service reads
                    dest = stage.stdout
                    both = StreamPipe(f"{'>>' if dest.append else '>'} {dest.path}")
                    sinks = [PipeSink(both, lambda info=info: (stopped_for_streams.add(info["id"]), kill(info)))
                             for _ in range(2)]
                    both.close()  # the pipe ends when both streams have
                    written = self.grid.fs.write_from(dest.path, both, "append" if dest.append else "truncate")
                    written.addErrback(lambda f, both=both: (both.close_reader(), f)[1])
                    streams.append(watch((f"{both.name} (from {label})", {}, written), info))
                    for name, sink in zip(("stdout", "stderr"), sinks):
                        streams.append(watch(await self._attach(info, name, sink, label), info))
                    continue
                last = i == len(stages) - 1
                into_pipe = stage.stdout is PIPE and last and pipe is not None
                out_sink: Any = None
                if into_pipe:
                    assert pipe is not None
                    out_sink = PipeSink(pipe, lambda info=info: reader_gone(info))
                elif isinstance(stage.stdout, _Terminal):
                    out_sink = WriterSink(self._terminal(stage.stdout))
                if out_sink is not None:
                    streams.append(watch(await self._attach(info, "stdout", out_sink, label), info))
                err_sink: Any = None
                if isinstance(stage.stderr, _Terminal):
                    err_sink = WriterSink(self._terminal(stage.stderr))
                elif stage.stderr is PIPE or stage.stderr is stage.stdout:
                    # 2>&1: stderr goes where stdout goes (the next built-in, or the terminal at the end of the line)
                    err_sink = PipeSink(pipe, lambda info=info: reader_gone(info)) if into_pipe and pipe is not None \
                        else WriterSink(self.out)
                if err_sink is not None:
                    streams.append(watch(await self._attach(info, "stderr", err_sink, label), info))
        except BaseException:
            for info in infos:
                kill(info)
            for _, sub in waits:
                _cancel(sub)
            if stdin is not None:
                stdin.close()
            raise
        await defer.DeferredList(streams, consumeErrors=True)  # (failures are reported as they happen)
        finals = []
        for ended, sub in waits:
            try:
                finals.append(await ended)
            finally:
                _cancel(sub)
        if stdin_sent is not None:
            # The program has ended: a built-in still writing to it stops (SIGPIPE), and the
            # input stream ends; waiting for it makes a failure count before the status is known.
            if stdin is not None:
                stdin.close()
            await job.wait(stdin_sent.addTimeout(STDIN_GRACE, reactor))
        for i, final in enumerate(finals):
            if final.get("id") in stopped_for_streams | sigpiped or (i < len(finals) - 1 and _sigpiped(final)):
                continue  # stopped by the shell as SIGPIPE would, or for a failure already reported
            if final.get("state") not in ("exited", "killed") or final.get("reason"):
                self.error(f"oneos: {final.get('name', '?')} on {final.get('runtime', '?')} {final.get('state')}"
                           + (f": {final['reason']}" if final.get("reason") else ""))
        if finals[-1].get("id") in stopped_for_streams and finals[-1].get("state") == "killed":
            return 1  # stopped by the shell because its stream failed (already reported)
        return exit_status(finals[-1])

    def _terminal(self, dest: _Terminal) -> Writer:
        return self.out if dest is TERMINAL_OUT else self.err

    def _stdin_failed(self, failure: Any, what: str, where: dict[str, Any], stdin: Any, stop: Callable[[], None],
                      job: Job, state: _RunState) -> None:
        """A program's input stream ended early.

        The program no longer reading (EPIPE) is normal, as a Unix pipe whose
        reader exited: the stage feeding it stops quietly.  Anything else
        (cannot connect, peer gone) is reported and the program is stopped:
        it would otherwise wait for input that will never come.
        """
        if stdin is not None:
            stdin.close()
        if failure.check(defer.CancelledError):  # (the program ended STDIN_GRACE ago: its input no longer matters)
            log.info("{what} did not end: given up", what=what)
            return
        if getattr(failure.value, "kind", None) == "EPIPE" or job.stopped:
            log.debug("{what} ended early: {error}", what=what, error=failure.getErrorMessage())
            return
        self._stream_failed(what, where, failure.value, job, state)
        stop()

    def _stream_failed(self, what: str, where: dict[str, Any], error: BaseException, job: Job, state: _RunState) -> None:
        """Say which stream failed and where it was going (host:port), and fail the pipeline."""
        if job.stopped:  # Ctrl-C broke it on purpose
            return
        text = describe(error)
        if where.get("host") is not None:
            address = f"{where['host']}:{where.get('port')}"
            if address not in text:
                text += f" (stream address {address})"
        log.info("shell stream failed: {what}: {error}", what=what, error=text)
        self.error(f"oneos: {what}: {text}")
        state.failed = True

    async def _attach(self, info: dict[str, Any], stream: str, sink: Any,
                      label: str = "") -> tuple[str, dict[str, Any], defer.Deferred]:
        """Receive an agent's stdout or stderr into *sink*: (what, where, Deferred of the transfer)."""
        from oneos.transfer import receive, tls_of

        try:
            where = await self.grid.rpc.call(info["runtime"], "agent_attach", agent_id=info["id"], stream=stream)
        except BaseException:
            sink.abort()  # (a PipeSink holds its pipe open until then)
            raise
        done = receive(self.grid.reactor, where["host"], where["port"], where["token"], sink, **tls_of(where))

        def failed(failure: Any) -> Any:
            sink.abort()  # a stream that never connected has not told its sink
            return failure

        done.addErrback(failed)
        return f"{'output' if stream == 'stdout' else 'errors'} of {label or info['id']}", where, done

    async def _watch(self, info: dict[str, Any]) -> tuple[defer.Deferred, Any]:
        """A Deferred firing with the agent's final status, and the subscription to cancel after."""
        from oneos.agents.watch import watch_agent

        done, subscribed = watch_agent(self.grid.client, info["runtime"], info["id"])
        sub = await subscribed
        return done, sub


def _sigpiped(final: dict[str, Any]) -> bool:
    """An agent its runtime stopped because the next program stopped reading (the runtimes' SIGPIPE).

    Recognised by the reason the agent host gives (``pipe to HOST:PORT broke:
    the program closed its input``); bash reports nothing for such a stage.
    """
    reason = str(final.get("reason") or "")
    return final.get("state") == "killed" and reason.startswith("pipe to ") and (
        "closed its input" in reason or "no longer reads its input" in reason)


def _label(stage: Stage, info: dict[str, Any]) -> str:
    """How messages name a program: ``sha256sum (a-1f2e on rt-2)``."""
    return f"{stage.argv[0] if stage.argv else '?'} ({info.get('id', '?')} on {info.get('runtime', '?')})"


def _cancel(sub: Any) -> None:
    try:
        sub.cancel()
    except Exception:
        pass


def _file_mode(dest: _FileDest) -> str:
    return ("append:" if dest.append else "file:") + dest.path


def _display(match: str, pattern: str, cwd: str) -> str:
    """A glob match shown the way it was asked: relative patterns give relative names (as bash)."""
    if pattern.startswith("/"):
        return match
    import posixpath

    return posixpath.relpath(match, cwd)


def _text(item: AndOr) -> str:
    from oneos.shell.expand import unparse

    return unparse(Script((AndOr(item.first, item.rest, False),)))


def _status_for(error: BaseException) -> int:
    """127 for "command not found", 126 for "cannot run", else 1 (as bash)."""
    kind = getattr(error, "kind", None) or getattr(error, "code", None)
    text = str(error)
    if "command not found" in text or (kind == "ENOENT" and "no such file on runtime" in text):
        return STATUS_NOT_FOUND
    if kind in ("EACCES", "ENOEXEC") and "not executable" in text:
        return STATUS_CANNOT_RUN
    return 1


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


def now() -> float:
    return time.time()
