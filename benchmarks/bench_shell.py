#!/usr/bin/env python3
"""Shell benchmark: the OneOS shell over SSH beside OpenSSH's sshd + bash.

Prints, in one run and measured the same way with the same OpenSSH client
and the same ed25519 client key:

* session start: launching ``ssh ... USER@127.0.0.1 true`` (an SSH
  ``exec``) until the client exits, p50/p99 over ``--rounds`` rounds;
* per-command latency of ``ls /``, ``pwd`` and ``echo hello`` over ONE
  ``ssh -T`` session fed lines on its stdin (no terminal, run in order like
  a script): each line is ``CMD; echo MARKER`` and the time is from writing
  the line to reading the marker, p50/p99 over ``--commands`` lines each.

OneOS side: a real ``twistd oneosd`` (embedded broker on a free loopback
port, its own temporary ``$ONEOS_HOME`` whose config.json puts
``listen.ssh`` on a free loopback port); the client key is made by
:func:`oneos.cli.shell.local_identity`, as a first ``oneos`` on this machine
would.  Baseline: our own ``/usr/sbin/sshd -D -f CONFIG`` on a free
loopback port (generated host key, AuthorizedKeysFile = a temporary file
holding the same public key, key-only login, no PAM), the remote shell
being bash.  Without sshd the baseline is skipped (the reason is printed)
and the OneOS figures are still printed.  Every process started here is
stopped on the way out, errors included.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import platform
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oneos.cli.shell import local_identity  # noqa: E402
from oneos.testing.bench import interrupt_on_signals  # noqa: E402
from oneos.twistd import twistd_command  # noqa: E402

SSHD = "/usr/sbin/sshd"
COMMANDS = [("ls /", "ls /"), ("pwd", "pwd"), ("echo", "echo hello")]
STEP_TIMEOUT = 30.0  # one ssh exec, or one command's marker, must come within this
#: -o KexAlgorithms=... for every client (--kex); None: let client and server agree as usual
KEX: str | None = None


class BenchError(Exception):
    """The benchmark cannot go on (a server did not start, a command failed ...)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def stop_process(p: subprocess.Popen | None, grace: float = 15.0) -> None:
    """SIGTERM, wait up to *grace*, then SIGKILL; only this one process."""
    if p is None or p.poll() is not None:
        return
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)
    except ProcessLookupError:
        pass


# -- the systems under test ------------------------------------------------------------------


