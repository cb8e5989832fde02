#!/usr/bin/env python3
"""Agents and pipes benchmark, each figure beside a local baseline from the same run.

* remote spawn latency (spawn until the exit is reported), p50/p99, of
  ``/bin/true`` and ``python3 -c pass`` beside ``subprocess.run`` locally;
* spawns per second across 3 runtimes of ``/bin/true``, one spawn after
  another and with ``--window`` spawns in flight, and the CPU each spawn
  cost the runtimes and the broker (the cost of the code, whatever else
  loads the machine);

  both as a one-shot caller makes its calls to the scheduler (over the
  bus: ``bus``) and as a long-lived one does once its direct channel to
  the scheduler is open (``1 hop``; oneos/pubsub/direct.py).  The
  scheduler's commands to the runtimes take their direct channels either
  way;
* pipe throughput between two runtimes (default 1 GiB) beside a local UNIX
  pipe and a raw loopback TCP copy of the same size;
* time from SIGKILL of a runtime until its ``--restart on-failure`` agent
  runs elsewhere.

Runs a broker and 3 runtimes on this machine (plus a victim runtime).
``--only latency,rate`` runs some sections; ``--profile DIR`` runs each
runtime under cProfile (``DIR/rt-N.prof``) and prints the top of each
profile (by own time) after the run, to see where spawn time goes.
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import shutil
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


def start_runtime(rid: str, url: str, root: Path, *extra: str, profile: Path | None = None) -> subprocess.Popen:
    """A runtime child process; under cProfile (writing ``profile/RID.prof`` when it stops) if *profile*."""
    home = root / rid
    home.mkdir(parents=True, exist_ok=True)
    # twistd's own profiler: `python -m cProfile` never writes, as twistd ends by re-raising SIGTERM on itself
    profiling = [f"--profile={profile / f'{rid}.prof'}", "--profiler=cprofile", "--savestats"] if profile else []
    argv = twistd_command(*profiling, "oneosd", "--id", rid, "--pubsub", url, "--broker", "external", *extra)
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        argv,
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
        #: the same identity's calls, on the scheduler's direct channel once open (as a shell session's)
        self.rpc_direct = RPCClient(self.client, reactor, default_timeout=30)
        from oneos.scheduler.client import RETRY_SAFE, TARGET

        self.rpc_direct.enable_direct(TARGET, retry_safe=RETRY_SAFE)
        self.ended: dict[str, tuple[float, dict]] = {}
        self.running: dict[str, float] = {}
        #: told (from the reactor's thread) whenever an agent ends: waiting on it does not poll
        self.changed = threading.Condition()
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
            with self.changed:
                self.ended.setdefault(body["id"], (time.perf_counter(), body))
                self.changed.notify_all()
        elif body["state"] == "running":
            self.running.setdefault(body["id"], time.perf_counter())

    def call(self, fn, *args, **kw):
        from twisted.internet import defer, threads

        return threads.blockingCallFromThread(self.reactor, lambda: defer.maybeDeferred(fn, *args, **kw))

    def spawn(self, program: str, *args: str, direct: bool = False, **kw) -> dict:
        rpc = self.rpc_direct if direct else self.rpc
        return self.call(
            rpc.call, "scheduler", "spawn", program=program, args=list(args), stdout="discard", stdin=False, **kw
        )

    def open_direct(self) -> None:
        """Call the scheduler until the direct channel is open (its first calls go over the bus)."""
        from oneos.scheduler.client import TARGET

        route = self.rpc_direct.route(TARGET)
        deadline = time.monotonic() + 30
        while not route.ready:
            if time.monotonic() > deadline:
                raise SystemExit(f"no direct channel to the scheduler: {route.last_error or route.state}")
            self.call(self.rpc_direct.call, TARGET, "ps", timeout=5)
            time.sleep(0.05)

    def wait_ended(self, agent_id: str, timeout: float = 60) -> float:
        """When the agent's end arrived (a condition, not a polling loop that would take the GIL from the reactor)."""
        with self.changed:
            if not self.changed.wait_for(lambda: agent_id in self.ended, timeout):
                raise SystemExit(f"agent {agent_id} never ended")
            return self.ended[agent_id][0]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def bench_latency(c: Client, argv: list[str], rounds: int, direct: bool = False) -> tuple[list[float], list[float]]:
    remote, local = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        info = c.spawn(argv[0], *argv[1:], direct=direct)
        remote.append(c.wait_ended(info["id"]) - t0)
        t0 = time.perf_counter()
        subprocess.run(argv)
        local.append(time.perf_counter() - t0)
    return remote, local


def bench_rate(c: Client, count: int, direct: bool = False) -> float:
    t0 = time.perf_counter()
    ids = [c.spawn("/bin/true", direct=direct)["id"] for _ in range(count)]
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
            took = c.running[fresh[0]] - t0
            # the restarted sleep is stopped by its id (its runtime would stop it at exit anyway)
            c.call(c.rpc.call, "scheduler", "kill", agent_id=fresh[0], grace=0.5)
            return took
        if time.perf_counter() - t0 > 60:
            raise SystemExit("no restart seen")
        time.sleep(0.001)


