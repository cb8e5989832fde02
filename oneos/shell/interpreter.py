"""Runs shell lines: one :class:`Interpreter` per session, from the parser's AST to statuses.

A line is parsed (:mod:`oneos.shell.parser`), then each and-or list of it
runs as a :class:`~oneos.shell.session.Job` (in the foreground, or in the
background after ``&``), each pipeline of it with every stage at once:

* each simple command is expanded into a :class:`~oneos.shell.stage.Stage`
  (words, command substitutions, arithmetic, globs against the OneOS tree,
  redirections: :mod:`oneos.shell.words`);
* the pipeline is cut into *units*: each built-in, function call or compound
  command (``if``, ``while``, ``{ ...; }`` ...) is one, consecutive programs
  are one; adjacent units are joined by a bounded
  :class:`~oneos.shell.streams.StreamPipe`;
* a built-in (:mod:`oneos.shell.builtins`) runs here, in the shell service,
  with a :class:`~oneos.shell.builtins.context.Context`; its ``> FILE``
  streams into ``fs.write_from`` and its ``< FILE`` from ``fs.read_into``;
* a compound command or a function runs its lists here too, with its
  standard streams (:class:`~oneos.shell.control.IO`) being the pipe, the
  files of its redirections or the session's; the programs inside stream
  into them;
* consecutive programs go to the :class:`~oneos.shell.launcher.ProgramLauncher`,
  which starts them as agents and wires their streams.

Shell state lives in a :class:`~oneos.shell.control.Scope`: the session's
own for what runs in the shell, a copy (bash's fork) for a subshell, a
command substitution, a background job and each stage of a pipeline of
several, so their ``cd`` and variables do not leak.  ``break``,
``continue``, ``return`` and errors that abandon the line are
:class:`~oneos.shell.control.ShellSignal` exceptions caught by what they end.

A loop yields to the reactor every :data:`YIELD_EVERY` turns, so a loop
that never ends still lets the runtime (and Ctrl-C) through; functions nest
at most :data:`MAX_FUNCTION_DEPTH` deep.

The status of a pipeline is its last stage's (bash without ``pipefail``),
made 1 if any of its streams failed.  What the client sends while a command
runs (:class:`~oneos.shell.session.SessionInput`) is the stdin of the first
stage of a foreground pipeline; background jobs and stages reading
``< FILE`` do not take it.

Output goes to the session's writers *out* and *err*
(:class:`~oneos.shell.streams.Writer`); a writer without ``drain()`` is
written to at the producer's pace, with the reactor given a turn every
:data:`~oneos.shell.builtins.context.UNPACED_BURST` bytes.  Errors that are
:class:`~oneos.errors.OneOSError` become one plain line on the error writer;
anything else is logged with its traceback and shown as an internal error,
never killing the session.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from oneos.errors import OneOSError, describe
from oneos.fs.errors import IsADirectory
from oneos.shell import arith
from oneos.shell.builtins import BUILTINS, HELP
from oneos.shell.builtins.context import Context
from oneos.shell.control import (
    IO,
    SESSION_INPUT,
    AbortLine,
    Borrowed,
    BreakLoop,
    Capture,
    ContinueLoop,
    Frame,
    ReturnFrom,
    Scope,
    ShellSignal,
)
from oneos.shell.devices import DeviceInput, DeviceOutput, is_device_path
from oneos.shell.errors import STATUS_BROKEN_PIPE, STATUS_INTERRUPTED, STATUS_SYNTAX, BrokenPipe, UsageError, status_for
from oneos.shell.expand import match_glob, unparse
from oneos.shell.launcher import ProgramLauncher
from oneos.shell.parser import (
    AndOr,
    ArithCommand,
    ArithFor,
    Case,
    Command,
    For,
    FunctionDef,
    Group,
    If,
    Loop,
    Node,
    Pipeline,
    Script,
    ShellSyntaxError,
    Subshell,
    parse,
)
from oneos.shell.session import Grid, Job, Session, SessionInput
from oneos.shell.stage import (
    PIPE,
    TERMINAL_ERR,
    TERMINAL_OUT,
    FileDest,
    RunState,
    Stage,
    TerminalDest,
    expand,
    redirections,
)
from oneos.shell.streams import FileInput, FileOutput, PipeReader, StreamPipe, Writer
from oneos.shell.words import Words

log = Logger()

#: Nesting limit for ``source`` (a file sourcing itself must not recurse forever).
MAX_SOURCE_DEPTH = 16
#: Nesting limit for function calls (bash's FUNCNEST): recursion that never ends stops here, status 1.
MAX_FUNCTION_DEPTH = 1000
#: Loop turns (and function calls) between two yields to the reactor.
YIELD_EVERY = 64
#: How long a yield waits: nothing for a real reactor (its next iteration, after its I/O); for a
#: ``task.Clock`` it makes each ``advance`` run one stretch of a loop rather than all of it.
YIELD_DELAY = 1e-6
#: Function nesting levels run on one Python stack: every so many, a call starts on a fresh one.
FRESH_STACK_EVERY = 8


class _Failed:
    """A stage of a pipeline of several whose words could not be expanded (``$((1/0))``): in bash it is a
    subshell that ends at once with status 1, and the other stages run."""

    status = 1


_Item = Stage | Node | _Failed  # a pipeline stage once its simple command is expanded


class Interpreter:
    """Executes lines for one session, writing to *out* and *err*.

    The front end (:mod:`oneos.shell.ssh`, :mod:`oneos.shell.telnet`) calls
    :meth:`execute` with each line, :meth:`interrupt` on Ctrl-C and
    :meth:`hangup` when the client has gone; it sets :attr:`input` to what
    the client sends.  Built-ins reach back only through the few methods of
    :class:`~oneos.shell.builtins.context.Shell`, which a :class:`ShellView`
    gives them for the scope they run in.
    """

    def __init__(self, session: Session, grid: Grid, out: Writer, err: Writer) -> None:
        self.session = session
        self.grid = grid
        self.out = out
        self.err = err
        #: name -> built-in (the registry of :mod:`oneos.shell.builtins`)
        self.builtins = BUILTINS
        #: name -> usage line, for ``help``
        self.help = HELP
        self.launcher = ProgramLauncher(grid, session, self._terminal, self.error)
        self.foreground: Job | None = None
        #: the session's shell state (functions, positional parameters ...) around *session*
        self.top = Scope(session)
        #: the session's own streams
        self.io = IO()
        #: what the client sends, for foreground programs (set by the front end; None: empty input)
        self.input: SessionInput | None = None
        #: Ctrl-C during the current line: the rest of it is not run (as bash)
        self.interrupted = False
        #: the client went away: nothing more is run (a line may still be waiting for the home directory)
        self.gone = False
        #: a terminal session (set by the front end): background jobs are announced, as bash does only then
        self.interactive = False
        self._turns = 0
        #: without a reactor, Deferreds to fire from the trampoline of :meth:`execute` (see :meth:`_later`)
        self._pending: deque[tuple[defer.Deferred, Any]] = deque()
        self._trampolines = 0

    @property
    def exit_status(self) -> int | None:
        """Set by ``exit``: the status the session should end with."""
        return self.top.exit_status

    @exit_status.setter
    def exit_status(self, status: int | None) -> None:
        self.top.exit_status = status

    # -- entry points ---------------------------------------------------------
    def execute(self, line: str, record: bool = True) -> defer.Deferred:
        """Run *line* (one line, or several: a script); fires with its exit status (never fails)."""
        self._trampolines += 1
        try:
            done = defer.Deferred.fromCoroutine(self._execute(line, record))
            self._drain()
        finally:
            self._trampolines -= 1
        return done

    async def _execute(self, line: str, record: bool) -> int:
        self.interrupted = False
        if record:
            self.session.remember(line)
        try:
            script = parse(line)
        except ShellSyntaxError as e:
            self.error(f"oneos: {e}")
            self.session.status = STATUS_SYNTAX
            return STATUS_SYNTAX
        return await self.run_script(script)

    async def run_script(
        self, script: Script, scope: Scope | None = None, io: IO | None = None, job: Job | None = None
    ) -> int:
        """Run a whole input (a line, a script, a sourced file) in *scope*.

        Without *job* each foreground and-or list is a job of its own (the
        lines a user types); ``source`` passes its caller's.  An error that
        abandons the line (a failed ``$((...))``) skips to the next line.
        """
        scope = scope or self.top
        io = io or self.io
        skip = False
        for item in script.items:
            if skip:
                skip = not item.ends_line
                continue
            if scope.exit_status is not None or self.interrupted or self.gone or (job is not None and job.stopped):
                break
            try:
                if item.background:
                    self._start_background(item, scope, io)
                    scope.session.status = 0
                elif job is not None:
                    await self._and_or(item, scope, io, job)
                else:
                    foreground = Job(0, _text(item))  # foreground: no job number
                    outer, self.foreground = self.foreground, foreground  # 'source' nests run_script
                    try:
                        await self._and_or(item, scope, io, foreground)
                    finally:
                        self.foreground = outer
            except ReturnFrom:
                raise  # (a sourced file's 'return': its caller ends it)
            except ShellSignal as signal:
                scope.session.status = self._signal_status(signal, io)
                skip = isinstance(signal, AbortLine) and not item.ends_line
        return scope.session.status

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
            self.launcher.scheduler.kill(info.id, grace=2.0).addErrback(lambda f: None)

    def error(self, text: str) -> None:
        self.err.write(text.encode("utf-8", "replace") + b"\n")

    def _error(self, io: IO, text: str) -> None:
        """One line on the error stream of the command running (a ``2> FILE`` of its compound, or the session's)."""
        (io.err or self.err).write(text.encode("utf-8", "replace") + b"\n")

    def _terminal(self, dest: TerminalDest) -> Writer:
        return self.out if dest is TERMINAL_OUT else self.err

    # -- what built-ins may ask (oneos.shell.builtins.context.Shell) ----------
    def exit(self, status: int) -> None:
        """``exit``: the session ends with *status* (the front end closes it once the line is done)."""
        self.exit_status = status

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

    async def source(self, load: Callable[[], Awaitable[Script]]) -> int:
        """``source`` at the top of the session: run the script *load* reads, at most MAX_SOURCE_DEPTH deep."""
        return await ShellView(self, self.top, self.io, self.foreground or Job(0, "source")).source(load)

    # -- jobs -----------------------------------------------------------------
    def _start_background(self, item: AndOr, scope: Scope, io: IO) -> None:
        """``LIST &``: a job of the session, run in a copy of the shell (bash's fork), reading no input."""
        job = self.session.new_job(_text(item))
        job.background = True
        self.session.jobs[job.number] = job
        child = scope.fork()
        child_io = IO(None, io.out, io.err)

        async def run() -> int:
            try:
                return await self._and_or(item, child, child_io, job)
            except ShellSignal as signal:
                return self._signal_status(signal, child_io)

        def finished(status: int) -> int:
            job.status = status
            self._job_notice(f"[{job.number}] done ({status})  {job.text}")
            return status

        self._job_notice(f"[{job.number}] started  {job.text}")  # (before it runs: it may end at once)
        job.done = defer.Deferred.fromCoroutine(run()).addCallback(finished)

    def _job_notice(self, text: str) -> None:
        """A background job's start or end, on stderr at a terminal; nothing otherwise (bash's non-interactive
        shell says nothing either, so ``cmd &`` in a script or ``ssh HOST 'LINE'`` prints only what cmd prints)."""
        if self.interactive:
            self.err.write(text.encode("utf-8", "replace") + b"\n")

    def _stopped(self, scope: Scope, job: Job) -> bool:
        """Nothing more of this list should run: ``exit``, Ctrl-C, or the client gone."""
        return scope.exit_status is not None or job.stopped or self.gone or (self.interrupted and not job.background)

    def _signal_status(self, signal: ShellSignal, io: IO) -> int:
        """The status a signal gives where it stops (a subshell, a job, the line); an abort says why."""
        if isinstance(signal, AbortLine):
            self._error(io, f"oneos: {signal.message}")
            return 1
        if isinstance(signal, ReturnFrom):
            return signal.status
        return 0

    def _later(self, d: defer.Deferred, result: Any) -> None:
        """Fire *d* with *result* (a value or a Failure) from a fresh stack: the reactor's next turn, or
        without a reactor (unit tests) the trampoline loop of :meth:`execute`."""

        def fire() -> None:
            if not d.called:  # (cancelled meanwhile: Ctrl-C)
                d.callback(result)

        if self.grid.reactor is not None:
            self.grid.reactor.callLater(0, fire)
            return
        self._pending.append((d, result))
        if not self._trampolines:
            self._drain()

    def _drain(self) -> None:
        while self._pending:
            d, result = self._pending.popleft()
            if not d.called:
                d.callback(result)

    async def _fresh_stack(self, run: Callable[[], Awaitable[int]], job: Job) -> int:
        """``await run()``, but with *run* started, and its result delivered, from a fresh Python stack.

        Deep recursion (a function calling itself) would otherwise nest the
        coroutines of every level on one stack; cut every FRESH_STACK_EVERY
        levels, it is bounded by MAX_FUNCTION_DEPTH alone.
        """
        start: defer.Deferred = defer.Deferred()
        done: defer.Deferred = defer.Deferred()

        async def body() -> None:
            await start
            try:
                outcome: Any = await run()
            except BaseException:
                outcome = Failure()
            self._later(done, outcome)

        defer.Deferred.fromCoroutine(body())
        self._later(start, None)
        return int(await job.wait(done))

    async def _breathe(self, job: Job) -> None:
        """A loop turn or a function call: every YIELD_EVERY of them, let the reactor run (and Ctrl-C in)."""
        self._turns += 1
        if self._turns < YIELD_EVERY:
            return
        self._turns = 0
        if self.grid.reactor is not None:
            await job.wait(task.deferLater(self.grid.reactor, YIELD_DELAY, lambda: None))
        elif job.stopped:
            raise defer.CancelledError()

    # -- lists, and-or lists and pipelines ----------------------------------------
    async def _list(self, body: Script, scope: Scope, io: IO, job: Job) -> int:
        """A compound command's list, in *scope*: its status is its last command's (0 if none ran)."""
        status = 0
        for item in body.items:
            if self._stopped(scope, job):
                break
            if item.background:
                self._start_background(item, scope, io)
                scope.session.status = status = 0
            else:
                status = await self._and_or(item, scope, io, job)
        return status

    async def _and_or(self, item: AndOr, scope: Scope, io: IO, job: Job) -> int:
        status = await self._run_pipeline(item.first, scope, io, job)
        for op, pipeline in item.rest:
            if self._stopped(scope, job):
                break
            if (op == "&&") == (status == 0):
                status = await self._run_pipeline(pipeline, scope, io, job)
        return status

    async def _run_pipeline(self, pipeline: Pipeline, scope: Scope, io: IO, job: Job) -> int:
        try:
            status = await self._pipeline(pipeline, scope, io, job)
        except ShellSignal:
            raise
        except OneOSError as e:
            self._error(io, f"oneos: {describe(e)}")
            status = status_for(e)
        except defer.CancelledError:
            status = STATUS_INTERRUPTED
        except RecursionError:  # (nesting is bounded well inside the stack; this is the last line of defence)
            raise AbortLine("too deeply nested for the space left on the stack") from None
        except Exception as e:  # a bug here must not end the session
            log.failure("shell command failed")
            self._error(io, f"oneos: internal error: {describe(e)}")
            status = 1
        if job.stopped:
            status = STATUS_INTERRUPTED  # Ctrl-C, as bash reports SIGINT, however the agents were stopped (SIGTERM)
        elif pipeline.negated:
            status = int(status == 0)
        scope.session.status = status
        return status

    async def _pipeline(self, pipeline: Pipeline, scope: Scope, io: IO, job: Job) -> int:
        """Run every stage at once, joined by streams; the status is the last stage's (bash without pipefail).

        A lone stage runs in *scope* itself (``cd``, assignments and function
        definitions stay); the stages of a pipeline of several each run in a
        copy of it, as bash runs them in subshells.  The pipeline is cut into
        *units*: each built-in, function call or compound command is one, and
        consecutive programs are one (they are wired runtime to runtime).
        Adjacent units are joined by a :class:`StreamPipe`.  A stream that
        failed anywhere turns a status of 0 into 1.
        """
        nodes = pipeline.stages
        several = len(nodes) > 1
        last = len(nodes) - 1
        scopes = [scope.fork() if several else scope for _ in nodes]
        for node, copy_ in zip(nodes, scopes, strict=True):
            if several and not isinstance(node, Command):
                copy_.loops = 0  # (bash: '{ break; } | cat' is not in a loop; 'break | cat' quietly is)
        items: list[_Item] = []
        for i, node in enumerate(nodes):
            if not isinstance(node, Command):
                items.append(node)
                continue
            try:
                items.append(await self._expand(node, scopes[i], io, job, piped_in=i > 0, piped_out=i < last))
            except AbortLine as abort:
                if not several:
                    raise
                self._error(io, f"oneos: {abort.message}")  # in a stage's subshell: that stage ends with 1
                items.append(_Failed())
        first = items[0]
        if not several and isinstance(first, Stage) and not first.argv:
            return await self._bare(first, scope)
        units: list[list[_Item]] = []
        unit_scopes: list[Scope] = []
        for item, item_scope in zip(items, scopes, strict=True):
            if units and _is_program(item) and _is_program(units[-1][0]):
                units[-1].append(item)
            else:
                units.append([item])
                unit_scopes.append(item_scope)
        if job.stopped:
            return STATUS_INTERRUPTED
        names = [_name(unit[-1]) for unit in units]
        pipes = [StreamPipe(f"pipe from {names[i]} to {names[i + 1]}") for i in range(len(units) - 1)]
        job.pipes.extend(pipes)
        state = RunState()
        reader = self._pipeline_input(io, job, first)
        agents = len(job.agents)
        try:
            if len(units) == 1:
                statuses = [await self._unit(units[0], unit_scopes[0], io, job, reader, None, state, False, False)]
            else:
                running = []
                for i, unit in enumerate(units):
                    stdin: Any = reader if i == 0 else PipeReader(pipes[i - 1])
                    stdout = pipes[i] if i < len(pipes) else None
                    coroutine = self._unit(unit, unit_scopes[i], io, job, stdin, stdout, state, i > 0, True)
                    running.append(defer.Deferred.fromCoroutine(coroutine))
                statuses = [await d for d in running]
        finally:
            if reader is not None:
                reader.close()
            for pipe in pipes:
                job.pipes.remove(pipe)
            del job.agents[agents:]  # (they have ended, or were stopped: a long loop must not keep them all)
        status = statuses[-1]
        if state.failed and status == 0:
            status = 1
        return status

    def _pipeline_input(self, io: IO, job: Job, first: _Item) -> Any:
        """The first stage's stdin: a fresh reader of the session's input (foreground only), the input a
        compound command was given (borrowed), or nothing."""
        if isinstance(first, Stage) and first.stdin_file is not None:
            return None
        if io.stdin is SESSION_INPUT:
            return self.input.reader() if self.input is not None and not job.background else None
        return Borrowed(io.stdin) if io.stdin is not None else None

    async def _unit(
        self,
        unit: list[_Item],
        scope: Scope,
        io: IO,
        job: Job,
        stdin: Any,
        stdout: StreamPipe | None,
        state: RunState,
        piped_in: bool,
        subshell: bool,
    ) -> int:
        """One built-in, function call or compound command, or consecutive programs; always closes its ends
        of the pipes.  In a *subshell* (a stage of a pipeline of several) a signal ends only the unit."""
        try:
            first = unit[0]
            unit_io = IO(stdin, io.out, io.err)
            if isinstance(first, _Failed):
                return first.status
            if isinstance(first, Stage) and not first.argv:  # 'X=1 | cat', '> f | cat': in its subshell
                return await self._bare(first, scope)
            if _is_program(first):
                stages = [s for s in unit if isinstance(s, Stage)]
                return await self._launcher_for(scope, io).run(stages, job, stdin, stdout, state)
            return await self._in_shell(first, scope, unit_io, job, stdout, piped_in)
        except ShellSignal as signal:
            if not subshell:
                raise
            status = self._signal_status(signal, io)
            return scope.exit_status if scope.exit_status is not None else status
        except BrokenPipe:
            return STATUS_BROKEN_PIPE
        except OneOSError as e:
            self._error(io, f"oneos: {describe(e)}")
            return status_for(e)
        except defer.CancelledError:
            return STATUS_INTERRUPTED
        except Exception as e:  # a bug here must not end the session (nor hang the other stages)
            log.failure("shell command failed")
            self._error(io, f"oneos: internal error: {describe(e)}")
            return 1
        finally:
            if stdout is not None:
                stdout.close()
            if stdin is not None:
                stdin.close()  # a writer still writing gets BrokenPipe, as on SIGPIPE

    def _launcher_for(self, scope: Scope, io: IO) -> ProgramLauncher:
        """The launcher, seeing *scope*'s session (cwd, exported variables) and writing to *io*'s streams."""
        if scope.session is self.session and io.out is None and io.err is None:
            return self.launcher
        launcher = copy.copy(self.launcher)  # (shares its clients; a test's patched methods too)
        launcher.session = scope.session

        def terminal(dest: TerminalDest) -> Writer:
            if dest is TERMINAL_OUT:
                return io.out if io.out is not None else self.out
            return io.err if io.err is not None else self.err

        launcher.terminal = terminal
        return launcher

    async def _bare(self, stage: Stage, scope: Scope) -> int:
        """``NAME=value`` (sets shell variables) or ``> FILE`` (creates/truncates it).

        Its status is the last command substitution's (``x=$(false)`` is 1), else 0.
        """
        scope.session.env.update(stage.assignments)
        for dest in stage.file_dests():
            if not is_device_path(dest.path):  # '> /dev/RT/NAME' alone writes nothing to the device
                await self.grid.fs.write(dest.path, b"", dest.mode)
        return stage.substitution_status or 0

    def _words(self, scope: Scope, io: IO, job: Job) -> Words:
        async def substitute(script: Script) -> tuple[str, int]:
            return await self._substitute(script, scope, io, job)

        session = scope.session
        return Words(session.env, session.status, scope.positional, session.home, self.grid.fs, session.cwd, substitute)

    async def _expand(self, command: Command, scope: Scope, io: IO, job: Job, piped_in: bool, piped_out: bool) -> Stage:
        words = self._words(scope, io, job)
        stage = await expand(
            command,
            words,
            cwd=scope.session.cwd,
            builtins=self.builtins,
            functions=scope.functions,
            piped_in=piped_in,
            piped_out=piped_out,
        )
        stage.substitution_status = words.substitution_status
        return stage

    async def _substitute(self, script: Script, scope: Scope, io: IO, job: Job) -> tuple[str, int]:
        """``$(...)``: *script* in a copy of the shell, its output captured; (output, status)."""
        child = scope.fork()
        capture = Capture()
        sub_io = IO(io.stdin, capture, io.err)
        try:
            status = await self._list(script, child, sub_io, job)
        except ShellSignal as signal:
            status = self._signal_status(signal, sub_io)
        if child.exit_status is not None:
            status = child.exit_status
        if job.stopped:
            raise defer.CancelledError()
        return capture.text(), status

    # -- what runs in the shell: built-ins, functions, compound commands ---------
    async def _in_shell(
        self, item: Stage | Node, scope: Scope, io: IO, job: Job, pipe: StreamPipe | None, piped_in: bool
    ) -> int:
        """Run a built-in, a function call or a compound command with its redirections; its status.

        ``io.stdin`` is its input (a Source, or None), replaced by a ``< FILE``;
        *pipe* is where PIPE output goes.  ``> FILE`` outputs stream into the
        file while it runs and are complete when it returns.
        """
        if isinstance(item, FunctionDef):
            scope.functions[item.name] = item
            return 0
        if isinstance(item, Stage):
            stdin_file, stdout, stderr = item.stdin_file, item.stdout, item.stderr
        else:
            words = self._words(scope, io, job)
            stdin_file, stdout, stderr = await redirections(
                item.redirects, words, scope.session.cwd, piped_in, pipe is not None
            )
        files: dict[int, FileOutput | DeviceOutput] = {}

        def writer(dest: Any, own: TerminalDest) -> Any:
            """Where *dest* writes; None (the session's own stream, looked up later) only for its *own* one."""
            if dest is TERMINAL_OUT:
                return io.out if own is TERMINAL_OUT or io.out is not None else self.out
            if dest is TERMINAL_ERR:
                return io.err if own is TERMINAL_ERR or io.err is not None else self.err
            if dest is PIPE:
                assert pipe is not None
                return pipe
            assert isinstance(dest, FileDest)
            if id(dest) not in files and is_device_path(dest.path):  # '> /dev/RT/NAME': the device
                files[id(dest)] = DeviceOutput(self.grid, dest.path, job)
            if id(dest) not in files:  # one stream per redirection, so 2>&1 shares it
                files[id(dest)] = FileOutput(self.grid.fs, dest.path, dest.append)
            return files[id(dest)]

        source = io.stdin
        if stdin_file is not None and is_device_path(stdin_file):
            source = DeviceInput(self.grid, stdin_file, job)
        elif stdin_file is not None:
            st = await self.grid.fs.stat(stdin_file)  # a missing file is an error even if it is never read
            if st.is_dir:
                raise IsADirectory(stdin_file)
            source = FileInput(self.grid.fs, stdin_file)
        status = 1
        try:
            # ('2>&1' / '1>&2' make one stream the other's destination: resolved, as None means one's own)
            inner = IO(source, writer(stdout, TERMINAL_OUT), writer(stderr, TERMINAL_ERR))
            if isinstance(item, Stage) and item.function is not None:
                status = await self._call(item, scope, inner, job)
            elif isinstance(item, Stage):
                status = await self._builtin(item, scope, inner, job)
            else:
                status = await self._compound(item, scope, inner, job)
        finally:
            if source is not None and source is not io.stdin:
                source.close()
            for output in files.values():
                error = await output.finish()
                if error is not None:
                    text = describe(error)
                    self._error(io, f"oneos: {text}" if output.path in text else f"oneos: {output.label}: {text}")
                    status = 1
        return int(status or 0)

    async def _builtin(self, stage: Stage, scope: Scope, io: IO, job: Job) -> int:
        """Run one built-in with *io*'s streams; its status."""
        ctx = Context(
            ShellView(self, scope, io, job),
            scope.session,
            self.grid,
            stage.argv[0],
            io.stdin,
            io.out if io.out is not None else self.out,
            io.err if io.err is not None else self.err,
            stage.assignments,
            job=job,
        )
        try:
            return int(await stage.builtin(ctx, stage.argv[1:]) or 0)  # type: ignore[misc]
        except BrokenPipe:
            return STATUS_BROKEN_PIPE
        except OneOSError as e:
            try:
                ctx.error(describe(e))
            except BrokenPipe:
                pass
            return status_for(e)
        except defer.CancelledError:  # Ctrl-C while it waited; what it wrote to files is still kept
            return STATUS_INTERRUPTED

    async def _call(self, stage: Stage, scope: Scope, io: IO, job: Job) -> int:
        """Call a function: its body with ``$1``.. set to the arguments, its ``local`` variables restored after."""
        function: FunctionDef = stage.function
        depth = len(scope.frames)
        if depth >= MAX_FUNCTION_DEPTH:
            raise AbortLine(f"{function.name}: maximum function nesting level exceeded ({MAX_FUNCTION_DEPTH})")
        await self._breathe(job)
        if depth and depth % FRESH_STACK_EVERY == 0:
            return await self._fresh_stack(lambda: self._function(function, stage, scope, io, job), job)
        return await self._function(function, stage, scope, io, job)

    async def _function(self, function: FunctionDef, stage: Stage, scope: Scope, io: IO, job: Job) -> int:
        env = scope.session.env
        hidden = {name: env.get(name) for name in stage.assignments}  # 'X=1 f': X only for the call
        env.update(stage.assignments)
        frame = Frame(function.name)
        positional, loops = scope.positional, scope.loops
        scope.positional, scope.loops = stage.argv[1:], 0
        scope.frames.append(frame)
        try:
            return await self._in_shell(function.body, scope, io, job, None, False)
        except ReturnFrom as r:
            return r.status
        finally:
            scope.frames.pop()
            scope.restore_locals(frame)
            scope.positional, scope.loops = positional, loops
            for name, value in hidden.items():
                if value is None:
                    env.pop(name, None)
                else:
                    env[name] = value

    async def _compound(self, node: Node, scope: Scope, io: IO, job: Job) -> int:
        if isinstance(node, Group):
            return await self._list(node.body, scope, io, job)
        if isinstance(node, Subshell):
            return await self._subshell(node.body, scope, io, job)
        if isinstance(node, If):
            for condition, body in node.clauses:
                status = await self._list(condition, scope, io, job)
                if self._stopped(scope, job):
                    return status
                if status == 0:
                    return await self._list(body, scope, io, job)
            return await self._list(node.orelse, scope, io, job) if node.orelse is not None else 0
        if isinstance(node, Loop):
            return await self._loop(node, scope, io, job)
        if isinstance(node, For):
            return await self._for(node, scope, io, job)
        if isinstance(node, ArithFor):
            return await self._arith_for(node, scope, io, job)
        if isinstance(node, Case):
            return await self._case(node, scope, io, job)
        if isinstance(node, ArithCommand):
            value = await self._arithmetic(node.parts, scope, io, job)
            return 1 if value is None else int(value == 0)
        raise TypeError(f"not a compound command: {node!r}")

    async def _subshell(self, body: Script, scope: Scope, io: IO, job: Job) -> int:
        """``( LIST )``: the list in a copy of the shell; ``exit`` and errors end only the copy."""
        child = scope.fork()
        child.loops = 0  # ('( break )' in a loop: "only meaningful in a loop", as bash says)
        try:
            status = await self._list(body, child, io, job)
        except ShellSignal as signal:
            status = self._signal_status(signal, io)
        return child.exit_status if child.exit_status is not None else status

    async def _turn(self, body: Script, scope: Scope, io: IO, job: Job) -> int | None:
        """One pass of a loop's body: its status, or None when ``break`` ended the loop.

        ``break N`` / ``continue N`` with N > 1 go on to the enclosing loop.
        """
        try:
            return await self._list(body, scope, io, job)
        except BreakLoop as b:
            if b.count > 1:
                raise BreakLoop(b.count - 1) from None
            return None
        except ContinueLoop as c:
            if c.count > 1:
                raise ContinueLoop(c.count - 1) from None
            return 0

    async def _loop(self, node: Loop, scope: Scope, io: IO, job: Job) -> int:
        """``while``/``until``: the status of the body's last command, 0 if it never ran."""
        status = 0
        scope.loops += 1
        try:
            while True:
                await self._breathe(job)
                if self._stopped(scope, job):
                    break
                condition = await self._turn(node.condition, scope, io, job)
                if condition is None:
                    status = 0
                    break
                if self._stopped(scope, job) or (condition == 0) == node.until:
                    break
                turn = await self._turn(node.body, scope, io, job)
                if turn is None:
                    status = 0
                    break
                status = turn
        finally:
            scope.loops -= 1
        return status

    async def _for(self, node: For, scope: Scope, io: IO, job: Job) -> int:
        """``for NAME in WORDS``: the body once per word (over ``"$@"`` without ``in``)."""
        if node.words is None:
            values = list(scope.positional)
        else:
            values = await self._words(scope, io, job).argv(node.words)
        status = 0
        scope.loops += 1
        try:
            for value in values:
                await self._breathe(job)
                if self._stopped(scope, job):
                    break
                scope.session.env[node.name] = value
                turn = await self._turn(node.body, scope, io, job)
                if turn is None:
                    status = 0
                    break
                status = turn
        finally:
            scope.loops -= 1
        return status

    async def _arith_for(self, node: ArithFor, scope: Scope, io: IO, job: Job) -> int:
        """``for ((INIT; TEST; STEP))``: C's for loop; an arithmetic error ends it with status 1."""
        if await self._arithmetic(node.init, scope, io, job) is None:
            return 1
        status = 0
        scope.loops += 1
        try:
            while True:
                await self._breathe(job)
                if self._stopped(scope, job):
                    break
                test = await self._arithmetic(node.test, scope, io, job) if node.test else 1
                if test is None:
                    return 1
                if test == 0:
                    break
                turn = await self._turn(node.body, scope, io, job)
                if turn is None:
                    status = 0
                    break
                status = turn
                if await self._arithmetic(node.step, scope, io, job) is None:
                    return 1
        finally:
            scope.loops -= 1
        return status

    async def _arithmetic(self, parts: Any, scope: Scope, io: IO, job: Job) -> int | None:
        """The value of ``((...))``'s expression, or None after saying why it failed (the command's status is 1)."""
        words = self._words(scope, io, job)
        text = await words.arithmetic_text(parts)
        try:
            return words.evaluate(text)
        except arith.ArithError as e:
            self._error(io, f"oneos: ((: {describe(e)}")
            return None

    async def _case(self, node: Case, scope: Scope, io: IO, job: Job) -> int:
        """``case``: the first item with a matching pattern; ``;&`` runs the next body too, ``;;&`` tests on."""
        words = self._words(scope, io, job)
        subject = await words.text(node.word)
        status = 0
        falling = False
        for item in node.items:
            if not falling:
                matched = False
                for pattern in item.patterns:
                    if match_glob(subject, await words.pattern(pattern)):
                        matched = True
                        break
                if not matched:
                    continue
            status = await self._list(item.body, scope, io, job)
            if item.terminator == ";;" or self._stopped(scope, job):
                break
            falling = item.terminator == ";&"
        return status


class ShellView:
    """What a built-in may ask of the interpreter (:class:`~oneos.shell.builtins.context.Shell`), for the
    scope, streams and job it runs in; the control-flow built-ins (:mod:`oneos.shell.builtins.flow`) use
    :attr:`scope` too."""

    def __init__(self, interpreter: Interpreter, scope: Scope, io: IO, job: Job) -> None:
        self.interpreter = interpreter
        self.scope = scope
        self.io = io
        self.job = job

    @property
    def help(self) -> Mapping[str, str]:
        return self.interpreter.help

    def exit(self, status: int) -> None:
        """``exit``: the scope ends (the session, or only a subshell) once the command returns."""
        self.scope.exit_status = status

    async def wait_job(self, job: Job) -> int:
        return await self.interpreter.wait_job(job)

    async def source(self, load: Callable[[], Awaitable[Script]]) -> int:
        """``source``: run the script *load* reads in this scope; ``return`` in it ends it."""
        scope = self.scope
        if scope.sourcing >= MAX_SOURCE_DEPTH:
            raise UsageError("too deeply nested")
        script = await load()
        scope.sourcing += 1
        try:
            return await self.interpreter.run_script(script, scope, self.io, self.job)
        except ReturnFrom as r:
            return r.status
        finally:
            scope.sourcing -= 1


def _is_program(item: _Item) -> bool:
    return isinstance(item, Stage) and item.builtin is None and item.function is None


_KEYWORDS = {Group: "{", Subshell: "(", If: "if", Loop: "while", For: "for", ArithFor: "for", Case: "case"}


def _name(item: _Item) -> str:
    """How a pipe names the stage at one of its ends."""
    if isinstance(item, Stage):
        return " ".join(item.argv[:1])
    return _KEYWORDS.get(type(item), "((")


def _text(item: AndOr) -> str:
    """An and-or list as the user would type it (how ``jobs`` shows it)."""
    return unparse(Script((AndOr(item.first, item.rest, False),)))
