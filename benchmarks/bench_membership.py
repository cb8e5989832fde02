#!/usr/bin/env python3
"""Membership benchmark: how fast runtimes find each other and notice a death.

Prints, in one run and side by side with baselines measured the same way:

* time until N runtimes (``--sizes``, default 10 and 50; 200 works) all see
  each other, on our broker and on Mosquitto (``--broker``), beside the time
  for N bare Python processes that only import Twisted to start, and whether
  that is within the aim of issue 15 (1.2x the bare start);
* the broker's CPU: seconds while the N runtimes converge, then seconds and
  percent of one core in an idle window after it (``--idle``, default 30 s),
  the N runtimes' total CPU percent in that window, and how many statuses
  a second the network sent in it (each one reaches every runtime);
* time from SIGKILL of a runtime until an observer sees it dead, beside the
  bound keepalive alone would give (1.5 x keepalive);
* time from SIGKILL of the kernel leader until another runtime claims it;
* idle RSS of one runtime, beside an idle bare Twisted reactor process.

Everything runs on this machine as real processes: brokers (``twistd
oneospsd``, or Mosquitto configured with the files ``oneos mosquitto``
writes) on free loopback ports, and ``twistd oneosd`` runtimes.  Both
brokers check identities as in production: one network secret is created
for the run, every runtime's home gets its own identity's credentials.json,
and Mosquitto gets the password and ACL files for those identities.  A fresh
broker serves each size, so nothing retained from a smaller run is delivered
to a larger one.  Each runtime's front doors listen on ephemeral loopback
ports and its log goes to ``runtime.log`` in its home; the run's directory
is removed at the end unless something failed (its path is printed then).

Convergence is judged by asking every runtime for the ids it sees alive
(the ``members`` RPC), all of them at once, from the moment an observer's
own view holds all N statuses alive; a runtime's convergence time is when
its first complete answer arrived.  The observer's calls go through the
broker, so the broker's convergence CPU includes them.

Every process started is stopped by its pid on the way out, after errors,
Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil

from oneos.security import credentials
from oneos.testing.bench import stop_processes  # noqa: E402
from oneos.testing.brokers import BrokerProcess, mosquitto_binary, start_mosquitto, start_oneospsd
from oneos.twistd import twistd_command

#: the aim of issue 15: N runtimes converge within this many times their bare processes' start
AIM = 1.2
#: the identity the observer connects as: a runtime identity, so it may call every runtime method
OBSERVER = "bench-observer"
#: front doors on ephemeral loopback ports, so any number of runtimes share the machine
DOORS = ("--ssh", "tcp:0:interface=127.0.0.1", "--desktop", "tcp:0:interface=127.0.0.1")


# -- stopping everything on the way out ---------------------------------------------------------

_held = 0
_pending_signal: list[int] = []


def _on_signal(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM unwind the benchmark (so its cleanup runs), except inside :func:`uninterrupted`."""
    if _held:
        _pending_signal.append(signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends: a process is never started without being registered."""
    global _held
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending_signal:
            signum = _pending_signal.pop()
            _pending_signal.clear()
            raise KeyboardInterrupt(f"signal {signum}")


def grace_for(n: int) -> float:
    """Seconds N processes get to stop cleanly on a loaded 2-core machine."""
    return 30.0 + n / 4


def bytecode_env(cache: Path) -> dict[str, str]:
    """This environment, with compiled bytecode kept under *cache* and read from there.

    A OneOS installed by pip has its ``.pyc`` files; a checkout run with
    ``PYTHONDONTWRITEBYTECODE`` (as some sandboxes set) has none, and every
    runtime would compile OneOS's sources at each start, while the baseline
    imports only Twisted, whose ``.pyc`` files are installed.  So children
    write and read bytecode in the run's own directory (nothing is written
    next to the sources), and :func:`warm_up` fills it before anything is timed.
    """
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(cache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


#: a starting gate: ``sh`` waits for end of file on its stdin, then becomes the command (same pid).
#: Starting N processes one by one would let the first ones take the CPU from the parent still starting the
#: rest (200 runtimes took 18 s to start that way); behind the gate all are started first, untimed, and
#: released at once by closing their stdin pipes.
GATE = ["/bin/sh", "-c", 'read _; exec "$@" </dev/null', "sh"]


class Children:
    """Every process this benchmark started, so each one is stopped by its pid, whatever happens."""

    def __init__(self, env: dict[str, str]) -> None:
        #: the environment every child starts from (:func:`bytecode_env`)
        self.env = env
        self.procs: list[subprocess.Popen] = []
        self.brokers: list[BrokerProcess] = []

    def spawn(
        self, argv: list[str], log: Path | None = None, env: dict[str, str] | None = None, gated: bool = False
    ) -> subprocess.Popen:
        """Start *argv* (stdout and stderr to *log*) with :attr:`env` plus *env*, and remember it.

        *gated*: the process waits at a starting gate (:data:`GATE`) until
        :meth:`release`; it keeps its pid when it goes through.
        """
        with uninterrupted():
            out: Any = open(log, "wb") if log is not None else subprocess.DEVNULL
            try:
                proc = subprocess.Popen(
                    [*GATE, *argv] if gated else argv,
                    stdin=subprocess.PIPE if gated else None,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**self.env, **(env or {})},
                    cwd=log.parent if log is not None else None,
                )
            finally:
                if log is not None:
                    out.close()  # the child has its own copy: the parent holds no descriptor per runtime
            self.procs.append(proc)
        return proc

    def at_gate(self, procs: list[subprocess.Popen], deadline: float = 60.0) -> None:
        """Wait until every gated process of *procs* is ``sh`` asleep at the gate (best effort, bounded)."""
        end = time.monotonic() + deadline
        waiting = list(procs)
        while waiting and time.monotonic() < end:
            try:
                p = psutil.Process(waiting[0].pid)
                ready = p.cmdline()[:1] == GATE[:1] and p.status() == psutil.STATUS_SLEEPING
            except psutil.Error:
                ready = True  # gone: nothing to wait for (the caller notices it ended)
            if ready:
                waiting.pop(0)
            else:
                time.sleep(0.01)

    def release(self, procs: list[subprocess.Popen]) -> None:
        """Open the gate of every one of *procs* (one close() each: microseconds for hundreds)."""
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()

    def stop(self, procs: list[subprocess.Popen]) -> None:
        with uninterrupted():
            stop_processes(procs, grace_for(len(procs)))
            gone = {id(p) for p in procs}
            self.procs = [p for p in self.procs if id(p) not in gone]

    def broker(self, start: Callable[[], BrokerProcess]) -> BrokerProcess:
        with uninterrupted():
            broker = start()
            self.brokers.append(broker)
        return broker

    def stop_broker(self, broker: BrokerProcess) -> None:
        with uninterrupted():
            broker.stop()
            self.brokers.remove(broker)

    def stop_all(self) -> None:
        """Runtimes and the rest first (they leave cleanly while their broker is up), the brokers last."""
        with uninterrupted():
            stop_processes(self.procs, grace_for(len(self.procs)))
            self.procs.clear()
            for broker in self.brokers:
                broker.stop()
            self.brokers.clear()


# -- the network: identities, brokers, runtimes -------------------------------------------------


@dataclass
class Network:
    """The run's network secret and where runtime homes go."""

    home: Path
    secret: credentials.Credentials

    def url_as(self, url: str, name: str) -> str:
        """*url* with identity *name*'s user name and password (for the in-process observer)."""
        password = credentials.issue(self.secret, name).password
        return url.replace("mqtt://", f"mqtt://{quote(name, safe='')}:{quote(password, safe='')}@", 1)

    def runtime_home(self, root: Path, rid: str, url: str) -> Path:
        """A runtime's ONEOS_HOME holding its own identity, as ``oneos join`` would leave it."""
        home = root / rid
        home.mkdir(parents=True, exist_ok=True)
        credentials.save(home, credentials.issue(self.secret, rid, url))
        return home