class Target:
    """One SSH server to measure: how to reach it and how to start a session."""

    name = "?"

    def __init__(self, root: Path, user: str) -> None:
        self.root = root
        self.user = user
        self.port = 0
        self.key: Path | None = None
        self.known_hosts = root / "known_hosts"

    stop_grace = 10.0

    def log(self) -> str:
        """The server's log so far (empty before it started)."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def stop(self) -> None:
        stop_process(getattr(self, "process", None), grace=self.stop_grace)
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def ssh_base(self) -> list[str]:
        """The OpenSSH client, identical options for both servers (no user/system config, no agent, pinned host key)."""
        assert self.key is not None
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"ConnectTimeout={int(STEP_TIMEOUT)}",
            *(["-o", f"KexAlgorithms={KEX}"] if KEX else []),
        ]

    def exec_argv(self, line: str) -> list[str]:
        return [*self.ssh_base(), "-T", f"{self.user}@127.0.0.1", "--", line]

    def kex(self) -> str:
        """The key exchange the client and this server agree on (from one 'ssh -v' login)."""
        argv = [a.replace("LogLevel=ERROR", "LogLevel=DEBUG1") for a in self.exec_argv("true")]
        try:
            r = subprocess.run(
                argv, check=False, capture_output=True, text=True, timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            return "?"
        found = [
            line.split("kex: algorithm:", 1)[1].strip() for line in r.stderr.splitlines() if "kex: algorithm:" in line
        ]
        hostkey = [
            line.split("kex: host key algorithm:", 1)[1].strip()
            for line in r.stderr.splitlines()
            if "kex: host key algorithm:" in line
        ]
        return f"kex {found[0] if found else '?'}, host key {hostkey[0] if hostkey else '?'}"

    def session_argv(self) -> list[str]:
        return [*self.ssh_base(), "-T", f"{self.user}@127.0.0.1"]

    def pin_host_key(self, public_key_file: Path) -> None:
        fields = public_key_file.read_text().split()[:2]
        with open(self.known_hosts, "a") as f:
            f.write(f"[127.0.0.1]:{self.port} {' '.join(fields)}\n")


class OneOSTarget(Target):
    name = "OneOS"

    def __init__(self, root: Path, user: str) -> None:
        super().__init__(root, user)
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        self.home = self.root / "oneos-home"
        self.home.mkdir()
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{free_port()}"
        (self.home / "config.json").write_text(
            json.dumps(
                {
                    "listen": {
                        "ssh": f"tcp:{self.port}:interface=127.0.0.1",
                        "telnet": "",
                        "desktop": "",
                        "pipe": "tcp:0:interface=127.0.0.1",
                    }
                }
            )
        )
        self.log_path = self.root / "oneos-runtime.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, ONEOS_HOME=str(self.home), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            twistd_command("oneosd", "--id", "bench", "--pubsub", self.url),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.home,
        )
        t0 = time.monotonic()

        def up() -> bool:
            if self.process.poll() is not None:
                raise BenchError(f"the runtime exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            text = self.log()
            return "shell serving ssh" in text and "now leads the kernel" in text

        wait_until("the OneOS shell to listen", up, 90, self.log)
        key = local_identity(self.home, self.user)
        if key is None:
            raise BenchError("local_identity made no client key (no ssh-keygen, or no host key in ONEOS_HOME)")
        self.key = Path(key)
        self.pin_host_key(self.home / "ssh_host_key.pub")
        # Serving SSH is not yet answering: the first login makes /home/USER through the fs service.
        wait_until("the OneOS shell to run 'ls /'", lambda: self._probe(), 90, self.log)
        self.ready_after = time.monotonic() - t0

    def _probe(self) -> bool:
        try:
            r = subprocess.run(
                self.exec_argv("ls /"), check=False, capture_output=True, timeout=STEP_TIMEOUT, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0

    stop_grace = 30.0  # a runtime stops its kernel services first


class OpenSSHTarget(Target):
    name = "OpenSSH"

    def __init__(self, root: Path, user: str, key: Path, startup_files: bool = False) -> None:
        super().__init__(root, user)
        self.key = key
        self.startup_files = startup_files
        self.process: subprocess.Popen | None = None
        self._log = None
        self.dir = root / "sshd"

    @staticmethod
    def unavailable() -> str | None:
        """Why the baseline cannot run here, or None."""
        if not os.access(SSHD, os.X_OK):
            return f"{SSHD} not found (apt-get install openssh-server)"
        if not os.path.isdir("/run/sshd"):
            try:
                os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            except OSError as e:
                return f"sshd needs its privilege separation directory /run/sshd and it cannot be made ({e})"
        return None

    def start(self) -> None:
        self.dir.mkdir()
        self.port = free_port()
        host_key = self.dir / "ssh_host_ed25519_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench-sshd", "-f", str(host_key)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        authorized = self.dir / "authorized_keys"
        assert self.key is not None
        authorized.write_text(" ".join(Path(f"{self.key}.pub").read_text().split()[:2]) + "\n")
        authorized.chmod(0o600)
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "UseDNS no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "AllowAgentForwarding no",
                    # bench_sftp's baseline: OpenSSH's own SFTP server, in process (unused by exec sessions)
                    "Subsystem sftp internal-sftp",
                    "LogLevel INFO",
                    # bash reads ~/.bashrc for 'sshd: bash -c LINE' only when SHLVL < 2 after its own
                    # increment: SHLVL=1 keeps this machine's dotfiles out of the baseline (--startup-files).
                    *([] if self.startup_files else ["SetEnv SHLVL=1"]),
                    "",
                ]
            )
        )
        self.log_path = self.dir / "sshd.log"
        self._log = open(self.log_path, "wb")
        # -e: log to stderr (our file) instead of syslog.
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
        )

        def up() -> bool:
            if self.process.poll() is not None:
                raise BenchError(f"sshd exited with {self.process.returncode}: {self.log().strip()[-1500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until("sshd to listen", up, 30, self.log)
        self.pin_host_key(host_key.with_name(host_key.name + ".pub"))
        r = subprocess.run(
            self.exec_argv("true"),
            check=False,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0:
            raise BenchError(f"cannot log in to our sshd as {self.user}: {r.stderr.strip()}\n{self.log()[-1500:]}")
        login_shell = pwd.getpwnam(self.user).pw_shell
        self.shell_note = login_shell
        # The remote shell must be bash: use the login shell when it is bash, else exec bash from it.
        self.via_exec_bash = os.path.basename(login_shell) != "bash"

    def session_argv(self) -> list[str]:
        argv = super().session_argv()
        return [*argv, "--", "exec bash"] if self.via_exec_bash else argv


# -- measurements --------------------------------------------------------------------------


def bench_session_start(target: Target, rounds: int) -> list[float]:
    """Seconds from launching ``ssh ... true`` to its exit, per round (one warm-up round not counted)."""
    out = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        try:
            result = subprocess.run(
                target.exec_argv("true"),
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=STEP_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"{target.name}: 'ssh ... true' took more than {STEP_TIMEOUT:.0f}s") from None
        elapsed = time.perf_counter() - t0
        if result.returncode != 0:
            raise BenchError(
                f"{target.name}: 'ssh ... true' exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        if r > 0:
            out.append(elapsed)
    return out


class LineSession:
    """One ``ssh -T`` session: write a line, read stdout until a marker line."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )
        self.fd = self.process.stdout.fileno()
        self.buffer = b""
        self.errors = bytearray()
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        while True:
            chunk = self.process.stderr.read(65536)  # unbuffered: whatever is there, b"" at EOF
            if not chunk:
                return
            if len(self.errors) < 65536:
                self.errors += chunk

    def run(self, line: str, marker: str, timeout: float = STEP_TIMEOUT) -> tuple[float, bytes]:
        """Seconds from writing ``LINE; echo MARKER`` to reading the marker, and the output before it."""
        want = marker.encode() + b"\n"
        t0 = time.perf_counter()
        self.process.stdin.write(f"{line}; echo {marker}\n".encode())
        deadline = time.monotonic() + timeout
        while want not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no marker after {timeout:.0f}s for {line!r}; stderr: {self.stderr()}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise BenchError(
                        f"the session ended (status {self.process.poll()}) while running {line!r}; "
                        f"stderr: {self.stderr()}"
                    )
                self.buffer += chunk
        elapsed = time.perf_counter() - t0
        output, _, self.buffer = self.buffer.partition(want)
        return elapsed, output

    def stderr(self) -> str:
        return bytes(self.errors).decode(errors="replace").strip()[-1000:] or "(empty)"

    def close(self) -> None:
        try:
            self.process.stdin.close()  # EOF: both shells end the session
        except OSError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._drain.join(timeout=5)


