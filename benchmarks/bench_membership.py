#!/usr/bin/env python3
"""Membership benchmark: how fast runtimes find each other and notice a death.

Prints, in one run and side by side with baselines measured the same way:

* time until N runtimes (default 10 and 50) all see each other, beside the
  time for N bare Python processes that only import Twisted to start;
* time from SIGKILL of a runtime until an observer sees it dead, beside the
  bound keepalive alone would give (1.5 x keepalive);
* time from SIGKILL of the kernel leader until another runtime claims it;
* idle RSS of one runtime, beside an idle bare Twisted reactor process.

Everything runs on this machine: one ``twistd oneospsd`` broker on a free
loopback port and ``twistd oneosd`` runtimes as real processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from oneos.twistd import twistd_command  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"broker on port {port} did not start")


class Observer:
    """An in-process client that asks runtimes who they see, over RPC."""

    def __init__(self, url: str) -> None:
        from oneos.reactor import install_asyncio_reactor

        install_asyncio_reactor()
        import threading

        from twisted.internet import reactor

        from oneos.pubsub.client import PubSubClient
        from oneos.pubsub.rpc import RPCClient

        self.reactor = reactor
        self.client = PubSubClient(url, reactor, keepalive=30)
        self.rpc = RPCClient(self.client, reactor)
        self.thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
        self.thread.start()
        self.call(lambda: self.client.startService())
        self.call(lambda: self.client.whenConnected())

    def call(self, fn, timeout: float = 60.0):
        from twisted.internet import defer, threads

        return threads.blockingCallFromThread(self.reactor, lambda: defer.maybeDeferred(fn))

    def members(self, rid: str) -> list[str]:
        from oneos.errors import RPCError

        try:
            return self.call(lambda: self.rpc.call(rid, "members", timeout=2.0))
        except RPCError:
            return []

    def watch_dead(self, rid: str):
        """Return a function giving the monotonic time the runtime was seen dead (or None)."""
        from oneos.pubsub import topics
        from oneos.runtime.status import RuntimeStatus

        seen: list[float] = []

        def on(message) -> None:
            if message.payload and not seen:
                if RuntimeStatus.decode(message.payload).state == "dead":
                    seen.append(time.monotonic())

        self.call(lambda: self.client.subscribe(topics.status(rid), on))
        return lambda: seen[0] if seen else None


def start_runtimes(n: int, url: str, root: Path, tag: str) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        home = root / f"{tag}-{i}"
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, ONEOS_HOME=str(home))
        procs.append(
            subprocess.Popen(
                twistd_command("oneosd", "--id", f"{tag}-{i}", "--pubsub", url, "--broker", "external"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=home,
            )
        )
    return procs


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def bench_bare_start(n: int) -> float:
    """Baseline: N processes that import the Twisted reactor and exit."""
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", "import twisted.internet.reactor, psutil"]) for _ in range(n)]
    for p in procs:
        p.wait()
    return time.monotonic() - t0


def bench_convergence(n: int, url: str, obs: Observer, root: Path) -> float:
    tag = f"c{n}"
    t0 = time.monotonic()
    procs = start_runtimes(n, url, root, tag)
    ids = {f"{tag}-{i}" for i in range(n)}
    pending = set(ids)
    try:
        while pending and time.monotonic() - t0 < 600:
            for rid in sorted(pending):
                if ids <= set(obs.members(rid)):
                    pending.discard(rid)
            if pending:
                time.sleep(0.1)
        if pending:
            raise SystemExit(f"{len(pending)} runtimes never saw all {n}")
        return time.monotonic() - t0
    finally:
        stop_all(procs)


def bench_detection(url: str, obs: Observer, root: Path, keepalive: int, rounds: int) -> list[float]:
    out = []
    for r in range(rounds):
        [proc] = start_runtimes(1, url, root, f"d{r}")
        rid = f"d{r}-0"
        while rid not in obs.members(rid):
            time.sleep(0.05)
        dead_at = obs.watch_dead(rid)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        while dead_at() is None and time.monotonic() - t0 < 30:
            time.sleep(0.005)
        out.append((dead_at() or float("nan")) - t0)
    return out


def bench_failover(url: str, obs: Observer, root: Path, rounds: int) -> list[float]:
    """SIGKILL the kernel leader of 3 runtimes; time until another claims leadership."""
    from oneos.pubsub import topics
    from oneos.runtime.status import RuntimeStatus

    leaders: dict[str, float] = {}
    dead: set[str] = set()

    def on(message) -> None:
        if not message.payload:
            return
        s = RuntimeStatus.decode(message.payload)
        if s.alive and s.leader:
            leaders.setdefault(s.id, time.monotonic())
        elif not s.alive:
            dead.add(s.id)

    obs.call(lambda: obs.client.subscribe(topics.ALL_STATUS, on))
    out = []
    for r in range(rounds):
        tag = f"f{r}"
        procs = start_runtimes(3, url, root, tag)
        try:
            ids = [f"{tag}-{i}" for i in range(3)]
            while not any(i in leaders for i in ids):
                time.sleep(0.05)
            old = next(i for i in ids if i in leaders)
            t0 = time.monotonic()
            procs[ids.index(old)].send_signal(signal.SIGKILL)
            while not any(i in leaders and i != old for i in ids) and time.monotonic() - t0 < 30:
                time.sleep(0.005)
            new = next((i for i in ids if i in leaders and i != old), None)
            out.append(leaders[new] - t0 if new else float("nan"))
        finally:
            stop_all(procs)
    return out


def bench_idle_rss(url: str, obs: Observer, root: Path, settle: float) -> tuple[float, float]:
    [proc] = start_runtimes(1, url, root, "rss")
    while "rss-0" not in obs.members("rss-0"):
        time.sleep(0.05)
    bare = subprocess.Popen([sys.executable, "-c", "from twisted.internet import reactor; reactor.run()"])
    time.sleep(settle)  # let both go idle before measuring
    try:
        return psutil.Process(proc.pid).memory_info().rss / 2**20, psutil.Process(bare.pid).memory_info().rss / 2**20
    finally:
        bare.kill()
        bare.wait()
        stop_all([proc])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,50", help="runtime counts for convergence (default 10,50)")
    parser.add_argument("--kill-rounds", type=int, default=5)
    parser.add_argument("--failover-rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="oneos-bench-"))
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    broker = subprocess.Popen(
        twistd_command("oneospsd", "--port", str(port), "--interface", "127.0.0.1", "--allow-anonymous"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=root,
    )
    try:
        wait_port(port, time.monotonic() + 30)
        obs = Observer(url)
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, broker: oneospsd (amqtt) on {url}")
        print()
        print(f"{'runtimes':>8}  {'all see each other (s)':>24}  {'baseline: bare twisted procs start (s)':>40}")
        for n in [int(x) for x in args.sizes.split(",") if x]:
            base = bench_bare_start(n)
            conv = bench_convergence(n, url, obs, root)
            print(f"{n:>8}  {conv:>24.2f}  {base:>40.2f}")
        print()
        keepalive = 2
        det = sorted(bench_detection(url, obs, root, keepalive, args.kill_rounds))
        print(
            f"SIGKILL -> seen dead (s), {len(det)} rounds: min {det[0]:.3f}  median {det[len(det) // 2]:.3f}  max {det[-1]:.3f}"
            f"   | baseline: keepalive-only bound {1.5 * keepalive:.1f}"
        )
        fo = sorted(bench_failover(url, obs, root, args.failover_rounds))
        print(
            f"SIGKILL of leader -> new leader (s), {len(fo)} rounds: min {fo[0]:.3f}  median {fo[len(fo) // 2]:.3f}  max {fo[-1]:.3f}"
            f"   | target: under 5.0 (election settle time 0.5)"
        )
        rss, bare = bench_idle_rss(url, obs, root, settle=3.0)
        print(f"idle RSS of one runtime: {rss:.1f} MiB   | baseline: idle bare Twisted reactor {bare:.1f} MiB")
    finally:
        broker.terminate()
        broker.wait(timeout=30)


if __name__ == "__main__":
    main()
