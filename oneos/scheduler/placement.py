"""Placement: pure scoring of runtimes for an agent, with an explanation.

No I/O: given the live runtimes' statuses and what the agent needs, rank the
runtimes and say why each was or was not chosen.  The scheduler service
feeds it the membership view; tests feed it hand-made statuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oneos.errors import OneOSError, register_error
from oneos.runtime.status import RuntimeStatus


class NoFittingRuntime(OneOSError):
    """No live runtime satisfies the agent's constraints."""

    kind = "ENORUNTIME"
    code = "ENORUNTIME"


register_error(NoFittingRuntime.code, NoFittingRuntime)


@dataclass(frozen=True)
class Needs:
    """What an agent asks of the runtime it runs on."""

    interpreter: str | None = None
    runtime: str | None = None  # a named runtime ("@rt-2")
    tags: tuple[str, ...] = ()  # every tag must be present ("@tag:gpu")
    exclude: tuple[str, ...] = ()  # runtimes not to use (e.g. the one that just died)
    memory_mb: int = 0
    near: tuple[str, ...] = ()  # devices the runtime must have, each in state ok ("@dev:cam0")


@dataclass(frozen=True)
class Verdict:
    """One runtime's outcome: a score if it fits, else the reason it does not."""

    runtime: str
    fits: bool
    score: float = 0.0
    reasons: tuple[str, ...] = field(default_factory=tuple)


#: Weights of the score's parts, each part in 0..1 (higher is better).
WEIGHTS = {"cpu": 0.4, "memory": 0.4, "agents": 0.2}


def judge(status: RuntimeStatus, needs: Needs) -> Verdict:
    """Score one runtime for *needs*, or say why it is unfit."""
    rid = status.id
    if not status.alive:
        return Verdict(rid, False, reasons=(f"{status.state}",))
    if needs.runtime is not None and rid != needs.runtime:
        return Verdict(rid, False, reasons=(f"not the requested runtime {needs.runtime}",))
    if rid in needs.exclude:
        return Verdict(rid, False, reasons=("excluded",))
    missing = [t for t in needs.tags if t not in status.tags]
    if missing:
        return Verdict(rid, False, reasons=(f"lacks tag {', '.join(missing)}",))
    near = _near(status, needs.near)
    if near:
        return Verdict(rid, False, reasons=near)
    if needs.interpreter and needs.interpreter not in status.interpreters:
        return Verdict(rid, False, reasons=(f"has no {needs.interpreter}",))
    free_mb = max(0.0, status.memory_limit_mb - status.agents_memory_mb)
    if needs.memory_mb and needs.memory_mb > free_mb:
        return Verdict(rid, False, reasons=(f"needs {needs.memory_mb} MB, {free_mb:.0f} MB free",))
    cpu = max(0.0, 1.0 - status.cpu_percent / 100.0)
    if status.memory_total_mb > 0:
        memory = max(0.0, 1.0 - status.memory_used_mb / status.memory_total_mb)
    else:
        memory = 0.5
    agents = 1.0 / (1.0 + status.agents)
    score = WEIGHTS["cpu"] * cpu + WEIGHTS["memory"] * memory + WEIGHTS["agents"] * agents
    reasons = tuple(f"has device {name}" for name in needs.near) + (
        f"cpu idle {cpu * 100:.0f}%",
        f"memory free {memory * 100:.0f}%",
        f"{status.agents} agents",
    )
    return Verdict(rid, True, round(score, 4), reasons)


def _near(status: RuntimeStatus, names: tuple[str, ...]) -> tuple[str, ...]:
    """Why *status* lacks the devices *names* (each must be there and ok); () when it has them all."""
    devices = {d.name: d for d in status.devices}
    why = []
    for name in names:
        device = devices.get(name)
        if device is None:
            why.append(f"no device {name}")
        elif device.state != "ok":
            why.append(f"device {name} {device.state}" + (f": {device.reason}" if device.reason else ""))
    return tuple(why)


def rank(statuses: list[RuntimeStatus], needs: Needs) -> list[Verdict]:
    """Every runtime judged, best fit first, unfit last (ties broken by id)."""
    verdicts = [judge(s, needs) for s in statuses]
    return sorted(verdicts, key=lambda v: (not v.fits, -v.score, v.runtime))


def place(statuses: list[RuntimeStatus], needs: Needs) -> Verdict:
    """The chosen runtime, or :class:`NoFittingRuntime` explaining every refusal."""
    ranked = rank(statuses, needs)
    if ranked and ranked[0].fits:
        return ranked[0]
    if not ranked:
        raise NoFittingRuntime("no live runtime in the network")
    why = "; ".join(f"{v.runtime}: {', '.join(v.reasons)}" for v in ranked)
    if needs.near and not any(s.alive and not _near(s, needs.near) for s in statuses):
        raise NoFittingRuntime(f"no live runtime has device {', '.join(needs.near)} ready ({why})")
    raise NoFittingRuntime(f"no runtime fits ({why})")


def explain(statuses: list[RuntimeStatus], needs: Needs) -> str:
    """A readable table of the ranking, for ``oneos run --explain``."""
    lines = []
    for i, v in enumerate(rank(statuses, needs)):
        mark = "->" if i == 0 and v.fits else "  "
        verdict = f"score {v.score:.3f}" if v.fits else "unfit"
        lines.append(f"{mark} {v.runtime:<20} {verdict:<12} {', '.join(v.reasons)}")
    return "\n".join(lines)