def check_output(name: str, output: bytes) -> bool:
    if name == "echo":
        return output == b"hello\n"
    if name == "pwd":
        return output.startswith(b"/") and output.endswith(b"\n") and output.count(b"\n") == 1
    return bool(output.strip())  # ls /


def bench_commands(target: Target, count: int, warmup: int = 3) -> tuple[dict[str, list[float]], int]:
    """Per-command seconds over one session (commands round-robin), and how many outputs looked wrong."""
    times: dict[str, list[float]] = {name: [] for name, _ in COMMANDS}
    bad = 0
    session = LineSession(target.session_argv())
    try:
        for i in range(warmup + count):
            for name, line in COMMANDS:
                elapsed, output = session.run(line, f"__bench_{i}_{name.replace(' ', '')}__")
                if i < warmup:
                    continue
                times[name].append(elapsed)
                if not check_output(name, output):
                    bad += 1
                    if bad == 1:
                        print(f"  note: {target.name} {line!r} printed {output[:200]!r}", file=sys.stderr)
    finally:
        session.close()
    return times, bad


def measure(target: Target, rounds: int, commands: int) -> dict[str, list[float]]:
    print(f"  {target.name}: {rounds} session starts ...", file=sys.stderr, flush=True)
    results = {"session start": bench_session_start(target, rounds)}
    print(f"  {target.name}: {commands} x {len(COMMANDS)} commands over one session ...", file=sys.stderr, flush=True)
    per_command, bad = bench_commands(target, commands)
    if bad:
        print(f"  warning: {target.name}: {bad} command outputs were not as expected", file=sys.stderr)
    results.update(per_command)
    return results


