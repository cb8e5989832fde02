"""Who may use a device, on a real runtime: its owner and mode, checked by the device's runtime.

A broker with identities on (as shipped), one runtime ``rt-1`` that joined
it with a runtime invitation, and a second OneOS user, bob: made with
``oneos user add`` for the shell (``oneos shell -u bob -c LINE`` from the
runtime's machine), and given a client invitation for the ``oneos``
commands of "bob's laptop" (every request of that identity is checked as
bob, whatever it sends).  ``rt-1`` serves a random source configured with
no owner or mode (so it is the runtime's OS account's, mode 0600), a dump
sink given to bob, and a dump sink left at the default.  Then ``rt-1`` is
started again with the random source at ``mode=0644``.

Every wait is "until a condition holds, or a deadline"; every process
started here is stopped by its pid.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from oneos.testing.brokers import start_oneospsd
from oneos.testing.runtimes import RuntimeProcess, leaders, live, statuses, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("ssh") is None or shutil.which("ssh-keygen") is None, reason="needs the OpenSSH client"
)

#: who owns a device configured without owner=: the OS account the runtime runs as (this test's)
RUNTIME_ACCOUNT = getpass.getuser()
DEVICES = ("rnd:in:random", "mine:out:dump:owner=bob", "drop:out:dump")


def oneos(
    home: Path, *args: str, input: str | None = None, text: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess:
    """The real ``oneos`` command with *home* as its ONEOS_HOME (its identity and its runtime)."""
    return subprocess.run(
        [sys.executable, "-m", "oneos.cli.main", *args],
        capture_output=True,
        input=input,
        text=text,
        timeout=timeout,
        env=dict(os.environ, ONEOS_HOME=str(home), ONEOS_SSH_REUSE="0"),
    )


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """The broker and the credentials of rt-1's home and of bob's laptop (no runtime yet)."""
    root = tmp_path_factory.mktemp("devices-permissions")
    broker_home = root / "broker-home"
    broker = start_oneospsd(root / "broker", allow_anonymous=False, env=dict(os.environ, ONEOS_HOME=str(broker_home)))
    try:
        homes = {"rt1": root / "rt-1", "laptop": root / "laptop"}
        for who, invite in (("rt1", ("--name", "rt-1")), ("laptop", ("--user", "bob"))):
            token = oneos(broker_home, "invite", *invite, "--broker", broker.url)
            assert token.returncode == 0, token.stderr
            joined = oneos(homes[who], "join", token.stdout.strip())
            assert joined.returncode == 0, joined.stdout + joined.stderr
        yield type("Network", (), {"url": broker.url, "root": root, "broker_home": broker_home, **homes})
    finally:
        broker.stop()


def start_rt1(network: Any, *devices: str) -> RuntimeProcess:
    """rt-1 with *devices*, leading, its devices in its status, its shell answering, and user bob in the tree."""
    proc = RuntimeProcess("rt-1", network.url, network.root, *(a for d in devices for a in ("--device", d)))
    logs = lambda: proc.log()[-4000:]  # noqa: E731
    try:
        wait_for(
            "rt-1 to lead with its devices",
            lambda: (
                (v := statuses(network.url, env={"ONEOS_HOME": str(network.broker_home)}))
                and len(live(v)) == 1
                and leaders(v) == ["rt-1"]
                and len(v["rt-1"].get("devices") or []) == len(devices)
            ),
            deadline=60,
            logs=logs,
        )
        wait_for("rt-1's shell", lambda: shell(network, "ls /dev").stdout.strip() == "rt-1/", deadline=60, logs=logs)
        if "bob" not in oneos(network.rt1, "user", "list").stdout.split():
            added = oneos(network.rt1, "user", "add", "bob", "--password-stdin", input="bob-pw-1\n")
            assert added.returncode == 0, added.stderr
    except BaseException:
        proc.stop()
        raise
    return proc


def shell(network: Any, line: str, user: str | None = None, **kw: Any) -> subprocess.CompletedProcess:
    """``oneos shell -c LINE`` on rt-1's machine: as its OS account's user by default, as *user* with -u."""
    return oneos(network.rt1, "shell", "--no-reuse", *(("-u", user) if user else ()), "-c", line, **kw)


def laptop(network: Any, *args: str, **kw: Any) -> subprocess.CompletedProcess:
    """A ``oneos`` command on bob's laptop: its client identity bob@..., so everything it asks is bob's."""
    return oneos(network.laptop, *args, **kw)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused command (a refusal is one plain line, never a traceback)."""
    text = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_a_0600_device_is_its_owners_only_and_everyone_sees_it(network):
    proc = start_rt1(network, *DEVICES)
    try:
        # the machine's own account (the default owner) reads it on a first start, configuring nothing
        mine = shell(network, "head -c 8 /dev/rt-1/rnd | wc -c")
        assert (mine.returncode, mine.stdout.strip()) == (0, "8"), mine.stderr

        # bob, in the shell: refused, with the device and the user named, and a non-zero status
        refused = shell(network, "head -c 8 /dev/rt-1/rnd", user="bob", text=False)
        assert (refused.returncode, refused.stdout) == (1, b""), refused.stderr
        line = one_line(refused)
        assert "/dev/rt-1/rnd" in line and "permission denied" in line
        assert f"user bob may not read it (owner {RUNTIME_ACCOUNT}, mode 0600)" in line

        # ... but he sees every device, with its owner and mode, like ls shows files he may not read
        listed = shell(network, "ls -l /dev/rt-1", user="bob")
        assert listed.returncode == 0, listed.stderr
        rows = {r.split()[5]: r.split()[:2] for r in listed.stdout.splitlines()}
        assert rows == {
            "drop": ["crw-------", RUNTIME_ACCOUNT],
            "mine": ["crw-------", "bob"],
            "rnd": ["crw-------", RUNTIME_ACCOUNT],
        }

        # bob's own machine (a client identity: the runtime checks it as bob whatever it sends)
        cat = laptop(network, "devices", "cat", "rt-1/rnd", "--bytes", "8")
        assert cat.returncode == 1 and cat.stdout == ""  # refused before any byte
        assert f"device rnd on rt-1: permission denied: user bob may not read it (owner {RUNTIME_ACCOUNT}" in one_line(
            cat
        )
        table = laptop(network, "devices", "--json")
        assert table.returncode == 0, table.stderr
        found = {d["name"]: (d["owner"], d["mode"]) for d in json.loads(table.stdout)}
        assert found == {"rnd": (RUNTIME_ACCOUNT, 0o600), "mine": ("bob", 0o600), "drop": (RUNTIME_ACCOUNT, 0o600)}

        # writing: bob's own sink takes his bytes, the default one refuses them
        written = laptop(network, "devices", "write", "rt-1/mine", input="hello\n")
        assert written.returncode == 0, written.stderr
        echoed = shell(network, "echo hi > /dev/rt-1/mine", user="bob")
        assert echoed.returncode == 0, echoed.stderr
        denied = laptop(network, "devices", "write", "rt-1/drop", input="hello\n")
        assert denied.returncode == 1 and "user bob may not write it" in one_line(denied)
        detail = json.loads(oneos(network.rt1, "devices", "--detail", "--json").stdout)
        taken = {d["name"]: d["bytes"] for d in detail}
        assert taken["mine"] == len("hello\nhi\n") and taken["drop"] == 0  # nothing of the refused write arrived
    finally:
        proc.stop()


def test_a_0644_device_may_be_read_by_everyone(network):
    proc = start_rt1(network, "rnd:in:random:mode=0644")
    try:
        read = shell(network, "head -c 8 /dev/rt-1/rnd | wc -c", user="bob")
        assert (read.returncode, read.stdout.strip()) == (0, "8"), read.stderr
        cat = laptop(network, "devices", "cat", "rt-1/rnd", "--bytes", "8", text=False)
        assert (cat.returncode, len(cat.stdout)) == (0, 8), cat.stderr
        listed = shell(network, "ls -l /dev/rt-1/rnd", user="bob")
        assert listed.stdout.split()[:2] == ["crw-r--r--", RUNTIME_ACCOUNT], listed.stderr
        table = json.loads(laptop(network, "devices", "--json").stdout)
        assert [(d["name"], d["mode"]) for d in table] == [("rnd", 0o644)]
    finally:
        proc.stop()
