"""Built-ins on jobs and programs: ps, kill, pause, resume, jobs, fg, runtimes, pipes.

Programs are agents anywhere in the network: ``ps``, ``kill``, ``pause``,
``resume`` and ``pipes`` ask the scheduler, ``runtimes`` the kernel.  Jobs
are this session's background and-or lists (``&``); ``%N`` names the
agents job N started.
"""

from __future__ import annotations

from oneos.errors import OneOSError, describe
from oneos.runtime.client import KernelClient
from oneos.scheduler.client import SchedulerClient
from oneos.scheduler.table import format_control, format_pipes, format_ps
from oneos.shell.builtins.context import Builtin, Context
from oneos.shell.builtins.options import BadUsage, split_options
from oneos.shell.errors import UsageError
from oneos.shell.session import Job


async def ps(ctx: Context, args: list[str]) -> int:
    opts, _ = split_options(args, "a")
    rows = await SchedulerClient(ctx.grid.rpc, timeout=10.0).ps(all=bool(opts.get("a")))
    ctx.line(format_ps(rows))
    return 0


def _control(method: str) -> Builtin:
    async def control(ctx: Context, args: list[str]) -> int:
        if not args:
            raise BadUsage("missing agent id (see 'ps')")  # (status 2, as bash's kill without operands)
        status = 0
        for agent_id in args:
            if agent_id.startswith("%"):  # a job: every agent it started
                job = _job(ctx, agent_id)
                ids = [a.id for a in job.agents]
            else:
                ids = [agent_id]
            for i in ids:
                try:
                    scheduler = SchedulerClient(ctx.grid.rpc, timeout=10.0)
                    # an id may be a prefix of one (the scheduler resolves it); kill waits for the end,
                    # so the line says the state the agent ended in, not the 'running' of the signal's moment
                    extra = {"wait": True} if method == "kill" else {}
                    info = await getattr(scheduler, method)(i, user=ctx.session.user, **extra)
                    ctx.line(format_control(info))
                except OneOSError as e:
                    ctx.error(describe(e))
                    status = 1
        return status

    return control


kill = _control("kill")
pause = _control("pause")
resume = _control("resume")


async def runtimes(ctx: Context, args: list[str]) -> int:
    rows = await KernelClient(ctx.grid.rpc, timeout=10.0).runtimes()
    header = ("ID", "STATE", "LEADER", "ADDRESS", "CPU%", "MEM MB", "AGENTS", "TAGS")
    table = [header]
    for r in sorted(rows, key=lambda r: r.id):
        table.append(
            (
                r.id,
                r.state,
                "*" if r.leader else "",
                r.address,
                f"{r.cpu_percent:.0f}",
                f"{r.memory_used_mb:.0f}",
                str(r.agents),
                ",".join(r.tags),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    ctx.line("\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in table))
    return 0


async def pipes(ctx: Context, args: list[str]) -> int:
    rows = await SchedulerClient(ctx.grid.rpc, timeout=10.0).pipes()
    ctx.line(format_pipes(rows))
    return 0


def _job(ctx: Context, spec: str | None) -> Job:
    jobs = ctx.session.jobs
    if not jobs:
        raise UsageError("no jobs")
    if spec is None:
        return jobs[max(jobs)]
    try:
        n = int(spec.lstrip("%"))
    except ValueError:
        raise UsageError(f"{spec!r} is not a job number") from None
    if n not in jobs:
        raise UsageError(f"no job {n}")
    return jobs[n]


async def jobs(ctx: Context, args: list[str]) -> int:
    for n, job in sorted(ctx.session.jobs.items()):
        state = "running" if job.status is None else f"done ({job.status})"
        agents = " ".join(a.id for a in job.agents)
        ctx.line(f"[{n}] {state:<10} {job.text}" + (f"   agents: {agents}" if agents else ""))
    for n in [n for n, j in ctx.session.jobs.items() if j.status is not None]:
        ctx.session.jobs.pop(n, None)
    return 0


async def fg(ctx: Context, args: list[str]) -> int:
    job = _job(ctx, args[0] if args else None)
    ctx.line(job.text)
    return await ctx.shell.wait_job(job)
