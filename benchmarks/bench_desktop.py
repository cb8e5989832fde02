#!/usr/bin/env python3
"""Web desktop benchmark: the desktop's websocket and HTTP beside the CLI, SSH and RPC, in one run.

Prints, each figure beside a baseline measured in the same run:

1. the websocket round trip of an action (``fs.stat /``, ``fs.list /``,
   ``proc.list``; ``session.whoami`` as the websocket's own floor), p50/p95,
   beside the same call made in-process over RPC (``FSClient`` acting as
   the same user, ``SchedulerClient.ps``) and the same operation as a
   ``oneos`` command (``oneos fs ls /``, ``oneos ps -a``: the whole process
   run; there is no ``oneos fs stat``);
2. terminal echo: from sending one typed byte in a ``term.open`` terminal's
   binary frame to its echo, p50/p95, beside the same shell's echo over
   SSH (OpenSSH ``ssh -tt`` driven through a local pty, key login);
3. upload and download (``POST /api/upload``, ``GET /api/download``) of one
   random file (default 64 MiB), MB/s, beside ``oneos fs put``/``get`` of the
   same file and the file-system client in-process (``write_from``/``read_into``);
4. the ``runtimes`` channel with many runtimes (default 50, each
   ``--stats-interval 0.5``, only one with the desktop): status events per
   second delivered to a websocket over a window (default 20 s), beside the
   rate the runtimes really publish as a plain MQTT subscriber of the status
   topics sees it, with the age of the statuses on arrival;
5. time from navigation to a live cluster view in Chromium (Playwright,
   headless, fresh profile per load): login through the form, until the
   runtime's card shows it alive; beside the same page's bytes served by
   Python's ``http.server`` (time to the login form, first paint).  Skipped
   with "skipped: page not ready" when the page cannot get there.

Sections 1-3 and 5 use one runtime with its own broker (``EmbeddedRuntime``,
SQLite store, identities on); section 4 starts ``oneospsd`` and the runtimes.
Sections run in the order 1, 2, 3, 5, 4: the many runtimes of section 4
load the machine most, so they come last (``--sections`` picks some).  Every
process started here is stopped by its pid on the way out, errors and
Ctrl-C included.  ``--quick`` shrinks every count for a smoke run (about
40 s); a normal run takes about 3 minutes on 2 cores, mostly section 4.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from oneos.testing.bench import interrupt_on_signals, stop_processes  # noqa: E402
from oneos.testing.brokers import BrokerProcess, start_oneospsd  # noqa: E402
from oneos.testing.desktop import DesktopClient, DesktopSocket, terminal_bytes  # noqa: E402
from oneos.testing.runtimes import EmbeddedRuntime, RuntimeProcess  # noqa: E402
from oneos.testing.ssh import ssh_argv  # noqa: E402

USER = "ann"
PASSWORD = "bench-desktop-pw-1"
STEP_TIMEOUT = 30.0
#: the shell's prompt ends so (``ann@oneos:~$ ``)
PROMPT_END = b"$ "
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class BenchError(Exception):
    """The benchmark cannot go on (a process did not start, an answer was wrong ...)."""


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1e3:.1f}" if values else "-"


def wait_until(what: str, check: Callable[[], Any], deadline: float, logs: Callable[[], str] | None = None) -> Any:
    """Call *check* until it is truthy; BenchError after *deadline* seconds."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(0.1)  # polling interval; the condition decides
    tail = "\n--- log tail ---\n" + "\n".join(logs().splitlines()[-30:]) if logs else ""
    raise BenchError(f"timed out after {deadline:.0f}s waiting for {what}; last seen: {last!r}{tail}")


