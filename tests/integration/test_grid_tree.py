"""``oneos grid`` is one computer: one tree and a shell per runtime, across a leader's SIGKILL.

Also the start-up refusals that keep a network to one tree, and the plain
error when no shell answers.  Real processes on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from oneos.testing.brokers import free_port
from oneos.testing.runtimes import oneos, statuses, wait_for
from oneos.testing.ssh import ssh_argv

needs_ssh = pytest.mark.skipif(
    shutil.which("ssh") is None or shutil.which("ssh-keygen") is None, reason="needs the OpenSSH client"
)


@pytest.fixture
def grid(tmp_path, monkeypatch):
    # the grid's broker checks identities with this home's network secret: the test's oneos commands log in from it
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path / "me"))
    port, ssh_base = free_port(), free_port()
    log = open(tmp_path / "grid.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oneos.cli.main",
            "grid",
            "--runtimes",
            "3",
            "--dir",
            str(tmp_path / "grid"),
            "--port",
            str(port),
            "--ssh-port",
            str(ssh_base),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, ONEOS_HOME=str(tmp_path / "me")),
    )
    url = f"mqtt://127.0.0.1:{port}"
    yield proc, url, ssh_base, (lambda: (tmp_path / "grid.log").read_text(errors="replace"))
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@needs_ssh
def test_grid_keeps_one_tree_and_its_shells_across_a_leader_kill(grid, tmp_path):
    proc, url, ssh_base, logs = grid

    def ready():
        try:
            view = statuses(url)
        except AssertionError:
            return None  # the grid has not written its credentials or started its broker yet
        alive = [s for s in view.values() if s["state"] == "alive" and s["ssh"]]
        return view if len(alive) == 3 and sum(s["leader"] for s in alive) == 1 else None

    view = wait_for("a grid of 3 with shells", ready, deadline=90, logs=logs)
    assert {s["ssh"] for s in view.values()} == {f"127.0.0.1:{ssh_base + i}" for i in range(3)}
    (tmp_path / "f").write_bytes(b"one tree\n")
    r = oneos("fs", "--pubsub", url, "put", str(tmp_path / "f"), "/tmp/f")
    assert r.returncode == 0, r.stderr
    key = tmp_path / "id_alice"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    r = oneos("user", "addkey", "alice", str(key) + ".pub", "--pubsub", url)
    assert r.returncode == 0, r.stderr

    leader = next(s for s in view.values() if s["state"] == "alive" and s["leader"])
    os.kill(leader["pid"], signal.SIGKILL)

    def failed_over():
        now = statuses(url)
        leaders = [k for k, s in now.items() if s["state"] == "alive" and s["leader"]]
        return leaders if leaders and leaders[0] != leader["id"] else None

    wait_for("another leader", failed_over, deadline=60, logs=logs)
    r = oneos("fs", "--pubsub", url, "cat", "/tmp/f")
    assert (r.returncode, r.stdout) == (0, "one tree\n"), r.stderr
    for rid, status in view.items():
        if rid == leader["id"]:
            continue
        port = status["ssh"].rsplit(":", 1)[1]
        r = subprocess.run(
            [*ssh_argv(port, "alice", key=key), "--", "cat /tmp/f"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (r.returncode, r.stdout) == (0, "one tree\n"), (rid, r.stderr, logs())


def test_a_second_store_is_refused_at_start(amqtt_broker, runtimes, tmp_path):
    broker = amqtt_broker
    first = runtimes("rt-x", broker.url, "--store", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    wait_for("rt-x to serve the tree", lambda: "file system serving" in first.log(), logs=first.log)
    second = runtimes("rt-y", broker.url, "--store", f"sqlite:///{tmp_path / 'y.sqlite3'}")
    wait_for("rt-y to stop", lambda: second.process.poll() is not None, deadline=60, logs=second.log)
    assert second.process.returncode != 0
    text = second.log()
    assert "x.sqlite3 on rt-x" in text and "y.sqlite3" in text and "remove the store setting" in text, text
    # a runtime with no store setting joins and uses the network's tree
    third = runtimes("rt-z", broker.url)
    wait_for("rt-z to join", lambda: "file tree: sqlite" in third.log() and "on rt-x" in third.log(), logs=third.log)
    assert json.loads((third.home / "network.json").read_text())["store"]["host"] == "rt-x"


def test_no_shell_answering_is_a_plain_error(tmp_path):
    port = free_port()
    r = subprocess.run(
        [sys.executable, "-m", "oneos.cli.main", "shell", "--host", "127.0.0.1", "--port", str(port), "-c", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, ONEOS_HOME=str(tmp_path)),
    )
    assert r.returncode == 255 and "Connection refused" in r.stderr and "Traceback" not in r.stderr, r
