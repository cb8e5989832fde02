"""Devices as files in the shell and ``oneos run --stdin DEVICE``, on a real 2-runtime grid.

rt-2 has a random source and GPIO mock pins (an output wired to an input,
so what ``echo 1 > /dev/rt-2/led`` writes can be read back); the shell is
reached over SSH on the leader (the real OpenSSH client), as in
test_shell_grid.py.  Every wait is "until a condition holds, or a deadline".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from oneos.testing.brokers import start_oneospsd
from oneos.testing.runtimes import RuntimeProcess, free_port, leaders, live, statuses, wait_for
from oneos.testing.ssh import ssh_argv

pytestmark = [
    pytest.mark.skipif(
        shutil.which("ssh") is None or shutil.which("ssh-keygen") is None, reason="needs the OpenSSH client"
    ),
    pytest.mark.skipif(
        __import__("importlib").util.find_spec("gpiozero") is None, reason="gpiozero is not installed (the test extra)"
    ),
]

DEVICES = {
    "rt-1": (),
    "rt-2": (
        # alice's (the shell's user here); by default a device is the runtime's account's alone
        *("--device", "rnd:in:random:owner=alice"),
        *("--device", "led:out:gpio:pin=17,mock=1,mock_wire=27,owner=alice"),
        *("--device", "button:in:gpio:pin=27,mock=1,owner=alice"),
        *("--device", "wrongway:out:random"),
    ),
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("devices-shell")
    broker = start_oneospsd(root / "broker")
    key = root / "id_grid"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ports = {rid: free_port() for rid in DEVICES}
    procs = {}
    for rid, extra in DEVICES.items():
        home = root / rid
        home.mkdir(parents=True)
        (home / "authorized_keys").write_text(f"alice {key.with_suffix('.pub').read_text()}")
        procs[rid] = RuntimeProcess(
            rid, broker.url, root, *extra, config={"listen": {"ssh": f"tcp:{ports[rid]}:interface=127.0.0.1"}}
        )
    logs = lambda: "\n".join(f"== {p.id}\n{p.log()[-3000:]}" for p in procs.values())  # noqa: E731
    g = type("Grid", (), {"url": broker.url, "procs": procs, "logs": staticmethod(logs), "leader": ""})
    try:
        view = wait_for(
            "2 live runtimes, a leader and rt-2's devices",
            lambda: (
                (v := statuses(broker.url))
                and len(live(v)) == 2
                and len(leaders(v)) == 1
                and len(v["rt-2"].get("devices") or []) == 4
                and v
            ),
            deadline=60,
            logs=logs,
        )
        g.leader = leaders(view)[0]
        g.ssh_argv = ssh_argv(ports[g.leader], "alice", key=key)
        wait_for("the leader's shell", lambda: sh(g, "ls /dev").stdout.strip() == "rt-2/", deadline=60, logs=logs)
        yield g
    finally:
        for p in procs.values():
            p.stop()
        broker.stop()


def sh(grid, line: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*grid.ssh_argv, "--", line], capture_output=True, text=True, timeout=timeout)


def test_ls_dev(grid):
    assert sh(grid, "ls /dev").stdout == "rt-2/\n"
    r = sh(grid, "ls /dev/rt-2")
    assert r.stdout.split() == ["button", "led", "rnd", "wrongway"], r.stderr
    r = sh(grid, "ls -l /dev/rt-2")
    rows = {line.split()[5]: line.split() for line in r.stdout.splitlines()}
    assert rows["rnd"][:5] == ["crw-------", "alice", "in", "random", "ok"]
    assert rows["led"][:5] == ["crw-------", "alice", "out", "gpio", "ok"]
    assert rows["wrongway"][4] == "failed" and "(" in " ".join(rows["wrongway"][6:])
    r = sh(grid, "ls /dev/rt-1")
    assert r.returncode == 1 and "no such file or directory" in r.stderr


def test_cat_random_into_head_stops(grid):
    r = sh(grid, "cat /dev/rt-2/rnd | head -c 64 | wc -c")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "64"
    # and again: the first reader left (the device serves the next one)
    assert sh(grid, "head -c 100000 /dev/rt-2/rnd | wc -c").stdout.strip() == "100000"


def test_echo_into_a_gpio_pin_and_read_it_back(grid):
    r = sh(grid, "echo 1 > /dev/rt-2/led")
    assert r.returncode == 0, r.stderr
    assert wait_for("the wired pin to read 1", lambda: sh(grid, "head -n 1 /dev/rt-2/button").stdout == "1\n")
    assert sh(grid, "echo 0 > /dev/rt-2/led").returncode == 0
    assert wait_for("the wired pin to read 0", lambda: sh(grid, "head -n 1 /dev/rt-2/button").stdout == "0\n")


def test_device_into_a_program(grid):
    r = sh(grid, "cat /dev/rt-2/rnd | head -c 1000 @rt-1 | wc -c")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1000"


def test_errors_are_one_line(grid):
    for line, expected in (
        ("cat /dev/rt-2/nope", "cat: /dev/rt-2/nope: no such device"),
        ("cat /dev/rt-2/led", "cat: /dev/rt-2/led: permission denied"),
        ("echo 1 > /dev/rt-2/rnd", "/dev/rt-2/rnd: permission denied"),
        ("cat /dev/rt-9/rnd", "cat: /dev/rt-9/rnd: no such device (runtime rt-9 is not running)"),
        ("cat /dev/rt-2/wrongway", "cat: /dev/rt-2/wrongway:"),
    ):
        r = sh(grid, line)
        assert r.returncode == 1, (line, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr, (line, r.stderr)


def oneos(grid, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oneos.cli.main", *args[:1], "--pubsub", grid.url, *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, ONEOS_HOME=str(grid.procs["rt-1"].home)),
    )


def test_run_with_a_device_as_stdin(grid):
    r = oneos(grid, "run", "--on", "rt-1", "--stdin", "/dev/rt-2/rnd", "sh", "-c", "head -c 5000 | wc -c")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "5000"
    r = oneos(grid, "run", "--on", "rt-1", "--stdin", "rt-2/nope", "cat")
    assert r.returncode == 1 and "/dev/rt-2/nope:" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