def cpu_seconds(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return t.user + t.system


def runtime_file(home: Path) -> dict[str, Any]:
    try:
        return json.loads((home / "runtime.json").read_text())
    except (OSError, ValueError):
        return {}


def oneos_cli(home: Path, *args: str, input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real ``oneos`` command as *home*'s owner."""
    return subprocess.run(
        [sys.executable, "-m", "oneos.cli.main", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, ONEOS_HOME=str(home)),
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def add_user(home: Path, *pubsub: str) -> None:
    r = oneos_cli(home, "user", "add", *pubsub, USER, "--password-stdin", input=PASSWORD + "\n")
    if r.returncode != 0:
        raise BenchError(f"oneos user add {USER} failed: {r.stderr.strip()}")


# -- the in-process baseline: OneOS's own clients on a reactor thread --------------------------------------


class InProcess:
    """The file-system and scheduler clients on a reactor in a thread, logged in as the runtime's home."""

    def __init__(self, url: str, home: Path) -> None:
        from oneos.reactor import install_asyncio_reactor

        install_asyncio_reactor()
        from twisted.internet import reactor

        from oneos.cli.common import present_credentials
        from oneos.fs.client import FSClient
        from oneos.pubsub.client import PubSubClient
        from oneos.pubsub.rpc import RPCClient
        from oneos.scheduler.client import SchedulerClient

        self.reactor: Any = reactor
        if not reactor.running:
            threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True).start()
        self.client = PubSubClient(url, reactor, keepalive=30)
        saved = os.environ.get("ONEOS_HOME")
        os.environ["ONEOS_HOME"] = str(home)  # present_credentials reads the identity of $ONEOS_HOME
        try:
            present_credentials(self.client)
        finally:
            if saved is None:
                os.environ.pop("ONEOS_HOME", None)
            else:
                os.environ["ONEOS_HOME"] = saved
        self.call(self.client.startService)
        self.call(self.client.whenConnected)
        rpc = RPCClient(self.client, reactor, default_timeout=30)
        self.fs = FSClient(rpc, reactor, timeout=30, user=USER)
        self.scheduler = SchedulerClient(rpc, timeout=30)

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        from twisted.internet import defer, threads

        return threads.blockingCallFromThread(self.reactor, lambda: defer.maybeDeferred(fn, *args, **kw))

    def close(self) -> None:
        try:
            self.call(self.client.stopService)
        except Exception as e:  # the runtime may be gone already: nothing to undo
            print(f"  note: stopping the in-process client: {e}", file=sys.stderr)


class FileSource:
    """A local file as the file-system client's byte source."""

    def __init__(self, path: Path, chunk: int = 256 * 1024) -> None:
        self.f = open(path, "rb")
        self.chunk = chunk

    def next(self) -> Any:
        from twisted.internet import defer

        data = self.f.read(self.chunk)
        if not data:
            self.f.close()
        return defer.succeed(data)


class FileSink:
    """A local file as the file-system client's byte sink."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "wb")
        self.n = 0

    def write(self, data: bytes) -> Any:
        from twisted.internet import defer

        self.f.write(data)
        self.n += len(data)
        return defer.succeed(None)

    def finish(self) -> Any:
        from twisted.internet import defer

        self.f.close()
        return defer.succeed({"size": self.n})

    def abort(self) -> None:
        self.f.close()


# -- the one-runtime network of sections 1, 2, 3 and 5 ---------------------------------------------------


class Solo:
    """An embedded runtime (its own broker) with the desktop and SSH on free loopback ports, and a user."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rt: EmbeddedRuntime | None = None
        self.desktop = ""
        self.ssh_port = 0

    def start(self) -> float:
        t0 = time.monotonic()
        self.rt = rt = EmbeddedRuntime(self.root, "--ssh", "tcp:0:interface=127.0.0.1", "--stats-interval", "0.5")

        def up() -> bool:
            if rt.process.poll() is not None:
                raise BenchError(f"the runtime exited with {rt.process.returncode}:\n{rt.log()[-3000:]}")
            return bool(runtime_file(rt.home).get("desktop")) and "now leads the kernel" in rt.log()

        wait_until("the runtime to lead and serve its desktop", up, 90, rt.log)
        info = runtime_file(rt.home)
        self.desktop = info["desktop"]
        self.ssh_port = int(str(info["ssh"]).rsplit(":", 1)[1])
        add_user(rt.home)
        return time.monotonic() - t0

    @property
    def home(self) -> Path:
        assert self.rt is not None
        return self.rt.home

    def log(self) -> str:
        return self.rt.log() if self.rt is not None else ""

    def stop(self) -> None:
        if self.rt is not None:
            stop_processes([self.rt.process], grace=30)
            self.rt.stop()  # closes its log (the process is gone)
            self.rt = None


def logged_in(url: str) -> tuple[DesktopClient, DesktopSocket]:
    client = DesktopClient(url)
    client.login(USER, PASSWORD)
    ws = client.websocket()
    if ws.status != 101:
        raise BenchError(f"the websocket was refused: {ws.response[:300]}")
    return client, ws


# -- 1. round trips -------------------------------------------------------------------------------------


@dataclass
class RoundTrips:
    ws: dict[str, list[float]] = field(default_factory=dict)
    rpc: dict[str, list[float]] = field(default_factory=dict)
    cli: dict[str, list[float]] = field(default_factory=dict)
    login: list[float] = field(default_factory=list)
    upgrade: list[float] = field(default_factory=list)
    hop: list[float] = field(default_factory=list)  # a call to the reactor thread that does nothing


def timed(fn: Callable[[], Any], rounds: int, warmup: int = 5) -> list[float]:
    out = []
    for i in range(warmup + rounds):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def bench_round_trips(solo: Solo, inproc: InProcess, rounds: int, cli_rounds: int) -> RoundTrips:
    out = RoundTrips()
    client = DesktopClient(solo.desktop)
    out.login = timed(lambda: client.login(USER, PASSWORD), cli_rounds, warmup=1)

    def upgrade() -> None:
        sock = client.websocket()
        if sock.status != 101:
            raise BenchError(f"the websocket was refused: {sock.response[:300]}")
        sock.close()

    out.upgrade = timed(upgrade, cli_rounds, warmup=1)
    _, ws = logged_in(solo.desktop)
    try:
        actions: list[tuple[str, str, dict[str, Any]]] = [
            ("session.whoami", "session.whoami", {}),
            ("fs.stat /", "fs.stat", {"path": "/"}),
            ("fs.list /", "fs.list", {"path": "/"}),
            ("proc.list", "proc.list", {"all": True}),
        ]
        for name, op, args in actions:

            def action(op: str = op, args: dict[str, Any] = args) -> Any:
                return ws.ok(op, **args)

            out.ws[name] = timed(action, rounds)
    finally:
        ws.close()
    out.hop = timed(lambda: inproc.call(lambda: None), rounds)
    out.rpc["fs.stat /"] = timed(lambda: inproc.call(inproc.fs.stat, "/"), rounds)
    out.rpc["fs.list /"] = timed(lambda: inproc.call(inproc.fs.listdir, "/"), rounds)
    out.rpc["proc.list"] = timed(lambda: inproc.call(inproc.scheduler.ps, all=True), rounds)

    def cli(*args: str) -> Callable[[], None]:
        def run() -> None:
            r = oneos_cli(solo.home, *args, timeout=STEP_TIMEOUT * 4)
            if r.returncode != 0:
                raise BenchError(f"oneos {' '.join(args)} failed: {r.stderr.strip()}")

        return run

    out.cli["fs.list /"] = timed(cli("fs", "ls", "/"), cli_rounds, warmup=1)
    out.cli["proc.list"] = timed(cli("ps", "-a"), cli_rounds, warmup=1)
    return out


def print_round_trips(r: RoundTrips, rounds: int, cli_rounds: int) -> None:
    print(
        f"1. action round trip (ms): websocket request to its reply, beside in-process RPC and the oneos command "
        f"({rounds} rounds each, CLI {cli_rounds})"
    )
    head = f"   {'action':<16}{'ws p50':>9}{'ws p95':>9}{'rpc p50':>9}{'rpc p95':>9}{'cli p50':>9}{'cli p95':>9}  cli command"
    print(head)
    commands = {"fs.list /": "oneos fs ls /", "proc.list": "oneos ps -a", "fs.stat /": "(no 'oneos fs stat')"}
    for name, values in r.ws.items():
        rpc = r.rpc.get(name, [])
        cli = r.cli.get(name, [])
        print(
            f"   {name:<16}{ms(values, 50):>9}{ms(values, 95):>9}{ms(rpc, 50):>9}{ms(rpc, 95):>9}"
            f"{ms(cli, 50):>9}{ms(cli, 95):>9}  {commands.get(name, '(websocket only: no RPC behind it)')}"
        )
    print(
        f"   and ({cli_rounds} each): POST /api/login p50/p95 {ms(r.login, 50)}/{ms(r.login, 95)} ms, "
        f"websocket upgrade (connect to 101) p50/p95 {ms(r.upgrade, 50)}/{ms(r.upgrade, 95)} ms"
    )
    print(f"   (the rpc figures include the benchmark's hop to its reactor thread: p50 {ms(r.hop, 50)} ms)")


# -- 2. terminal echo -------------------------------------------------------------------------------------


class Keyboard:
    """A terminal to type into: send bytes, read what comes back."""

    name = "?"

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def read_until(self, done: Callable[[bytes], bool], timeout: float = STEP_TIMEOUT) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class WebTerminal(Keyboard):
    name = "websocket term"

    def __init__(self, url: str) -> None:
        _, self.ws = logged_in(url)
        self.term = self.ws.ok("term.open", cols=80, rows=24, resume=None)["term"]

    def send(self, data: bytes) -> None:
        self.ws.send_keys(self.term, data)

    def read_until(self, done: Callable[[bytes], bool], timeout: float = STEP_TIMEOUT) -> bytes:
        got = b""
        deadline = time.monotonic() + timeout
        while not done(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no expected output in {timeout:.0f}s; got {got[-200:]!r}")
            frame = self.ws.receive(left)
            if isinstance(frame, tuple) and frame[0] == "close":
                raise BenchError(f"{self.name}: the websocket closed ({frame[1]})")
            got += terminal_bytes([frame], self.term)
        return got

    def close(self) -> None:
        try:
            self.ws.ok("term.close", term=self.term)
        except (OSError, Exception) as e:  # a broken terminal must not hide the figures
            print(f"  note: term.close: {e}", file=sys.stderr)
        self.ws.close()


class SSHTerminal(Keyboard):
    """OpenSSH ``ssh -tt`` on a local pty (80x24), as a user's terminal runs it."""

    name = "ssh -tt (pty)"

    def __init__(self, port: int, key: Path) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        argv = ssh_argv(port, USER, key=key, extra=("-tt", "-o", f"ConnectTimeout={int(STEP_TIMEOUT)}"))
        self.process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_until(self, done: Callable[[bytes], bool], timeout: float = STEP_TIMEOUT) -> bytes:
        got = b""
        deadline = time.monotonic() + timeout
        while not done(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no expected output in {timeout:.0f}s; got {got[-200:]!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise BenchError(f"{self.name}: ssh ended (status {self.process.poll()}); output {got[-300:]!r}")
                got += chunk
        return got

    def close(self) -> None:
        os.close(self.master)
        stop_processes([self.process], grace=10)


def echo_latencies(kb: Keyboard, keys: int, per_line: int = 20, warmup: int = 5) -> list[float]:
    """Seconds from writing ``x`` to its echo; a line of *per_line* keys, then Ctrl-C and the prompt again."""
    kb.read_until(lambda b: b.rstrip(b" ").endswith(b"$") and b.endswith(PROMPT_END))
    out: list[float] = []
    typed = 0
    while len(out) < keys:
        t0 = time.perf_counter()
        kb.send(b"x")
        kb.read_until(lambda b: b"x" in b)
        elapsed = time.perf_counter() - t0
        typed += 1
        if typed > warmup:
            out.append(elapsed)
        if typed % per_line == 0:
            kb.send(b"\x03")
            kb.read_until(lambda b: b.endswith(PROMPT_END))
    return out


def bench_echo(solo: Solo, keys: int, root: Path) -> tuple[list[float], list[float] | str]:
    web = WebTerminal(solo.desktop)
    try:
        ws_times = echo_latencies(web, keys)
    finally:
        web.close()
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return ws_times, "skipped: the OpenSSH client (ssh, ssh-keygen) is not installed"
    key = root / "id_bench"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench-desktop", "-f", str(key)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    r = oneos_cli(solo.home, "user", "addkey", USER, str(key.with_suffix(".pub")))
    if r.returncode != 0:
        return ws_times, f"skipped: oneos user addkey failed: {r.stderr.strip()}"
    term = SSHTerminal(solo.ssh_port, key)
    try:
        ssh_times: list[float] | str = echo_latencies(term, keys)
    finally:
        term.close()
    return ws_times, ssh_times


def print_echo(ws_times: list[float], ssh: list[float] | str, keys: int) -> None:
    print(f"2. terminal echo (ms): one typed byte to its echo, the same OneOS shell session code ({keys} keys each)")
    print(f"   {'transport':<34}{'p50':>8}{'p95':>8}{'max':>8}")
    print(
        f"   {'websocket binary frame (term.open)':<34}{ms(ws_times, 50):>8}{ms(ws_times, 95):>8}{ms(ws_times, 100):>8}"
    )
    if isinstance(ssh, str):
        print(f"   {'ssh -tt through a pty (baseline)':<34}  {ssh}")
    else:
        print(f"   {'ssh -tt through a pty (baseline)':<34}{ms(ssh, 50):>8}{ms(ssh, 95):>8}{ms(ssh, 100):>8}")


# -- 3. upload and download --------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bench_transfer(solo: Solo, inproc: InProcess, size: int, rounds: int, root: Path) -> dict[str, list[float]]:
    """MB/s per way of moving the file, *rounds* each, every copy checked against the original."""
    src = root / "blob.bin"
    with open(src, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))
        f.write(os.urandom(size % (1 << 20)))
    want = sha256(src)
    client = DesktopClient(solo.desktop)
    client.login(USER, PASSWORD)
    remote = f"/home/{USER}/bench-blob.bin"
    local = root / "copy.bin"
    out: dict[str, list[float]] = {k: [] for k in ("upload", "download", "put", "get", "write_from", "read_into")}

    def check(way: str) -> None:
        got = sha256(local)
        local.unlink()
        if got != want:
            raise BenchError(f"{way}: the copy differs from the original")

    def measure(way: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        fn()
        out[way].append(size / (time.perf_counter() - t0) / 1e6)

    def cli(*args: str) -> Callable[[], None]:
        def run() -> None:
            r = oneos_cli(solo.home, "fs", "--no-progress", *args)
            if r.returncode != 0:
                raise BenchError(f"oneos fs {' '.join(args)} failed: {r.stderr.strip()}")

        return run

    def upload() -> None:
        with open(src, "rb") as f:
            client.upload(remote, f, size)

    def download() -> None:
        with open(local, "wb") as f:
            client.download(remote, f)

    for _ in range(rounds):
        measure("upload", upload)
        measure("download", download)
        check("download")
        measure("put", cli("put", str(src), remote))
        measure("get", cli("get", remote, str(local)))
        check("oneos fs get")
        measure("write_from", lambda: inproc.call(inproc.fs.write_from, remote, FileSource(src)))
        measure("read_into", lambda: inproc.call(inproc.fs.read_into, remote, FileSink(local)))
        check("read_into")
    src.unlink()
    return out


def print_transfer(r: dict[str, list[float]], size: int, rounds: int) -> None:
    def med(way: str) -> str:
        return f"{statistics.median(r[way]):.1f}" if r[way] else "-"

    print(
        f"3. transfer of one {size / 2**20:.0f} MiB random file (MB/s, median of {rounds}; "
        "every copy checked by sha256)"
    )
    print(f"   {'way':<10}{'desktop HTTP':>14}{'oneos fs (process)':>20}{'in-process FSClient':>21}")
    print(f"   {'into OneOS':<10}{med('upload'):>14}{med('put'):>20}{med('write_from'):>21}")
    print(f"   {'out of it':<10}{med('download'):>14}{med('get'):>20}{med('read_into'):>21}")


# -- 5. the page in Chromium (a child process: Playwright's own event loop, away from the reactor) -------------

MARKS_JS = """
(() => {
  const rid = %s;
  const marks = (window.__benchMarks = {});
  const wanted = {
    form: '#login-form',
    cluster: '[data-window=cluster]',
    card: '[data-runtime="' + rid + '"]',
    alive: '[data-runtime="' + rid + '"][data-state="alive"]',
  };
  const check = () => {
    for (const [name, selector] of Object.entries(wanted)) {
      if (!(name in marks) && document.querySelector(selector)) marks[name] = performance.now();
    }
  };
  new MutationObserver(check).observe(document, { subtree: true, childList: true, attributes: true });
  const once = (name) => { if (!(name in marks)) marks[name] = performance.now(); };
  document.addEventListener('submit', () => once('submit'), true);
  const fetch0 = window.fetch;
  window.fetch = function (input, init) {
    const url = String((input && input.url) || input);
    const answer = fetch0.apply(this, arguments);
    if (url.includes('/api/login')) answer.then(() => once('login_answer'), () => {});
    return answer;
  };
  const WS = window.WebSocket;
  window.WebSocket = function (url, protocols) {
    once('ws_new');
    const ws = protocols === undefined ? new WS(url) : new WS(url, protocols);
    ws.addEventListener('open', () => once('ws_open'));
    ws.addEventListener('message', (ev) => {
      if (typeof ev.data === 'string' && /"channel": ?"runtimes"/.test(ev.data)) once('ws_runtimes');
    });
    return ws;
  };
  window.WebSocket.prototype = WS.prototype;
  Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
})();
"""

TIMINGS_JS = """
() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const paint = {};
  for (const e of performance.getEntriesByType('paint')) paint[e.name] = e.startTime;
  const bytes = performance.getEntriesByType('resource').reduce((n, e) => n + (e.decodedBodySize || 0), 0)
    + (nav ? nav.decodedBodySize : 0);
  return {
    marks: window.__benchMarks || {},
    fcp: paint['first-contentful-paint'] ?? null,
    dcl: nav ? nav.domContentLoadedEventEnd : null,
    load: nav ? nav.loadEventEnd : null,
    resources: performance.getEntriesByType('resource').length,
    bytes,
  };
}
"""


def browser_child() -> int:
    """Measure page loads; the job comes as JSON on stdin, the figures go out as one JSON line."""
    job = json.loads(sys.stdin.read())

    interrupt_on_signals(signal.SIGTERM)
    web = Path(job["web_dir"])
    for needed in ("index.html", "app/main.js"):
        if not (web / needed).is_file():
            print(json.dumps({"skipped": f"page not ready ({web / needed} is missing)"}))
            return 0
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    static = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(web)))
    threading.Thread(target=static.serve_forever, daemon=True).start()
    static_url = f"http://127.0.0.1:{static.server_address[1]}/"
    marks_js = MARKS_JS % json.dumps(job["runtime"])
    result: dict[str, Any] = {"desktop": [], "static": []}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                for _ in range(job["rounds"]):
                    for kind in ("desktop", "static"):
                        context = browser.new_context()
                        try:
                            page = context.new_page()
                            errors: list[str] = []

                            def page_error(e: Any, errors: list[str] = errors) -> None:
                                errors.append(str(e))

                            page.on("pageerror", page_error)
                            page.add_init_script(marks_js)
                            page.goto(job["url"] if kind == "desktop" else static_url, wait_until="commit")
                            try:
                                page.wait_for_function("() => window.__benchMarks && 'form' in window.__benchMarks")
                            except PlaywrightError:
                                why = "; ".join(errors)[:300] or "no #login-form"
                                print(json.dumps({"skipped": f"page not ready ({kind}: {why})"}))
                                return 0
                            if kind == "desktop":
                                page.fill("#login-user", job["user"])
                                page.fill("#login-password", job["password"])
                                page.click("#login-submit")
                                try:
                                    page.wait_for_function(
                                        "() => 'alive' in window.__benchMarks", timeout=job["timeout"] * 1000
                                    )
                                except PlaywrightError:
                                    why = "; ".join(errors)[:300]
                                    print(
                                        json.dumps(
                                            {
                                                "skipped": "page not ready (no [data-runtime=ID][data-state=alive] "
                                                f"within {job['timeout']}s after the login{': ' + why if why else ''})"
                                            }
                                        )
                                    )
                                    return 0
                            else:
                                page.wait_for_load_state("load")
                            result[kind].append(page.evaluate(TIMINGS_JS))
                        finally:
                            context.close()
            finally:
                browser.close()
            result["version"] = browser.version
    finally:
        static.shutdown()
        static.server_close()
    print(json.dumps(result))
    return 0


def bench_browser(solo: Solo, rounds: int, timeout: float) -> dict[str, Any]:
    import oneos

    if not os.access(CHROMIUM, os.X_OK):
        return {"skipped": f"{CHROMIUM} not found"}
    try:
        import playwright  # noqa: F401
    except ImportError:
        return {"skipped": "Playwright is not installed in this environment"}
    job = {
        "url": solo.desktop,
        "runtime": "solo",
        "user": USER,
        "password": PASSWORD,
        "rounds": rounds,
        "timeout": timeout,
        "web_dir": str(Path(oneos.__file__).resolve().parent.parent / "web"),
    }
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--browser-child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = child.communicate(json.dumps(job), timeout=60 + rounds * 2 * (timeout + 15))
    except subprocess.TimeoutExpired:
        stop_processes([child], grace=20)
        return {"skipped": "page not ready (the browser run timed out)"}
    finally:
        stop_processes([child], grace=20)
    if child.returncode != 0 or not out.strip():
        return {"skipped": f"the browser run failed: {(err or out).strip()[-800:]}"}
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def print_browser(r: dict[str, Any], rounds: int) -> None:
    print(
        f"5. page load to a live cluster view in Chromium (ms from navigation start, median of {rounds}, "
        "fresh profile per load)"
    )
    if "skipped" in r:
        why = str(r["skipped"])
        if why.startswith("page not ready"):
            print(f"   skipped: page not ready\n   ({why})")
        else:
            print(f"   skipped: {why}")
        return

    def med(kind: str, get: Callable[[dict[str, Any]], float | None]) -> str:
        values = [v for v in (get(x) for x in r[kind]) if v is not None]
        return f"{statistics.median(values):.0f}" if values else "-"

    def mark(name: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda x: x["marks"].get(name)

    def page_time(x: dict[str, Any]) -> float | None:
        m = x["marks"]
        if "alive" not in m or "submit" not in m:
            return None
        return float(m["form"] + (m["alive"] - m["submit"]))

    def since_submit(name: str) -> Callable[[dict[str, Any]], float | None]:
        def get(x: dict[str, Any]) -> float | None:
            m = x["marks"]
            return float(m[name] - m["submit"]) if name in m and "submit" in m else None

        return get

    def submit_to_alive(x: dict[str, Any]) -> float | None:
        m = x["marks"]
        return float(m["alive"] - m["submit"]) if "alive" in m and "submit" in m else None

    print(f"   Chromium {r.get('version', '?')}; the page loads {r['desktop'][0]['resources']} files, "
          f"{r['desktop'][0]['bytes'] / 1024:.0f} KiB")  # fmt: skip
    print(f"   {'':<46}{'desktop':>10}{'same bytes, http.server':>26}")
    rows: list[tuple[str, Callable[[dict[str, Any]], float | None], bool]] = [
        ("first contentful paint", lambda x: x["fcp"], True),
        ("DOMContentLoaded (all modules evaluated)", lambda x: x["dcl"], True),
        ("login form in the DOM", mark("form"), True),
        ("login submitted (Playwright typed the form)", mark("submit"), False),
        ("  submit -> login answered", since_submit("login_answer"), False),
        ("  submit -> websocket created (desktop drawn)", since_submit("ws_new"), False),
        ("  submit -> websocket open", since_submit("ws_open"), False),
        ("  submit -> first 'runtimes' event", since_submit("ws_runtimes"), False),
        ("submit -> runtime card alive", submit_to_alive, False),
        ("navigation -> runtime card alive", mark("alive"), False),
        ("  the same, less Playwright's typing", page_time, False),
    ]
    for label, get, both in rows:
        print(f"   {label:<46}{med('desktop', get):>10}{(med('static', get) if both else '-'):>26}")


# -- 4. the runtimes channel with many runtimes -----------------------------------------------------------


class StatusTap:
    """A plain MQTT 3.1.1 subscriber of every runtime's status topic (QoS 0), recording what arrives."""

    def __init__(self, host: str, port: int) -> None:
        from oneos.pubsub import mqtt, topics

        self.mqtt = mqtt
        self.sock = socket.create_connection((host, port), timeout=STEP_TIMEOUT)
        self.parser = mqtt.PacketParser()
        self.sock.sendall(mqtt.encode_connect(f"bench-tap-{os.getpid()}", 600))
        self.sock.sendall(mqtt.encode_subscribe(1, [(topics.ALL_STATUS, 0)]))
        #: (monotonic arrival, wall arrival, runtime id, state, updated_at, retained)
        self.seen: list[tuple[float, float, str, str, float, bool]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from oneos.runtime.status import RuntimeStatus

        self.sock.settimeout(0.5)
        while not self.stopping:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            now, wall = time.monotonic(), time.time()
            for packet in self.parser.feed(data):
                if packet.type != self.mqtt.PUBLISH or not packet.payload:
                    continue
                try:
                    s = RuntimeStatus.decode(packet.payload)
                except Exception:
                    continue
                self.seen.append((now, wall, s.id, s.state, s.updated_at, packet.retain))

    def alive(self) -> set[str]:
        last: dict[str, str] = {}
        for _, _, rid, state, _, _ in list(self.seen):
            last[rid] = state
        return {rid for rid, state in last.items() if state == "alive"}

    def close(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        try:
            self.sock.sendall(self.mqtt.encode_simple(self.mqtt.DISCONNECT))
        except OSError:
            pass
        self.sock.close()


class RuntimesWatcher:
    """A websocket subscribed to the ``runtimes`` channel, recording every status as it arrives."""

    def __init__(self, ws: DesktopSocket) -> None:
        self.ws = ws
        #: (monotonic arrival, wall arrival, runtime id, state, updated_at, from a full snapshot)
        self.seen: list[tuple[float, float, str, str, float, bool]] = []
        self.snapshot_arrivals: list[float] = []
        self.closed: Any = None
        self.stopping = False
        self.ws.ok("sub.open", channel="runtimes")
        for frame in self.ws.pending:
            self._take(frame, time.monotonic(), time.time())
        self.ws.pending = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def snapshot_times(self, start: float, end: float) -> int:
        """Full snapshots (``{"statuses": [...]}``) that arrived between *start* and *end*."""
        return sum(1 for t in self.snapshot_arrivals if start <= t < end)

    def _take(self, frame: Any, now: float, wall: float) -> None:
        if not isinstance(frame, dict) or frame.get("channel") != "runtimes":
            return
        event = frame.get("event") or {}
        if "status" in event:
            s = event["status"]
            self.seen.append((now, wall, s["id"], s["state"], s.get("updated_at", 0.0), False))
        elif "statuses" in event:
            self.snapshot_arrivals.append(now)
            for s in event["statuses"]:
                self.seen.append((now, wall, s["id"], s["state"], s.get("updated_at", 0.0), True))

    def _run(self) -> None:
        while not self.stopping:
            try:
                frame = self.ws.receive(0.5)
            except TimeoutError:
                continue
            except (OSError, ValueError) as e:
                self.closed = e
                return
            if isinstance(frame, tuple) and frame and frame[0] == "close":
                self.closed = f"close {frame[1]}"
                return
            self._take(frame, time.monotonic(), time.time())

    def close(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        self.ws.close()


@dataclass
class Window:
    count: int
    per_s: float
    runtimes: int
    ages: list[float]
    dead: int  # runtimes shown not alive at least once
    snapshot_items: int = 0


def in_window(seen: list[tuple[float, float, str, str, float, bool]], start: float, end: float, live: bool) -> Window:
    rows = [r for r in seen if start <= r[0] < end]
    if live:  # the MQTT tap: leave out retained copies (a subscription's replay)
        rows = [r for r in rows if not r[5]]
    ages = [r[1] - r[4] for r in rows if r[4]]
    return Window(
        count=len(rows),
        per_s=len(rows) / (end - start),
        runtimes=len({r[2] for r in rows}),
        ages=ages,
        dead=len({r[2] for r in rows if r[3] != "alive"}),
        snapshot_items=sum(1 for r in rows if r[5]) if not live else 0,
    )


@dataclass
class SwarmResult:
    n: int
    interval: float
    window: float
    started_after: float
    ws: Window
    tap: Window
    desk_cpu: float
    broker_cpu: float
    load: str
    snapshots: int
    ws_closed: Any


def bench_swarm(n: int, interval: float, window: float, root: Path) -> SwarmResult:
    broker: BrokerProcess | None = None
    runtimes: list[RuntimeProcess] = []
    tap: StatusTap | None = None
    watcher: RuntimesWatcher | None = None
    try:
        broker = start_oneospsd(root / "broker")
        iv = f"{interval:g}"
        desk = RuntimeProcess("desk", broker.url, root, "--stats-interval", iv)
        runtimes.append(desk)

        def desk_up() -> bool:
            if desk.process.poll() is not None:
                raise BenchError(f"the desktop's runtime exited with {desk.process.returncode}:\n{desk.log()[-3000:]}")
            return bool(runtime_file(desk.home).get("desktop")) and "now leads the kernel" in desk.log()

        wait_until("the desktop's runtime to lead and serve its desktop", desk_up, 90, desk.log)
        add_user(desk.home, "--pubsub", broker.url)
        _, ws = logged_in(runtime_file(desk.home)["desktop"])
        watcher = RuntimesWatcher(ws)
        tap = StatusTap(broker.host, broker.port)
        t0 = time.monotonic()
        for i in range(1, n):
            extra = ("--ssh", "", "--desktop", "", "--no-kernel", "--stats-interval", iv)
            runtimes.append(RuntimeProcess(f"rt-{i:02d}", broker.url, root, *extra))
        ids = {r.id for r in runtimes}

        def all_alive() -> bool:
            for r in runtimes:
                if r.process.poll() is not None:
                    raise BenchError(f"runtime {r.id} exited with {r.process.returncode}:\n{r.log()[-2000:]}")
            assert tap is not None
            return ids <= tap.alive()

        wait_until(f"all {n} runtimes to publish 'alive'", all_alive, 600)
        started_after = time.monotonic() - t0
        desk_cpu0, broker_cpu0 = cpu_seconds(desk.process.pid), cpu_seconds(broker.process.pid)
        start = time.monotonic()
        time.sleep(window)  # the measurement window itself: both recorders run meanwhile
        end = time.monotonic()
        desk_cpu = (cpu_seconds(desk.process.pid) - desk_cpu0) / (end - start) * 100
        broker_cpu = (cpu_seconds(broker.process.pid) - broker_cpu0) / (end - start) * 100
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        return SwarmResult(
            n=n,
            interval=interval,
            window=end - start,
            started_after=started_after,
            ws=in_window(watcher.seen, start, end, live=False),
            tap=in_window(tap.seen, start, end, live=True),
            desk_cpu=desk_cpu,
            broker_cpu=broker_cpu,
            load=load,
            snapshots=watcher.snapshot_times(start, end),
            ws_closed=watcher.closed,
        )
    finally:
        if watcher is not None:
            watcher.close()
        if tap is not None:
            tap.close()
        print(f"  stopping {len(runtimes)} runtimes ...", file=sys.stderr, flush=True)
        stop_processes([r.process for r in runtimes], grace=90)
        for r in runtimes:
            r.stop()  # closes the log (the process is gone)
        if broker is not None:
            broker.stop()


def print_swarm(r: SwarmResult) -> None:
    nominal = r.n / r.interval
    print(
        f"4. the 'runtimes' channel with {r.n} runtimes publishing every {r.interval:g} s "
        f"(nominal {nominal:.0f} statuses/s), over {r.window:.1f} s"
    )
    print(f"   all {r.n} seen alive {r.started_after:.1f} s after their launch; then the window")
    print(f"   {'':<40}{'desktop websocket':>19}{'MQTT subscriber (baseline)':>29}")
    print(f"   {'status updates per second':<40}{r.ws.per_s:>19.1f}{r.tap.per_s:>29.1f}")
    print(f"   {'status updates in the window':<40}{r.ws.count:>19}{r.tap.count:>29}")
    print(f"   {'runtimes updated at least once':<40}{f'{r.ws.runtimes}/{r.n}':>19}{f'{r.tap.runtimes}/{r.n}':>29}")
    print(
        f"   {'age of a status on arrival p50/p95 (s)':<40}"
        f"{f'{percentile(r.ws.ages, 50):.2f}/{percentile(r.ws.ages, 95):.2f}':>19}"
        f"{f'{percentile(r.tap.ages, 50):.2f}/{percentile(r.tap.ages, 95):.2f}':>29}"
    )
    print(f"   {'runtimes shown not alive at least once':<40}{r.ws.dead:>19}{r.tap.dead:>29}")
    print(f"   {'full snapshots in the window':<40}{r.snapshots:>19}{'-':>29}")
    print(
        f"   CPU over the window: the desktop's runtime {r.desk_cpu:.0f}%, the broker {r.broker_cpu:.0f}%; "
        f"load average {r.load}" + (f"; the websocket ended: {r.ws_closed}" if r.ws_closed else "")
    )
    try:
        from oneos.desktop.ws import RUNTIMES_INTERVAL
    except ImportError:
        RUNTIMES_INTERVAL = float("nan")
    print(
        f"   (the desktop diffs the statuses every {RUNTIMES_INTERVAL:g} s and on membership changes:\n"
        f"    about {r.n / RUNTIMES_INTERVAL:.0f}/s for {r.n} busy runtimes, each runtime at most once per diff)"
    )
    if r.tap.per_s < 0.8 * nominal:
        print(
            f"   note: the runtimes published {r.tap.per_s / nominal:.0%} of the nominal rate, their statuses "
            f"{percentile(r.tap.ages, 50):.1f} s old on arrival:\n"
            "   the bus itself is saturated on this machine, so the desktop cannot show more than it receives\n"
            "   (fewer --runtimes, or a larger --stats-interval, measure the desktop on a healthy bus)"
        )


# -- main --------------------------------------------------------------------------------------------------


@contextmanager
def section(name: str, failures: list[str]) -> Iterator[None]:
    """Run one section; its failure is printed and counted, and the next section still runs."""
    print(f"  {name} ...", file=sys.stderr, flush=True)
    try:
        yield
    except (BenchError, OSError, subprocess.SubprocessError, TimeoutError, ValueError) as e:
        failures.append(name)
        print(f"{name}: failed: {e}")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts everywhere (a smoke run, about a minute)")
    parser.add_argument("--sections", default="1,2,3,4,5", help="which sections to run (default 1,2,3,4,5)")
    parser.add_argument("--rounds", type=int, help="round trips per action, websocket and RPC (default 200; quick 30)")
    parser.add_argument("--cli-rounds", type=int, help="runs of each oneos command (default 10; quick 3)")
    parser.add_argument("--keys", type=int, help="keystrokes timed per terminal (default 200; quick 40)")
    parser.add_argument("--size-mib", type=int, help="MiB of the transferred file (default 64; quick 16)")
    parser.add_argument("--transfer-rounds", type=int, help="transfers of each kind (default 3; quick 1)")
    parser.add_argument("--runtimes", type=int, help="runtimes publishing in section 4 (default 50; quick 10)")
    parser.add_argument("--window", type=float, help="seconds counted in section 4 (default 20; quick 5)")
    parser.add_argument("--stats-interval", type=float, default=0.5, help="the runtimes' --stats-interval (0.5)")
    parser.add_argument("--browser-rounds", type=int, help="page loads of each kind (default 3; quick 1)")
    parser.add_argument("--browser-timeout", type=float, default=30.0, help="seconds for the live view to show (30)")
    parser.add_argument("--browser-child", action="store_true", help=argparse.SUPPRESS)  # internal: section 5's browser
    args = parser.parse_args()
    if args.browser_child:
        return browser_child()
    defaults = {
        "rounds": (200, 30),
        "cli_rounds": (10, 3),
        "keys": (200, 40),
        "size_mib": (64, 16),
        "transfer_rounds": (3, 1),
        "runtimes": (50, 10),
        "window": (20.0, 5.0),
        "browser_rounds": (3, 1),
    }
    for name, (normal, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.runtimes < 2:
        parser.error("--runtimes must be at least 2")
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if not sections <= {"1", "2", "3", "4", "5"}:
        parser.error("--sections takes numbers from 1 to 5")

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop what we started.
    interrupt_on_signals()

    root = Path(tempfile.mkdtemp(prefix="oneos-bench-desktop-"))
    failures: list[str] = []
    solo = Solo(root / "solo")
    inproc: InProcess | None = None
    try:
        print(
            f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {sys.version.split()[0]}; "
            f"load average at start {' '.join(Path('/proc/loadavg').read_text().split()[:3])}"
            + ("; --quick" if args.quick else "")
        )
        if sections & {"1", "2", "3", "5"}:
            print("  starting the one-runtime network ...", file=sys.stderr, flush=True)
            ready = solo.start()
            print(f"sections 1-3, 5: runtime 'solo' (its own broker, SQLite store), desktop at {solo.desktop}, "
                  f"ssh on 127.0.0.1:{solo.ssh_port}; up with its user in {ready:.1f} s")  # fmt: skip
            print()
            if sections & {"1", "3"}:
                inproc = InProcess(solo.rt.url if solo.rt else "", solo.home)
        if "1" in sections and inproc is not None:
            with section("1. round trips", failures):
                print_round_trips(bench_round_trips(solo, inproc, args.rounds, args.cli_rounds), args.rounds,
                                  args.cli_rounds)  # fmt: skip
        if "2" in sections:
            with section("2. terminal echo", failures):
                ws_times, ssh_times = bench_echo(solo, args.keys, root)
                print_echo(ws_times, ssh_times, args.keys)
        if "3" in sections and inproc is not None:
            with section("3. upload/download", failures):
                size = args.size_mib * 2**20
                print_transfer(bench_transfer(solo, inproc, size, args.transfer_rounds, root), size,
                               args.transfer_rounds)  # fmt: skip
        if "5" in sections:
            with section("5. page load", failures):
                print_browser(bench_browser(solo, args.browser_rounds, args.browser_timeout), args.browser_rounds)
        if inproc is not None:
            inproc.close()
            inproc = None
        solo.stop()
        if "4" in sections:
            with section("4. runtimes channel", failures):
                print(f"  starting a broker and {args.runtimes} runtimes ...", file=sys.stderr, flush=True)
                print_swarm(bench_swarm(args.runtimes, args.stats_interval, args.window, root / "swarm"))
        if failures:
            print(f"failed sections: {', '.join(failures)}")
        return 1 if failures else 0
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}); stopping what was started", file=sys.stderr)
        return 130
    finally:
        if inproc is not None:
            inproc.close()
        solo.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
