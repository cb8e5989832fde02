#!/usr/bin/env python3
"""Pipe throughput between two runtimes, spliced and copied, beside the machine's own baselines.

One run prints, for the same size (default 2 GiB):

* raw loopback TCP (a sender and a receiver thread in this process);
* a local UNIX pipe (``head -c N /dev/zero | wc -c``);
* ``head -c N /dev/zero @A | wc -c @B`` between two runtimes with the
  kernel path (``os.splice``), and between two runtimes started with
  ``ONEOS_SPLICE=0`` (the copying path).

For the runtime pipes it also prints the CPU seconds the two runtime
processes spent per GB moved (psutil: their own user + system time, not
their children's, less what they spend idle over the same time).  The time is taken from just before the producer
starts to just after the consumer ends (both stamp the time themselves),
so the command's own start-up does not count.

    .venv/bin/python benchmarks/bench_pipes.py [--size-mib 2048] [--rounds 1]

Runs a broker and 4 runtimes on this machine.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from oneos.testing.brokers import start_oneospsd
from oneos.twistd import twistd_command


def start_runtime(rid: str, url: str, root: Path, splice: bool, kernel: bool) -> subprocess.Popen:
    home = root / rid
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ONEOS_HOME=str(home), ONEOS_SPLICE="1" if splice else "0")
    return subprocess.Popen(
        twistd_command(
            "oneosd",
            "--id",
            rid,
            "--pubsub",
            url,
            "--broker",
            "external",
            "--ssh",
            "tcp:0:interface=127.0.0.1",
            "--desktop",
            "tcp:0:interface=127.0.0.1",
            *(() if kernel else ("--no-kernel",)),
        ),
        stdout=open(home / "runtime.log", "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=home,
    )


def oneos(url: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oneos.cli.main", *args[:1], "--pubsub", url, *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_ready(url: str, ids: list[str], deadline: float = 90) -> None:
    """Until every runtime is alive and a tiny pipe through each pair works."""
    import json

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        r = oneos(url, "status", "--json", timeout=30)
        if r.returncode == 0:
            view = {s["id"]: s for s in json.loads(r.stdout)}
            if all(view.get(i, {}).get("state") == "alive" for i in ids) and any(s["leader"] for s in view.values()):
                return
        time.sleep(0.5)
    raise SystemExit(f"runtimes {ids} not ready within {deadline}s")


def cpu(procs: list[psutil.Process]) -> float:
    """The processes' own CPU seconds (user + system, not their children's)."""
    return sum(sum(p.cpu_times()[:2]) for p in procs)


#: seconds the runtimes are watched idle before each pipe, to take their background work out of its CPU figure
IDLE = 2.0


def runtime_pipe(url: str, src: str, dst: str, size: int, procs: list[psutil.Process]) -> tuple[float, float]:
    """MB/s of ``head -c SIZE /dev/zero @src | wc -c @dst`` and the two runtimes' CPU seconds per GB.

    The CPU figure is what the pipe cost: the runtimes' CPU time during the
    run minus what they spend idle (status publishing, the scheduler) over
    the same time, measured just before.
    """
    producer = f"sh -c 'date +%s.%N >&2; exec head -c {size} /dev/zero'"
    consumer = "sh -c 'wc -c; date +%s.%N'"
    idle = cpu(procs)
    time.sleep(IDLE)
    idle_rate = (cpu(procs) - idle) / IDLE
    before, t0 = cpu(procs), time.monotonic()
    r = oneos(url, "run", "--pipe", f"{producer} @{src} | {consumer} @{dst}")
    used, wall = cpu(procs) - before, time.monotonic() - t0
    out = r.stdout.split()
    if r.returncode != 0 or len(out) != 2 or out[0] != str(size):
        raise SystemExit(f"pipe {src} -> {dst} failed: status {r.returncode}, {r.stdout!r} {r.stderr!r}")
    start = float(r.stderr.split()[0])
    seconds = float(out[1]) - start
    return size / seconds / 1e6, max(0.0, used - idle_rate * wall) / (size / 1e9)


def local_pipe(size: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = subprocess.run(f"head -c {size} /dev/zero | wc -c", shell=True, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    assert r.stdout.strip() == str(size).encode(), r
    return size / seconds / 1e6, float("nan")


def raw_tcp(size: int) -> tuple[float, float]:
    """A sender and a receiver thread on loopback, 1 MiB at a time; MB/s and this process's CPU s/GB."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    got = [0]

    def receive() -> None:
        conn, _ = server.accept()
        buf = bytearray(1 << 20)
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            got[0] += n
        conn.close()

    t = threading.Thread(target=receive)
    t.start()
    block = b"\0" * (1 << 20)
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        sent = 0
        while sent < size:
            s.sendall(block)
            sent += len(block)
    t.join()
    seconds = time.perf_counter() - t0
    server.close()
    return got[0] / seconds / 1e6, (sum(me.cpu_times()[:2]) - cpu0) / (size / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="bytes per pipe, in MiB (default 2048)")
    parser.add_argument("--rounds", type=int, default=1, help="measure each case this many times (best kept)")
    args = parser.parse_args()
    size = args.size_mib * 2**20
    root = Path(tempfile.mkdtemp(prefix="oneos-bench-pipes-"))
    broker = start_oneospsd(root / "broker")
    pairs = {"splice": ("sp-1", "sp-2"), "copy": ("cp-1", "cp-2")}
    procs: dict[str, subprocess.Popen] = {}
    try:
        # One kernel runtime (it leads; the scheduler places nothing here anyway: every stage is pinned).
        procs["sp-1"] = start_runtime("sp-1", broker.url, root, splice=True, kernel=True)
        wait_ready(broker.url, ["sp-1"])
        for mode, ids in pairs.items():
            for rid in ids:
                if rid not in procs:
                    procs[rid] = start_runtime(rid, broker.url, root, splice=mode == "splice", kernel=False)
        wait_ready(broker.url, [rid for ids in pairs.values() for rid in ids])
        for a, b in pairs.values():  # warm up: programs cached, connections made
            runtime_pipe(broker.url, a, b, 1 << 20, [psutil.Process(procs[a].pid), psutil.Process(procs[b].pid)])
        results: dict[str, list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            results.setdefault("raw loopback TCP", []).append(raw_tcp(size))
            results.setdefault("local UNIX pipe", []).append(local_pipe(size))
            for mode, (a, b) in pairs.items():
                ps = [psutil.Process(procs[a].pid), psutil.Process(procs[b].pid)]
                results.setdefault(f"runtime -> runtime ({mode})", []).append(runtime_pipe(broker.url, a, b, size, ps))
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {args.size_mib} MiB per pipe")
        print(f"{'':<32}{'MB/s':>10}{'CPU s/GB':>12}{'x raw TCP':>12}")
        raw = max(r[0] for r in results["raw loopback TCP"])
        for name, rows in results.items():
            rate, cpu = max(rows)
            shown = "-" if cpu != cpu else f"{cpu:.2f}"
            print(f"{name:<32}{rate:>10.0f}{shown:>12}{rate / raw:>12.2f}")
        print("(CPU s/GB: the two runtimes' own CPU time less their idle background; for raw TCP, this process's)")
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        broker.stop()


if __name__ == "__main__":
    main()
