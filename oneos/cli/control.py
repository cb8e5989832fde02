"""``oneos ps``, ``oneos kill``, ``oneos pause``, ``oneos resume``: the grid-wide process table."""

from __future__ import annotations

import argparse
import json
from typing import Any

from oneos.cli.common import default_pubsub_url, network_rpc, run_with_client
from oneos.scheduler.client import SchedulerClient
from oneos.scheduler.table import format_pipes, format_ps

SUMMARIES = {
    "pipes": "list pipes between agents with the bytes they carried and their rate",
    "ps": "list agents (programs) running anywhere in the network",
    "kill": "stop an agent (SIGTERM, then SIGKILL after a grace period)",
    "pause": "pause an agent (SIGSTOP)",
    "resume": "resume a paused agent (SIGCONT)",
}


def scheduler_call(url: str, method: str, timeout: float = 10.0, **args: Any) -> Any:
    """One call to the scheduler kernel service: *method* of :class:`SchedulerClient`, with *args*."""

    def job(reactor: Any, client: Any) -> Any:
        d = network_rpc(reactor, client)
        return d.addCallback(lambda rpc: getattr(SchedulerClient(rpc, timeout=timeout), method)(**args))

    return run_with_client(url, job, timeout=timeout)


def _parser(name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"oneos {name}", description=SUMMARIES[name])
    parser.add_argument("--pubsub", help="broker URL (default: from $ONEOS_HOME/config.json)")
    return parser


def ps(argv: list[str]) -> int:
    parser = _parser("ps")
    parser.add_argument("-a", "--all", action="store_true", help="include agents that ended recently")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = scheduler_call(args.pubsub or default_pubsub_url(), "ps", all=args.all)
    print(json.dumps([r.encode() for r in rows], indent=2) if args.json else format_ps(rows))
    return 0


def pipes(argv: list[str]) -> int:
    parser = _parser("pipes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = scheduler_call(args.pubsub or default_pubsub_url(), "pipes")
    print(json.dumps([r.encode() for r in rows], indent=2) if args.json else format_pipes(rows))
    return 0


def _control(name: str, argv: list[str]) -> int:
    parser = _parser(name)
    parser.add_argument("agent_id")
    if name == "kill":
        parser.add_argument("--grace", type=float, default=None, help="seconds between SIGTERM and SIGKILL (default 5)")
    args = parser.parse_args(argv)
    extra = {"grace": args.grace} if name == "kill" else {}
    info = scheduler_call(args.pubsub or default_pubsub_url(), name, agent_id=args.agent_id, **extra)
    print(f"{info.id} on {info.runtime}: {info.state}")
    return 0


def kill(argv: list[str]) -> int:
    return _control("kill", argv)


def pause(argv: list[str]) -> int:
    return _control("pause", argv)


def resume(argv: list[str]) -> int:
    return _control("resume", argv)
