"""Starting a pipeline's programs on runtimes and wiring their streams.

Consecutive program stages of a pipeline are one *launch*
(:meth:`ProgramLauncher.run`), in four steps:

1. **check**: each stage is resolved (OneOS scripts become the path the
   runtime fetches, :meth:`ProgramLauncher.resolve`) and its ``< FILE`` and
   ``> FILE`` are checked as the session's user (outputs created as the
   user's), a ``< /dev/RT/NAME`` or ``> /dev/RT/NAME`` against the live
   devices (it exists, it goes that way), before anything starts;
2. **start**: one call to the scheduler's ``pipeline``
   (:class:`~oneos.scheduler.client.SchedulerClient`, a
   :class:`~oneos.scheduler.client.StageSpec` per stage) starts every
   stage as an agent, on the runtime the scheduler picks or the one its
   ``@RUNTIME`` / ``@tag:T`` names, and joins consecutive programs runtime
   to runtime (never through the shell).  The wiring lives there only: if
   any stage cannot start or be joined, the scheduler stops what it started
   and the call fails.  ``< FILE`` and ``> FILE`` are done by the program's
   runtime;
3. **input**: the first program's stdin is streamed to its runtime
   (``agent_stdin`` + :func:`oneos.transfer.send`): the previous built-in's
   pipe, the session's input, or nothing; for ``< /dev/RT/NAME`` the
   device's runtime sends straight into it (``device_pipe_out``);
4. **outputs**: what does not go to a runtime or a file is received here
   (``agent_attach`` + :func:`oneos.transfer.receive`) into the session's
   writers, into the next built-in's pipe (:class:`~oneos.shell.streams.PipeSink`),
   for ``> FILE 2>&1`` into one pipe the file service reads, and for
   ``> /dev/RT/NAME`` into a pipe streamed into the device
   (:class:`~oneos.shell.devices.DeviceOutput`), so the device's answer is
   the pipeline's.

Then every stream and every agent is awaited.  Nothing is lost silently: a
stream that fails is reported as ``oneos: WHAT: ERROR`` (naming the stage
and the stream address), its program is stopped, and the pipeline's status
is made non-zero (:class:`~oneos.shell.stage.RunState`).  A program stopped
because the built-in reading it went away (the shell's SIGPIPE) is not
reported, nor one its runtime stopped because the next program stopped
reading.  A job stopped (Ctrl-C, the client gone) while the scheduler is
still starting its programs stops waiting at once; the programs are stopped
when the scheduler's answer arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from oneos import transfer
from oneos.agents.client import AgentsClient
from oneos.agents.info import EXITED, KILLED, AgentInfo, OutputTarget, exit_status
from oneos.agents.program import interpreter_for
from oneos.agents.watch import watch_agent
from oneos.devices.info import INPUT, OUTPUT
from oneos.errors import describe
from oneos.fs import paths
from oneos.fs.client import BytesSource
from oneos.scheduler.client import SchedulerClient, StageSpec
from oneos.shell import devices
from oneos.shell.devices import DeviceOutput, _named, is_device_path
from oneos.shell.errors import ShellError
from oneos.shell.session import Grid, Job, Session
from oneos.shell.stage import PIPE, TERMINAL_OUT, FileDest, RunState, Stage, TerminalDest
from oneos.shell.streams import PipeSink, StreamPipe, Writer, WriterSink
from oneos.transfer import StreamAddress

log = Logger()

#: Seconds a program's input stream may take to end once the program has (a peer gone silent).
STDIN_GRACE = 10.0
#: Seconds per program the scheduler may take to start and join a pipeline.  It waits for each
#: runtime's answer for its RPC client's default (5 s), so it answers, or stops what it started,
#: well before: its work is never cut off by this caller's deadline with programs it cannot stop.
START_TIMEOUT = 20.0
#: Interpreters whose first argument may name a OneOS script (``python3 /home/app.py``).
SCRIPT_RUNNERS = {"python3": ".py", "python": ".py", "node": ".js", "sh": ".sh"}


class ProgramLauncher:
    """Starts programs for one session's interpreter and wires their streams.

    *terminal* gives the session writer for TERMINAL_OUT / TERMINAL_ERR (looked
    up at each use: a front end may replace the writers); *error* writes one
    line to the session's error output.
    """

    def __init__(
        self, grid: Grid, session: Session, terminal: Callable[[TerminalDest], Writer], error: Callable[[str], None]
    ) -> None:
        self.grid = grid
        self.session = session
        self.terminal = terminal
        self.error = error
        #: the scheduler (pipeline, kill) and the runtimes' agent methods (streams), over the grid's RPC
        self.scheduler = SchedulerClient(grid.rpc)
        self.agents = AgentsClient(grid.rpc)

    async def run(self, stages: list[Stage], job: Job, stdin: Any, pipe: StreamPipe | None, state: RunState) -> int:
        """Start *stages* as agents joined by the scheduler, stream their input and output; the last one's status.

        The first program's stdin is *stdin* (a built-in's output pipe, or the
        session's input), else empty.  The last program's PIPE output goes
        into *pipe* (the next built-in's input).  Every stream is awaited and
        a failed one is reported (``oneos: WHAT: ERROR``) and marks *state*
        failed, so the pipeline cannot end with 0 after losing bytes.
        """
        return await _Launch(self, stages, job, stdin, pipe, state).run()

    async def resolve(self, argv: list[str]) -> tuple[str, list[str]]:
        """Map OneOS script paths to absolute paths the runtimes can fetch.

        ``python3 app.py`` in /home becomes program ``/home/app.py`` (its
        interpreter follows from the extension); ``./tool.sh`` and
        ``bin/x.py`` are taken from the cwd.  Anything else is a program on
        the runtime's host, found on its PATH.
        """
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

    async def watch(self, info: AgentInfo) -> tuple[defer.Deferred, Any]:
        """A Deferred firing with the agent's final status (a record), and the subscription to cancel after.

        The agent's runtime keeps its status *retained* (an ended agent's for
        ``KEEP_ENDED``, 5 minutes), so subscribing after the agent started,
        even after it ended, still receives its current state first: a quick
        program's exit cannot be missed.
        """
        done, subscribed = watch_agent(self.grid.client, info.runtime, info.id)
        sub = await subscribed
        return done, sub

    async def attach(
        self, info: AgentInfo, stream: str, sink: Any, label: str = ""
    ) -> tuple[str, StreamAddress | None, defer.Deferred]:
        """Receive an agent's stdout or stderr into *sink*: (what, where, Deferred of the transfer)."""
        try:
            where = await self.agents.attach(info.runtime, info.id, stream)
        except BaseException:
            sink.abort()  # (a PipeSink holds its pipe open until then)
            raise
        done = transfer.receive(self.grid.reactor, where.host, where.port, where.token, sink, **where.options())

        def failed(failure: Any) -> Any:
            sink.abort()  # a stream that never connected has not told its sink
            return failure

        done.addErrback(failed)
        return f"{'output' if stream == 'stdout' else 'errors'} of {label or info.id}", where, done

    def stream_failed(
        self, what: str, where: StreamAddress | None, error: BaseException, job: Job, state: RunState
    ) -> None:
        """Say which stream failed and where it was going (host:port), and fail the pipeline."""
        if job.stopped:  # Ctrl-C broke it on purpose
            return
        text = describe(error)
        if where is not None and where.address not in text:
            text += f" (stream address {where.address})"
        log.info("shell stream failed: {what}: {error}", what=what, error=text)
        self.error(f"oneos: {what}: {text}")
        state.failed = True