def start_broker(kind: str, directory: Path, network: Network, names: list[str], children: Children) -> BrokerProcess:
    """Our ``twistd oneospsd`` checking identities with the network secret, or Mosquitto with its files."""
    if kind == "ours":
        env = dict(children.env, ONEOS_HOME=str(network.home))
        return children.broker(lambda: start_oneospsd(directory, allow_anonymous=False, env=env))
    from oneos.cli.mosquitto import write_files

    files = directory / "files"
    passwd, acl_file, _conf = write_files(files, network.secret, [OBSERVER, *names], "127.0.0.1:0")
    # Mosquitto started as root reads these as user mosquitto, after dropping privileges: the files and
    # the directories down to them (within the run's own directory) must be readable by others
    root = network.home.parent
    for d in [files, *files.parents]:
        d.chmod(d.stat().st_mode | 0o755)
        if d == root:
            break
    passwd.chmod(0o644)
    return children.broker(lambda: start_mosquitto(directory, password_file=passwd, acl_file=acl_file))


def mosquitto_version() -> str:
    binary = mosquitto_binary()
    if binary is None:
        return ""
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0].strip() if out else ""


def start_runtimes(
    n: int, url: str, root: Path, tag: str, network: Network, children: Children, gated: bool = False
) -> list[subprocess.Popen]:
    """N runtimes on broker *url*, ids ``TAG-0`` ...; their homes are prepared before the first starts.

    They share one SQLite file tree under *root*, as ``oneos grid``'s runtimes
    do: with no store setting each would create its own tree, and N of them
    announcing N trees at once is a fight over the network's store (which
    tree wins, shells waiting for a host that lost), not membership.
    *gated*: they wait at the starting gate (:data:`GATE`) for :meth:`Children.release`.
    """
    homes = [network.runtime_home(root, f"{tag}-{i}", url) for i in range(n)]
    store = f"sqlite:///{root / 'fs.sqlite3'}"
    procs = []
    for i, home in enumerate(homes):
        env = {"ONEOS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        argv = twistd_command(
            "oneosd", "--id", f"{tag}-{i}", "--pubsub", url, "--broker", "external", "--store", store, *DOORS
        )
        procs.append(children.spawn(argv, home / "runtime.log", env, gated=gated))
    return procs


