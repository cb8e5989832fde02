#!/usr/bin/env python3
"""CLI benchmark: ``oneos -c true`` with and without a shared connection, and the CLI's start-up.

Prints, in one run, p50/p99 over ``--rounds`` rounds (one warm-up round not
counted) of the wall time from launching a command to its exit:

* one-liners: ``oneos -c true`` *cold* (no master: each round first closes
  the shared connection, untimed, so the command logs in and starts one),
  *warm* (the master of the previous round is reused), and with
  ``--no-reuse``; beside them the OpenSSH client alone against the same
  OneOS shell over the warm master (what is left is Python), ``ssh true``
  to a private OpenSSH ``sshd`` without and with ControlMaster (the same
  client and client key), and ``bash -c true``;
* start-up: ``python -c pass``, ``oneos --help``, ``oneos status --help``,
  ``oneos run --help``, ``oneos shell --help`` and a warm ``oneos -c
  true``, with the sum of the import times ``python -X importtime``
  reports for each (the import work alone);
* commands against the runtime: ``oneos status`` (its statuses read
  without Twisted, oneos/cli/statusreader.py), beside the same read over
  the Twisted client (:func:`oneos.cli.common.run_with_client` and
  :func:`oneos.cli.status.collect`, what the command did before) as the
  baseline, the ``oneos devices`` table (read the same way), and ``oneos
  run /bin/true`` end to end (the scheduler places
  it, its streams attach, its exit status comes back), each with its
  import time.

Then the aim of issue 15 (aim 5: ``oneos status``, ``oneos -c`` and
``oneos run`` start in under 150 ms), judged on the wall p50 of the rows
above, with each figure's ratio to 150 ms.

``oneos`` is run as the console script next to this Python (as a user
runs it; ``python -m`` would add runpy's share).

OneOS side: a real ``twistd oneosd`` with its embedded broker started by
:class:`oneos.testing.runtimes.EmbeddedRuntime` (its own temporary
``$ONEOS_HOME``); ``oneos`` finds its shell in ``runtime.json`` and makes
its client key, as on a user's machine.  The CLI's children keep compiled
bytecode under a temporary ``PYTHONPYCACHEPREFIX`` (as an installed
package has its ``.pyc``), even where ``PYTHONDONTWRITEBYTECODE`` is set.
Baseline: ``/usr/sbin/sshd -D -f CONFIG`` on a free loopback port, as in
benchmarks/bench_shell.py (skipped, with the reason printed, if it cannot
start).  Every process started here (runtime, sshd, both masters) is
stopped on the way out, errors included.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from bench_shell import STEP_TIMEOUT, BenchError, OpenSSHTarget, percentile, tool_version
from oneos.cli.shell import control_path, master_alive, master_pid
from oneos.testing.bench import interrupt_on_signals, load_average  # noqa: E402
from oneos.testing.runtimes import EmbeddedRuntime, WaitTimeout, wait_for

#: start-up rows: what is timed, and the arguments after ``python`` (the console script's own code:
#: ``from oneos.cli.main import main; main()``, without runpy's share of ``python -m``)
_MAIN = "import sys; from oneos.cli.main import main; sys.exit(main())"
STARTUP = [
    ("python -c pass", ["-c", "pass"]),
    ("oneos --help", ["-c", _MAIN, "--help"]),
    ("oneos status --help", ["-c", _MAIN, "status", "--help"]),
    ("oneos run --help", ["-c", _MAIN, "run", "--help"]),
    ("oneos shell --help", ["-c", _MAIN, "shell", "--help"]),
    ("oneos -c true (warm: over the master)", ["-c", _MAIN, "-c", "true"]),
]
#: the same read as ``oneos status`` over the Twisted client, as the command did before oneos/cli/statusreader.py
_TWISTED_STATUS = (
    "from oneos.cli.common import default_pubsub_url, run_with_client; from oneos.cli.status import collect; "
    "run_with_client(default_pubsub_url(), collect)"
)
#: commands against the runtime: what is timed, how (``oneos`` ARGS, else the arguments after ``python``)
COMMANDS: list[tuple[str, list[str] | None, list[str]]] = [
    ("oneos status", ["status"], ["-c", _MAIN, "status"]),
    ("  its read over Twisted (before)", None, ["-c", _TWISTED_STATUS]),
    ("oneos devices (the table)", ["devices"], ["-c", _MAIN, "devices"]),
    ("oneos run /bin/true", ["run", "/bin/true"], ["-c", _MAIN, "run", "/bin/true"]),
]
#: issue 15, aim 5: these start (and finish) in under this many seconds, wall p50
AIM = 0.150


class Sample(NamedTuple):
    """One run: wall seconds from launch to exit, and the CPU seconds (user + system) it and the
    descendants it waited for used.  The CPU time is the start-up *work*: unlike the wall time it
    does not grow while the process waits for a core another program holds, nor count the server."""

    wall: float
    cpu: float


def _cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(argv: list[str], env: dict[str, str] | None = None, what: str = "") -> Sample:
    """Run *argv* once (our only child meanwhile); BenchError if it fails."""
    c0, t0 = _cpu(), time.perf_counter()
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what or argv[0]}: more than {STEP_TIMEOUT:.0f}s") from None
    sample = Sample(time.perf_counter() - t0, _cpu() - c0)
    if r.returncode != 0:
        raise BenchError(f"{what or argv}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()[-500:]}")
    return sample


def rounds_of(n: int, step: Any, before: Any = None) -> list[Sample]:
    """*step()* timed *n* + 1 times (the first not counted); *before()* runs untimed ahead of each."""
    out = []
    for r in range(n + 1):
        if before is not None:
            before()
        elapsed = step()
        if r > 0:
            out.append(elapsed)
    return out


def import_ms(python: list[str], env: dict[str, str]) -> float:
    """The sum of the self times ``-X importtime`` reports (ms): the import work alone."""
    r = subprocess.run(
        [python[0], "-X", "importtime", *python[1:]],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=STEP_TIMEOUT,
    )
    total = 0
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            field = line.split(":", 1)[1].split("|")[0].strip()
            if field.isdigit():
                total += int(field)
    return total / 1000.0


class OneOS:
    """The runtime, and ``oneos`` run as its machine's owner."""

    def __init__(self, root: Path, user: str) -> None:
        self.root = root
        self.user = user
        self.runtime: EmbeddedRuntime | None = None
        self.masters: set[int] = set()
        env = {k: v for k, v in os.environ.items() if k not in ("ONEOS_SSH_REUSE", "PYTHONDONTWRITEBYTECODE")}
        self.env = {**env, "PYTHONPYCACHEPREFIX": str(root / "pycache")}

    def start(self) -> None:
        self.runtime = rt = EmbeddedRuntime(self.root)
        t0 = time.monotonic()

        def ready() -> bool:
            if rt.process.poll() is not None:
                raise BenchError(f"the runtime exited with {rt.process.returncode}:\n{rt.log()[-3000:]}")
            try:
                self.ssh = json.loads((rt.home / "runtime.json").read_text()).get("ssh")
            except (OSError, ValueError):
                return False
            return bool(self.ssh) and "now leads the kernel" in rt.log()

        try:
            wait_for("the runtime's shell", ready, deadline=90, logs=rt.log)
        except WaitTimeout as e:
            raise BenchError(str(e)) from None
        self.env["ONEOS_HOME"] = str(rt.home)
        self.port = int(self.ssh.rpartition(":")[2])
        # the first login makes /home/USER and the client key; the shell answers from then on
        wait_for("the shell to answer", lambda: self._try("-c", "true"), deadline=90, logs=rt.log)
        self.ready_after = time.monotonic() - t0
        self.key = rt.home / "client_key"
        control = control_path(rt.home, self.user, "127.0.0.1", self.port, str(self.key))
        if control is None:
            raise BenchError("no control socket path fits (the home and /tmp are too long?)")
        self.control = control

    def _try(self, *args: str) -> bool:
        try:
            self.run(*args)
        except BenchError:
            return False
        return True

    def argv(self, *args: str) -> list[str]:
        """The ``oneos`` console script next to this Python (what users run), else ``python -m``."""
        script = Path(sys.executable).parent / "oneos"
        if os.access(script, os.X_OK):
            return [str(script), *args]
        return [sys.executable, "-m", "oneos.cli.main", *args]

    def run(self, *args: str) -> Sample:
        sample = timed(self.argv(*args), self.env, "oneos " + " ".join(args))
        self.note_master()
        return sample

    def note_master(self) -> None:
        pid = master_pid(self.control, self.user, "127.0.0.1") if hasattr(self, "control") else None
        if pid is not None:
            self.masters.add(pid)

    def close_master(self) -> None:
        """``oneos shell --close``, and wait until the master is gone (untimed)."""
        self.run("shell", "--close")
        try:
            wait_for("the master to exit", lambda: not master_alive(self.control), deadline=15)
        except WaitTimeout as e:
            raise BenchError(str(e)) from None

    def ssh_mux_argv(self) -> list[str]:
        """The OpenSSH client alone, over the master ``oneos`` keeps (what ``oneos -c`` runs)."""
        return [
            "ssh",
            "-p",
            str(self.port),
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"UserKnownHostsFile={self.runtime.home / 'known_hosts'}",  # type: ignore[union-attr]
            "-o",
            "StrictHostKeyChecking=yes",
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ControlMaster=no",
            "-o",
            f"ControlPath={self.control}",
            "-T",
            f"{self.user}@127.0.0.1",
            "--",
            "true",
        ]

    def stop(self) -> None:
        for pid in self.masters:
            _stop_pid(pid)
        if self.runtime is not None:
            self.runtime.stop()


