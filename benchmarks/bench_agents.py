#!/usr/bin/env python3
"""Agents and pipes benchmark, each figure beside a local baseline from the same run.

* remote spawn latency (spawn until the exit is reported), p50/p99, of
  ``/bin/true`` and ``python3 -c pass`` beside ``subprocess.run`` locally;
* spawns per second across 3 runtimes (many concurrent ``/bin/true``);
* pipe throughput between two runtimes (default 1 GiB) beside a local UNIX
  pipe and a raw loopback TCP copy of the same size;
* time from SIGKILL of a runtime until its ``--restart on-failure`` agent
  runs elsewhere.

Runs a broker and 3 runtimes on this machine (plus a victim runtime).
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

from oneos.testing.brokers import start_oneospsd  # noqa: E402
from oneos.twistd import twistd_command  # noqa: E402


def start_runtime(rid: str, url: str, root: Path, *extra: str) -> subprocess.Popen:
    home = root / rid
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        twistd_command("oneosd", "--id", rid, "--pubsub", url, "--broker", "external", *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, ONEOS_HOME=str(home)),
        cwd=home,
    )


class Client:
    """A threaded reactor with a pubsub client, for blocking calls from the benchmark."""

    def __init__(self, url: str, login: bool = False) -> None:
        """*login*: connect as $ONEOS_HOME's identity (a broker with identities on)."""
        from oneos.reactor import install_asyncio_reactor

        install_asyncio_reactor()
        from twisted.internet import reactor

        from oneos.pubsub.client import PubSubClient
        from oneos.pubsub.rpc import RPCClient

        self.reactor = reactor
        self.client = PubSubClient(url, reactor, keepalive=30)
        if login:
            from oneos.cli.common import present_credentials

            present_credentials(self.client)
        self.rpc = RPCClient(self.client, reactor, default_timeout=30)
        self.ended: dict[str, tuple[float, dict]] = {}
        self.running: dict[str, float] = {}
        threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True).start()
        self.call(self.client.startService)
        self.call(self.client.whenConnected)
        from oneos.pubsub import topics

        self.call(lambda: self.client.subscribe(topics.ALL_AGENTS, self._on_agent))

    def _on_agent(self, message) -> None:
        from oneos.pubsub import messages

        if not message.payload:
            return
        body = messages.decode(message.payload)
        if body["state"] in ("exited", "killed", "failed", "lost"):
            self.ended.setdefault(body["id"], (time.perf_counter(), body))
        elif body["state"] == "running":
            self.running.setdefault(body["id"], time.perf_counter())

    def call(self, fn, *args, **kw):
        from twisted.internet import defer, threads

        return threads.blockingCallFromThread(self.reactor, lambda: defer.maybeDeferred(fn, *args, **kw))

    def spawn(self, program: str, *args: str, **kw) -> dict:
        return self.call(
            self.rpc.call, "scheduler", "spawn", program=program, args=list(args), stdout="discard", stdin=False, **kw
        )

    def wait_ended(self, agent_id: str, timeout: float = 60) -> float:
        end = time.monotonic() + timeout
        while agent_id not in self.ended:
            if time.monotonic() > end:
                raise SystemExit(f"agent {agent_id} never ended")
            time.sleep(0.0005)
        return self.ended[agent_id][0]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def bench_latency(c: Client, argv: list[str], rounds: int) -> tuple[list[float], list[float]]:
    remote, local = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        info = c.spawn(argv[0], *argv[1:])
        remote.append(c.wait_ended(info["id"]) - t0)
        t0 = time.perf_counter()
        subprocess.run(argv)
        local.append(time.perf_counter() - t0)
    return remote, local


def bench_rate(c: Client, count: int) -> float:
    t0 = time.perf_counter()
    ids = [c.spawn("/bin/true")["id"] for _ in range(count)]
    last = max(c.wait_ended(i) for i in ids)
    return count / (last - t0)


def bench_pipe(url: str, size: int) -> float:
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
    )
    dt = time.perf_counter() - t0
    assert r.stdout.strip() == str(size).encode(), r
    return size / dt / 1e6


def local_pipe(size: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(f"head -c {size} /dev/zero | wc -c > /dev/null", shell=True, check=True)
    return size / (time.perf_counter() - t0) / 1e6


def raw_tcp(size: int) -> float:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    got = [0]

    def receive() -> None:
        conn, _ = server.accept()
        while True:
            data = conn.recv(1 << 20)
            if not data:
                break
            got[0] += len(data)
        conn.close()

    t = threading.Thread(target=receive)
    t.start()
    block = b"\0" * (1 << 18)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        sent = 0
        while sent < size:
            s.sendall(block)
            sent += len(block)
    t.join()
    server.close()
    return got[0] / (time.perf_counter() - t0) / 1e6


def bench_recovery(c: Client, url: str, root: Path) -> float:
    victim = start_runtime("victim", url, root, "--no-kernel")
    deadline = time.monotonic() + 60
    info = None
    while info is None and time.monotonic() < deadline:
        try:
            info = c.call(
                c.rpc.call,
                "scheduler",
                "spawn",
                program="sleep",
                args=["600"],
                runtime="victim",
                restart="on-failure",
                stdout="discard",
                stdin=False,
            )
        except Exception:
            time.sleep(0.2)
    before = set(c.running)
    t0 = time.perf_counter()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    while True:
        fresh = [i for i in c.running if i not in before]
        if fresh:
            return c.running[fresh[0]] - t0
        if time.perf_counter() - t0 > 60:
            raise SystemExit("no restart seen")
        time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--spawns", type=int, default=200)
    parser.add_argument("--pipe-mib", type=int, default=1024)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="oneos-bench-agents-"))
    broker = start_oneospsd(root / "broker")
    procs = [start_runtime(f"rt-{i}", broker.url, root) for i in (1, 2, 3)]
    try:
        c = Client(broker.url)
        while True:  # wait until the scheduler answers
            try:
                c.call(c.rpc.call, "scheduler", "ps", timeout=2)
                break
            except Exception:
                time.sleep(0.2)
        time.sleep(1.0)  # let all 3 runtimes' statuses settle
        print(f"machine: {os.cpu_count()} cores; 3 runtimes + broker on loopback")
        print()
        print(f"{'spawn latency (ms)':<28}{'remote p50':>12}{'remote p99':>12}{'local p50':>12}{'local p99':>12}")
        for argv in (["/bin/true"], ["python3", "-c", "pass"]):
            remote, local = bench_latency(c, argv, args.rounds)
            print(
                f"{' '.join(argv):<28}{pct(remote, 50) * 1e3:>12.1f}{pct(remote, 99) * 1e3:>12.1f}"
                f"{pct(local, 50) * 1e3:>12.1f}{pct(local, 99) * 1e3:>12.1f}"
            )
        print()
        print(f"spawns per second across 3 runtimes ({args.spawns} x /bin/true): {bench_rate(c, args.spawns):.1f}")
        size = args.pipe_mib * 2**20
        print()
        print(
            f"pipe throughput, {args.pipe_mib} MiB (MB/s): runtime->runtime {bench_pipe(broker.url, size):.0f}"
            f" | local UNIX pipe {local_pipe(size):.0f} | raw loopback TCP {raw_tcp(size):.0f}"
        )
        print()
        print(f"SIGKILL of a runtime -> its agent running elsewhere: {bench_recovery(c, broker.url, root):.3f} s")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        broker.stop()
        subprocess.run(["pkill", "-f", "sleep 600"], check=False)


if __name__ == "__main__":
    main()