def raise_fd_limit(n: int) -> None:
    """Enough descriptors for a broker with N connections (children inherit the limit)."""
    need = 8 * n + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < need:
            print(f"warning: only {target} file descriptors allowed, {need} wanted for {n} runtimes", file=sys.stderr)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process *pid* so far (None once it is gone)."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


# -- the observer ---------------------------------------------------------------------------------

_reactor_thread: Any = None


def observer_reactor() -> Any:
    """The asyncio reactor, running in a daemon thread (started once, shared by every observer)."""
    global _reactor_thread
    from oneos.reactor import install_asyncio_reactor

    install_asyncio_reactor()
    from twisted.internet import reactor

    if _reactor_thread is None:
        import threading

        _reactor_thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
        _reactor_thread.start()
    return reactor


def why_sent(old: Any, new: Any) -> str:
    """What is new in status *new* against the same runtime's previous one *old*: the fields that
    differ (the load figures as "load" when one moved past the threshold), "first" or "heartbeat"."""
    from oneos.runtime.membership import _EXACT_FIELDS, load_moved

    if old is None:
        return "first"
    changed = [name for name in _EXACT_FIELDS if getattr(old, name) != getattr(new, name)]
    if changed:
        return "+".join(changed)
    return "load" if load_moved(old, new) else "heartbeat"


def _reasons(counts: collections.Counter[str], n: int) -> str:
    """The commonest reasons in *counts*, per runtime."""
    return ", ".join(f"{why} {count / n:.2f}" for why, count in counts.most_common(6))


