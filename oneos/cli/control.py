"""``oneos ps``, ``oneos pipes``, ``oneos kill``, ``oneos pause``, ``oneos resume``: the grid-wide process table.

The scheduler's client and tables are imported inside the functions, so
``oneos ps --help`` answers without loading Twisted (oneos/cli/main.py).
Options may follow the arguments (``oneos kill a1b2 --grace 2``,
``oneos ps --json``): each command parses intermixed arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from oneos.cli.common import default_pubsub_url, network_rpc, run_with_client

SUMMARIES = {
    "pipes": "list pipes between agents with the bytes they carried and their rate",
    "ps": "list agents (programs) running anywhere in the network",
    "kill": "stop an agent (SIGTERM, then SIGKILL after a grace period)",
    "pause": "pause an agent (SIGSTOP)",
    "resume": "resume a paused agent (SIGCONT)",
}


def scheduler_call(url: str, method: str, timeout: float = 10.0, **args: Any) -> Any:
    """One call to the scheduler kernel service: *method* of :class:`SchedulerClient`, with *args*."""
    from oneos.scheduler.client import SchedulerClient

    def job(reactor: Any, client: Any) -> Any:
        d = network_rpc(reactor, client)
        return d.addCallback(lambda rpc: getattr(SchedulerClient(rpc, timeout=timeout), method)(**args))

    return run_with_client(url, job, timeout=timeout)


def parser_for(name: str) -> argparse.ArgumentParser:
    """The options of ``oneos NAME`` (ps, pipes, kill, pause, resume); parse with ``parse_intermixed_args``."""
    parser = argparse.ArgumentParser(prog=f"oneos {name}", description=SUMMARIES[name])
    parser.add_argument("--pubsub", help="broker URL (default: from $ONEOS_HOME/config.json)")
    if name == "ps":
        parser.add_argument("-a", "--all", action="store_true", help="include agents that ended recently")
    if name in ("ps", "pipes"):
        parser.add_argument("--json", action="store_true")
    if name in ("kill", "pause", "resume"):
        parser.add_argument("agent_ids", nargs="+", metavar="ID", help="an agent id, or a prefix of one")
    if name == "kill":
        parser.add_argument("--grace", type=float, default=None, help="seconds between SIGTERM and SIGKILL (default 5)")
    return parser


def ps(argv: list[str]) -> int:
    from oneos.scheduler.table import format_ps

    args = parser_for("ps").parse_intermixed_args(argv)
    rows = scheduler_call(args.pubsub or default_pubsub_url(), "ps", all=args.all)
    print(json.dumps([r.encode() for r in rows], indent=2) if args.json else format_ps(rows))
    return 0


def pipes(argv: list[str]) -> int:
    from oneos.scheduler.table import format_pipes

    args = parser_for("pipes").parse_intermixed_args(argv)
    rows = scheduler_call(args.pubsub or default_pubsub_url(), "pipes")
    print(json.dumps([r.encode() for r in rows], indent=2) if args.json else format_pipes(rows))
    return 0


def _control(name: str, argv: list[str]) -> int:
    """``oneos kill|pause|resume ID...``: prints ``ID STATE`` for each, the state the agent is in afterwards.

    An ID may be a prefix that only one agent's id starts with (the
    scheduler resolves it, so every front end agrees); ``kill`` waits for
    the agent to end, so it prints ``killed`` (or ``exited``, for a program
    that caught SIGTERM and exited) rather than the ``running`` of the
    moment the signal left.  One that fails is a line on stderr and status
    1; the others are still done.
    """
    from oneos.errors import OneOSError, describe
    from oneos.scheduler.client import SchedulerClient
    from oneos.scheduler.table import format_control

    args = parser_for(name).parse_intermixed_args(argv)
    extra = {"grace": args.grace, "wait": True} if name == "kill" else {}
    lines: list[tuple[bool, str]] = []

    async def each(scheduler: Any) -> None:
        for agent_id in args.agent_ids:
            try:
                info = await getattr(scheduler, name)(agent_id, **extra)
            except OneOSError as e:
                lines.append((False, f"oneos {name}: {describe(e)}"))
            else:
                lines.append((True, format_control(info)))

    def job(reactor: Any, client: Any) -> Any:
        from twisted.internet import defer

        d = network_rpc(reactor, client)
        return d.addCallback(lambda rpc: defer.ensureDeferred(each(SchedulerClient(rpc, timeout=10.0))))

    run_with_client(args.pubsub or default_pubsub_url(), job, timeout=10.0)
    for ok, line in lines:
        print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if all(ok for ok, _ in lines) else 1


def kill(argv: list[str]) -> int:
    return _control("kill", argv)


def pause(argv: list[str]) -> int:
    return _control("pause", argv)


def resume(argv: list[str]) -> int:
    return _control("resume", argv)