def bench_rate_concurrent(c: Client, count: int, window: int, direct: bool = False) -> float:
    """Spawns per second with up to *window* spawn requests in flight at once (the scheduler's throughput)."""
    from twisted.internet import defer

    ids: list[str] = []
    rpc = c.rpc_direct if direct else c.rpc

    def issue() -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        state = {"sent": 0, "answered": 0}

        def one() -> None:
            state["sent"] += 1
            d = rpc.call("scheduler", "spawn", program="/bin/true", args=[], stdout="discard", stdin=False)
            d.addCallback(lambda info: ids.append(info["id"]))
            d.addBoth(answered)

        def answered(result: object) -> None:
            state["answered"] += 1
            if state["sent"] < count:
                one()
            elif state["answered"] == count and not done.called:
                done.callback(None)

        for _ in range(min(window, count)):
            one()
        return done

    t0 = time.perf_counter()
    c.call(issue)
    last = max(c.wait_ended(i) for i in ids)
    return len(ids) / (last - t0)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes *pids* have used so far (their children not counted)."""
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def print_profiles(where: Path, top: int) -> None:
    """The top of each runtime's profile by own time (the runtimes have exited and written them)."""
    for path in sorted(where.glob("*.prof")):
        out = io.StringIO()
        stats = pstats.Stats(str(path), stream=out)
        stats.sort_stats("tottime").print_stats(top)
        print(f"--- {path.name} (by own time) ---")
        body = out.getvalue()
        print(body[body.find("   ncalls") :] if "   ncalls" in body else body)


SECTIONS = ("latency", "rate", "pipe", "recovery")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--spawns", type=int, default=200)
    parser.add_argument("--window", type=int, default=16, help="spawns in flight in the concurrent rate")
    parser.add_argument("--pipe-mib", type=int, default=1024)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--profile", type=Path, default=None, help="run the runtimes under cProfile into DIR")
    parser.add_argument("--profile-top", type=int, default=25)
    args = parser.parse_args()
    only = set(args.only.split(","))
    root = Path(tempfile.mkdtemp(prefix="oneos-bench-agents-"))
    broker = start_oneospsd(root / "broker")
    procs = [start_runtime(f"rt-{i}", broker.url, root, profile=args.profile) for i in (1, 2, 3)]
    try:
        c = Client(broker.url)
        while True:  # wait until the scheduler answers
            try:
                c.call(c.rpc.call, "scheduler", "ps", timeout=2)
                break
            except Exception:
                time.sleep(0.2)
        time.sleep(1.0)  # let all 3 runtimes' statuses settle
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; 3 runtimes + broker on loopback")
        modes = (("bus", False), ("1 hop", True))
        if only & {"latency", "rate"}:
            c.open_direct()
        if "latency" in only:
            print()
            print(f"{'spawn latency (ms)':<34}{'remote p50':>12}{'remote p99':>12}{'local p50':>12}{'local p99':>12}")
            for argv in (["/bin/true"], ["python3", "-c", "pass"]):
                for mode, direct in modes:
                    remote, local = bench_latency(c, argv, args.rounds, direct)
                    print(
                        f"{' '.join(argv) + f' ({mode})':<34}{pct(remote, 50) * 1e3:>12.1f}"
                        f"{pct(remote, 99) * 1e3:>12.1f}{pct(local, 50) * 1e3:>12.1f}{pct(local, 99) * 1e3:>12.1f}"
                    )
                    if argv == ["/bin/true"]:
                        gap = (pct(remote, 50) - pct(local, 50)) * 1e3
                        print(f"  p50 over local: {gap:.1f} ms (aim: within 5 ms) {'met' if gap <= 5 else 'NOT met'}")
        if "rate" in only:
            # CPU per spawn is what the code costs, whatever else loads the machine; the rates depend on both
            runtimes = [p.pid for p in procs]
            print()
            for mode, direct in modes:
                before = cpu_seconds(runtimes), cpu_seconds([broker.process.pid])
                serial = bench_rate(c, args.spawns, direct)
                concurrent = bench_rate_concurrent(c, args.spawns, args.window, direct)
                used = cpu_seconds(runtimes) - before[0], cpu_seconds([broker.process.pid]) - before[1]
                met = " ".join("met" if rate >= 200 else "NOT met" for rate in (serial, concurrent))
                print(
                    f"spawns per second across 3 runtimes ({args.spawns} x /bin/true, {mode}), one after another: "
                    f"{serial:.1f}; {args.window} in flight: {concurrent:.1f} (aim: 200/s; {met})"
                )
                spawns = 2 * args.spawns
                print(
                    f"  CPU per spawn (ms): runtimes {used[0] / spawns * 1e3:.2f} (all 3), "
                    f"broker {used[1] / spawns * 1e3:.2f}"
                )
        if "pipe" in only:
            size = args.pipe_mib * 2**20
            print()
            print(
                f"pipe throughput, {args.pipe_mib} MiB (MB/s): runtime->runtime {bench_pipe(broker.url, size):.0f}"
                f" | local UNIX pipe {local_pipe(size):.0f} | raw loopback TCP {raw_tcp(size):.0f}"
            )
        if "recovery" in only:
            print()
            print(f"SIGKILL of a runtime -> its agent running elsewhere: {bench_recovery(c, broker.url, root):.3f} s")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.profile is not None:
        print()
        print_profiles(args.profile, args.profile_top)


if __name__ == "__main__":
    main()
