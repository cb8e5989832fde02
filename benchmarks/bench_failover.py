#!/usr/bin/env python3
"""Failover benchmark: how soon after the kernel leader's SIGKILL a shell command and a file read work again.

Prints, for ``--repeat`` repetitions (default 3), each figure beside the
bounds that explain it and beside a baseline measured in the same run.
Bounds: the broker publishes a SIGKILLed runtime's last will at once (the
keepalive, 1.5 x 2 s, only matters for a silent death); the next runtime
claims the kernel after the 0.5 s election settle or, where the election
holds a lease, lease + margin after the will (2 + 0.5 s with the default
keepalive; read from the code at run time).  Baseline: how long the same
command takes once with no fault, so a reader sees how much of the
failover time is just the command itself.

1. ``oneos grid --runtimes 3`` on loopback (a fresh grid per repetition,
   the store is one SQLite file all three may open, so it moves with the
   leader): SIGKILL the leader (its pid from ``oneos status --json``), then
   (a) ``ssh -p PORT -i KEY alice@127.0.0.1 -- ps`` through the door of a
   runtime that is neither the old nor the next leader, and (b) ``oneos fs
   cat /tmp/f``, each retried back to back until it succeeds (with the
   right content).  Every attempt is a real process: the attempt length is
   printed as the granularity.
2. Three network namespaces (root only, else skipped with the reason): a
   broker on h1, ``oneosd`` rt-a on h1, rt-b on h2, rt-c on h3, each with its
   own ``ONEOS_HOME``; rt-a (which creates and holds the SQLite store) is
   SIGKILLed and restarted, so rt-b leads (leadership is sticky) while rt-a
   serves the store.  Then SIGKILL the leader and time ``oneos -c ps`` and
   ``oneos fs cat`` run in h3 with rt-c's home.  A fresh network per
   repetition.
3. Memory: in the last repetition of each, before the kill, ``cat /tmp/big |
   wc -c`` (``--big-mb`` MiB, put with ``oneos fs put``) runs in a shell
   while VmRSS of the leader, of the runtime serving the shell session and
   of the one serving the store is read from /proc every 50 ms; the peak is
   printed beside each one's idle RSS just before, and wc's count is
   checked against the size.

Everything started here (the grid, the namespaces and all in them) is
stopped on the way out, on errors and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oneos.testing.bench import interrupt_on_signals  # noqa: E402
from oneos.testing.ssh import ssh_options  # noqa: E402
from oneos.twistd import twistd_command  # noqa: E402

PY = sys.executable
ONEOSD = str(Path(sys.executable).with_name("oneosd"))


def _default_keepalive() -> float:
    import dataclasses

    from oneos.config import Config

    return float(next(f.default for f in dataclasses.fields(Config) if f.name == "keepalive"))


#: the runtimes' MQTT keepalive (config ``keepalive``, not set here), for the printed bounds
KEEPALIVE = _default_keepalive()
#: one attempt (an ssh or oneos process) may take at most this long
ATTEMPT_TIMEOUT = 30.0
#: pause between two attempts: just enough not to spin if a command fails instantly
GAP = 0.02
#: VmRSS sampling period
RSS_PERIOD = 0.05
#: how many no-fault runs of each command make the baseline
BASELINE_RUNS = 3
#: what went wrong in this run; if anything did, the work directory (logs) is kept
TROUBLE: list[str] = []
BROKER_PORT = 1883


class BenchError(Exception):
    """The benchmark cannot go on (a process did not start, a command failed ...)."""


def progress(text: str) -> None:
    print(f"  {text} ...", file=sys.stderr, flush=True)


def oneos_argv(*args: str) -> list[str]:
    return [PY, "-m", "oneos.cli.main", *args]


def free_ports(n: int) -> int:
    """A base port such that base .. base+n-1 are all free on 127.0.0.1 right now."""
    for _ in range(200):
        base = random.randint(20000, 60000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise BenchError(f"found no {n} consecutive free ports")


def wait_until(what: str, check: Callable[[], Any], deadline: float, logs: Callable[[], str] | None = None) -> Any:
    """Call *check* until it is truthy; BenchError after *deadline* seconds."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(0.2)  # polling interval for set-up steps; the condition decides
    tail = "\n--- log tail ---\n" + "\n".join(logs().splitlines()[-40:]) if logs else ""
    raise BenchError(f"timed out after {deadline:.0f}s waiting for {what}; last seen: {last!r}{tail}")