# -- report ----------------------------------------------------------------------------------


def print_table(oneos: dict[str, list[float]], baseline: dict[str, list[float]] | None) -> None:
    rows = ["session start", "ls /", "pwd", "echo"]
    labels = {"echo": "echo hello"}
    head = f"{'(ms)':<16}{'OneOS p50':>11}{'OneOS p99':>11}{'OpenSSH p50':>13}{'OpenSSH p99':>13}"
    print(head)
    print("-" * len(head))
    for row in rows:
        a = oneos[row]
        cells = f"{percentile(a, 50) * 1e3:>11.1f}{percentile(a, 99) * 1e3:>11.1f}"
        if baseline is not None:
            b = baseline[row]
            cells += f"{percentile(b, 50) * 1e3:>13.1f}{percentile(b, 99) * 1e3:>13.1f}"
        else:
            cells += f"{'skipped':>13}{'skipped':>13}"
        print(f"{labels.get(row, row):<16}{cells}")


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (r.stderr or r.stdout).strip().splitlines()
    return next((t for t in text if "OpenSSH" in t), text[0] if text else "?")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="session starts per system (default 30)")
    parser.add_argument("--commands", type=int, default=100, help="commands of each kind per session (default 100)")
    parser.add_argument(
        "--startup-files",
        action="store_true",
        help="let the baseline's 'bash -c LINE' read ~/.bashrc (off by default: it times this "
        "machine's dotfiles, not OpenSSH)",
    )
    parser.add_argument(
        "--kex",
        metavar="ALG",
        help="force one key exchange on both (e.g. curve25519-sha256); default: whatever client and server agree on",
    )
    args = parser.parse_args()
    global KEX
    KEX = args.kex
    if args.rounds < 1 or args.commands < 1:
        parser.error("--rounds and --commands must be at least 1")
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            print(
                f"the OpenSSH client tool '{tool}' is not installed (apt-get install openssh-client)", file=sys.stderr
            )
            return 2

    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally blocks stop what we started.
    interrupt_on_signals()

    user = getpass.getuser()
    root = Path(tempfile.mkdtemp(prefix="oneos-bench-shell-"))
    oneos = OneOSTarget(root, user)
    baseline: OpenSSHTarget | None = None
    try:
        print(
            f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {sys.version.split()[0]}, "
            f"client: {tool_version(['ssh', '-V'])}, user {user}"
        )
        print(
            f"rounds: {args.rounds} session starts (+1 warm-up), {args.commands} of each command "
            f"(+3 warm-up) over one 'ssh -T' session, round-robin"
        )
        print("  starting the OneOS runtime ...", file=sys.stderr, flush=True)
        oneos.start()
        print(
            f"OneOS: runtime 'bench' on {oneos.url}, shell ssh on 127.0.0.1:{oneos.port} "
            f"(answering 'ls /' {oneos.ready_after:.1f}s after launch); {oneos.kex()}"
        )
        why = OpenSSHTarget.unavailable()
        if why is None:
            baseline = OpenSSHTarget(root, user, oneos.key, args.startup_files)  # the same client key
            try:
                baseline.start()
            except BenchError as e:
                why = f"our sshd did not work: {e}"
                baseline.stop()
                baseline = None
        if baseline is not None:
            shell = baseline.shell_note + (" (then 'exec bash')" if baseline.via_exec_bash else "")
            dotfiles = "reads ~/.bashrc" if args.startup_files else "~/.bashrc not read (SetEnv SHLVL=1)"
            print(
                f"OpenSSH: {tool_version([SSHD, '-V'])} on 127.0.0.1:{baseline.port}, remote shell {shell}, "
                f"exec {dotfiles}; {baseline.kex()}"
            )
        else:
            print(f"OpenSSH baseline skipped: {why}")
        print()
        oneos_results = measure(oneos, args.rounds, args.commands)
        base_results = measure(baseline, args.rounds, args.commands) if baseline is not None else None
        print_table(oneos_results, base_results)
        return 0
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}); stopping what was started", file=sys.stderr)
        return 130
    finally:
        if baseline is not None:
            baseline.stop()
        oneos.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
