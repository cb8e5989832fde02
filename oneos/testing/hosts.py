"""OneOS processes inside the hosts of a namespace network (:mod:`oneos.testing.netns`).

Small helpers that start our broker and runtimes inside a host the same way
:mod:`oneos.testing.brokers` and :mod:`oneos.testing.runtimes` start them on
loopback, and run ``oneos`` from inside a host.  The ``netns`` fixture that
makes (and always tears down) such networks is in tests/integration/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oneos.testing.brokers import START_DEADLINE, oneospsd_command
from oneos.testing.netns import Host, wait_port
from oneos.twistd import twistd_command

#: the MQTT port our broker listens on inside its host (each namespace has its own ports)
BROKER_PORT = 1883


@dataclass
class HostProcess:
    """A program started inside a host, logging stdout and stderr to a file."""

    host: Host
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.process.poll() is None


def start_in(
    host: Host, argv: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> HostProcess:
    """Start *argv* in *host* with output to *log_path* (the parent keeps no file open)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = host.popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    return HostProcess(host, process, log_path)


def start_broker_in(
    host: Host, directory: Path, port: int = BROKER_PORT, deadline: float = START_DEADLINE, secure: bool = False
) -> HostProcess:
    """``twistd oneospsd`` listening on *host*'s address; returns once it accepts there.

    *secure*: as shipped (identities on), its ONEOS_HOME ``directory/home`` holding the network secret
    (``oneos invite`` there issues identities); otherwise ``--allow-anonymous``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    argv = oneospsd_command(port, directory / "broker.port", interface=host.addr, allow_anonymous=not secure)
    env = dict(os.environ, ONEOS_HOME=str(directory / "home"))
    broker = start_in(host, argv, directory / "oneospsd.log", cwd=directory, env=env)
    try:
        wait_port(host, host.addr, port, deadline, process=broker.process)
    except Exception as e:
        raise RuntimeError(f"oneospsd in {host.label} did not come up: {e}\n{broker.log()}") from None
    return broker


def start_runtime_in(host: Host, rid: str, url: str, root: Path, *extra: str) -> HostProcess:
    """``twistd oneosd`` in *host* with its own ``ONEOS_HOME`` (``root/rid``), like :class:`oneos.testing.runtimes.RuntimeProcess`."""
    home = root / rid
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ONEOS_HOME=str(home), PYTHONUNBUFFERED="1")
    argv = twistd_command(
        "oneosd", "--id", rid, "--pubsub", url, "--broker", "external", "--stats-interval", "0.5", *extra
    )
    return start_in(host, argv, home / "runtime.log", env=env, cwd=home)


def oneos_in(host: Host, *args: str, home: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real ``oneos`` command inside *host* (``home``: an ONEOS_HOME so no user config leaks in)."""
    env = dict(os.environ)
    if home is not None:
        env["ONEOS_HOME"] = str(home)
    return host.run([sys.executable, "-m", "oneos.cli.main", *args], timeout=timeout, env=env)


def statuses_in(host: Host, url: str, home: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every runtime's status by id, as ``oneos status --json`` run inside *host* shows it."""
    result = oneos_in(host, "status", "--json", "--pubsub", url, home=home)
    if result.returncode != 0:
        raise AssertionError(f"oneos status in {host.label} failed ({result.returncode}): {result.stderr}")
    return {s["id"]: s for s in json.loads(result.stdout)}
