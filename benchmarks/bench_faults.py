#!/usr/bin/env python3
"""Fault benchmark: the kernel's gap after a leader's SIGKILL or SIGSTOP, and how soon a superseded agent dies.

Three network namespaces (root only, else it says why and exits 0): a
broker on h1, runtimes rt-a on h1, rt-b on h2, rt-c on h3, each with its own
``ONEOS_HOME``, ``--stats-interval 0.5`` and ``--disconnect-grace GRACE``.
A watcher on h1 (the standalone script of ``tests/integration/test_faults.py``)
publishes a ``kernel`` ``ping`` every ``--interval`` (50 ms) and records
every reply, so each figure below is "from the fault to the first ping
answered by a new leader", with that interval as its granularity.  A fresh
network per repetition:

1. SIGKILL the leader (rt-a).  The broker publishes its will at once; the
   next runtime claims after the lease (2 s) + margin (0.5 s), the election
   settle (0.5 s) running alongside: the *lease bound* is keepalive 2 s +
   margin 0.5 s + settle 0.5 s = 3.0 s.
2. SIGSTOP the new leader for ``--freeze`` seconds (frozen idle, in its
   reactor's epoll wait; see docs/failures.md for a leader frozen while
   busy), then SIGCONT.  Nobody can tell a frozen process from a dead one
   until its status goes stale (3 x 0.5 s) or the broker's keepalive runs
   out (1.5 x 2 s = 3 s, then the will), then the same lease + margin: the
   worst case is 3 + 2 + 0.5 = 5.5 s, printed beside the 3.0 s lease bound.
   The frozen leader's answers to pings sent while it was frozen are
   counted (should be 0).
3. ``oneos run --restart on-failure --on R sleep 600`` on the runtime R
   just thawed (no longer the leader); cut R's host off (``Host.cut()``)
   until the job runs again elsewhere (after the grace), keep it cut
   ``--cut`` seconds in all, heal, and time until the old ``sleep`` process
   on R's host is gone (the scheduler sees R's agent status again, finds a
   newer incarnation and stops the old one).

Everything started here is killed on the way out (Network.close), on
errors and Ctrl-C too; the work directory is removed unless --keep or a
failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

from oneos.testing.netns import Network, available  # noqa: E402

#: the leadership lease (config keepalive), the takeover margin and the election settle, seconds
KEEPALIVE, MARGIN, SETTLE = 2.0, 0.5, 0.5
LEASE_BOUND = KEEPALIVE + MARGIN + SETTLE
#: status interval given to every runtime; a status unrefreshed for 3 intervals counts as dead
INTERVAL = 0.5
#: a frozen leader is noticed by staleness (3 intervals) or its will (1.5 keepalives), whichever first
STOP_BOUND = min(3 * INTERVAL, 1.5 * KEEPALIVE) + KEEPALIVE + MARGIN
STOP_WORST = 1.5 * KEEPALIVE + KEEPALIVE + MARGIN
SLEEP = ["sleep", "600"]


class BenchError(Exception):
    """The benchmark cannot go on."""


def progress(text: str) -> None:
    print(f"  {text} ...", file=sys.stderr, flush=True)


def wait_until(what: str, check: Callable[[], Any], deadline: float, step: float = 0.1) -> Any:
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(step)  # polling interval; the condition decides
    raise BenchError(f"timed out after {deadline:.0f}s waiting for {what}; last seen: {last!r}")


def stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    s = sorted(values)
    return f"min {s[0]:5.2f}  median {statistics.median(s):5.2f}  max {s[-1]:5.2f}"


class Bench:
    """One network: broker, three runtimes, a kernel watcher on h3."""

    def __init__(self, net: Network, root: Path, grace: float, interval: float) -> None:
        from oneos.testing.hosts import BROKER_PORT, start_broker_in, start_runtime_in
        from test_faults import Watcher

        self.net, self.root = net, root
        self.hosts = dict(zip(("rt-a", "rt-b", "rt-c"), net.hosts, strict=False))
        self.url = f"mqtt://{net.hosts[0].addr}:{BROKER_PORT}"
        self.broker = start_broker_in(net.hosts[0], root / "broker")
        flags = ("--disconnect-grace", f"{grace:g}")
        self.runtimes = {"rt-a": start_runtime_in(self.hosts["rt-a"], "rt-a", self.url, root, *flags)}
        self.wait_leader({"rt-a"}, lambda v: v == "rt-a")
        for rid in ("rt-b", "rt-c"):
            self.runtimes[rid] = start_runtime_in(self.hosts[rid], rid, self.url, root, *flags)
        self.wait_leader(set(self.hosts), lambda v: v == "rt-a")
        # the watcher and the CLI run on h1, the broker's host, which is never cut off here
        self.watch = Watcher(net.hosts[0], self.url, root / "watch", what="kernel,agents", interval=interval)

    def oneos(self, *args: str, timeout: float = 60) -> Any:
        from oneos.testing.hosts import oneos_in

        return oneos_in(
            self.net.hosts[0], args[0], "--pubsub", self.url, *args[1:], home=self.root / "cli", timeout=timeout
        )

    def view(self) -> dict[str, dict[str, Any]]:
        r = self.oneos("status", "--json")
        if r.returncode != 0:
            return {}
        return {s["id"]: s for s in json.loads(r.stdout)}

    def wait_leader(self, ids: set[str], ok: Callable[[str], bool], deadline: float = 60) -> str:
        def check() -> str | None:
            view = self.view()
            alive = {k for k, v in view.items() if v["state"] == "alive"}
            leaders = [k for k in alive if view[k]["leader"]]
            return leaders[0] if ids <= alive and len(leaders) == 1 and ok(leaders[0]) else None

        return wait_until(f"{sorted(ids)} alive with one leader", check, deadline, step=0.2)

    def ps(self) -> list[dict[str, Any]]:
        r = self.oneos("ps", "--json", "--all", timeout=30)
        return json.loads(r.stdout) if r.returncode == 0 else []

    def sleeps_on(self, rid: str) -> list[int]:
        out = []
        for pid in self.hosts[rid].pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            except OSError:
                continue
            if [os.path.basename(argv[0]).decode(), *(a.decode() for a in argv[1:])] == SLEEP:
                out.append(pid)
        return out


def one_run(root: Path, args: argparse.Namespace, results: dict[str, list[float]]) -> None:
    from test_faults import answers_to_pings_sent_after, freeze, silence

    with Network(hosts=3) as net:
        progress("starting a broker and three runtimes in namespaces")
        b = Bench(net, root, args.grace, args.interval)
        wait_until(
            "rt-a answering pings",
            lambda: any(r.get("leader") == "rt-a" for r in b.watch.records() if r["ev"] == "reply"),
            30,
        )

        progress("SIGKILL of the leader rt-a")
        killed = time.time()
        b.runtimes["rt-a"].process.send_signal(signal.SIGKILL)
        b.runtimes["rt-a"].process.wait(timeout=30)
        wait_until("a new leader answering", lambda: silence(b.watch.records(), killed)[1], 30, step=0.05)
        gap, first = silence(b.watch.records(), killed)
        results["kill"].append(gap)
        leader = first["leader"]
        other = "rt-c" if leader == "rt-b" else "rt-b"

        progress(f"SIGSTOP of the new leader {leader} for {args.freeze:g}s")
        time.sleep(1.0)
        stopped = freeze(b.runtimes[leader].process.pid, busy=False)[0]
        try:
            wait_until(
                "another leader answering", lambda: silence(b.watch.records(), stopped)[1], args.freeze - 0.5, step=0.05
            )
            time.sleep(max(0.0, stopped + args.freeze - time.time()))
        finally:
            os.kill(b.runtimes[leader].process.pid, signal.SIGCONT)
        gap, first = silence(b.watch.records(), stopped)
        results["stop"].append(gap)
        b.wait_leader({leader, other}, lambda v: v == first["leader"])
        time.sleep(2.0)
        results["stale"].append(len(answers_to_pings_sent_after(b.watch.records(), stopped, leader)))

        # the job goes on the runtime just thawed (not the leader now), whose host is then cut off
        victim = leader
        progress(f"a job on {victim}, its host cut off for {args.cut:g}s (grace {args.grace:g}s)")
        r = b.oneos("run", "--restart", "on-failure", "--on", victim, *SLEEP)
        if r.returncode != 0:
            raise BenchError(f"oneos run failed: {r.stderr.strip()}")
        job = r.stdout.strip().rpartition(" on ")[0]
        old = wait_until(f"the job's process on {victim}", lambda: b.sleeps_on(victim), 30)
        cut = time.time()
        b.hosts[victim].cut()
        try:

            def elsewhere() -> list[dict[str, Any]]:
                return [
                    row
                    for row in b.ps()
                    if row.get("job") == job and row["state"] == "running" and row["runtime"] != victim
                ]

            wait_until("the job restarted elsewhere", elsewhere, args.cut - 0.5, step=0.2)
            results["restart"].append(time.time() - cut)
            time.sleep(max(0.0, cut + args.cut - time.time()))
        finally:
            b.hosts[victim].heal()
        healed = time.time()
        wait_until("the superseded process gone", lambda: not set(old) & set(b.sleeps_on(victim)), 30, step=0.02)
        results["supersede"].append(time.time() - healed)
        b.watch.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="needs root (network namespaces, iptables); see docs/failures.md"
    )
    parser.add_argument("--repeat", type=int, default=3, help="fresh networks to measure in (default 3)")
    parser.add_argument("--freeze", type=float, default=8.0, help="seconds the leader stays SIGSTOPped (default 8)")
    parser.add_argument("--grace", type=float, default=3.0, help="--disconnect-grace of the runtimes (default 3)")
    parser.add_argument("--cut", type=float, default=10.0, help="seconds h2 stays cut off (default 10)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between pings (default 0.05)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: --repeat 1 --freeze 6 --cut 8")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.freeze, args.cut = 1, 6.0, 8.0
    reason = available(iptables=True)
    if reason is not None:
        print(f"bench_faults: skipped: {reason}")
        return 0
    if os.uname().machine not in ("x86_64", "aarch64"):
        print(f"bench_faults: skipped: no epoll syscall numbers for {os.uname().machine}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="oneos-bench-faults-"))
    results: dict[str, list[float]] = {"kill": [], "stop": [], "stale": [], "restart": [], "supersede": []}
    failed = False
    try:
        for n in range(args.repeat):
            print(f"run {n + 1}/{args.repeat}", file=sys.stderr, flush=True)
            one_run(work / f"run-{n}", args, results)
    except (BenchError, Exception) as e:
        failed = True
        print(f"bench_faults: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        if args.keep or failed:
            print(f"work directory (logs): {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    n = len(results["kill"])
    w = 60
    print(
        f"\nOneOS faults, 3 namespace hosts, {os.cpu_count()} CPUs, stats interval {INTERVAL:g}s, "
        f"ping every {args.interval * 1000:.0f} ms, {n} run(s); seconds"
    )
    print(f"{'leader SIGKILL -> ping answered by a new leader':{w}} {stats(results['kill'])}")
    print(
        f"{'':{w}}   lease bound {LEASE_BOUND:.1f} = keepalive {KEEPALIVE:g} + margin {MARGIN:g} + settle {SETTLE:g} "
        f"(the will comes at once)"
    )
    print(f"{f'leader SIGSTOP ({args.freeze:g}s, idle) -> ping answered by a new leader':{w}} {stats(results['stop'])}")
    print(
        f"{'':{w}}   lease bound {LEASE_BOUND:.1f}; expected staleness {3 * INTERVAL:g} + lease {KEEPALIVE:g} + "
        f"margin {MARGIN:g} = {STOP_BOUND:.1f} after its last status, worst {STOP_WORST:.1f} "
        f"(will at 1.5 x keepalive)"
    )
    print(
        f"{'  answers by the frozen leader to pings sent while frozen':{w}} "
        f"{', '.join(str(int(x)) for x in results['stale']) or 'n/a'} (must be 0)"
    )
    print(f"{'cut of an agent host -> job running elsewhere (ps)':{w}} {stats(results['restart'])}")
    print(
        f"{'':{w}}   expected staleness {3 * INTERVAL:g} + grace {args.grace:g} = {3 * INTERVAL + args.grace:.1f} "
        f"+ spawn; ps polled ~every 0.4 s"
    )
    print(f"{'heal -> superseded agent killed (process gone)':{w}} {stats(results['supersede'])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
