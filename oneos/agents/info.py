"""What an agent's status record means to whoever started it.

The record is the ``agent.status`` body its runtime keeps retained (what
``spawn`` returns, what :func:`oneos.agents.watch.watch_agent` fires with
once the agent ended): ``state``, ``exit_code``, ``signal``, ``reason`` ...
"""

from __future__ import annotations

from typing import Any

from oneos.agents.manager import EXITED, KILLED


def exit_status(info: dict[str, Any]) -> int:
    """The shell-style status for an ended agent: its exit code, 128+N when killed by signal N, else 1."""
    if info["state"] == EXITED:
        return int(info.get("exit_code") or 0)
    if info["state"] == KILLED and info.get("signal"):
        return 128 + int(info["signal"])
    return 1