class Observer:
    """An in-process client that watches statuses and asks runtimes who they see, over RPC."""

    def __init__(self, url: str) -> None:
        from oneos.pubsub.client import PubSubClient
        from oneos.pubsub.rpc import RPCClient

        self.reactor = observer_reactor()
        self.client = PubSubClient(url, self.reactor, keepalive=30)
        self.rpc = RPCClient(self.client, self.reactor)
        #: ids whose latest status says alive (touched in the reactor thread only)
        self.alive: set[str] = set()
        #: statuses received so far (the network's status traffic: each one reached every runtime too)
        self.received = 0
        #: why each status was sent, as far as its difference from the sender's previous one tells
        self.why: collections.Counter[str] = collections.Counter()
        self._latest: dict[str, Any] = {}
        self._status_sub: Any = None
        self.call(lambda: self.client.startService())
        try:
            self.call(lambda: self.client.whenConnected(), timeout=60.0)
        except Exception as e:
            raise SystemExit(f"the observer could not connect: {self.client.last_error or e}") from None

    def call(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run *fn* in the reactor thread and wait for its result, at most *timeout* seconds."""
        from twisted.internet import defer, threads

        def run() -> defer.Deferred:
            d = defer.maybeDeferred(fn)
            d.addTimeout(timeout, self.reactor)
            return d

        return threads.blockingCallFromThread(self.reactor, run)

    def close(self) -> None:
        try:
            self.call(lambda: self.client.stopService(), timeout=10.0)
        except Exception:
            pass  # the broker may be gone already: nothing to close cleanly

    def watch_alive(self) -> None:
        """Keep :attr:`alive` up to date from every runtime's retained status."""
        from oneos.pubsub import topics
        from oneos.runtime.status import RuntimeStatus

        def on(message: Any) -> None:
            self.received += 1
            if not message.payload:
                return
            s = RuntimeStatus.decode(message.payload)
            self.why[why_sent(self._latest.get(s.id), s)] += 1
            self._latest[s.id] = s
            if s.alive:
                self.alive.add(s.id)
            else:
                self.alive.discard(s.id)

        self._status_sub = self.call(lambda: self.client.subscribe(topics.ALL_STATUS, on))

    def unwatch_alive(self) -> None:
        if self._status_sub is not None:
            sub, self._status_sub = self._status_sub, None
            self.call(lambda: sub.cancel())

    def sees_alive(self, ids: set[str]) -> set[str]:
        """Those of *ids* whose status the observer holds alive."""
        return self.call(lambda: ids & self.alive)

    def members(self, rid: str) -> list[str]:
        from oneos.errors import RPCError

        try:
            return self.call(lambda: self.rpc.call(rid, "members", timeout=2.0))
        except RPCError:
            return []

    def watch_dead(self, rid: str) -> Callable[[], float | None]:
        """Return a function giving the monotonic time the runtime was seen dead (or None)."""
        from oneos.pubsub import topics
        from oneos.runtime.status import RuntimeStatus

        seen: list[float] = []

        def on(message: Any) -> None:
            if message.payload and not seen:
                if RuntimeStatus.decode(message.payload).state == "dead":
                    seen.append(time.monotonic())

        self.call(lambda: self.client.subscribe(topics.status(rid), on))
        return lambda: seen[0] if seen else None


# -- convergence and the idle window ----------------------------------------------------------------


class ConvergenceProbe:
    """Asks N runtimes, from the observer's reactor thread, until each answered that it sees all N.

    Nobody is asked before the observer holds all N statuses alive (no runtime
    can see them all earlier, give or take the broker's fan-out).  Then each
    runtime is asked at once and again after an incomplete answer
    (*again* seconds later).  A runtime publishes its status before it
    serves calls (oneos/runtime/service.py, ``_boot``), so a call made just
    then is never answered: a call unanswered after *retry* seconds is
    repeated without giving up on it (at most :attr:`MAX_OUTSTANDING` at
    once per runtime), so neither a lost request nor a slow answer costs a
    whole RPC timeout.  Every method runs in the reactor thread.
    """

    MAX_OUTSTANDING = 3

    def __init__(self, obs: Observer, ids: set[str], n: int) -> None:
        self.obs = obs
        self.ids = ids
        self.pending = set(ids)
        #: id -> monotonic time of its first answer holding all N
        self.done: dict[str, float] = {}
        #: id -> the most of the N it said it sees, in any answer (for the report when some never converge)
        self.best: dict[str, int] = {}
        self.all_alive: float | None = None
        self.timeout = 10.0 + n / 10
        self.retry = 0.25 + n / 100
        self.again = 0.2 + n / 200
        self._outstanding: dict[str, int] = dict.fromkeys(ids, 0)
        self._last_sent: dict[str, float] = dict.fromkeys(ids, float("-inf"))
        self._next_ok: dict[str, float] = dict.fromkeys(ids, float("-inf"))
        self._loop: Any = None

    def start(self) -> None:
        from twisted.internet import task

        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.obs.reactor
        self._loop.start(0.05).addErrback(
            lambda f: print(f"convergence probe failed: {f.getTraceback()}", file=sys.stderr)
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def snapshot(self) -> tuple[float | None, set[str], dict[str, float]]:
        return self.all_alive, set(self.pending), dict(self.done)

    def answers(self) -> str:
        """How far the runtimes still pending got: how many answered, and the views they reported."""
        answered = [self.best[r] for r in self.pending if r in self.best]
        if not answered:
            return f"none of the {len(self.pending)} answered a members call"
        return (
            f"{len(answered)} of the {len(self.pending)} answered, seeing {min(answered)} to {max(answered)} "
            f"of {len(self.ids)}; {len(self.pending) - len(answered)} never answered"
        )

    def _tick(self) -> None:
        now = time.monotonic()
        if self.all_alive is None:
            if not self.ids <= self.obs.alive:
                return
            self.all_alive = now
        for rid in sorted(self.pending):
            out = self._outstanding[rid]
            if (out == 0 and now >= self._next_ok[rid]) or (
                0 < out < self.MAX_OUTSTANDING and now - self._last_sent[rid] >= self.retry
            ):
                self._ask(rid, now)

    def _ask(self, rid: str, now: float) -> None:
        self._outstanding[rid] += 1
        self._last_sent[rid] = now
        d = self.obs.rpc.call(rid, "members", timeout=self.timeout)
        d.addCallbacks(self._answered, self._unanswered, callbackArgs=(rid,), errbackArgs=(rid,))

    def _answered(self, members: list[str], rid: str) -> None:
        self._outstanding[rid] -= 1
        seen = len(self.ids & set(members))
        self.best[rid] = max(seen, self.best.get(rid, 0))
        if rid in self.pending and seen == len(self.ids):
            self.done[rid] = time.monotonic()
            self.pending.discard(rid)
        else:
            self._next_ok[rid] = time.monotonic() + self.again

    def _unanswered(self, _failure: Any, rid: str) -> None:
        self._outstanding[rid] -= 1


@dataclass
class Row:
    """One size on one broker."""

    n: int
    broker: str
    base: float
    #: the CPU floor of N runtimes' start on this machine (StartCost.floor)
    floor: float = float("nan")
    converge: float | None = None
    all_alive: float | None = None
    broker_cpu_converge: float = float("nan")
    broker_cpu_idle: float = float("nan")
    idle_wall: float = float("nan")
    runtimes_cpu_idle: float = float("nan")
    #: statuses the network published during the idle window (each delivered to every runtime)
    statuses_idle: int = 0
    failure: str = ""
    notes: list[str] = field(default_factory=list)


BARE = [sys.executable, "-c", "import twisted.internet.reactor, psutil"]


@dataclass
class StartCost:
    """CPU seconds one process takes to start, measured on a quiet machine after the warm-up."""

    #: a runtime, from exec until the network sees it (it answers ``members`` with itself)
    runtime: float
    #: a bare process (:data:`BARE`), from exec until it exits
    bare: float

    def floor(self, n: int, cores: int) -> float:
        """The least wall time N runtimes can take to start on *cores*, however well they find each other."""
        return n * self.runtime / max(cores, 1)


def warm_up(root: Path, network: Network, children: Children) -> tuple[float, StartCost]:
    """Start one runtime (it becomes the kernel leader) and one bare process, untimed; return the seconds taken.

    Every process started afterwards reads the bytecode these compiled
    (:func:`bytecode_env`) and finds the files it opens in the page cache.
    Then one more runtime and one more bare process start alone, to measure
    what one start costs in CPU (:class:`StartCost`): N runtimes starting at
    once on C cores cannot converge before N x that / C, whatever membership does.
    """
    t0 = time.monotonic()
    children.spawn(BARE).wait()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    children.spawn(BARE).wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    bare_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    broker = start_broker("ours", root / "warm-up" / "broker", network, [], children)
    obs: Observer | None = None
    procs: list[subprocess.Popen] = []
    try:
        obs = Observer(network.url_as(broker.url, OBSERVER))
        homes = root / "warm-up" / "runtimes"
        procs = start_runtimes(2, broker.url, homes, "warm", network, children, gated=True)
        children.at_gate(procs)
        runtime_cpu = float("nan")
        for i, proc in enumerate(procs):
            rid = f"warm-{i}"
            children.release([proc])
            while rid not in obs.members(rid):
                if proc.poll() is not None or time.monotonic() - t0 > 120:
                    raise SystemExit(
                        f"the warm-up runtime {rid} did not start:\n" + log_tail(homes / rid / "runtime.log")
                    )
                time.sleep(0.02)
            runtime_cpu = cpu_seconds(proc.pid) or float("nan")  # the second one's counts: it found bytecode
        return time.monotonic() - t0, StartCost(runtime_cpu, bare_cpu)
    finally:
        if obs is not None:
            obs.close()
        children.stop(procs)
        children.stop_broker(broker)


def bench_bare_start(n: int, children: Children) -> float:
    """Baseline: N processes that import the Twisted reactor and exit, released at once from the gate."""
    procs = [children.spawn(BARE, gated=True) for _ in range(n)]
    children.at_gate(procs)
    t0 = time.monotonic()
    children.release(procs)
    for p in procs:
        p.wait()
    elapsed = time.monotonic() - t0
    children.stop(procs)  # all exited: this only forgets them
    return elapsed


def log_summary(paths: list[Path], top: int = 12) -> str:
    """The most frequent kinds of log line in *paths* (timestamps cut, numbers as N), with their counts.

    A broker or runtimes that fell over log hundreds of thousands of lines; their kinds say what happened.
    """
    import re
    from collections import Counter

    kinds: Counter[str] = Counter()
    lines = 0
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    lines += 1
                    text = line[25:].rstrip()  # after the timestamp
                    source_end = text.find("] ")
                    if line.startswith(("\t", " ")) or text[source_end + 2 : source_end + 3] in (" ", ""):
                        continue  # a banner's or a traceback's continuation lines
                    kinds[re.sub(r"[0-9a-f]*[0-9][0-9a-f]*", "N", text)[:160]] += 1
        except OSError:
            continue
    body = "\n".join(f"{count:>9}  {kind}" for kind, count in kinds.most_common(top))
    return f"{lines} lines\n{body}"


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def bench_convergence(
    kind: str, n: int, base: float, root: Path, network: Network, children: Children, idle: float
) -> Row:
    """A fresh broker of *kind*, N runtimes started at once, until each sees all N; then an idle window."""
    row = Row(n, kind, base)
    tag = f"c{n}"
    ids = {f"{tag}-{i}" for i in range(n)}
    where = root / f"{kind}-{n}"
    broker = start_broker(kind, where / "broker", network, sorted(ids), children)
    obs: Observer | None = None
    procs: list[subprocess.Popen] = []
    try:
        obs = Observer(network.url_as(broker.url, OBSERVER))
        obs.watch_alive()
        deadline = 120.0 + 3.0 * n  # start-up competes for 2 cores: the time allowed grows with N
        broker_pid = broker.process.pid
        homes = where / "runtimes"
        t_spawn = time.monotonic()
        procs = start_runtimes(n, broker.url, homes, tag, network, children, gated=True)
        children.at_gate(procs)
        progress(f"{kind}: {n} runtimes at the starting gate after {time.monotonic() - t_spawn:.2f} s (untimed)")
        probe = ConvergenceProbe(obs, ids, n)
        obs.call(probe.start)
        cpu0 = cpu_seconds(broker_pid) or 0.0
        t0 = time.monotonic()
        children.release(procs)
        pending: set[str] = set(ids)
        done: dict[str, float] = {}
        while pending and time.monotonic() - t0 < deadline:
            if any(p.poll() is not None for p in procs):
                break  # a runtime that ended will never be seen: say why now rather than at the deadline
            time.sleep(0.1)
            all_alive, pending, done = obs.call(probe.snapshot)
            if all_alive is not None and row.all_alive is None:
                row.all_alive = all_alive - t0
                progress(f"{kind}: all {n} statuses alive at {row.all_alive:.2f} s")
        cpu1 = cpu_seconds(broker_pid)
        obs.call(probe.stop)
        row.broker_cpu_converge = (cpu1 if cpu1 is not None else float("nan")) - cpu0
        if pending:
            never = sorted(ids - obs.sees_alive(ids))
            exited = [f"{tag}-{i}" for i, p in enumerate(procs) if p.poll() is not None]
            codes = sorted({p.returncode for p in procs if p.returncode is not None})
            row.failure = (
                f"{len(pending)} of {n} runtimes did not see all {n} after {time.monotonic() - t0:.0f} s "
                f"(allowed {deadline:.0f}): {len(never)} never seen alive, {len(exited)} exited"
                + (f" with status {', '.join(map(str, codes))}" if codes else "")
                + f"; {obs.call(probe.answers)}"
            )
            for rid in (exited or never or sorted(pending))[:3]:
                print(f"--- {homes / rid / 'runtime.log'} (last lines) ---", file=sys.stderr)
                print(log_tail(homes / rid / "runtime.log"), file=sys.stderr)
            print(f"--- what the {n} runtimes logged, most frequent first ---", file=sys.stderr)
            print(log_summary([homes / rid / "runtime.log" for rid in sorted(ids)]), file=sys.stderr)
            print(f"--- what the broker logged ({broker.log_path}), most frequent first ---", file=sys.stderr)
            print(log_summary([broker.log_path]), file=sys.stderr)
            return row
        row.converge = max(done.values()) - t0
        progress(f"{kind}: converged at {row.converge:.2f} s; idle window of {idle:g} s")
        spent = [c for c in (cpu_seconds(p.pid) for p in procs) if c is not None]
        progress(
            f"{kind}: CPU per runtime until converged {sum(spent) / max(len(spent), 1):.2f} s "
            "(beside 'one start alone' above: the rest is what starting together costs)"
        )
        start_why = obs.call(lambda: collections.Counter(obs.why))
        progress(f"{kind}: statuses per runtime until converged, by what was new: {_reasons(start_why, n)}")

        # The observer stays subscribed through the idle window to count the statuses the network sends:
        # it adds one delivery per status to the broker's N (the runtimes'), so 1/N of its work.
        pids = [p.pid for p in procs]
        s0 = obs.call(lambda: obs.received)
        b0, r0, w0 = cpu_seconds(broker_pid), {pid: cpu_seconds(pid) for pid in pids}, time.monotonic()
        time.sleep(idle)
        b1, r1, w1 = cpu_seconds(broker_pid), {pid: cpu_seconds(pid) for pid in pids}, time.monotonic()
        row.statuses_idle = obs.call(lambda: obs.received) - s0
        idle_why = obs.call(lambda: collections.Counter(obs.why)) - start_why
        progress(f"{kind}: statuses per runtime in the idle window, by what was new: {_reasons(idle_why, n)}")
        obs.unwatch_alive()
        row.idle_wall = w1 - w0
        row.broker_cpu_idle = b1 - b0 if b0 is not None and b1 is not None else float("nan")
        pairs = [(r0[p], r1[p]) for p in pids]
        deltas = [after - before for before, after in pairs if before is not None and after is not None]
        row.runtimes_cpu_idle = sum(deltas)
        if len(deltas) < n or any(p.poll() is not None for p in procs):
            row.notes.append(f"{n - len(deltas)} runtimes ended during the idle window")
        return row
    finally:
        if obs is not None:
            obs.close()
        progress(f"{kind}: stopping {len(procs)} runtimes")
        children.stop(procs)
        children.stop_broker(broker)


def format_rows(rows: list[Row]) -> list[str]:
    head = (
        f"{'runtimes':>8}  {'broker':<9}  {'converge (s)':>12}  {'bare start (s)':>14}  {'ratio':>6}  "
        f"{'aim':<18}  {'CPU floor (s)':>13}  {'converge/floor':>14}  {'all alive (s)':>13}  "
        f"{'broker CPU converge (s)':>23}  "
        f"{'broker CPU idle (s)':>19}  {'broker idle %core':>17}  {'runtimes idle %core':>19}  {'statuses/s idle':>15}"
    )
    out = [head]
    for r in rows:
        if r.converge is None:
            out.append(f"{r.n:>8}  {r.broker:<9}  {'-':>12}  {r.base:>14.2f}  {'-':>6}  not met: {r.failure}")
            continue
        ratio = r.converge / r.base
        aim = f"aim {AIM:g}x: {'met' if ratio <= AIM else 'not met'}"
        alive = f"{r.all_alive:.2f}" if r.all_alive is not None else "-"
        out.append(
            f"{r.n:>8}  {r.broker:<9}  {r.converge:>12.2f}  {r.base:>14.2f}  {ratio:>6.2f}  {aim:<18}  "
            f"{r.floor:>13.2f}  {r.converge / r.floor:>14.2f}  {alive:>13}  "
            f"{r.broker_cpu_converge:>23.3f}  {r.broker_cpu_idle:>19.3f}  "
            f"{100 * r.broker_cpu_idle / r.idle_wall:>17.2f}  {100 * r.runtimes_cpu_idle / r.idle_wall:>19.1f}  "
            f"{r.statuses_idle / r.idle_wall:>15.1f}" + (f"   ({'; '.join(r.notes)})" if r.notes else "")
        )
    return out


# -- failure detection, fail-over, RSS (our broker) ---------------------------------------------


def bench_detection(
    url: str, obs: Observer, root: Path, keepalive: int, rounds: int, network: Network, children: Children
) -> list[float]:
    out = []
    for r in range(rounds):
        [proc] = start_runtimes(1, url, root, f"d{r}", network, children)
        rid = f"d{r}-0"
        try:
            while rid not in obs.members(rid):
                time.sleep(0.05)
            dead_at = obs.watch_dead(rid)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            while dead_at() is None and time.monotonic() - t0 < 30:
                time.sleep(0.005)
            out.append((dead_at() or float("nan")) - t0)
        finally:
            children.stop([proc])
    return out


def bench_failover(
    url: str, obs: Observer, root: Path, rounds: int, network: Network, children: Children
) -> list[float]:
    """SIGKILL the kernel leader of 3 runtimes; time until another claims leadership."""
    from oneos.pubsub import topics
    from oneos.runtime.status import RuntimeStatus

    leaders: dict[str, float] = {}

    def on(message: Any) -> None:
        if not message.payload:
            return
        s = RuntimeStatus.decode(message.payload)
        if s.alive and s.leader:
            leaders.setdefault(s.id, time.monotonic())

    obs.call(lambda: obs.client.subscribe(topics.ALL_STATUS, on))
    out = []
    for r in range(rounds):
        tag = f"f{r}"
        procs = start_runtimes(3, url, root, tag, network, children)
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
            children.stop(procs)
    return out


def bench_idle_rss(
    url: str, obs: Observer, root: Path, settle: float, network: Network, children: Children
) -> tuple[float, float]:
    [proc] = start_runtimes(1, url, root, "rss", network, children)
    bare = children.spawn([sys.executable, "-c", "from twisted.internet import reactor; reactor.run()"])
    try:
        while "rss-0" not in obs.members("rss-0"):
            time.sleep(0.05)
        time.sleep(settle)  # let both go idle before measuring
        return psutil.Process(proc.pid).memory_info().rss / 2**20, psutil.Process(bare.pid).memory_info().rss / 2**20
    finally:
        children.stop([proc, bare])


def bench_single_runtime(
    root: Path, network: Network, children: Children, kill_rounds: int, failover_rounds: int
) -> None:
    broker = start_broker("ours", root / "single" / "broker", network, [], children)
    obs: Observer | None = None
    try:
        obs = Observer(network.url_as(broker.url, OBSERVER))
        homes = root / "single" / "runtimes"
        keepalive = 2
        det = sorted(bench_detection(broker.url, obs, homes, keepalive, kill_rounds, network, children))
        if det:  # --kill-rounds 0: not measured
            print(
                f"SIGKILL -> seen dead (s), {len(det)} rounds: min {det[0]:.3f}  median {det[len(det) // 2]:.3f}  max {det[-1]:.3f}"
                f"   | baseline: keepalive-only bound {1.5 * keepalive:.1f}",
                flush=True,
            )
        fo = sorted(bench_failover(broker.url, obs, homes, failover_rounds, network, children))
        if fo:  # --failover-rounds 0: not measured
            print(
                f"SIGKILL of leader -> new leader (s), {len(fo)} rounds: min {fo[0]:.3f}  median {fo[len(fo) // 2]:.3f}  max {fo[-1]:.3f}"
                f"   | target: under 5.0 (election settle time 0.5)",
                flush=True,
            )
        rss, bare = bench_idle_rss(broker.url, obs, homes, 3.0, network, children)
        print(
            f"idle RSS of one runtime: {rss:.1f} MiB   | baseline: idle bare Twisted reactor {bare:.1f} MiB", flush=True
        )
    finally:
        if obs is not None:
            obs.close()
        children.stop_broker(broker)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10,50", help="runtime counts for convergence (default 10,50; 200 works)")
    parser.add_argument(
        "--broker",
        choices=["ours", "mosquitto", "both"],
        default="both",
        help="broker(s) for the convergence measurement (default both)",
    )
    parser.add_argument(
        "--idle", type=float, default=30.0, help="seconds of idle window after convergence (wall, default 30)"
    )
    parser.add_argument("--kill-rounds", type=int, default=5)
    parser.add_argument("--failover-rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    kinds = ["ours", "mosquitto"] if args.broker == "both" else [args.broker]

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    raise_fd_limit(max(sizes, default=10))
    root = Path(tempfile.mkdtemp(prefix="oneos-bench-"))
    network = Network(root / "network", credentials.create(root / "network", credentials.ADMIN_IDENTITY)[0])
    children = Children(bytecode_env(root / "pycache"))
    ok = False
    started = time.monotonic()
    try:
        version = mosquitto_version()
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        print("brokers: ours = twistd oneospsd (amqtt), identities checked with the network secret", end="")
        if "mosquitto" in kinds:
            if mosquitto_binary() is None:
                kinds.remove("mosquitto")
                print("; mosquitto: skipped, it is not installed (Debian package 'mosquitto')")
            else:
                print(f"; mosquitto = {version or mosquitto_binary()}, with 'oneos mosquitto' password and ACL files")
        else:
            print()
        print(
            f"convergence: N runtimes started at once until each sees all N; idle window {args.idle:g} s after it; "
            f"%core = percent of one core"
        )
        print(
            "every process reads bytecode compiled once by an untimed warm-up (as an installed OneOS has its .pyc); "
            "baseline: N bare processes importing Twisted"
        )
        print(flush=True)
        took, cost = warm_up(root, network, children)
        progress(f"warm-up (runtimes and bare processes started alone, untimed): {took:.1f} s")
        cores = os.cpu_count() or 1
        print(
            f"one start alone, CPU: a runtime {cost.runtime:.2f} s (until the network sees it), a bare process "
            f"{cost.bare:.2f} s ({cost.runtime / cost.bare:.1f}x); so N runtimes on {cores} cores cannot converge "
            f"before N x {cost.runtime:.2f} / {cores} s (the 'CPU floor' column), however little membership costs",
            flush=True,
        )
        rows: list[Row] = []
        for n in sizes:
            progress(f"bare start of {n} processes")
            base = bench_bare_start(n, children)
            for kind in kinds:
                rows.append(bench_convergence(kind, n, base, root, network, children, args.idle))
                rows[-1].floor = cost.floor(n, cores)
                progress(format_rows(rows)[-1].strip())
        print("\n".join(format_rows(rows)))
        print(flush=True)
        bench_single_runtime(root, network, children, args.kill_rounds, args.failover_rounds)
        ok = not any(r.failure for r in rows)
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e or 'Ctrl-C'}): stopping every process started", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        children.stop_all()
        print(f"run took {time.monotonic() - started:.0f} s", file=sys.stderr)
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs and homes kept in {root}", file=sys.stderr)


if __name__ == "__main__":
    main()
