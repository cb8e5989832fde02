#!/usr/bin/env python3
"""What identities, topic rules and TLS cost: the same figures with security off and on, in one run.

For each mode a broker and two runtimes start on this machine and measure:

* RPC round trip (``kernel ping``), p50/p99;
* spawn latency (``/bin/true`` from spawn until its exit is reported), p50/p99;
* stream throughput: ``head -c N /dev/zero @rt-1 | wc -c @rt-2`` (a pipe
  between two runtimes over their stream listeners), MB/s.

Modes: ``open`` (``--allow-anonymous``, no identities: the baseline, how the
network ran before), ``auth`` (identities and topic rules, the default), and
``tls`` (identities over ``mqtts://`` and TLS streams, when the network CA
can be made here).  Each mode runs in its own process (one reactor each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODES = ("open", "auth", "tls")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def setup(mode: str, root: Path) -> tuple[str, Path, list[subprocess.Popen], object]:
    """Start the broker and runtimes for *mode*: (broker URL, the admin's ONEOS_HOME, runtimes, broker)."""
    from oneos.security import credentials, tls
    from oneos.security.credentials import ADMIN_IDENTITY
    from oneos.testing.brokers import start_oneospsd
    from oneos.twistd import twistd_command

    admin = root / "admin"
    admin.mkdir(parents=True, exist_ok=True)
    extra_broker: list[str] = []
    scheme = "mqtt"
    if mode == "tls":
        made = subprocess.run(
            [sys.executable, "-m", "oneos.cli.main", "tls", "init", "--name", "127.0.0.1", "--name", "localhost"],
            env=dict(os.environ, ONEOS_HOME=str(admin)),
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            raise SystemExit(f"oneos tls init failed: {made.stderr}")
        extra_broker = ["--tls"]
        scheme = "mqtts"
    if mode != "open":
        credentials.create(admin, ADMIN_IDENTITY)
    broker = start_oneospsd(
        root / "broker",
        allow_anonymous=(mode == "open"),
        env=dict(os.environ, ONEOS_HOME=str(admin)),
        extra=extra_broker,
    )
    url = f"{scheme}://127.0.0.1:{broker.port}"
    procs = []
    for rid in ("rt-1", "rt-2"):
        home = root / rid
        home.mkdir(parents=True, exist_ok=True)
        if mode != "open":
            network = credentials.load(admin)
            credentials.save(home, credentials.issue(network, rid, url))
        if mode == "tls":
            tls.install(home, tls.bundle(admin, ["127.0.0.1", "localhost"]))
        procs.append(
            subprocess.Popen(
                twistd_command(
                    "oneosd", "--id", rid, "--pubsub", url, "--broker", "external", "--ssh", "", "--stats-interval", "1"
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=dict(os.environ, ONEOS_HOME=str(home)),
                cwd=home,
            )
        )
    return url, admin, procs, broker


def measure(mode: str, rounds: int, pipe_mib: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"oneos-bench-security-{mode}-"))
    url, admin, procs, broker = setup(mode, root)
    os.environ["ONEOS_HOME"] = str(admin)  # the benchmark's client logs in as this home's identity
    try:
        from bench_agents import Client

        c = Client(url, login=True)  # as ONEOS_HOME's identity (oneos/cli/common.py present_credentials)

        deadline = time.monotonic() + 60
        while True:
            try:
                view = c.call(c.rpc.call, "kernel", "runtimes", timeout=2)
                if len([r for r in view if r.get("state") == "alive"]) == 2:
                    c.call(c.rpc.call, "scheduler", "ps", timeout=2)
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{mode}: the runtimes did not come up")
            time.sleep(0.2)  # polling the network until it answers; the answer decides
        rtt = []
        for _ in range(rounds * 4):
            t0 = time.perf_counter()
            c.call(c.rpc.call, "kernel", "ping", timeout=5)
            rtt.append(time.perf_counter() - t0)
        spawn = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            info = c.spawn("/bin/true")
            spawn.append(c.wait_ended(info["id"]) - t0)
        size = pipe_mib << 20
        t0 = time.perf_counter()
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "oneos.cli.main",
                "run",
                "--pubsub",
                url,
                "--pipe",
                f"head -c {size} /dev/zero @rt-1 | wc -c @rt-2",
            ],
            capture_output=True,
            timeout=600,
        )
        dt = time.perf_counter() - t0
        if r.stdout.strip() != str(size).encode():
            raise SystemExit(f"{mode}: the pipe delivered {r.stdout!r}: {r.stderr.decode(errors='replace')}")
        return {
            "mode": mode,
            "rtt_p50_ms": pct(rtt, 50) * 1e3,
            "rtt_p99_ms": pct(rtt, 99) * 1e3,
            "spawn_p50_ms": pct(spawn, 50) * 1e3,
            "spawn_p99_ms": pct(spawn, 99) * 1e3,
            "pipe_mb_s": size / dt / 1e6,
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="spawns per mode (RPC pings: 4x this)")
    parser.add_argument("--pipe-mib", type=int, default=256, help="MiB through the pipe per mode")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # internal: measure one mode, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.rounds, args.pipe_mib)))
        return
    rows = []
    for mode in args.modes.split(","):
        r = subprocess.run(
            [sys.executable, __file__, "--one", mode, "--rounds", str(args.rounds), "--pipe-mib", str(args.pipe_mib)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            print(f"{mode}: not measured: {(r.stderr or r.stdout).strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    base = next((row for row in rows if row["mode"] == "open"), None)
    print(
        f"security cost, {args.rounds} spawns, {args.rounds * 4} pings, {args.pipe_mib} MiB pipe per mode "
        "(baseline: open, measured in this run)"
    )
    print(
        f"{'mode':<6} {'rpc p50 ms':>11} {'rpc p99 ms':>11} {'spawn p50 ms':>13} {'spawn p99 ms':>13} "
        f"{'pipe MB/s':>10} {'vs open':>8}"
    )
    for row in rows:
        ratio = f"{row['pipe_mb_s'] / base['pipe_mb_s']:.2f}x" if base else "-"
        print(
            f"{row['mode']:<6} {row['rtt_p50_ms']:>11.2f} {row['rtt_p99_ms']:>11.2f} {row['spawn_p50_ms']:>13.1f} "
            f"{row['spawn_p99_ms']:>13.1f} {row['pipe_mb_s']:>10.1f} {ratio:>8}"
        )


if __name__ == "__main__":
    main()
