"""Runs shell lines: one :class:`Session` per login, one :class:`Interpreter` per terminal.

The interpreter turns the parser's AST (:mod:`oneos.shell.parser`) into
actions on the grid:

* built-in commands (:mod:`oneos.shell.builtins`) run here, in the shell
  service, against the OneOS file system through :class:`FSClient`;
* anything else is an *agent* started through the scheduler (RPC target
  ``scheduler``), its output streamed back over the runtimes' TCP transfer
  servers, exactly as ``oneos run`` does; consecutive external stages of a
  pipeline are wired runtime to runtime (never through the shell).

Where built-ins and programs meet in one pipeline the pipeline is cut into
*segments* of consecutive built-ins or consecutive programs; each segment's
output is collected (up to :data:`MAX_CAPTURE` bytes) and fed to the next.
That keeps built-ins simple (they see their input as bytes) at the price of
streaming only inside program segments: documented in docs/shell.md.

What the client sends while a command runs (piped into ``ssh host CMD``, or
typed at the terminal) reaches the first stage of the foreground pipeline
through :class:`SessionInput`: a program's stdin is streamed to its runtime
(``agent_stdin`` + :func:`oneos.transfer.send`, as ``oneos run`` does), a
built-in reads it whole.  Background jobs and stages reading ``< FILE`` do
not take it.

Output goes to *writers*: anything with ``write(bytes)``.  Errors that are
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

#: Largest output of a segment collected to feed a built-in (or a redirected built-in's file).
MAX_CAPTURE = 64 * 1024 * 1024
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


class Writer(Protocol):
    def write(self, data: bytes) -> Any: ...


class ShellError(OneOSError):
    """A command cannot be run as written (bad redirection, unsupported form)."""


class Capture:
    """A writer collecting bytes, refusing to grow past *limit*."""

    def __init__(self, limit: int = MAX_CAPTURE) -> None:
        self.data = bytearray()
        self.limit = limit

    def write(self, data: bytes) -> None:
        if len(self.data) + len(data) > self.limit:
            raise ShellError(f"output larger than {self.limit // 2**20} MiB cannot be collected for the next command")
        self.data += data


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

    async def wait(self, d: defer.Deferred) -> Any:
        """Await *d* unless the job is stopped meanwhile (then CancelledError, as Ctrl-C should)."""
        if self.stopped:
            d.cancel()
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

    @classmethod
    def of_runtime(cls, runtime: Any) -> "Grid":
        from oneos.fs.client import FSClient

        return cls(FSClient(runtime.rpc, runtime.reactor), runtime.rpc, runtime.client, runtime.reactor)


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
        stages = []
        last = len(pipeline.stages) - 1
        for i, command in enumerate(pipeline.stages):
            stages.append(await self._stage(command, piped_in=i > 0, piped_out=i < last))
        if len(stages) == 1 and not stages[0].argv:
            return await self._bare(stages[0], pipeline.stages[0])
        # Cut into segments of consecutive built-ins / programs.
        segments: list[list[Stage]] = []
        for stage in stages:
            if segments and (segments[-1][0].builtin is None) == (stage.builtin is None):
                segments[-1].append(stage)
            else:
                segments.append([stage])
        data: bytes | None = None
        status = 0
        # The session's input goes to the first stage only, and never to background jobs.
        reader = self.input.reader() if self.input is not None and not job.background and stages[0].stdin_file is None else None
        try:
            for n, segment in enumerate(segments):
                if job.stopped:
                    return 130
                capture = Capture() if n < len(segments) - 1 else None
                if segment[0].builtin is not None:
                    for i, stage in enumerate(segment):
                        sink = Capture() if PIPE in (stage.stdout, stage.stderr) else None
                        status, data = await self._builtin(stage, data, sink, job, reader if n == i == 0 else None)
                else:
                    status = await self._external(segment, data, capture, job, reader if n == 0 else None)
                    data = bytes(capture.data) if capture is not None else None
        finally:
            if reader is not None:
                reader.close()
        return status

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
    async def _builtin(self, stage: Stage, data: bytes | None, sink: Capture | None, job: Job | None = None,
                       source: Any = None) -> tuple[int, bytes | None]:
        """Run one built-in; returns its status and what it wrote to the pipe (if any).

        *source*: the session's input when this built-in is the first stage
        (read only if the built-in asks for its input, see Context.input).
        """
        from oneos.shell.builtins import Context

        if stage.stdin_file is not None:
            data = await self.grid.fs.read(stage.stdin_file)
        files: dict[int, tuple[_FileDest, Capture]] = {}

        def writer(dest: Any) -> Writer:
            if dest is TERMINAL_OUT:
                return self.out
            if dest is TERMINAL_ERR:
                return self.err
            if dest is PIPE:
                assert sink is not None
                return sink
            if id(dest) not in files:
                files[id(dest)] = (dest, Capture())
            return files[id(dest)][1]

        ctx = Context(self, stage.argv[0], data, writer(stage.stdout), writer(stage.stderr), stage.assignments,
                      job=job or Job(0, ""), source=source)
        try:
            status = await stage.builtin(ctx, stage.argv[1:])  # type: ignore[misc]
        except OneOSError as e:
            ctx.error(describe(e))
            status = _status_for(e)
        except defer.CancelledError:  # Ctrl-C while it waited; what it wrote to files is still kept
            status = 130
        for dest, capture in files.values():
            try:
                await self.grid.fs.write(dest.path, bytes(capture.data), "append" if dest.append else "truncate")
            except OneOSError as e:
                self.error(f"oneos: {describe(e)}")
                status = 1
        return int(status or 0), (bytes(sink.data) if sink is not None else None)

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
                return path, args[1:]
        if "/" in program or interpreter_for(program):
            path = paths.normalise(program, self.session.cwd)
            if await self.grid.fs.exists(path):
                return path, args
        return program, args

    async def _external(self, stages: list[Stage], data: bytes | None, capture: Capture | None, job: Job,
                        source: Any = None) -> int:
        """Start *stages* as agents, wire them, stream their output; the last one's status.

        The first program's stdin is *data* (what built-ins before it wrote),
        else *source* (the session's input), else empty.
        """
        from oneos.cli.run import exit_status
        from oneos.fs.client import BytesSink, BytesSource

        rpc, reactor = self.grid.rpc, self.grid.reactor
        infos: list[dict[str, Any]] = []
        waits: list[tuple[defer.Deferred, Any]] = []
        streams: list[defer.Deferred] = []
        try:
            for i, stage in enumerate(stages):
                if i > 0 and stage.stdin_file:
                    raise ShellError("only the first program of a pipeline can read a file with '<'")
                if stage.stdout is PIPE and stage.stderr is PIPE and i < len(stages) - 1:
                    raise ShellError("2>&1 into a pipe is supported for built-ins only")
                program, args = await self._resolve(stage.argv)
                merged = isinstance(stage.stdout, _FileDest) and stage.stderr is stage.stdout
                stdout_mode = _file_mode(stage.stdout) if isinstance(stage.stdout, _FileDest) and not merged else "attach"
                stderr_mode = _file_mode(stage.stderr) if isinstance(stage.stderr, _FileDest) and not merged else "attach"
                info = await rpc.call("scheduler", "spawn", timeout=20.0, program=program, args=args,
                                      runtime=stage.runtime, tags=list(stage.tags),
                                      env=self.session.agent_env(stage.assignments), stdout=stdout_mode,
                                      stdin=True, stderr=stderr_mode, stdin_file=stage.stdin_file)
                infos.append(info)
                job.agents.append(info)
                waits.append(await self._watch(info))
            # runtime-to-runtime pipes between consecutive programs
            for left, right in zip(infos, infos[1:]):
                where = await rpc.call(right["runtime"], "agent_stdin", agent_id=right["id"])
                await rpc.call(left["runtime"], "agent_pipe_out", agent_id=left["id"], to=f"{right['id']}@{right['runtime']}", **where)
            if not stages[0].stdin_file:
                where = await rpc.call(infos[0]["runtime"], "agent_stdin", agent_id=infos[0]["id"])
                _send(reactor, where, source if data is None and source is not None else BytesSource(data or b""))
            for i, (stage, info) in enumerate(zip(stages, infos)):
                merged = isinstance(stage.stdout, _FileDest) and stage.stderr is stage.stdout
                if merged:
                    bridge = Merge(2)
                    streams.append(self.grid.fs.write_from(stage.stdout.path, bridge, "append" if stage.stdout.append else "truncate"))
                    for name in ("stdout", "stderr"):
                        streams.append(await self._attach(info, name, bridge))
                    continue
                out_sink: Any = None
                if stage.stdout is PIPE and i == len(stages) - 1:
                    out_sink = WriterSink(capture) if capture is not None else BytesSink()
                elif isinstance(stage.stdout, _Terminal):
                    out_sink = WriterSink(self.out if stage.stdout is TERMINAL_OUT else self.err)
                if out_sink is not None:
                    streams.append(await self._attach(info, "stdout", out_sink))
                if isinstance(stage.stderr, _Terminal):
                    streams.append(await self._attach(info, "stderr", WriterSink(self.err if stage.stderr is TERMINAL_ERR else self.out)))
                elif stage.stderr is PIPE or stage.stderr is stage.stdout:
                    # 2>&1 at the end of the line: both into what takes stdout
                    streams.append(await self._attach(info, "stderr", WriterSink(capture) if capture is not None else WriterSink(self.out)))
        except BaseException:
            for info in infos:
                rpc.call("scheduler", "kill", agent_id=info["id"], grace=1.0).addErrback(lambda f: None)
            for _, sub in waits:
                _cancel(sub)
            raise
        results = await defer.DeferredList(streams, consumeErrors=True)
        for ok, value in results:
            if not ok:
                log.info("a stream of {job!r} ended early: {error}", job=job.text, error=value.getErrorMessage())
        finals = []
        for ended, sub in waits:
            try:
                finals.append(await ended)
            finally:
                _cancel(sub)
        for final in finals:
            if final.get("state") not in ("exited", "killed") or final.get("reason"):
                self.error(f"oneos: {final.get('name', '?')} on {final.get('runtime', '?')} {final.get('state')}"
                           + (f": {final['reason']}" if final.get("reason") else ""))
        return exit_status(finals[-1])

    async def _attach(self, info: dict[str, Any], stream: str, sink: Any) -> defer.Deferred:
        from oneos.transfer import receive

        where = await self.grid.rpc.call(info["runtime"], "agent_attach", agent_id=info["id"], stream=stream)
        return receive(self.grid.reactor, where["host"], where["port"], where["token"], sink)

    async def _watch(self, info: dict[str, Any]) -> tuple[defer.Deferred, Any]:
        """A Deferred firing with the agent's final status, and the subscription to cancel after."""
        from oneos.agents.watch import watch_agent

        done, subscribed = watch_agent(self.grid.client, info["runtime"], info["id"])
        sub = await subscribed
        return done, sub


def _send(reactor: Any, where: dict[str, Any], source: Any) -> None:
    from oneos.transfer import send

    send(reactor, where["host"], where["port"], where["token"], source).addErrback(lambda f: None)


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
    """A transfer sink writing to a shell writer (terminal, capture)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def write(self, data: bytes) -> defer.Deferred:
        try:
            self.writer.write(data)
        except Exception as e:
            return defer.fail(e)
        return defer.succeed(None)

    def finish(self) -> defer.Deferred:
        return defer.succeed({})

    def abort(self) -> None:
        pass


class Merge:
    """Several sinks feeding one source (``> FILE 2>&1`` for a program).

    Writers wait while more than *limit* bytes are queued, so a slow file
    store slows the program instead of filling memory; the source ends when
    every writer has finished.
    """

    def __init__(self, writers: int, limit: int = 1024 * 1024) -> None:
        self.open = writers
        self.limit = limit
        self.queue: list[bytes] = []
        self.queued = 0
        self._reader: defer.Deferred | None = None
        self._blocked: list[defer.Deferred] = []

    # sink side
    def write(self, data: bytes) -> defer.Deferred:
        if not data:
            return defer.succeed(None)
        self.queue.append(data)
        self.queued += len(data)
        self._wake()
        if self.queued <= self.limit:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._blocked.append(d)
        return d

    def finish(self) -> defer.Deferred:
        self.open -= 1
        self._wake()
        return defer.succeed({})

    def abort(self) -> None:
        self.finish()

    # source side
    def next(self) -> defer.Deferred:
        if self.queue:
            return defer.succeed(self._take())
        if self.open <= 0:
            return defer.succeed(b"")
        self._reader = defer.Deferred()
        return self._reader

    def _take(self) -> bytes:
        data = b"".join(self.queue)
        self.queue.clear()
        self.queued = 0
        blocked, self._blocked = self._blocked, []
        for d in blocked:
            d.callback(None)
        return data

    def _wake(self) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        if self.queue:
            reader.callback(self._take())
        elif self.open <= 0:
            reader.callback(b"")
        else:
            self._reader = reader


def now() -> float:
    return time.time()
