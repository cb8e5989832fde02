"""Runs shell lines: one :class:`Interpreter` per session, from the parser's AST to statuses.

A line is parsed (:mod:`oneos.shell.parser`), then each and-or list of it
runs as a :class:`~oneos.shell.session.Job` (in the foreground, or in the
background after ``&``), each pipeline of it with every stage at once:

* each stage is expanded into a :class:`~oneos.shell.stage.Stage` (words,
  globs against the OneOS tree, redirections);
* the pipeline is cut into *units*: each built-in is one, consecutive
  programs are one; adjacent units are joined by a bounded
  :class:`~oneos.shell.streams.StreamPipe`;
* a built-in (:mod:`oneos.shell.builtins`) runs here, in the shell service,
  with a :class:`~oneos.shell.builtins.context.Context`; its ``> FILE``
  streams into ``fs.write_from`` and its ``< FILE`` from ``fs.read_into``;
* consecutive programs go to the :class:`~oneos.shell.launcher.ProgramLauncher`,
  which starts them as agents and wires their streams.

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

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from oneos.errors import OneOSError, describe
from oneos.fs.errors import IsADirectory
from oneos.shell.builtins import BUILTINS, HELP
from oneos.shell.builtins.context import Context
from oneos.shell.devices import DeviceInput, DeviceOutput, is_device_path
from oneos.shell.errors import STATUS_BROKEN_PIPE, STATUS_INTERRUPTED, STATUS_SYNTAX, BrokenPipe, UsageError, status_for
from oneos.shell.expand import unparse
from oneos.shell.launcher import ProgramLauncher
from oneos.shell.parser import AndOr, Command, Pipeline, Script, ShellSyntaxError, parse
from oneos.shell.session import Grid, Job, Session, SessionInput
from oneos.shell.stage import PIPE, TERMINAL_ERR, TERMINAL_OUT, FileDest, RunState, Stage, TerminalDest, expand
from oneos.shell.streams import FileInput, FileOutput, PipeReader, StreamPipe, Writer

log = Logger()

#: Nesting limit for ``source`` (a file sourcing itself must not recurse forever).
MAX_SOURCE_DEPTH = 16


class Interpreter:
    """Executes lines for one session, writing to *out* and *err*.

    The front end (:mod:`oneos.shell.ssh`, :mod:`oneos.shell.telnet`) calls
    :meth:`execute` with each line, :meth:`interrupt` on Ctrl-C and
    :meth:`hangup` when the client has gone; it sets :attr:`input` to what
    the client sends.  Built-ins reach back only through the few methods of
    :class:`~oneos.shell.builtins.context.Shell` (:meth:`exit`,
    :meth:`wait_job`, :meth:`source`, :attr:`help`).
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
        #: set by ``exit``: the status the session should end with
        self.exit_status: int | None = None
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
        if record:
            self.session.remember(line)
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
            self.launcher.scheduler.kill(info.id, grace=2.0).addErrback(lambda f: None)

    def error(self, text: str) -> None:
        self.err.write(text.encode("utf-8", "replace") + b"\n")

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
        """``source``: run the script *load* reads in this session, at most MAX_SOURCE_DEPTH deep."""
        if self._depth >= MAX_SOURCE_DEPTH:
            raise UsageError("too deeply nested")
        script = await load()
        self._depth += 1
        try:
            return await self.run_script(script)
        finally:
            self._depth -= 1

    # -- jobs -----------------------------------------------------------------
    def _start_background(self, item: AndOr) -> None:
        job = self.session.new_job(_text(item))
        job.background = True
        self.session.jobs[job.number] = job

        def finished(status: int) -> int:
            job.status = status
            self.out.write(f"[{job.number}] done ({status})  {job.text}\n".encode())
            return status

        job.done = defer.Deferred.fromCoroutine(self._run_and_or(item, job)).addCallback(finished)
        self.out.write(f"[{job.number}] started  {job.text}\n".encode())

    # -- and-or lists and pipelines -------------------------------------------
    async def _run_and_or(self, item: AndOr, job: Job) -> int:
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
            status = status_for(e)
        except defer.CancelledError:
            status = STATUS_INTERRUPTED
        except Exception as e:  # a bug here must not end the session
            log.failure("shell command failed")
            self.error(f"oneos: internal error: {describe(e)}")
            status = 1
        if job.stopped:
            status = STATUS_INTERRUPTED  # Ctrl-C, as bash reports SIGINT, however the agents were stopped (SIGTERM)
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
            stages.append(await self._expand(command, piped_in=i > 0, piped_out=i < last))
        if len(stages) == 1 and not stages[0].argv:
            return await self._bare(stages[0])
        units: list[list[Stage]] = []
        for stage in stages:
            if units and stage.builtin is None and units[-1][0].builtin is None:
                units[-1].append(stage)
            else:
                units.append([stage])
        if job.stopped:
            return STATUS_INTERRUPTED
        names = [" ".join(unit[-1].argv[:1]) for unit in units]
        pipes = [StreamPipe(f"pipe from {names[i]} to {names[i + 1]}") for i in range(len(units) - 1)]
        job.pipes.extend(pipes)
        state = RunState()
        # The session's input goes to the first stage only, and never to background jobs.
        reader = (
            self.input.reader()
            if self.input is not None and not job.background and stages[0].stdin_file is None
            else None
        )
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

    async def _unit(self, unit: list[Stage], job: Job, stdin: Any, stdout: StreamPipe | None, state: RunState) -> int:
        """One built-in, or consecutive programs; always closes its ends of the pipes (never raises)."""
        try:
            if unit[0].builtin is not None:
                return await self._builtin(unit[0], job, stdin, stdout)
            return await self.launcher.run(unit, job, stdin, stdout, state)
        except BrokenPipe:
            return STATUS_BROKEN_PIPE
        except OneOSError as e:
            self.error(f"oneos: {describe(e)}")
            return status_for(e)
        except defer.CancelledError:
            return STATUS_INTERRUPTED
        except Exception as e:  # a bug here must not end the session (nor hang the other stages)
            log.failure("shell command failed")
            self.error(f"oneos: internal error: {describe(e)}")
            return 1
        finally:
            if stdout is not None:
                stdout.close()
            if stdin is not None:
                stdin.close()  # a writer still writing gets BrokenPipe, as on SIGPIPE

    async def _bare(self, stage: Stage) -> int:
        """``NAME=value`` (sets shell variables) or ``> FILE`` (creates/truncates it)."""
        self.session.env.update(stage.assignments)
        for dest in stage.file_dests():
            if not is_device_path(dest.path):  # '> /dev/RT/NAME' alone writes nothing to the device
                await self.grid.fs.write(dest.path, b"", dest.mode)
        return 0

    async def _expand(self, command: Command, piped_in: bool, piped_out: bool) -> Stage:
        return await expand(
            command,
            env=self.session.env,
            status=self.session.status,
            cwd=self.session.cwd,
            fs=self.grid.fs,
            builtins=self.builtins,
            piped_in=piped_in,
            piped_out=piped_out,
        )

    # -- built-ins ------------------------------------------------------------
    async def _builtin(self, stage: Stage, job: Job, stdin: Any, pipe: StreamPipe | None) -> int:
        """Run one built-in; its status.

        *stdin*: a Source with ``close()`` (the previous stage's pipe, the
        session's input for a first stage) or None; a ``< FILE`` replaces it.
        *pipe*: where PIPE output goes.  ``> FILE`` outputs stream into the
        file while the built-in runs and are complete when it returns.
        """
        files: dict[int, FileOutput | DeviceOutput] = {}

        def writer(dest: Any) -> Writer:
            if dest is TERMINAL_OUT:
                return self.out
            if dest is TERMINAL_ERR:
                return self.err
            if dest is PIPE:
                assert pipe is not None
                return pipe
            assert isinstance(dest, FileDest)
            if id(dest) not in files and is_device_path(dest.path):  # '> /dev/RT/NAME': the device
                files[id(dest)] = DeviceOutput(self.grid, dest.path, job)
            if id(dest) not in files:  # one stream per redirection, so 2>&1 shares it
                files[id(dest)] = FileOutput(self.grid.fs, dest.path, dest.append)
            return files[id(dest)]

        source = stdin
        if stage.stdin_file is not None and is_device_path(stage.stdin_file):
            source = DeviceInput(self.grid, stage.stdin_file, job)
        elif stage.stdin_file is not None:
            st = await self.grid.fs.stat(stage.stdin_file)  # a missing file is an error even if it is never read
            if st.is_dir:
                raise IsADirectory(stage.stdin_file)
            source = FileInput(self.grid.fs, stage.stdin_file)
        status = 1
        try:
            ctx = Context(
                self,
                self.session,
                self.grid,
                stage.argv[0],
                source,
                writer(stage.stdout),
                writer(stage.stderr),
                stage.assignments,
                job=job,
            )
            try:
                status = await stage.builtin(ctx, stage.argv[1:])  # type: ignore[misc]
            except BrokenPipe:
                status = STATUS_BROKEN_PIPE
            except OneOSError as e:
                try:
                    ctx.error(describe(e))
                except BrokenPipe:
                    pass
                status = status_for(e)
            except defer.CancelledError:  # Ctrl-C while it waited; what it wrote to files is still kept
                status = STATUS_INTERRUPTED
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


def _text(item: AndOr) -> str:
    """An and-or list as the user would type it (how ``jobs`` shows it)."""
    return unparse(Script((AndOr(item.first, item.rest, False),)))
