"""Placement near a device on a real 3-runtime grid: only rt-2 has the device ``rnd``.

``oneos run --near rnd`` (and a ``--pipe`` stage's ``@dev:rnd``) must run on
rt-2 whatever the scores say; ``--near nosuch`` fails with an error naming
the device, and ``--explain`` says which runtimes have it.  The ``oneos``
commands run with rt-3's home, as on a third machine; every process is
stopped by its pid.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from oneos.testing.brokers import start_oneospsd
from oneos.testing.runtimes import RuntimeProcess, live, statuses, wait_for

PRINT_RUNTIME = ["sh", "-c", "echo $ONEOS_RUNTIME"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("near-grid")
    broker = start_oneospsd(root / "broker")
    procs = {
        "rt-1": RuntimeProcess("rt-1", broker.url, root),
        "rt-2": RuntimeProcess("rt-2", broker.url, root, "--device", "rnd:in:random"),
        "rt-3": RuntimeProcess("rt-3", broker.url, root),
    }
    logs = lambda: "\n".join(f"== {p.id}\n{p.log()[-3000:]}" for p in procs.values())  # noqa: E731

    def ready() -> bool:
        view = live(statuses(broker.url))
        devices = view.get("rt-2", {}).get("devices") or []
        return len(view) == 3 and any(d.get("name") == "rnd" and d.get("state") == "ok" for d in devices)

    try:
        wait_for("3 live runtimes, rt-2 with device rnd", ready, deadline=60, logs=logs)
        yield type("Grid", (), {"url": broker.url, "procs": procs, "logs": staticmethod(logs)})
    finally:
        for p in procs.values():
            p.stop()
        broker.stop()


def oneos(grid, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, ONEOS_HOME=str(grid.procs["rt-3"].home))
    argv = [sys.executable, "-m", "oneos.cli.main", args[0], "--pubsub", grid.url, *args[1:]]
    return subprocess.run(argv, capture_output=True, input=b"", timeout=timeout, env=env)


def test_run_near_a_device_runs_on_the_runtime_that_has_it(grid):
    for _ in range(3):  # not a lucky score: every time
        result = oneos(grid, "run", "--near", "rnd", *PRINT_RUNTIME)
        assert result.returncode == 0, result.stderr.decode() + grid.logs()
        assert result.stdout.decode().strip() == "rt-2"


def test_a_pipe_stage_near_a_device_runs_there(grid):
    result = oneos(grid, "run", "--pipe", "sh -c 'echo $ONEOS_RUNTIME' @dev:rnd | cat @rt-1")
    assert result.returncode == 0, result.stderr.decode() + grid.logs()
    assert result.stdout.decode().strip() == "rt-2"


def test_run_near_a_device_nobody_has_fails_naming_it(grid):
    result = oneos(grid, "run", "--near", "nosuch", *PRINT_RUNTIME)
    assert result.returncode != 0
    err = result.stderr.decode()
    assert "no live runtime has device nosuch" in err, err
    assert "rt-2: no device nosuch" in err, err
    assert result.stdout == b""


def test_explain_says_which_runtimes_have_the_device(grid):
    result = oneos(grid, "run", "--explain", "--near", "rnd", "sh")
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("-> rt-2") and "has device rnd" in lines[0], lines
    assert sum("no device rnd" in line for line in lines) == 2, lines
