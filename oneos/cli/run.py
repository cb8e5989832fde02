"""``oneos run``: run a program somewhere in the network as if it were local.

Standard output and error stream back here as the program writes them;
standard input is forwarded when it is not a terminal (``--stdin /dev/RT/NAME``:
a device's stream instead, sent by the device's runtime straight into the
program's stdin); the command exits with
the program's status (128+N when killed by signal N, 1 when it failed or was
lost) once all its output has arrived.

Twisted and the clients are imported inside the functions, so ``oneos run
--help`` answers without loading them (oneos/cli/main.py).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING, Any

from oneos.cli.common import inline_callbacks
from oneos.errors import OneOSError, describe

if TYPE_CHECKING:
    from twisted.internet import defer

    from oneos.agents.info import AgentInfo
    from oneos.scheduler.client import StageSpec

SUMMARY = "run a program on a runtime chosen by the scheduler (or a pipeline across runtimes)"


class LocalSource:
    """Reads local stdin in a thread so a slow producer never blocks the reactor."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def next(self) -> defer.Deferred:
        from twisted.internet import threads

        return threads.deferToThread(self.stream.read1, 65536)


@inline_callbacks
def attach(
    reactor: Any,
    client: Any,
    rpc: Any,
    infos: list[AgentInfo],
    forward_stdin: bool,
    stdout: bool = True,
    stdin: bool = True,
) -> Any:
    """Stream the last stage's output here and our stdin to the first; fire with the last stage's status."""
    from twisted.internet import defer

    from oneos.agents.client import AgentsClient
    from oneos.agents.watch import watch_agent
    from oneos.cli.common import OutputSink, ReaderGone
    from oneos.scheduler.client import SchedulerClient
    from oneos.transfer import receive, send

    agents, scheduler = AgentsClient(rpc), SchedulerClient(rpc)
    first, last = infos[0], infos[-1]
    ended, _ = watch_agent(client, last.runtime, last.id)
    streams: list[tuple[str, defer.Deferred]] = []
    for name, out in (("stdout", sys.stdout.buffer), ("stderr", sys.stderr.buffer)):
        if name == "stdout" and not stdout:
            continue  # redirected to a OneOS file by the runtime
        where = yield agents.attach(last.runtime, last.id, name)
        streams.append(
            (
                f"{name} of {last.name} on {last.runtime}",
                receive(reactor, where.host, where.port, where.token, OutputSink(out), **where.options()),
            )
        )
    for info in infos[:-1]:  # earlier stages' stderr comes here too
        where = yield agents.attach(info.runtime, info.id, "stderr")
        streams.append(
            (
                f"stderr of {info.name} on {info.runtime}",
                receive(reactor, where.host, where.port, where.token, OutputSink(sys.stderr.buffer), **where.options()),
            )
        )
    if stdin:
        where = yield agents.stdin(first.runtime, first.id)
        source: Any = LocalSource(sys.stdin.buffer) if forward_stdin else _Empty()
        # A program that ends without reading all its input is not an error (a UNIX writer would get SIGPIPE).
        send(reactor, where.host, where.port, where.token, source, **where.options()).addErrback(lambda f: None)
    stopping: list[defer.Deferred] = []

    def stop_all(failure: Any) -> Any:
        # The first broken stream stops the program at once (the others then end with it).
        if not stopping:
            stopping.extend(scheduler.kill(info.id, grace=1.0).addErrback(lambda f: None) for info in infos)
        return failure

    for _, d in streams:
        d.addErrback(stop_all)
    results = yield defer.DeferredList([d for _, d in streams], consumeErrors=True)
    failures = [(what, value) for (what, _), (ok, value) in zip(streams, results, strict=False) if not ok]
    if failures:
        # Output that cannot arrive must not look like success: stop the program and say why.
        # (A local reader that stopped early is the one quiet case, as SIGPIPE is for a UNIX writer.)
        yield defer.DeferredList(stopping)
        if all(value.check(ReaderGone) for _, value in failures):
            return {"state": "killed", "signal": 13, "name": last.name, "runtime": last.runtime, "quiet": True}
        raise StreamLost("; ".join(f"{what}: {value.getErrorMessage()}" for what, value in failures))
    final = yield ended
    return final


@inline_callbacks
def pipe_device(rpc: Any, device: tuple[str, str], info: AgentInfo) -> Any:
    """Have the device's runtime send its stream into the program's stdin (bytes never pass here).

    A device that cannot be read (unknown, an output, failed, its runtime
    gone) stops the program and fails with one line naming the device.
    """
    from oneos.agents.client import AgentsClient
    from oneos.devices.client import DevicesClient
    from oneos.devices.errors import FAILED, DeviceError
    from oneos.scheduler.client import SchedulerClient

    runtime, name = device
    where = yield AgentsClient(rpc).stdin(info.runtime, info.id, source=f"{name}@{runtime}")
    try:
        yield DevicesClient(rpc).pipe_out(runtime, name, into=where, to=f"{info.name}@{info.runtime}")
    except Exception as e:
        yield SchedulerClient(rpc).kill(info.id, grace=1.0).addErrback(lambda f: None)
        raise DeviceError(f"/dev/{runtime}/{name}: {describe(e)}", getattr(e, "kind", FAILED)) from None


class StreamLost(OneOSError):
    """A stream between this command and the program broke (unreachable address, peer gone)."""


