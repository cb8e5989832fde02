"""Real brokers for tests: our ``twistd oneospsd`` and Debian's Mosquitto.

Both run as child processes on ephemeral loopback ports.  Start-up is
awaited by condition (port file written / port accepting) with a deadline,
never a fixed sleep.  The plain functions are reused by benchmarks.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from oneos.twistd import twistd_command


@dataclass
class BrokerProcess:
    """A broker child process and where to reach it."""

    process: subprocess.Popen
    host: str
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _deadline_wait(what: str, check, deadline: float, proc: subprocess.Popen, log_path: Path):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        result = check()
        if result:
            return result
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not come up in {deadline}s:\n{log_path.read_text(errors='replace')}")


def start_oneospsd(directory: Path, deadline: float = 30.0) -> BrokerProcess:
    """``twistd -n oneospsd --port 0`` on 127.0.0.1; the port comes from --port-file."""
    directory.mkdir(parents=True, exist_ok=True)
    port_file = directory / "broker.port"
    log_path = directory / "oneospsd.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        twistd_command("oneospsd", "--port", "0", "--interface", "127.0.0.1", "--port-file", str(port_file)),
        stdout=log, stderr=subprocess.STDOUT, cwd=directory,
    )
    log.close()

    def port():
        try:
            return int(port_file.read_text())
        except (OSError, ValueError):
            return None

    return BrokerProcess(proc, "127.0.0.1", _deadline_wait("oneospsd", port, deadline, proc, log_path), log_path)


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def start_mosquitto(directory: Path, deadline: float = 30.0) -> BrokerProcess:
    """Debian's Mosquitto on a free loopback port, anonymous, no persistence."""
    binary = mosquitto_binary()
    if binary is None:
        raise FileNotFoundError("mosquitto is not installed (Debian package 'mosquitto')")
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log_path = directory / "mosquitto.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    log.close()
    _deadline_wait("mosquitto", lambda: _accepts(port), deadline, proc, log_path)
    return BrokerProcess(proc, "127.0.0.1", port, log_path)


@pytest.fixture
def amqtt_broker(tmp_path):
    """Our broker (``twistd oneospsd``, amqtt) as a real process on an ephemeral port."""
    broker = start_oneospsd(tmp_path / "oneospsd")
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_broker(tmp_path):
    """Mosquitto as a real process on a free port; skipped if not installed."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto); .ci/run installs it")
    broker = start_mosquitto(tmp_path / "mosquitto")
    yield broker
    broker.stop()
