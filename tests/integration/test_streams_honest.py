"""Streams end honestly: a dead producer is an error naming its runtime; a reader that stops ends the writer.

Real broker, real runtimes, the real ``oneos`` command.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from oneos.testing.brokers import start_oneospsd
from oneos.testing.runtimes import RuntimeProcess, live, oneos, statuses, wait_for


@pytest.fixture
def trio(tmp_path):
    broker = start_oneospsd(tmp_path / "broker")
    procs = [RuntimeProcess("rt-1", broker.url, tmp_path)]
    wait_for("rt-1 to lead", lambda: "now leads the kernel" in procs[0].log(), logs=procs[0].log)
    procs.append(RuntimeProcess("rt-victim", broker.url, tmp_path, "--no-kernel"))
    wait_for("the victim to join", lambda: live(statuses(broker.url)).get("rt-victim"))
    yield broker, procs
    for p in procs:
        try:
            p.stop()
        except Exception:
            p.kill()
    broker.stop()


def ps(url: str) -> list[dict]:
    return json.loads(oneos("ps", "--json", "--all", "--pubsub", url).stdout)


def test_a_producer_whose_runtime_dies_fails_the_pipeline_and_names_it(trio):
    broker, (rt1, victim) = trio
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oneos.cli.main",
            "run",
            "--pubsub",
            broker.url,
            "--pipe",
            "yes @rt-victim | wc -c @rt-1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for("the pipe to flow", lambda: any(r["name"] == "wc" and r["state"] == "running" for r in ps(broker.url)))
    victim.kill(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, (out, err)
    assert "rt-victim" in err and ("vanished" in err or "broke" in err), err


def test_a_reader_that_stops_early_ends_the_remote_program(trio):
    broker, _ = trio
    r = subprocess.run(
        f"{sys.executable} -m oneos.cli.main run --pubsub {broker.url} --on rt-1 yes | head -c 100",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout == "y\n" * 50 and "Traceback" not in r.stderr, r.stderr
    wait_for(
        "yes to be stopped", lambda: all(row["state"] != "running" for row in ps(broker.url) if row["name"] == "yes")
    )


def test_programs_do_not_run_as_root_nor_read_the_runtimes_home(trio):
    import os

    broker, (rt1, _) = trio
    r = oneos("run", "--pubsub", broker.url, "--on", "rt-1", "id", "-u")
    assert r.returncode == 0, r.stderr
    if os.geteuid() == 0:
        assert r.stdout.strip() != "0", "a runtime started as root runs programs as an unprivileged account"
        r = oneos("run", "--pubsub", broker.url, "--on", "rt-1", "cat", str(rt1.home / "runtime.json"))
        assert r.returncode != 0 and "Permission denied" in r.stderr, r