class _Launch:
    """One launch of consecutive programs: what was started, what streams run, whom the shell stopped and why."""

    def __init__(
        self,
        launcher: ProgramLauncher,
        stages: list[Stage],
        job: Job,
        stdin: Any,
        pipe: StreamPipe | None,
        state: RunState,
    ) -> None:
        self.launcher = launcher
        self.grid = launcher.grid
        self.stages = stages
        self.job = job
        self.stdin = stdin
        self.pipe = pipe
        self.state = state
        #: the agents started, in stage order (what the scheduler's pipeline answered)
        self.infos: list[AgentInfo] = []
        #: per agent: (fires with its final status, the subscription to cancel after)
        self.waits: list[tuple[defer.Deferred, Any]] = []
        #: the output streams received here (and the merged '> FILE 2>&1' writes), each reporting its own failure
        self.streams: list[defer.Deferred] = []
        #: the first program's input stream, once it is sent
        self.stdin_sent: defer.Deferred | None = None
        #: agents stopped because a stream of theirs failed (already reported; their status is then 1, not 143)
        self.stopped_for_streams: set[str] = set()
        #: agents stopped because the built-in reading them went away (SIGPIPE: nothing to report)
        self.sigpiped: set[str] = set()
        #: '< /dev/RT/NAME' of the first program: (runtime, device name, path), checked before the start
        self.device_in: tuple[str, str, str] | None = None

    async def run(self) -> int:
        try:
            specs = []
            for i, stage in enumerate(self.stages):
                specs.append(await self._check(i, stage))
            self.infos = await self._start(specs)
            self.job.agents.extend(self.infos)
            for info in self.infos:
                self.waits.append(await self.launcher.watch(info))
            await self._send_input()
            for i, (stage, info) in enumerate(zip(self.stages, self.infos, strict=True)):
                await self._receive_outputs(i, stage, info)
        except BaseException:
            self._abandon()
            raise
        return await self._finish()

    # -- 1. checks before anything starts ----------------------------------------------------
    async def _check(self, i: int, stage: Stage) -> StageSpec:
        """What the scheduler is asked to start for *stage*, once its program and files are checked."""
        if i > 0 and stage.stdin_file:
            raise ShellError("only the first program of a pipeline can read a file with '<'")
        if stage.stdout is PIPE and stage.stderr is PIPE and i < len(self.stages) - 1:
            raise ShellError("2>&1 into a pipe is supported for built-ins and the last program before one only")
        # Devices: '< /dev/RT/NAME' is sent by the device's runtime straight into the program's
        # stdin; '> /dev/RT/NAME' is received here and streamed into the device, so the device's
        # answer (a refused value, a printer's exit status) reaches this pipeline's status.  Both
        # are checked (exists, right direction) before anything starts.
        stdin_file = stage.stdin_file
        if stdin_file and is_device_path(stdin_file):
            runtime, device = await devices.locate(self.grid, self.job, stdin_file, INPUT)
            self.device_in = (runtime, device.name, stdin_file)
            stdin_file = None
        for dest in stage.file_dests():
            if is_device_path(dest.path):
                if dest is stage.stdout and i < len(self.stages) - 1:
                    raise ShellError(f"{dest.path}: only the last program of a pipeline can write its output there")
                await devices.locate(self.grid, self.job, dest.path, OUTPUT)
        fs = self.grid.fs
        program, args = await self.launcher.resolve(stage.argv)
        merged = _merged(stage)
        stdout_to = OutputTarget.attach()
        if isinstance(stage.stdout, FileDest) and not merged and not _is_device(stage.stdout):
            stdout_to = _file_target(stage.stdout)
        stderr_to = OutputTarget.attach()
        if isinstance(stage.stderr, FileDest) and not merged and not _is_device(stage.stderr):
            stderr_to = _file_target(stage.stderr)
        # The program's runtime reads '< FILE' and writes '> FILE' for it (as the kernel): check
        # them as this session's user first, and create the outputs as the user's, as a shell
        # opens them before it starts a program (so a directory, '> DIR 2>&1' too, fails here:
        # "is a directory", status 1, and the program is not started).
        if stdin_file:
            await fs.access(stdin_file, "r")
        for dest in stage.file_dests():
            if not _is_device(dest):
                await fs.write(dest.path, b"", dest.mode)
        session = self.launcher.session
        return StageSpec(
            program,
            tuple(args),
            runtime=stage.runtime,
            tags=tuple(stage.tags),
            user=session.user,
            env=session.agent_env(stage.assignments),
            stdout=stdout_to,
            stderr=stderr_to,
            stdin_file=stdin_file,
            near=tuple(stage.near),
        )

    # -- 2. the scheduler starts and joins them -------------------------------------------------
    async def _start(self, specs: list[StageSpec]) -> list[AgentInfo]:
        """Every stage started and joined runtime to runtime by the scheduler (one ``pipeline`` call).

        A failed call has started nothing that still runs: the scheduler stops
        what it started before it answers.  If the job is stopped while the
        call is under way, the shell stops waiting at once (CancelledError)
        and stops the programs when the answer arrives.
        """
        if self.job.stopped:
            raise defer.CancelledError()
        answer: defer.Deferred = defer.Deferred()

        def arrived(result: Any) -> None:
            if answer.called:  # the job was stopped meanwhile: nothing waits for these programs
                if isinstance(result, list):
                    for info in result:
                        self._kill(info)
                return
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)

        timeout = START_TIMEOUT * len(specs)
        self.launcher.scheduler.pipeline(specs, timeout=timeout).addBoth(arrived)
        infos: list[AgentInfo] = await self.job.wait(answer)
        if len(infos) != len(specs):
            for info in infos:
                self._kill(info)
            raise ShellError(f"the scheduler started {len(infos)} programs for a pipeline of {len(specs)}")
        return infos

    # -- 3. the first program's input ---------------------------------------------------------
    async def _send_input(self) -> None:
        first = self.infos[0]
        if self.device_in is not None:
            await self._device_input(first)
            return
        if self.stages[0].stdin_file:
            return  # its runtime reads the file
        where = await self.launcher.agents.stdin(first.runtime, first.id)
        source = self.stdin if self.stdin is not None else BytesSource(b"")
        self.stdin_sent = transfer.send(
            self.grid.reactor, where.host, where.port, where.token, source, **where.options()
        )
        self.stdin_sent.addErrback(self._input_failed, f"input of {_label(self.stages[0], first)}", where, first)

    async def _device_input(self, first: AgentInfo) -> None:
        """``< /dev/RT/NAME``: the device's runtime sends its stream straight into the program's stdin.

        As ``oneos run --stdin``: the program's runtime offers its stdin
        naming the device as its source (a stream that breaks stops the
        program with that reason, reported when it ends), then the device's
        runtime is asked to send into it, as this session's user.  A device
        that cannot be read now (failed, refused) stops the program: the
        error is one line naming the path.
        """
        assert self.device_in is not None
        runtime, name, path = self.device_in
        where = await self.launcher.agents.stdin(first.runtime, first.id, source=f"{name}@{runtime}")
        into = f"{first.name or first.id}@{first.runtime}"
        try:
            await self.job.wait(devices.devices_client(self.grid).pipe_out(runtime, name, into=where, to=into))
        except defer.CancelledError:
            raise
        except Exception as e:  # (the program is stopped by run(), as for any failure to start)
            raise _named(path, e) from None

    def _input_failed(self, failure: Any, what: str, where: StreamAddress, info: AgentInfo) -> None:
        """A program's input stream ended early.

        The program no longer reading (EPIPE) is normal, as a Unix pipe whose
        reader exited: the stage feeding it stops quietly.  Anything else
        (cannot connect, peer gone) is reported and the program is stopped:
        it would otherwise wait for input that will never come.
        """
        if self.stdin is not None:
            self.stdin.close()
        if failure.check(defer.CancelledError):  # (the program ended STDIN_GRACE ago: its input no longer matters)
            log.info("{what} did not end: given up", what=what)
            return
        if getattr(failure.value, "kind", None) == "EPIPE" or self.job.stopped:
            log.debug("{what} ended early: {error}", what=what, error=failure.getErrorMessage())
            return
        self.launcher.stream_failed(what, where, failure.value, self.job, self.state)
        self._stop_for_streams(info)

    # -- 4. outputs received here ---------------------------------------------------------------
    async def _receive_outputs(self, i: int, stage: Stage, info: AgentInfo) -> None:
        label = _label(stage, info)
        attach = self.launcher.attach
        if _is_device(stage.stdout) or _is_device(stage.stderr):
            await self._device_outputs(stage, info, label)
            if _is_device(stage.stdout) and (stage.stderr is stage.stdout or _is_device(stage.stderr)):
                return  # both streams go to devices
            if _is_device(stage.stdout):
                stage = _without(stage, stdout=None)  # the rest below: stderr only
            else:
                stage = _without(stage, stderr=None)  # the rest below: stdout only
        if _merged(stage):
            # '> FILE 2>&1': both streams into one pipe the file service reads
            dest = stage.stdout
            both = StreamPipe(f"{'>>' if dest.append else '>'} {dest.path}")
            sinks = [PipeSink(both, lambda: self._stop_for_streams(info)) for _ in range(2)]
            both.close()  # the pipe ends when both streams have
            written = self.grid.fs.write_from(dest.path, both, dest.mode)

            def unread(failure: Any) -> Any:
                both.close_reader()  # the file cannot be written: its two writers stop, and so does the program
                return failure

            written.addErrback(unread)
            self.streams.append(self._watched((f"{both.name} (from {label})", None, written), info))
            for name, sink in zip(("stdout", "stderr"), sinks, strict=True):
                self.streams.append(self._watched(await attach(info, name, sink, label), info))
            return
        last = i == len(self.stages) - 1
        into_pipe = stage.stdout is PIPE and last and self.pipe is not None
        out_sink: Any = None
        if into_pipe:
            assert self.pipe is not None
            out_sink = PipeSink(self.pipe, lambda: self._reader_gone(info))
        elif isinstance(stage.stdout, TerminalDest):
            out_sink = WriterSink(self.launcher.terminal(stage.stdout))
        if out_sink is not None:
            self.streams.append(self._watched(await attach(info, "stdout", out_sink, label), info))
        err_sink: Any = None
        if isinstance(stage.stderr, TerminalDest):
            err_sink = WriterSink(self.launcher.terminal(stage.stderr))
        elif stage.stderr is PIPE or stage.stderr is stage.stdout:
            # 2>&1: stderr goes where stdout goes (the next built-in, or the terminal at the end of the line)
            if into_pipe and self.pipe is not None:
                err_sink = PipeSink(self.pipe, lambda: self._reader_gone(info))
            else:
                err_sink = WriterSink(self.launcher.terminal(TERMINAL_OUT))
        if err_sink is not None:
            self.streams.append(self._watched(await attach(info, "stderr", err_sink, label), info))

    async def _device_outputs(self, stage: Stage, info: AgentInfo, label: str) -> None:
        """``> /dev/RT/NAME`` (``>>`` alike, ``2>``, ``2>&1``): the program's streams into the device.

        Received here and streamed into the device through a bounded pipe
        (:class:`~oneos.shell.devices.DeviceOutput`, the built-ins' ``>``), so
        the device's pace holds the program back and its verdict (a value
        refused, a printer program's exit status, its runtime gone) is this
        pipeline's: reported as ``oneos: output of PROG: /dev/RT/NAME: ...``,
        the program stopped if it still runs, the status non-zero.
        """
        outputs: dict[int, tuple[DeviceOutput, list[str]]] = {}
        for stream, dest in (("stdout", stage.stdout), ("stderr", stage.stderr)):
            if _is_device(dest):
                if id(dest) not in outputs:
                    outputs[id(dest)] = (DeviceOutput(self.grid, dest.path, self.job), [])
                outputs[id(dest)][1].append(stream)
        for out, streams in outputs.values():
            sinks = [PipeSink(out.pipe, lambda: self._stop_for_streams(info)) for _ in streams]
            written = defer.Deferred.fromCoroutine(_verdict(out))  # its pipe ends when every stream has
            self.streams.append(self._watched((f"output of {label}", None, written), info))
            for stream, sink in zip(streams, sinks, strict=True):
                self.streams.append(self._watched(await self.launcher.attach(info, stream, sink, label), info))

    def _watched(self, stream: tuple[str, StreamAddress | None, defer.Deferred], info: AgentInfo) -> defer.Deferred:
        """Report a stream's failure when it happens, and stop its program: its output has nowhere
        to go (it would block, or run on for nothing)."""
        what, where, done = stream

        def failed(failure: Any) -> None:
            self.launcher.stream_failed(what, where, failure.value, self.job, self.state)
            self._stop_for_streams(info)

        return done.addErrback(failed)

    # -- stopping programs ------------------------------------------------------------------------
    def _kill(self, info: AgentInfo) -> None:
        self.launcher.scheduler.kill(info.id, grace=1.0).addErrback(lambda f: None)

    def _stop_for_streams(self, info: AgentInfo) -> None:
        """A stream of the program failed (already reported): stop it."""
        self.stopped_for_streams.add(info.id)
        self._kill(info)

    def _reader_gone(self, info: AgentInfo) -> None:
        """The built-in reading the program stopped reading: stop it, quietly (SIGPIPE)."""
        self.sigpiped.add(info.id)
        self._kill(info)

    def _abandon(self) -> None:
        """Starting failed (or Ctrl-C): stop what was started, stop watching, stop reading the input."""
        for info in self.infos:
            self._kill(info)
        for _, sub in self.waits:
            _cancel(sub)
        if self.stdin is not None:
            self.stdin.close()

    # -- the end ------------------------------------------------------------------------------------
    async def _finish(self) -> int:
        """Wait for every stream and agent; report the agents that failed; the last one's status."""
        await defer.DeferredList(self.streams, consumeErrors=True)  # (failures are reported as they happen)
        finals: list[AgentInfo] = []
        for ended, sub in self.waits:
            try:
                finals.append(AgentInfo.decode(await ended))
            finally:
                _cancel(sub)
        if self.stdin_sent is not None:
            # The program has ended: a built-in still writing to it stops (SIGPIPE), and the
            # input stream ends; waiting for it makes a failure count before the status is known.
            if self.stdin is not None:
                self.stdin.close()
            await self.job.wait(self.stdin_sent.addTimeout(STDIN_GRACE, self.grid.reactor))
        for i, final in enumerate(finals):
            if final.id in self.stopped_for_streams | self.sigpiped or (i < len(finals) - 1 and _sigpiped(final)):
                continue  # stopped by the shell as SIGPIPE would, or for a failure already reported
            if final.state not in (EXITED, KILLED) or final.reason:
                self.launcher.error(
                    f"oneos: {final.name or '?'} on {final.runtime} {final.state}"
                    + (f": {final.reason}" if final.reason else "")
                )
        if finals[-1].id in self.stopped_for_streams and finals[-1].state == KILLED:
            return 1  # stopped by the shell because its stream failed (already reported)
        return exit_status(finals[-1])


