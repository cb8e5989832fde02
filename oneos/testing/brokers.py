"""Real brokers for tests: our ``twistd oneospsd`` and Debian's Mosquitto.

Both run as child processes on ephemeral loopback ports.  Start-up is
awaited by condition (port file written / port accepting) with a deadline,
never a fixed sleep.  The plain functions (:func:`start_oneospsd`,
:func:`start_mosquitto`) serve tests and benchmarks alike; the pytest
fixtures built on them are in tests/integration/conftest.py.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from oneos.twistd import twistd_command

T = TypeVar("T")

#: seconds a broker gets to come up before the test fails with its log
START_DEADLINE = 30.0


@dataclass
class BrokerProcess:
    """A broker child process and where to reach it."""

    process: subprocess.Popen
    host: str
    port: int
    log_path: Path
    #: argv that starts the same broker again on the same port (for restart)
    argv: list[str] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill it abruptly (clients see their TCP connections reset)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def restart(self, deadline: float = START_DEADLINE) -> None:
        """Stop it (if running) and start it again on the same port; returns once it accepts."""
        self.stop()
        self.process = _spawn(self.argv, self.log_path, append=True)
        _wait_until(f"{self.argv[0]} (restart)", lambda: _accepts(self.host, self.port), deadline, self)


def _spawn(
    argv: list[str], log_path: Path, append: bool = False, env: dict[str, str] | None = None
) -> subprocess.Popen:
    with open(log_path, "ab" if append else "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent, env=env)


def _wait_until(what: str, check: Callable[[], T | None], deadline: float, broker: BrokerProcess) -> T:
    """Poll *check* until it returns a truthy value; fail with the broker's log if it exits or time runs out."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        if broker.process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {broker.process.returncode}:\n{broker.log()}")
        if time.monotonic() > end:
            broker.process.kill()
            broker.process.wait()
            raise RuntimeError(f"{what} did not come up within {deadline:g}s:\n{broker.log()}")
        time.sleep(0.02)  # polling interval, not synchronisation


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for programs that cannot take port 0)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def oneospsd_command(
    port: int, port_file: Path, interface: str = "127.0.0.1", allow_anonymous: bool = True
) -> list[str]:
    """argv of a foreground ``twistd oneospsd`` with the current interpreter.

    *allow_anonymous* (the default here) starts it with ``--allow-anonymous``:
    our broker refuses clients without the network's credentials, and the
    dozens of tests that use this fixture test other things (their runtimes
    and commands have no credentials in their homes).  tests/integration/test_broker_auth.py
    covers the authenticating broker.
    """
    argv = twistd_command("oneospsd", "--port", str(port), "--interface", interface, "--port-file", str(port_file))
    return argv + ["--allow-anonymous"] if allow_anonymous else argv


def start_oneospsd(
    directory: Path,
    deadline: float = START_DEADLINE,
    allow_anonymous: bool = True,
    env: dict[str, str] | None = None,
    extra: list[str] | None = None,
) -> BrokerProcess:
    """``twistd -n oneospsd --port 0`` on 127.0.0.1; the real port comes from ``--port-file``.

    *directory* holds the port file and ``oneospsd.log``.  Anonymous clients
    are allowed unless *allow_anonymous* is false (see :func:`oneospsd_command`);
    *env* replaces the child's environment (e.g. its ``ONEOS_HOME``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    port_file = directory / "broker.port"
    port_file.unlink(missing_ok=True)
    log_path = directory / "oneospsd.log"
    argv = oneospsd_command(0, port_file, allow_anonymous=allow_anonymous) + list(extra or [])
    broker = BrokerProcess(_spawn(argv, log_path, env=env), "127.0.0.1", 0, log_path)

    def written_port() -> int | None:
        try:
            return int(port_file.read_text())  # written atomically (rename) once listening
        except (OSError, ValueError):
            return None

    broker.port = _wait_until("oneospsd", written_port, deadline, broker)
    broker.argv = oneospsd_command(broker.port, port_file, allow_anonymous=allow_anonymous)
    return broker


def mosquitto_binary() -> str | None:
    """Path of Debian's ``mosquitto`` (it lives in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def start_mosquitto(
    directory: Path, deadline: float = START_DEADLINE, password_file: Path | None = None, acl_file: Path | None = None
) -> BrokerProcess:
    """Mosquitto on a free loopback port: anonymous, no persistence, config under *directory*.

    With *password_file* (``oneos mosquitto`` or ``mosquitto_passwd``) it requires those credentials
    instead; with *acl_file* it applies those topic rules.
    """
    binary = mosquitto_binary()
    if binary is None:
        raise FileNotFoundError("mosquitto is not installed (Debian package 'mosquitto')")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "mosquitto.conf"
    auth = f"allow_anonymous false\npassword_file {password_file}\n" if password_file else "allow_anonymous true\n"
    if acl_file:
        auth += f"acl_file {acl_file}\n"
    conf.write_text(f"listener {port} 127.0.0.1\n{auth}persistence false\n")
    log_path = directory / "mosquitto.log"
    argv = [binary, "-c", str(conf)]
    broker = BrokerProcess(_spawn(argv, log_path), "127.0.0.1", port, log_path, argv)
    _wait_until("mosquitto", lambda: _accepts(broker.host, port), deadline, broker)
    return broker