def run(
    argv: list[str],
    env: dict[str, str] | None = None,
    timeout: float = ATTEMPT_TIMEOUT,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run *argv* (inside a namespace if *wrap* says how); a timeout is returned as status 124."""
    full = wrap(argv) if wrap else argv
    try:
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return subprocess.CompletedProcess(full, 124, out, f"timed out after {timeout:.0f}s")


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    text = (r.stderr.strip() or r.stdout.strip() or f"status {r.returncode}").splitlines()
    line = text[-1] if text else ""
    return line if len(line) <= 200 else line[:197] + "..."


def stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    s = sorted(values)
    return f"min {s[0]:.2f}  median {statistics.median(s):.2f}  max {s[-1]:.2f}"


# -- retrying a command until it works ---------------------------------------------------------

Probe = Callable[[], tuple[bool, str]]


@dataclass
class Recovery:
    """The attempts of one probe after a SIGKILL, times relative to the kill."""

    began: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)
    ok: bool = False
    errors: Counter = field(default_factory=Counter)

    @property
    def at(self) -> float | None:
        """End of the first successful attempt: the command worked again by then."""
        return self.ended[-1] if self.ok else None

    @property
    def tries(self) -> int:
        return len(self.ended)

    @property
    def step(self) -> float:
        """Median length of one attempt: the granularity of :attr:`at`."""
        return (
            statistics.median(e - b for b, e in zip(self.began, self.ended, strict=False))
            if self.ended
            else float("nan")
        )

    @property
    def longest(self) -> float:
        return max((e - b for b, e in zip(self.began, self.ended, strict=False)), default=float("nan"))

    def cell(self, width: int) -> str:
        at = f"{self.at:.2f}" if self.ok else "never"
        return f"{at:>{width}} {self.tries:>5}  {self.step:>5.2f} {self.longest:>5.2f}"


def poll(probe: Probe, t0: float, deadline: float, out: Recovery) -> None:
    """Run *probe* back to back until it succeeds or *deadline* seconds after *t0* have passed."""
    while True:
        began = time.monotonic()
        ok, error = probe()
        ended = time.monotonic()
        out.began.append(began - t0)
        out.ended.append(ended - t0)
        if ok:
            out.ok = True
            return
        out.errors[error] += 1
        if ended - t0 > deadline:
            return
        time.sleep(GAP)


def race(probes: dict[str, Probe], t0: float, deadline: float) -> dict[str, Recovery]:
    """Run every probe's retry loop at the same time (one thread each) and wait for all."""
    results = {name: Recovery() for name in probes}
    threads = [
        threading.Thread(target=poll, args=(p, t0, deadline, results[n]), daemon=True) for n, p in probes.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # short joins so Ctrl-C is seen at once
    return results


def baseline(probe: Probe, what: str, runs: int = BASELINE_RUNS) -> list[float]:
    """How long *probe* takes when nothing is wrong (it must succeed every time)."""
    out = []
    for _ in range(runs):
        t = time.monotonic()
        ok, error = probe()
        if not ok:
            raise BenchError(f"{what} failed with no fault: {error}")
        out.append(time.monotonic() - t)
    return out


def takeover_bound(keepalive: float = KEEPALIVE) -> tuple[float, str]:
    """Seconds after a leader's will before the next runtime claims the kernel, and how that comes about.

    Read from :class:`oneos.runtime.election.Election`: the 0.5 s settle,
    and, where the election holds a lease, ``lease + margin`` after the
    leader vanished (``RuntimeService`` gives lease = keepalive, margin =
    max(0.5, lease / 4)), whichever is later.
    """
    import inspect

    from oneos.runtime.election import Election

    params = inspect.signature(Election.__init__).parameters
    settle = float(params["settle"].default)
    if "lease" not in params:
        return settle, f"election settle {settle:g} s"
    lease = keepalive
    margin = max(0.5, lease / 4)
    return max(settle, lease + margin), (
        f"lease {lease:g} s (= keepalive) + margin {margin:g} s after the will "
        f"(the {settle:g} s election settle runs meanwhile)"
    )


def sigkill_runtime(pid: int, rid: str) -> float:
    """SIGKILL runtime *rid* (checking that *pid* is it); returns the monotonic time of the kill."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError as e:
        raise BenchError(f"runtime {rid} (pid {pid}) is not running: {e}") from None
    if rid.encode() not in argv or not any(b"oneosd" in a for a in argv):
        raise BenchError(f"pid {pid} is not runtime {rid}: {b' '.join(argv).decode(errors='replace')}")
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def next_leader(view: dict[str, dict], dead: str) -> str | None:
    """Who the election picks when *dead* goes: the best-ranked live kernel runtime (earliest start, then id)."""
    candidates = [s for rid, s in view.items() if rid != dead and s["state"] == "alive" and s["kernel"]]
    return min(candidates, key=lambda s: (s["started_at"], s["id"]))["id"] if candidates else None


def leader_of(view: dict[str, dict]) -> str | None:
    leaders = [rid for rid, s in view.items() if s["state"] == "alive" and s["leader"]]
    return leaders[0] if len(leaders) == 1 else None


# -- memory --------------------------------------------------------------------------------------


def vmrss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def idle_rss(pids: list[int], seconds: float = 1.0) -> dict[int, float]:
    """Median VmRSS of each pid over *seconds*, sampled every RSS_PERIOD."""
    samples: dict[int, list[float]] = {p: [] for p in pids}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for p in pids:
            v = vmrss_mib(p)
            if v is not None:
                samples[p].append(v)
        time.sleep(RSS_PERIOD)
    return {p: statistics.median(v) if v else float("nan") for p, v in samples.items()}


class RSSSampler(threading.Thread):
    """Reads VmRSS of some pids every RSS_PERIOD until stopped; keeps the peaks."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak: dict[int, float] = {p: float("nan") for p in pids}
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for p in self.pids:
                v = vmrss_mib(p)
                if v is not None and not v <= self.peak[p]:  # also replaces the initial nan
                    self.peak[p] = v
            self.samples += 1
            self.halt.wait(RSS_PERIOD)

    def stop(self) -> None:
        self.halt.set()
        self.join()


@dataclass
class RSSResult:
    size: int
    put_seconds: float
    shell_rid: str
    rows: list[tuple[str, str, float, float]]  # runtime, roles, idle MiB, peak MiB
    seconds: float
    samples: int
    status: int
    output: str
    error: str


def forget(directory: Path) -> None:
    """Delete a finished round's directory (its store may hold the big file) unless something went wrong."""
    if not TROUBLE and sys.exc_info()[0] is None:
        shutil.rmtree(directory, ignore_errors=True)


def sparse_file(path: Path, size: int) -> Path:
    """A local file of *size* zero bytes that takes no disk space (read back at memory speed)."""
    if not path.exists() or path.stat().st_size != size:
        with open(path, "wb") as f:
            f.truncate(size)
    return path


def measure_rss(
    roles: dict[str, tuple[int, list[str]]],
    shell_rid: str,
    put: Callable[[], subprocess.CompletedProcess],
    pipeline: Callable[[float], subprocess.CompletedProcess],
    size: int,
) -> RSSResult:
    """Put the big file, then run the pipeline while sampling every runtime in *roles* (rid -> pid, roles)."""
    progress(f"putting a {size // 2**20} MiB /tmp/big")
    t = time.monotonic()
    r = put()
    put_seconds = time.monotonic() - t
    if r.returncode != 0:
        raise BenchError(f"oneos fs put of /tmp/big failed: {one_line(r)}")
    time.sleep(1.0)  # let the put's aftermath (commit, GC) settle before measuring "idle"
    pids = [pid for pid, _ in roles.values()]
    idle = idle_rss(pids)
    sampler = RSSSampler(pids)
    progress("running `cat /tmp/big | wc -c` in the shell")
    sampler.start()
    t = time.monotonic()
    try:
        r = pipeline(120 + size / 2**20)  # generous: even 1 MiB/s finishes in time
    finally:
        sampler.stop()
    seconds = time.monotonic() - t
    rows = [(rid, ", ".join(rl), idle[pid], sampler.peak[pid]) for rid, (pid, rl) in roles.items()]
    return RSSResult(
        size, put_seconds, shell_rid, rows, seconds, sampler.samples, r.returncode, r.stdout.strip(), r.stderr.strip()
    )


def print_rss(res: RSSResult, how: str) -> None:
    mib = res.size // 2**20
    print(
        f"  memory: `cat /tmp/big | wc -c` in {res.shell_rid}'s shell ({how}), /tmp/big {mib} MiB "
        f"(put in {res.put_seconds:.1f} s), VmRSS every {RSS_PERIOD * 1000:.0f} ms, {res.samples} samples:"
    )
    for rid, roles, idle, peak in res.rows:
        print(
            f"    {rid:<5} {roles:<32} idle {idle:7.1f} MiB   peak {peak:7.1f} MiB   ({peak - idle:+.1f})"
            f"   | file size {mib} MiB"
        )
    count = wc_count(res)
    if count is not None:
        verdict = "ok" if count == res.size else f"WRONG, expected {res.size}"
        print(
            f"    wc -c printed {count} ({verdict}) in {res.seconds:.1f} s "
            f"({res.size / max(res.seconds, 1e-9) / 1e6:.0f} MB/s end to end)"
        )
    else:
        said = (res.error or res.output or "(nothing)").splitlines()
        print(f"    the shell answered status {res.status} after {res.seconds:.1f} s: {' / '.join(said)[:300]}")


# -- report ----------------------------------------------------------------------------------------


@dataclass
class Round:
    killed: str
    new_leader: str | None
    door: str
    base_shell: list[float]
    base_cat: list[float]
    shell: Recovery
    cat: Recovery


def wc_count(res: RSSResult) -> int | None:
    words = res.output.split()
    return int(words[0]) if res.status == 0 and words and words[0].isdigit() else None


def checked(rnd: Round, rss: RSSResult | None) -> tuple[Round, RSSResult | None]:
    """Note in TROUBLE (so the logs are kept) a probe that never recovered or a wrong big pipeline."""
    if not (rnd.shell.ok and rnd.cat.ok):
        TROUBLE.append(f"a probe never recovered after killing {rnd.killed}")
    if rss is not None and wc_count(rss) != rss.size:
        TROUBLE.append("`cat /tmp/big | wc -c` did not print the size")
    return rnd, rss


def print_header(door_label: str) -> None:
    print(
        f"  {'rep':>3}  {'killed':<6} {'new':<6} {door_label:<5} | {'shell ok by':>11} {'tries':>5}  {'each':>5} {'max':>5} "
        f"| {'fs cat ok by':>12} {'tries':>5}  {'each':>5} {'max':>5}   (s after SIGKILL; each/max: median/longest attempt)"
    )


def print_round(i: int, r: Round) -> None:
    print(f"  {i:>3}  {r.killed:<6} {r.new_leader or '?':<6} {r.door:<5} | {r.shell.cell(11)} | {r.cat.cell(12)}")


def print_bounds() -> None:
    takeover, how = takeover_bound()
    print(
        f"  bounds: the broker publishes a SIGKILLed runtime's will at once (the keepalive, 1.5 x {KEEPALIVE:g} s, "
        f"only matters for a silent death); the next-ranked runtime claims the kernel {takeover:g} s after it: {how}"
    )


def print_legend() -> None:
    print(
        "  (ok by: end of the first attempt that worked; the outage ended between the start of the last failed "
        "attempt and then. tries 1: the command never failed; what it took above the baseline it spent waiting, or "
        "slowed by the failover and by the other probe sharing the CPUs)"
    )


def print_summary(rounds: list[Round], shell_name: str, cat_bound: str, cat_extra: float) -> None:
    takeover, _ = takeover_bound()
    base_shell = statistics.median(x for r in rounds for x in r.base_shell)
    base_cat = statistics.median(x for r in rounds for x in r.base_cat)
    shell = [r.shell.at for r in rounds if r.shell.at is not None]
    cat = [r.cat.at for r in rounds if r.cat.at is not None]
    failed = sum(1 for r in rounds if not r.shell.ok) + sum(1 for r in rounds if not r.cat.ok)
    print(
        f"  SIGKILL -> `{shell_name}` works (s): {stats(shell)}"
        f"   | baseline, no fault: one `{shell_name}` {base_shell:.2f}; "
        f"expect: will ~0 + takeover {takeover:g} + up to one command = {takeover:.2f} .. {takeover + base_shell:.2f}"
    )
    print(
        f"  SIGKILL -> `oneos fs cat` works (s): {stats(cat)}"
        f"   | baseline, no fault: one `oneos fs cat` {base_cat:.2f}; expect: {cat_bound} {cat_extra + base_cat:.2f}"
    )
    if failed:
        print(f"  {failed} probe(s) never worked again within the deadline")
    for label, errors in (
        ("shell", sum((r.shell.errors for r in rounds), Counter())),
        ("fs cat", sum((r.cat.errors for r in rounds), Counter())),
    ):
        if errors:
            seen = "; ".join(f"{n}x {e!r}" for e, n in errors.most_common(3))
            print(f"  while failing, {label} said: {seen}")


# -- 1. oneos grid on loopback -------------------------------------------------------------------


class Grid:
    """``python -m oneos.cli.main grid --runtimes 3`` in its own session, output to a log file."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.port = free_ports(1)
        self.ssh_base = free_ports(3)
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.env = dict(os.environ, ONEOS_HOME=str(root / "me"))
        self.log_path = root / "grid.log"
        with open(self.log_path, "wb") as log:
            # a session of its own: Ctrl-C here does not reach it, and its children share its group
            self.proc = subprocess.Popen(
                [
                    PY,
                    "-m",
                    "oneos.cli.main",
                    "grid",
                    "--runtimes",
                    "3",
                    "--dir",
                    str(root / "grid"),
                    "--port",
                    str(self.port),
                    "--ssh-port",
                    str(self.ssh_base),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def oneos(self, *args: str, timeout: float = ATTEMPT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return run(oneos_argv(*args), env=self.env, timeout=timeout)

    def view(self) -> dict[str, dict]:
        if self.proc.poll() is not None:
            raise BenchError(f"oneos grid exited with status {self.proc.returncode}:\n{self.logs()[-3000:]}")
        r = self.oneos("status", "--json", "--pubsub", self.url, "--timeout", "3")
        return {s["id"]: s for s in json.loads(r.stdout)} if r.returncode == 0 else {}

    def stop(self) -> None:
        """SIGTERM the grid (it stops its runtimes), then SIGKILL whatever is left in its process group."""
        pid = self.proc.pid
        if self.proc.returncode is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            end = time.monotonic() + 45
            # WNOWAIT: the exited grid stays a zombie, so its group id cannot be reused before killpg
            while time.monotonic() < end and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                time.sleep(0.1)
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        finally:
            self.proc.wait()


def grid_round(root: Path, rep: int, key: Path, deadline: float, big: int | None) -> tuple[Round, RSSResult | None]:
    progress(f"grid repetition {rep}: starting oneos grid --runtimes 3")
    grid = Grid(root / f"grid-{rep}")
    try:

        def ready() -> dict | None:
            view = grid.view()
            alive = [s for s in view.values() if s["state"] == "alive" and s["ssh"]]
            ok = len(alive) == 3 and leader_of(view) and any(s["fs_serving"] for s in alive)
            return view if ok else None

        view = wait_until(
            "a grid of 3 live runtimes with shells, one leader, one serving the tree", ready, 120, grid.logs
        )
        wait_until(
            "`oneos user addkey` to work",
            lambda: grid.oneos("user", "addkey", "alice", f"{key}.pub", "--pubsub", grid.url).returncode == 0,
            60,
            grid.logs,
        )
        content = f"failover round {rep}\n"
        (grid.root / "f").write_text(content)
        r = grid.oneos("fs", "--pubsub", grid.url, "--no-progress", "put", str(grid.root / "f"), "/tmp/f")
        if r.returncode != 0:
            raise BenchError(f"oneos fs put /tmp/f failed: {one_line(r)}")

        leader = leader_of(view)
        assert leader is not None
        successor = next_leader(view, leader)
        door = next(rid for rid in sorted(view) if rid not in (leader, successor))
        door_port = view[door]["ssh"].rsplit(":", 1)[1]

        def ssh(line: str, timeout: float = ATTEMPT_TIMEOUT) -> subprocess.CompletedProcess[str]:
            return run(
                ["ssh", "-p", door_port, *ssh_options(key, connect_timeout=10), "alice@127.0.0.1", "--", line],
                timeout=timeout,
            )

        def shell_probe() -> tuple[bool, str]:
            r = ssh("ps")
            return r.returncode == 0, one_line(r)

        def cat_probe() -> tuple[bool, str]:
            r = grid.oneos("fs", "--pubsub", grid.url, "cat", "/tmp/f")
            return r.returncode == 0 and r.stdout == content, one_line(
                r
            ) if r.returncode else f"wrong content {r.stdout!r}"

        base_shell = baseline(shell_probe, "ssh ps")
        base_cat = baseline(cat_probe, "oneos fs cat")

        rss = None
        if big:
            fs = next(rid for rid, s in view.items() if s["fs_serving"] and s["state"] == "alive")
            roles: dict[str, tuple[int, list[str]]] = {}
            for rid, role in ((leader, "leader"), (fs, "file store"), (door, "shell session")):
                roles.setdefault(rid, (view[rid]["pid"], []))[1].append(role)
            local = sparse_file(root / "big", big)
            rss = measure_rss(
                roles,
                door,
                lambda: grid.oneos(
                    "fs",
                    "--pubsub",
                    grid.url,
                    "--no-progress",
                    "put",
                    str(local),
                    "/tmp/big",
                    timeout=600 + big / 2**20,
                ),
                lambda timeout: ssh("cat /tmp/big | wc -c", timeout=timeout),
                big,
            )
            time.sleep(2.0)  # back to idle before the kill

        progress(f"grid repetition {rep}: SIGKILL of the leader {leader}")
        t0 = sigkill_runtime(view[leader]["pid"], leader)
        got = race({"shell": shell_probe, "cat": cat_probe}, t0, deadline)
        after = grid.view()
        return checked(Round(leader, leader_of(after), door, base_shell, base_cat, got["shell"], got["cat"]), rss)
    finally:
        grid.stop()
        forget(grid.root)


def bench_grid(root: Path, args: argparse.Namespace) -> None:
    print(
        f"\n== 1. oneos grid on loopback: 3 runtimes (one shared SQLite store, served by the leader), "
        f"{args.repeat} repetition(s), a fresh grid each"
    )
    print_bounds()
    print(
        "  the shared store follows oneos.runtime.netstore.fs_server: with no leader, the best-ranked live runtime "
        "that can open it, so it moves on the will, with no lease wait"
    )
    key = root / "id_alice"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    rounds: list[Round] = []
    rss = None
    for rep in range(1, args.repeat + 1):
        big = args.big_mb * 2**20 if rep == args.repeat and args.big_mb > 0 else None
        rnd, got = grid_round(root, rep, key, args.deadline, big)
        rss = got or rss
        if not rounds:
            print_header("door")
        rounds.append(rnd)
        print_round(rep, rnd)
    print("  (door: the runtime whose SSH port the shell probe uses, neither the killed nor the next leader)")
    print_legend()
    print_summary(rounds, "ssh ps", "will ~0 + opening the store + one command >=", 0.0)
    if rss:
        print_rss(rss, "ssh through its door, before the kill")


# -- 2. three network namespaces ------------------------------------------------------------------


class Machines:
    """Three hosts on a bridge: a broker on h1, rt-a on h1, rt-b on h2, rt-c on h3."""

    def __init__(self, root: Path) -> None:
        from oneos.testing.netns import Network

        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.net = Network(hosts=3)
        self.h1, self.h2, self.h3 = self.net.hosts
        self.hosts = {"rt-a": self.h1, "rt-b": self.h2, "rt-c": self.h3}
        self.url = f"mqtt://{self.h1.addr}:{BROKER_PORT}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts = 0
        self.logs_paths: list[Path] = []

    def close(self) -> None:
        self.net.close()

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs_paths if p.exists())

    def _start(self, host: Any, argv: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
        self.logs_paths.append(log_path)
        with open(log_path, "wb") as log:
            return host.popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)

    def start_broker(self) -> None:
        from oneos.testing.netns import wait_port

        d = self.root / "broker"
        d.mkdir(exist_ok=True)
        argv = twistd_command(
            "oneospsd",
            "--port",
            str(BROKER_PORT),
            "--interface",
            self.h1.addr,
            "--port-file",
            str(d / "broker.port"),
            "--allow-anonymous",
        )
        proc = self._start(self.h1, argv, d / "oneospsd.log", dict(os.environ), d)
        try:
            wait_port(self.h1, self.h1.addr, BROKER_PORT, 60, process=proc)
        except Exception as e:
            raise BenchError(f"the broker in h1 did not come up: {e}\n{self.logs()}") from None

    def home(self, rid: str) -> Path:
        return self.root / rid

    def start(self, rid: str) -> None:
        """``oneosd --pubsub URL --id RID --stats-interval 0.5`` in its host, with its own ONEOS_HOME."""
        home = self.home(rid)
        home.mkdir(exist_ok=True)
        self.starts += 1
        env = dict(os.environ, ONEOS_HOME=str(home), PYTHONUNBUFFERED="1")
        argv = [ONEOSD, "--pubsub", self.url, "--id", rid, "--stats-interval", "0.5"]
        self.procs[rid] = self._start(self.hosts[rid], argv, home / f"runtime-{self.starts}.log", env, home)

    def kill(self, rid: str, view: dict[str, dict]) -> float:
        """SIGKILL *rid*; returns the time of the kill (reap it with :meth:`reap`)."""
        return sigkill_runtime(view[rid]["pid"], rid)

    def reap(self, rid: str) -> None:
        proc = self.procs.get(rid)
        if proc is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    def oneos(self, rid: str, *args: str, timeout: float = ATTEMPT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``oneos ...`` on *rid*'s host with *rid*'s ONEOS_HOME."""
        env = dict(os.environ, ONEOS_HOME=str(self.home(rid)))
        return run(oneos_argv(*args), env=env, timeout=timeout, wrap=self.hosts[rid].command)

    def view(self) -> dict[str, dict]:
        for rid, proc in self.procs.items():
            if proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                raise BenchError(f"runtime {rid} exited with status {proc.returncode}:\n{self.logs()}")
        env = dict(os.environ, ONEOS_HOME=str(self.root / "observer"))
        r = run(oneos_argv("status", "--json", "--pubsub", self.url, "--timeout", "3"), env=env, wrap=self.h3.command)
        return {s["id"]: s for s in json.loads(r.stdout)} if r.returncode == 0 else {}

    def wait(self, alive: set[str], leader: str | None = None, fs: str | None = None) -> dict[str, dict]:
        def check() -> dict | None:
            view = self.view()
            live = {rid for rid, s in view.items() if s["state"] == "alive" and s["ssh"]}
            lead = leader_of(view)
            if (
                alive <= live
                and lead
                and (leader is None or lead == leader)
                and (fs is None or (fs in live and view[fs]["fs_serving"]))
            ):
                return view
            return None

        what = (
            f"{sorted(alive)} alive with shells"
            + (f", {leader} leading" if leader else ", one leader")
            + (f", {fs} serving the tree" if fs else "")
        )
        return wait_until(what, check, 90, self.logs)


def netns_round(root: Path, rep: int, deadline: float, big: int | None) -> tuple[Round, RSSResult | None]:
    progress(f"namespaces repetition {rep}: broker, rt-a, rt-b, rt-c")
    m = Machines(root / f"netns-{rep}")
    try:
        m.start_broker()
        m.start("rt-a")
        m.wait({"rt-a"}, "rt-a", fs="rt-a")
        m.start("rt-b")
        m.wait({"rt-a", "rt-b"}, "rt-a")  # rt-b before rt-c, so rt-b ranks first when rt-a goes
        m.start("rt-c")
        view = m.wait({"rt-a", "rt-b", "rt-c"}, "rt-a", fs="rt-a")
        content = f"failover round {rep} across hosts\n"
        (m.root / "f").write_text(content)
        r = m.oneos("rt-c", "fs", "--pubsub", m.url, "--no-progress", "put", str(m.root / "f"), "/tmp/f")
        if r.returncode != 0:
            raise BenchError(f"oneos fs put /tmp/f failed: {one_line(r)}")

        progress(f"namespaces repetition {rep}: SIGKILL and restart of rt-a, so rt-b leads and rt-a serves the store")
        m.kill("rt-a", view)
        m.reap("rt-a")
        m.wait({"rt-b", "rt-c"}, "rt-b")
        m.start("rt-a")
        view = m.wait({"rt-a", "rt-b", "rt-c"}, "rt-b", fs="rt-a")

        def shell_probe() -> tuple[bool, str]:
            r = m.oneos("rt-c", "-c", "ps")
            return r.returncode == 0, one_line(r)

        def cat_probe() -> tuple[bool, str]:
            r = m.oneos("rt-c", "fs", "--pubsub", m.url, "cat", "/tmp/f")
            return r.returncode == 0 and r.stdout == content, one_line(
                r
            ) if r.returncode else f"wrong content {r.stdout!r}"

        wait_until("the tree to be served by the restarted rt-a", lambda: cat_probe()[0], 60, m.logs)
        base_shell = baseline(shell_probe, "oneos -c ps in h3")
        base_cat = baseline(cat_probe, "oneos fs cat in h3")

        leader = leader_of(view)
        assert leader is not None
        rss = None
        if big:
            roles: dict[str, tuple[int, list[str]]] = {}
            for rid, role in ((leader, "leader"), ("rt-a", "file store"), ("rt-c", "shell session")):
                roles.setdefault(rid, (view[rid]["pid"], []))[1].append(role)
            local = sparse_file(root / "big", big)
            rss = measure_rss(
                roles,
                "rt-c",
                lambda: m.oneos(
                    "rt-c",
                    "fs",
                    "--pubsub",
                    m.url,
                    "--no-progress",
                    "put",
                    str(local),
                    "/tmp/big",
                    timeout=600 + big / 2**20,
                ),
                lambda timeout: m.oneos("rt-c", "-c", "cat /tmp/big | wc -c", timeout=timeout),
                big,
            )
            time.sleep(2.0)  # back to idle before the kill

        progress(f"namespaces repetition {rep}: SIGKILL of the leader {leader}")
        t0 = m.kill(leader, view)
        got = race({"shell": shell_probe, "cat": cat_probe}, t0, deadline)
        m.reap(leader)
        after = m.view()
        return checked(Round(leader, leader_of(after), "rt-c", base_shell, base_cat, got["shell"], got["cat"]), rss)
    finally:
        m.close()
        forget(m.root)


def bench_netns(root: Path, args: argparse.Namespace) -> None:
    print(
        f"\n== 2. three network namespaces: broker + rt-a on h1, rt-b on h2, rt-c on h3 (oneosd, stats every 0.5 s); "
        f"rt-a holds the SQLite store and was restarted, so the leader is another; {args.repeat} repetition(s), "
        f"a fresh network each"
    )
    from oneos.testing.netns import available

    why = available()
    if why is not None:
        print(f"  skipped: {why}")
        return
    print_bounds()
    print("  the store host (rt-a) is not killed, so a file read needs no failover at all")
    rounds: list[Round] = []
    rss = None
    for rep in range(1, args.repeat + 1):
        big = args.big_mb * 2**20 if rep == args.repeat and args.big_mb > 0 else None
        rnd, got = netns_round(root, rep, args.deadline, big)
        rss = got or rss
        if not rounds:
            print_header("shell")
        rounds.append(rnd)
        print_round(rep, rnd)
    print("  (shell: `oneos -c ps` in h3 with rt-c's ONEOS_HOME, i.e. rt-c's door; fs cat also from h3)")
    print_legend()
    print_summary(rounds, "oneos -c ps", "the store host lives, so one command =", 0.0)
    if rss:
        print_rss(rss, "`oneos -c` in h3, before the kill")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="SIGKILLs of the leader per setting (default 3)")
    parser.add_argument(
        "--big-mb",
        type=int,
        default=1024,
        help="size of /tmp/big for the memory figures, MiB (default 1024; 0 skips them)",
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: --repeat 1 --big-mb 64")
    parser.add_argument("--only", choices=("grid", "netns"), help="run one of the two settings")
    parser.add_argument(
        "--deadline",
        type=float,
        default=60.0,
        help="seconds after the SIGKILL a probe may keep failing before it is reported as never (default 60)",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.big_mb = 1, 64
    if args.repeat < 1 or args.big_mb < 0:
        parser.error("--repeat must be at least 1 and --big-mb at least 0")
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            print(
                f"the OpenSSH client tool '{tool}' is not installed (apt-get install openssh-client)", file=sys.stderr
            )
            return 2

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop what we started.
    interrupt_on_signals()

    root = Path(tempfile.mkdtemp(prefix="oneos-bench-failover-"))
    started = time.monotonic()
    try:
        print(
            f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {sys.version.split()[0]}; "
            f"retries back to back ({GAP * 1000:.0f} ms apart), shell and fs probes at the same time; "
            f"baselines: median of {BASELINE_RUNS} no-fault runs per repetition"
        )
        if args.only in (None, "grid"):
            bench_grid(root, args)
        if args.only in (None, "netns"):
            bench_netns(root, args)
        print(f"\n(total {time.monotonic() - started:.0f} s)")
        return 0
    except BenchError as e:
        TROUBLE.append(str(e))
        print(f"bench_failover: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_failover: interrupted; everything started here was stopped", file=sys.stderr)
        return 130
    finally:
        if TROUBLE:
            print(f"bench_failover: logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