def _stop_pid(pid: int) -> None:
    """SIGTERM one process we started (a master), if it still runs."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


class SSHMaster:
    """``ssh -M -N -f`` to the baseline sshd, and a client of it."""

    def __init__(self, target: OpenSSHTarget, root: Path) -> None:
        self.target = target
        self.control = root / "sshd-mux"
        self.pid: int | None = None

    def _base(self) -> list[str]:
        argv = self.target.ssh_base()
        i = argv.index("ControlPath=none")
        argv[i] = f"ControlPath={self.control}"
        return argv

    def start(self) -> None:
        argv = [*self._base(), "-o", "ControlPersist=600", "-M", "-N", "-f", f"{self.target.user}@127.0.0.1"]
        i = argv.index("ControlMaster=no")
        del argv[i - 1 : i + 1]  # -M says it (both would mean "ask before each session")
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=STEP_TIMEOUT)
        if r.returncode != 0 or not master_alive(self.control):
            raise BenchError(f"the ssh master to sshd did not start: {r.stderr.strip()}")
        self.pid = master_pid(self.control, self.target.user, "127.0.0.1")

    def exec_argv(self) -> list[str]:
        return [*self._base(), "-T", f"{self.target.user}@127.0.0.1", "--", "true"]

    def stop(self) -> None:
        if self.pid is not None:
            _stop_pid(self.pid)


Rows = list[tuple[str, "list[Sample] | str", str]]


def print_rows(title: str, rows: Rows) -> None:
    """Wall time p50/p99 and the fastest round (the least disturbed by other load), and CPU time p50."""
    head = f"{title:<40}{'p50 ms':>9}{'p99 ms':>9}{'min ms':>9}{'CPU p50':>9}  note"
    print(head)
    print("-" * len(head))
    for name, values, note in rows:
        if isinstance(values, str):
            print(f"{name:<40}{'skipped':>9}{'':>27}  {values}")
        else:
            wall = [v.wall for v in values]
            p50, p99, low = percentile(wall, 50), percentile(wall, 99), min(wall)
            cpu = percentile([v.cpu for v in values], 50)
            print(f"{name:<40}{p50 * 1e3:>9.1f}{p99 * 1e3:>9.1f}{low * 1e3:>9.1f}{cpu * 1e3:>9.1f}  {note}")
    print()


def print_aims(figures: list[tuple[str, list[Sample]]]) -> None:
    """Issue 15's aim 5 beside the figures: each command's wall p50, its ratio to the aim, met or not."""
    print()
    print(f"aim (issue 15, aim 5): each command in under {AIM * 1e3:.0f} ms, wall p50")
    for name, values in figures:
        p50 = percentile([v.wall for v in values], 50)
        verdict = "met" if p50 < AIM else "NOT met"
        print(f"  {name:<24}{p50 * 1e3:>7.1f} ms  = {p50 / AIM:.2f}x the aim: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds per measurement (default 30)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for tool in ("ssh", "ssh-keygen", "bash"):
        if shutil.which(tool) is None:
            print(f"'{tool}' is not installed", file=sys.stderr)
            return 2

    interrupt_on_signals()

    user = getpass.getuser()
    root = Path(tempfile.mkdtemp(prefix="oneos-bench-cli-"))
    oneos = OneOS(root, user)
    baseline: OpenSSHTarget | None = None
    mux: SSHMaster | None = None
    try:
        print(
            f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {sys.version.split()[0]}, "
            f"client: {tool_version(['ssh', '-V'])}, user {user}"
        )
        print(f"rounds: {args.rounds} (+1 warm-up) per row; wall time from launch to exit; {load_average()}")
        print("  starting the OneOS runtime ...", file=sys.stderr, flush=True)
        oneos.start()
        print(
            f"OneOS: runtime 'solo' with its embedded broker, shell on {oneos.ssh} "
            f"(answering {oneos.ready_after:.1f}s after launch); control socket {oneos.control}"
        )
        why = OpenSSHTarget.unavailable()
        if why is None:
            baseline = OpenSSHTarget(root, user, oneos.key)  # the same client key
            try:
                baseline.start()
                mux = SSHMaster(baseline, root)
                mux.start()
            except (BenchError, subprocess.SubprocessError, OSError) as e:
                why = f"our sshd did not work: {e}"
                if mux is not None:
                    mux.stop()
                    mux = None
                baseline.stop()
                baseline = None
        if baseline is not None:
            print(f"OpenSSH: {tool_version(['/usr/sbin/sshd', '-V'])} on 127.0.0.1:{baseline.port}")
        else:
            print(f"OpenSSH baseline skipped: {why}")
        print()

        n = args.rounds
        print("  one-liners ...", file=sys.stderr, flush=True)
        cold = rounds_of(n, lambda: oneos.run("-c", "true"), before=oneos.close_master)
        warm = rounds_of(n, lambda: oneos.run("-c", "true"))
        raw = rounds_of(n, lambda: timed(oneos.ssh_mux_argv(), what="ssh over oneos's master"))
        fresh = rounds_of(n, lambda: oneos.run("--no-reuse", "-c", "true"))
        rows: Rows = [
            ("oneos -c true, cold (logs in, master)", cold, "includes starting the master"),
            ("oneos -c true, warm (reuses it)", warm, ""),
            ("oneos --no-reuse -c true", fresh, "a full SSH login each time"),
            ("ssh over that master, no Python", raw, "the OneOS shell's own share"),
        ]
        if baseline is not None and mux is not None:
            b = baseline
            rows.append(("ssh true to sshd, no ControlMaster", rounds_of(n, lambda: timed(b.exec_argv("true"))), ""))
            m = mux
            rows.append(("ssh true to sshd, over a master", rounds_of(n, lambda: timed(m.exec_argv())), ""))
        else:
            rows.append(("ssh true to sshd", str(why), ""))
        rows.append(("bash -c true", rounds_of(n, lambda: timed(["bash", "-c", "true"])), ""))
        print_rows("one-liners", rows)

        print("  start-up ...", file=sys.stderr, flush=True)
        startup: Rows = []
        for name, python_args in STARTUP:
            argv = [sys.executable, *python_args]
            times = rounds_of(n, lambda argv=argv: timed(argv, oneos.env))
            imports = sorted(import_ms(argv, oneos.env) for _ in range(5))[2]
            startup.append((name, times, f"imports {imports:.0f} ms (median of 5, -X importtime)"))
        print_rows("start-up", startup)

        print("  commands ...", file=sys.stderr, flush=True)
        commands: Rows = []
        for name, oneos_args, python_args in COMMANDS:
            argv, what = [sys.executable, *python_args], name.strip()
            if oneos_args is not None:
                times = rounds_of(n, lambda a=oneos_args: oneos.run(*a))
            else:
                times = rounds_of(n, lambda argv=argv, what=what: timed(argv, oneos.env, what))
            imports = sorted(import_ms(argv, oneos.env) for _ in range(5))[2]
            commands.append((name, times, f"imports {imports:.0f} ms (median of 5, -X importtime)"))
        print_rows("commands against the runtime", commands)

        measured = {name: values for name, values, _ in [*rows, *startup, *commands] if not isinstance(values, str)}
        status, before = measured["oneos status"], measured["  its read over Twisted (before)"]
        ratio = percentile([v.wall for v in status], 50) / percentile([v.wall for v in before], 50)
        print(f"oneos status / the same read over Twisted: {ratio:.2f}x (wall p50)")
        print_aims(
            [
                ("oneos status", status),
                ("oneos -c true, warm", measured["oneos -c true, warm (reuses it)"]),
                ("oneos run /bin/true", measured["oneos run /bin/true"]),
            ]
        )
        print(f"after: {load_average()}")
        return 0
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}); stopping what was started", file=sys.stderr)
        return 130
    finally:
        if mux is not None:
            mux.stop()
        if baseline is not None:
            baseline.stop()
        oneos.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
