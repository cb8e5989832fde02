#!/usr/bin/env python3
"""Membership traffic of an idle network: statuses on change plus a heartbeat, beside a status every sample.

Every runtime keeps a retained status that reaches every other runtime, so
what a runtime publishes costs N deliveries.  The baseline is the old wire
behaviour, ``Membership.mode = "periodic"``: every runtime publishes its
status every sample (``stats_interval``, 2 s), N statuses and N² deliveries
per interval.  It is compared with ``mode = "on-change"`` (the default): a
status goes out when a field other than the load figures changed or a load
figure moved by more than ``LOAD_POINTS`` points, and at least every
``HEARTBEAT_SAMPLES`` samples (doubled in a network of more than
``NETWORK_HEARTBEATS`` x heartbeat runtimes, so the network's heartbeats
stay near ``NETWORK_HEARTBEATS`` a second).

Everything runs in this process on the cluster harness
(:mod:`oneos.testing.cluster`): real RuntimeServices on the in-memory MQTT
broker, an in-memory network and one simulated clock.  Each runtime's CPU
and memory figures come from a seeded random walk instead of psutil (CPU
moves by up to ±2 points a sample, clamped to 0..100; memory steady with a
little noise), so a run is deterministic and models an idle network: the
load rarely moves enough to be a change.

For each N (``--sizes``, default 50,100 and 200) and each mode, a fresh
cluster:

* convergence: simulated seconds from starting the N runtimes (already
  built: building them is the harness's work, not counted) until everyone
  sees everyone and one leader, and the process CPU and wall seconds that
  took;
* an idle window of ``--idle`` simulated seconds (default 60) after that:
  messages published on the broker per simulated second (on an idle network
  these are the statuses and nothing else), deliveries per second, per
  runtime per second, and the process CPU seconds per simulated second (what
  the whole simulated network costs one core; most of it is every runtime
  receiving every status).

``--big`` adds N=1000 in "on-change" mode only; its published/s is compared
with N/interval, what "periodic" publishes by definition.  Running
"periodic" at 1000 (500 statuses and 500,000 deliveries a simulated second)
takes far too long: about 4.5 times on-change's CPU per simulated second at
200, so roughly half an hour for the idle window alone.

    .venv/bin/python benchmarks/bench_membership_sim.py [--sizes 50,100,200] [--idle 60] [--big]

Measured on a 2-core machine: the default run takes about 100 s of wall
time (200 runtimes: ~5 s to converge, 0.8 CPU s per simulated second idle
in periodic mode).  ``--big`` adds about 8.5 minutes (1000 runtimes: ~2.5
minutes to converge, ~6 CPU s per simulated second idle, ~3 GB of memory);
a shorter ``--idle`` shortens it.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from oneos.runtime import membership
from oneos.runtime.host import HostSample
from oneos.testing.bench import interrupt_on_signals, load_average  # noqa: E402
from oneos.testing.cluster import Cluster, ClusterTimeout

MODES: tuple[membership.Mode, ...] = ("periodic", "on-change")
BIG = 1000
#: how much simulated time convergence may take before the run gives up
CONVERGE_TIMEOUT = 60.0
#: seconds between status samples (the harness's and a runtime's default)
INTERVAL = 2.0


class IdleWalk:
    """A host's CPU and memory figures for an idle machine: a seeded random walk (``sample()`` as HostStats).

    CPU moves by up to ±2 points per sample, clamped to 0..100; memory used and
    the runtime's RSS stay at their level with a little noise (far below a
    point of the machine's memory).
    """

    TOTAL_MB = 4096.0

    def __init__(self, seed: str) -> None:
        self.rng = random.Random(seed)
        self.cpu = self.rng.uniform(3.0, 20.0)
        self.memory = self.rng.uniform(800.0, 1600.0)
        self.rss = self.rng.uniform(50.0, 80.0)

    def sample(self) -> HostSample:
        self.cpu = min(100.0, max(0.0, self.cpu + self.rng.uniform(-2.0, 2.0)))
        return {
            "cpu_percent": round(self.cpu, 1),
            "memory_used_mb": round(self.memory + self.rng.gauss(0.0, 2.0), 1),
            "memory_total_mb": self.TOTAL_MB,
            "rss_mb": round(self.rss + self.rng.gauss(0.0, 0.3), 1),
        }


@dataclass
class Row:
    """One N and mode: convergence, then the idle window."""

    n: int
    mode: membership.Mode
    converge_sim: float
    converge_cpu: float
    converge_wall: float
    published: float  # per simulated second
    delivered: float  # per simulated second
    cpu_per_sim: float  # process CPU seconds per simulated second
    still_converged: bool
    #: the Membership had a ``mode`` attribute before we set it (False: the mode was not honoured)
    has_mode: bool


def measure(root: Path, n: int, mode: membership.Mode, idle: float, seed: int) -> Row:
    """Build a cluster of *n* runtimes in *mode*, converge it, then watch it idle for *idle* simulated seconds."""
    cluster = Cluster(root, seed=seed, stats_interval=INTERVAL)
    try:
        runtimes = cluster.add_runtimes(n, start=False)
        walks: dict[str, IdleWalk] = {}
        has_mode = all(hasattr(r.service.membership, "mode") for r in runtimes)
        for runtime in runtimes:
            svc = runtime.service
            walks[runtime.id] = IdleWalk(f"{seed}:{runtime.id}")
            svc._stats = walks[runtime.id]
            svc.membership.mode = mode  # a plain attribute, read at every sample
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for runtime in runtimes:
            cluster.start(runtime.id)
            # a RuntimeService that makes its own HostStats at start ignores a sampler given before: give it again
            if runtime.service._stats is not walks[runtime.id]:
                runtime.service._stats = walks[runtime.id]
        took = cluster.run_until(cluster.converged, timeout=CONVERGE_TIMEOUT, what=f"{n} runtimes ({mode}) converge")
        cpu1, wall1 = time.process_time(), time.perf_counter()
        published, delivered = cluster.broker.published, cluster.broker.delivered
        cluster.run(idle)
        cpu2 = time.process_time()
        still = cluster.converged()
        if cluster.errors or cluster.fatal:
            raise BenchError(
                f"{n} runtimes ({mode}): {len(cluster.errors)} errors inside the simulation, "
                f"{len(cluster.fatal)} runtimes gave up\n" + "\n".join(f.getTraceback() for f in cluster.errors[:3])
            )
        return Row(
            n=n,
            mode=mode,
            converge_sim=took,
            converge_cpu=cpu1 - cpu0,
            converge_wall=wall1 - wall0,
            published=(cluster.broker.published - published) / idle,
            delivered=(cluster.broker.delivered - delivered) / idle,
            cpu_per_sim=(cpu2 - cpu1) / idle,
            still_converged=still,
            has_mode=has_mode,
        )
    finally:
        cluster.close()
        del cluster
        gc.collect()


class BenchError(Exception):
    """The simulation went wrong (a runtime's code raised, a runtime gave up): the figures mean nothing."""


HEADER = (
    f"{'N':>5}  {'mode':<10}{'converge':>10}{'CPU to':>9}{'wall to':>9}{'published':>11}{'delivered':>11}"
    f"{'per runtime':>13}{'CPU per':>9}{'published':>13}"
)
HEADER2 = (
    f"{'':>5}  {'':<10}{'(sim s)':>10}{'conv. s':>9}{'conv. s':>9}{'/sim s':>11}{'/sim s':>11}"
    f"{'deliv./sim s':>13}{'sim s':>9}{'vs periodic':>13}"
)


def format_row(row: Row, baseline: Row | None) -> str:
    """A table line; on-change rows carry their published/s as a fraction of periodic's (the baseline),
    or, with no periodic row for that N, of N/interval (marked *)."""
    if row.mode == "periodic":
        ratio = "baseline"
    elif baseline is not None and baseline.published:
        ratio = f"x{row.published / baseline.published:.3f}"
    else:
        ratio = f"x{row.published / (row.n / INTERVAL):.3f}*"
    mark = "" if row.still_converged else "  (not converged after the idle window!)"
    return (
        f"{row.n:>5}  {row.mode:<10}{row.converge_sim:>10.2f}{row.converge_cpu:>9.1f}{row.converge_wall:>9.1f}"
        f"{row.published:>11.1f}{row.delivered:>11.0f}{row.delivered / row.n:>13.1f}{row.cpu_per_sim:>9.3f}"
        f"{ratio:>13}{mark}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,100,200", help="runtime counts, comma-separated (default 50,100,200)")
    parser.add_argument("--idle", type=float, default=60.0, help="simulated seconds of the idle window (default 60)")
    parser.add_argument("--big", action="store_true", help=f"add N={BIG} in on-change mode only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the load walks and the harness (default 0)")
    args = parser.parse_args()
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--sizes: not a comma-separated list of numbers: {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error("--sizes: at least one runtime count, each at least 1")
    if args.idle <= 0:
        parser.error("--idle must be positive")
    plan = [(n, mode) for n in sizes for mode in MODES]
    if args.big:
        plan.append((BIG, "on-change"))

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks close the cluster and remove its directory.
    interrupt_on_signals()

    root = Path(tempfile.mkdtemp(prefix="oneos-bench-membership-sim-"))
    started = time.perf_counter()
    try:
        print(
            f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {sys.version.split()[0]}; {load_average()}; "
            "everything in this process (cluster harness: in-memory broker and network, simulated clock)"
        )
        # read from the code (a Membership without the two modes has neither)
        heartbeat = getattr(membership, "HEARTBEAT_SAMPLES", "?")
        network = getattr(membership, "NETWORK_HEARTBEATS", None)
        points = getattr(membership, "LOAD_POINTS", "?")
        stretch = f" (stretched to about {network:g} a second for the network)" if network else ""
        print(
            f"status sample every {INTERVAL:g} s; on-change: heartbeat every {heartbeat} samples{stretch}, a load figure "
            f"must move > {points} points; idle window {args.idle:g} simulated s; loads: seeded random walk "
            f"(seed {args.seed}), CPU ±2 points a sample"
        )
        print()
        print(HEADER)
        print(HEADER2)
        baselines: dict[int, Row] = {}
        warned = False
        for n, mode in plan:
            print(f"  {n} runtimes, {mode}: converging, then {args.idle:g} s idle ...", file=sys.stderr, flush=True)
            row = measure(root / f"n{n}-{mode}", n, mode, args.idle, args.seed)
            if mode == "periodic":
                baselines[n] = row
            print(format_row(row, baselines.get(n)), flush=True)
            if not row.has_mode and not warned:
                warned = True
                print("      NOTE: this Membership has no 'mode' attribute: every row measures its one behaviour")
        print()
        print(
            "published/delivered: broker counter deltas over the idle window / its simulated length "
            f"(periodic by definition: N/{INTERVAL:g} statuses and N²/{INTERVAL:g} deliveries a second); "
            "CPU: time.process_time of this process"
        )
        if args.big:
            print(f"N={BIG}: on-change only (periodic would take far too long); * compared with N/{INTERVAL:g}")
        print(f"(total {time.perf_counter() - started:.0f} s wall)")
        return 0
    except (BenchError, ClusterTimeout) as e:
        print(f"bench_membership_sim: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_membership_sim: interrupted; the cluster was closed", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
