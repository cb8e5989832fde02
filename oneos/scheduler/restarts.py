"""Restart policy: whether, and when, a job's next incarnation starts (pure, no I/O).

Like Kubernetes' CrashLoopBackOff and Nomad's restart stanza: ``no``,
``on-failure`` (a non-zero exit, a signal, or a runtime that died with it)
and ``always`` (any end but a user's kill); exponential back-off from
``base`` doubling to ``cap``; at most ``max_attempts`` restarts within
``window`` seconds; and a program whose runtime died with it
``max_runtime_deaths`` times within the window is quarantined, since it is
probably what kills runtimes (starting it elsewhere would take that one
down too).

The bookkeeping (``history``) travels with the agent's spec and status, so a
new leader continues where the old one stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXITED_OK, FAILED, LOST, USER_KILLED = "exited-ok", "failed", "lost", "user-killed"
#: the reason the scheduler gives an agent it stops on a user's request (no restart follows)
USER_KILL_REASON = "killed by user"


@dataclass(frozen=True)
class RestartPolicy:
    base: float = 1.0
    cap: float = 300.0
    max_attempts: int = 10
    window: float = 600.0
    max_runtime_deaths: int = 3
    #: how long a runtime may be unreachable before its agents are started elsewhere (Nomad's max_client_disconnect)
    disconnect_grace: float = 10.0


@dataclass(frozen=True)
class Decision:
    restart: bool
    delay: float = 0.0
    history: dict[str, Any] | None = None
    #: why not, when the job is quarantined (shown in ``oneos ps``)
    quarantined: str = ""


def outcome_of(status: dict[str, Any]) -> str:
    """How an agent ended, as the policy sees it."""
    state = status.get("state")
    if state == "lost":
        return LOST
    if state == "killed" and str(status.get("reason") or "").startswith(USER_KILL_REASON):
        return USER_KILLED
    if state == "exited" and not status.get("exit_code"):
        return EXITED_OK
    return FAILED


def decide(policy: RestartPolicy, mode: str, outcome: str, history: dict[str, Any] | None, now: float) -> Decision:
    """Restart the job after an incarnation ended with *outcome*?  With what back-off?"""
    if mode not in ("on-failure", "always") or outcome == USER_KILLED:
        return Decision(False)
    if mode == "on-failure" and outcome == EXITED_OK:
        return Decision(False)
    h = dict(history or {})
    if now - float(h.get("window_start", now)) > policy.window:
        h = {}
    h.setdefault("window_start", now)
    h["attempts"] = int(h.get("attempts", 0)) + 1
    if outcome == LOST:
        h["runtime_deaths"] = int(h.get("runtime_deaths", 0)) + 1
    if int(h.get("runtime_deaths", 0)) >= policy.max_runtime_deaths:
        return Decision(
            False,
            history=h,
            quarantined=(f"quarantined: its runtime died with it {h['runtime_deaths']} times in {policy.window:g}s"),
        )
    if h["attempts"] > policy.max_attempts:
        return Decision(
            False, history=h, quarantined=(f"quarantined: ended {h['attempts']} times in {policy.window:g}s")
        )
    delay = min(policy.cap, policy.base * 2 ** (h["attempts"] - 1))
    if outcome == EXITED_OK:
        delay = policy.base  # 'always' restarts a clean exit without growing the back-off much
    return Decision(True, delay=delay, history=h)
