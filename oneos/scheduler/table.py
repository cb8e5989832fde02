"""The scheduler's answers as text: the process table (``ps``), the pipes (``pipes``), a control's outcome.

Pure functions of the rows the scheduler's RPC methods return, shared by
``oneos ps`` / ``oneos pipes`` and the shell's built-ins of the same names.
"""

from __future__ import annotations

from collections.abc import Sequence

from oneos.agents.info import AgentInfo, PipeInfo


def format_ps(rows: Sequence[AgentInfo]) -> str:
    """The process table as text."""
    header = ("ID", "USER", "NAME", "RUNTIME", "STATE", "CPU%", "MEM MB", "UPTIME", "EXIT")
    table = [header]
    for r in rows:
        exit_text = (
            ""
            if r.exit_code is None and r.signal is None
            else (f"sig {r.signal}" if r.signal is not None else str(r.exit_code))
        )
        table.append(
            (
                r.id,
                r.user or "-",
                r.name,
                r.runtime,
                r.state,
                f"{r.cpu_percent:.0f}",
                f"{r.memory_mb:.0f}",
                f"{r.uptime:.0f}s",
                exit_text,
            )
        )
    return _columns(table)


def format_pipes(rows: Sequence[PipeInfo]) -> str:
    """The pipes between agents as text: from, to, state, bytes carried, average rate."""
    header = ("FROM", "TO", "STATE", "BYTES", "MB/s")
    table = [header] + [(r.source, r.target, r.state, str(r.bytes), f"{r.mb_per_s:.1f}") for r in rows]
    return _columns(table)


def format_control(info: AgentInfo) -> str:
    """What ``kill``, ``pause`` and ``resume`` print: the agent's full id and the state it is in now.

    The full id, because the command may have named it by a prefix.
    """
    return f"{info.id} {info.state}"


def _columns(table: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in table)
