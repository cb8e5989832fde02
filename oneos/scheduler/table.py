"""The scheduler's tables as text: the process table (``ps``) and the pipes between agents (``pipes``).

Pure functions of the rows the scheduler's RPC methods return, shared by
``oneos ps`` / ``oneos pipes`` and the shell's built-ins of the same names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_ps(rows: list[dict[str, Any]]) -> str:
    """The process table as text."""
    header = ("ID", "USER", "NAME", "RUNTIME", "STATE", "CPU%", "MEM MB", "UPTIME", "EXIT")
    table = [header]
    for r in rows:
        exit_text = (
            ""
            if r.get("exit_code") is None and r.get("signal") is None
            else (f"sig {r['signal']}" if r.get("signal") is not None else str(r["exit_code"]))
        )
        table.append(
            (
                r["id"],
                str(r.get("user") or "-"),
                str(r.get("name", "")),
                r["runtime"],
                r["state"],
                f"{r.get('cpu_percent', 0):.0f}",
                f"{r.get('memory_mb', 0):.0f}",
                f"{r.get('uptime', 0):.0f}s",
                exit_text,
            )
        )
    return _columns(table)


def format_pipes(rows: list[dict[str, Any]]) -> str:
    """The pipes between agents as text: from, to, state, bytes carried, average rate."""
    header = ("FROM", "TO", "STATE", "BYTES", "MB/s")
    table = [header] + [(r["from"], r["to"], r["state"], str(r["bytes"]), f"{r['mb_per_s']:.1f}") for r in rows]
    return _columns(table)


def _columns(table: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in table)
