"""``oneos status``: a table of the runtimes in the network.

The statuses are read without Twisted (oneos/cli/statusreader.py: a
blocking socket and the pure MQTT codec), so the command starts in tens of
milliseconds; :func:`collect` is the same read for a command that already
runs a Twisted client (``oneos devices``).  The status code is imported
inside the functions, so ``oneos status --help`` answers at once
(oneos/cli/main.py).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oneos.pubsub.client import Message
    from oneos.runtime.status import RuntimeStatus

SUMMARY = "show the runtimes in the network: id, address, leader, live/dead, CPU, memory, agents, devices"

#: A status not refreshed for this many intervals is shown dead.
STALE_INTERVALS = 3


def judged_state(status: RuntimeStatus, now: float) -> str:
    """The state to show: 'alive' only if it was refreshed recently."""
    from oneos.runtime.status import ALIVE, DEAD

    if status.state == ALIVE and now - status.updated_at > max(STALE_INTERVALS * status.interval, 3.0):
        return DEAD
    return status.state


def devices_cell(status: RuntimeStatus) -> str:
    """How many devices a runtime serves, and how many failed ('oneos devices' lists them)."""
    failed = sum(1 for d in status.devices if d.state != "ok")
    return f"{len(status.devices)} ({failed} failed)" if failed else str(len(status.devices))


def format_table(statuses: list[RuntimeStatus], now: float) -> str:
    """Render the runtime table (pure, for tests)."""
    from oneos.runtime.status import ALIVE

    header = (
        "ID",
        "ADDRESS",
        "STREAMS",
        "SSH",
        "DESKTOP",
        "PID",
        "ROLE",
        "STATE",
        "CPU%",
        "MEMORY (used/limit MB)",
        "AGENTS",
        "DEVICES",
    )
    rows = [header]
    for s in sorted(statuses, key=lambda s: (judged_state(s, now) != ALIVE, s.id)):
        state = judged_state(s, now)
        alive = state == ALIVE
        role = "leader" if s.leader and alive else "kernel" if s.kernel else "-"
        if s.fs_serving and alive:
            role += ",fs"
        memory = f"{s.rss_mb:.0f}/{s.memory_limit_mb}" if alive else "-"
        rows.append(
            (
                s.id,
                s.address or "-",
                s.stream or "-",
                s.ssh or "-",
                s.desktop or "-",
                str(s.pid or "-"),
                role,
                state,
                f"{s.cpu_percent:.0f}" if alive else "-",
                memory,
                str(s.agents) if alive else "-",
                devices_cell(s) if alive else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    live = sum(1 for s in statuses if judged_state(s, now) == ALIVE)
    leaders = [s.id for s in statuses if s.leader and judged_state(s, now) == ALIVE]
    lines.append("")
    lines.append(f"{live} live runtime(s); kernel leader: {', '.join(leaders) or 'none'}")
    return "\n".join(lines)


def collect(reactor: Any, client: Any) -> Any:
    """Subscribe to every runtime's retained status and wait until all arrived."""
    from oneos.pubsub import topics
    from oneos.pubsub.messages import MalformedMessage
    from oneos.runtime.status import RuntimeStatus

    seen: dict[str, RuntimeStatus] = {}

    def on_status(message: Message) -> None:
        rid = topics.runtime_from_status_topic(message.topic)
        if rid is None or not message.payload:
            return
        try:
            status = RuntimeStatus.decode(message.payload)
        except MalformedMessage:
            return
        seen[rid] = status

    d = client.subscribe(topics.ALL_STATUS, on_status)
    d.addCallback(lambda _: client.barrier())
    d.addCallback(lambda _: list(seen.values()))
    return d


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="oneos status", description=SUMMARY)
    parser.add_argument(
        "--pubsub", help="broker URL (default: from $ONEOS_HOME/config.json, else mqtt://127.0.0.1:1883)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--live", action="store_true", help="show live runtimes only")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the broker (default 5)")
    args = parser.parse_args(argv)
    import json
    import time
    from dataclasses import asdict

    from oneos.cli.common import default_pubsub_url
    from oneos.cli.statusreader import statuses_at
    from oneos.runtime.status import ALIVE

    url = args.pubsub or default_pubsub_url()
    # Without Twisted (oneos/cli/statusreader.py): the same packets as collect() over run_with_client,
    # without its ~170 ms of imports.
    statuses: list[RuntimeStatus] = statuses_at(url, args.timeout)
    now = time.time()
    if args.live:
        statuses = [s for s in statuses if judged_state(s, now) == ALIVE]
    if args.json:
        out = []
        for s in sorted(statuses, key=lambda s: s.id):
            d = asdict(s)
            d["state"] = judged_state(s, now)
            out.append(d)
        print(json.dumps(out, indent=2))
    else:
        print(format_table(statuses, now) if statuses else f"no runtimes have reported to {url}")
    return 0