class _Empty:
    def next(self) -> defer.Deferred:
        from twisted.internet import defer

        return defer.succeed(b"")


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="oneos run",
        description=SUMMARY,
        epilog="pipeline: oneos run --pipe 'python3 gen.py @rt-1 | wc -c @rt-2' "
        "(@RUNTIME pins a stage, @tag:T needs a tag, @dev:NAME a device)",
    )
    parser.add_argument("--pubsub", help="broker URL (default: from $ONEOS_HOME/config.json)")
    parser.add_argument("--on", dest="runtime", help="run on this runtime")
    parser.add_argument("--tag", action="append", default=[], help="run on a runtime with this tag (repeatable)")
    parser.add_argument(
        "--near",
        action="append",
        default=[],
        metavar="DEVICE",
        help="run on a runtime with this device, ok (repeatable)",
    )
    parser.add_argument("--memory", type=int, default=0, help="memory limit for the program, MB")
    parser.add_argument(
        "--restart",
        choices=("no", "on-failure", "always"),
        default="no",
        help="on-failure: start it again when it fails (non-zero exit, signal) or its runtime dies; "
        "always: also after a clean exit; with back-off, and quarantined when it keeps failing "
        "(runs detached)",
    )
    parser.add_argument("--explain", action="store_true", help="show how the scheduler ranks runtimes; run nothing")
    parser.add_argument("--detach", "-d", action="store_true", help="start it and print its id; output is discarded")
    parser.add_argument("--pipe", metavar="PIPELINE", help="run a pipeline of stages, each placed separately")
    parser.add_argument("--stdout-file", metavar="PATH", help="write the program's output to this OneOS file")
    parser.add_argument("--append", action="store_true", help="with --stdout-file: append instead of replacing")
    parser.add_argument("--stdin-file", metavar="PATH", help="feed the program this OneOS file as input")
    parser.add_argument(
        "--stdin",
        dest="stdin_device",
        metavar="DEVICE",
        help="feed the program a device's stream (/dev/RUNTIME/NAME or RUNTIME/NAME), sent device to program",
    )
    parser.add_argument("program", nargs="?")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    from twisted.internet import defer

    from oneos.agents.info import EXITED, KILLED, OutputTarget, exit_status
    from oneos.cli.common import default_pubsub_url, network_rpc, run_with_client
    from oneos.scheduler.client import SchedulerClient, StageSpec

    if not args.pipe and not args.program:
        parser.error("give a PROGRAM or --pipe PIPELINE")
    device: tuple[str, str] | None = None
    if args.stdin_device:
        if args.stdin_file:
            parser.error("--stdin and --stdin-file: one input only")
        from oneos.devices.info import parse_device_address  # only now: the device code is ~6 ms of imports

        try:
            device = parse_device_address(args.stdin_device)
        except OneOSError as e:
            parser.error(str(e))
    stages: list[StageSpec] = []
    if args.pipe:
        from oneos.scheduler.pipeline import parse_pipeline

        stages = [
            StageSpec(s.program, s.args, s.runtime, s.tags, getpass.getuser(), near=s.near)
            for s in parse_pipeline(args.pipe)
        ]
    forward_stdin = not sys.stdin.isatty() and not args.stdin_file and device is None
    detached = args.detach or args.restart != "no"

    #: the programs this command started and waits for: stopped if a signal ends the command first
    running: list[Any] = []
    interrupted: list[bool] = []

    def stop_ours(scheduler: Any) -> Any:
        """Ctrl-C or SIGTERM while attached: stop the programs, as a shell stops its foreground job."""
        if not running:
            return None
        interrupted.append(True)  # what they end with is the interrupt's doing, not theirs: 130
        kills = [scheduler.kill(info.id, grace=1.0, timeout=5.0).addErrback(lambda f: None) for info in running]
        del running[:]
        return defer.DeferredList(kills)  # the reactor stops once they are asked (or could not be)

    @defer.inlineCallbacks
    def job(reactor: Any, client: Any) -> Any:
        rpc = yield network_rpc(reactor, client, default_timeout=15.0)
        scheduler = SchedulerClient(rpc)
        if not detached:
            reactor.addSystemEventTrigger("before", "shutdown", stop_ours, scheduler)
        if args.explain:
            text = yield scheduler.explain(
                args.program or stages[0].program,
                runtime=args.runtime,
                tags=args.tag,
                memory_mb=args.memory,
                near=args.near,
            )
            return ("text", text)
        if stages:
            infos = yield scheduler.pipeline(stages)
        else:
            stdout = OutputTarget.discard() if detached else OutputTarget.attach()
            if args.stdout_file:
                stdout = OutputTarget.file(args.stdout_file, append=args.append)
            info = yield scheduler.spawn(
                args.program,
                args.args,
                runtime=args.runtime,
                tags=args.tag,
                memory_mb=args.memory,
                restart=args.restart,
                stdout=stdout,
                user=getpass.getuser(),
                stdin=not detached or device is not None,
                stdin_file=args.stdin_file,
                near=args.near,
            )
            infos = [info]
        if device is not None:
            yield pipe_device(rpc, device, infos[0])
        if detached:
            return ("text", "\n".join(f"{i.id} on {i.runtime}" for i in infos))
        running.extend(infos)
        final = yield attach(
            reactor,
            client,
            rpc,
            infos,
            forward_stdin,
            stdout=not args.stdout_file,
            stdin=not args.stdin_file and device is None,
        )
        del running[:]  # ended by themselves
        return ("status", final)

    kind, value = run_with_client(args.pubsub or default_pubsub_url(), job)
    if interrupted:
        raise KeyboardInterrupt
    if kind == "text":
        print(value)
        return 0
    if value.get("quiet"):
        return exit_status(value)  # 128 + SIGPIPE, nothing to say: the reader wanted no more
    if value["state"] not in (EXITED, KILLED) or value.get("reason"):
        print(
            f"oneos run: {value['name']} on {value['runtime']} {value['state']}"
            + (f": {value['reason']}" if value.get("reason") else ""),
            file=sys.stderr,
        )
    return exit_status(value)
