"""Real runtime processes for end-to-end tests, and ways to watch them.

Runtimes are started as ``python -m twisted -n oneosd`` children with their
own ``ONEOS_HOME``; the network is observed through the real ``oneos status
--json`` command.  Waiting is always "until a condition holds, or a
deadline", never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oneos.testing.brokers import free_port
from oneos.twistd import twistd_command as twistd


class WaitTimeout(AssertionError):
    """A condition :func:`wait_for` waited on did not hold in time (an assertion failure in a test)."""


class RuntimeProcess:
    """One ``twistd oneosd`` child, logging to a file under its home."""

    def __init__(self, rid: str, url: str, root: Path, *extra: str, config: dict | None = None) -> None:
        self.id = rid
        self.home = root / rid
        self.home.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (self.home / "config.json").write_text(json.dumps(config))
        self.log_path = self.home / "runtime.log"
        env = dict(os.environ, ONEOS_HOME=str(self.home), PYTHONUNBUFFERED="1")
        # Many runtimes share this machine in tests: each front door on an ephemeral port unless the test says.
        configured = "ssh" in (config or {}).get("listen", {})
        door: tuple[str, ...] = () if configured or "--ssh" in extra else ("--ssh", "tcp:0:interface=127.0.0.1")
        if "desktop" not in (config or {}).get("listen", {}) and "--desktop" not in extra:
            door += ("--desktop", "tcp:0:interface=127.0.0.1")
        args = [
            "oneosd",
            "--id",
            rid,
            "--pubsub",
            url,
            "--broker",
            "external",
            "--stats-interval",
            "0.5",
            *door,
            *extra,
        ]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            twistd(*args), stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.home
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # a runtime that does not stop is a failure of the test, not a leak of the machine
                self.process.kill()
                self.process.wait()
                raise

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        self._log.close()


def oneos(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real ``oneos`` command."""
    return subprocess.run(
        [sys.executable, "-m", "oneos.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )


def statuses(url: str, env: dict | None = None) -> dict[str, dict[str, Any]]:
    """Every runtime's status as ``oneos status --json`` shows it, by id (*env*: e.g. the ONEOS_HOME to log in from)."""
    result = oneos("status", "--json", "--pubsub", url, env=env)
    if result.returncode != 0:
        raise AssertionError(f"oneos status failed: {result.stderr}")
    return {s["id"]: s for s in json.loads(result.stdout)}


def statuses_or_none(url: str, env: dict | None = None) -> dict[str, dict[str, Any]] | None:
    """:func:`statuses`, or None while ``oneos status`` fails (a grid still writing its credentials)."""
    try:
        return statuses(url, env)
    except AssertionError:
        return None


def wait_for(what: str, check: Callable[[], Any], deadline: float = 30.0, logs: Callable[[], str] | None = None) -> Any:
    """Call *check* until it returns something truthy; fail after *deadline* seconds."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(0.2)  # polling interval, not synchronisation: the condition decides
    extra = f"\n--- logs ---\n{logs()}" if logs else ""
    raise WaitTimeout(f"timed out after {deadline}s waiting for {what}; last seen: {last!r}{extra}")


def live(view: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in view.items() if v["state"] == "alive"}


def leaders(view: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(k for k, v in live(view).items() if v["leader"])


class EmbeddedRuntime:
    """A one-machine OneOS (runtime + its own broker) on a free loopback port."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.home = root / "embedded"
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home / "runtime.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, ONEOS_HOME=str(self.home), PYTHONUNBUFFERED="1")
        # the front doors on ephemeral ports: their defaults (ssh 2222, desktop 3000) may be taken by
        # another runtime on this machine; `oneos` finds them through runtime.json
        desktop: tuple[str, ...] = () if "--desktop" in extra else ("--desktop", "tcp:0:interface=127.0.0.1")
        if "--ssh" not in extra:
            desktop += ("--ssh", "tcp:0:interface=127.0.0.1")
        self.process = subprocess.Popen(
            twistd("oneosd", "--id", "solo", "--pubsub", self.url, *desktop, *extra),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.home,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def oneos(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        """``oneos`` as this runtime's owner: its ONEOS_HOME holds the network's credentials."""
        kw["env"] = {"ONEOS_HOME": str(self.home), **(kw.get("env") or {})}
        return oneos(args[0], "--pubsub", self.url, *args[1:], **kw)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self._log.close()