def _merged(stage: Stage) -> bool:
    """``> FILE 2>&1``: both streams into one file, merged by the shell."""
    return isinstance(stage.stdout, FileDest) and stage.stderr is stage.stdout


def _is_device(dest: Any) -> bool:
    """A ``> /dev/RT/NAME`` destination (a device, not a file of the tree)."""
    return isinstance(dest, FileDest) and is_device_path(dest.path)


def _without(stage: Stage, **streams: Any) -> Stage:
    """*stage* with some streams taken away (None: handled elsewhere, neither received here nor attached)."""
    return replace(stage, **streams)


async def _verdict(out: DeviceOutput) -> None:
    """Wait for the device to take a program's output; its error (naming the device) if it did not."""
    error = await out.finish()
    if error is not None:
        raise error


def _sigpiped(final: AgentInfo) -> bool:
    """An agent its runtime stopped because the next program stopped reading (the runtimes' SIGPIPE).

    Recognised by the reason the agent host gives (``pipe to HOST:PORT broke:
    the program closed its input``); bash reports nothing for such a stage.
    """
    reason = final.reason
    return (
        final.state == KILLED
        and reason.startswith("pipe to ")
        and ("closed its input" in reason or "no longer reads its input" in reason)
    )


def _label(stage: Stage, info: AgentInfo) -> str:
    """How messages name a program: ``sha256sum (a-1f2e on rt-2)``."""
    return f"{stage.argv[0] if stage.argv else '?'} ({info.id} on {info.runtime})"


def _cancel(sub: Any) -> None:
    try:
        sub.cancel()
    except Exception:
        pass


def _file_target(dest: FileDest) -> OutputTarget:
    return OutputTarget.file(dest.path, append=dest.append)
