"""Files over SSH end to end: a real runtime, OpenSSH's real ``sftp`` and ``scp``.

One embedded runtime (its own broker, a SQLite store) serves SSH on a free
loopback port for the whole module; alice and bob log in with key pairs
made here (their keys are put in ``$ONEOS_HOME/authorized_keys`` before the
first start, which moves them into the tree).  Transfers are checked byte
for byte against the local files, and what they did to the tree through
the shell itself (``ssh HOST 'ls'``); nothing may land on, or come from,
the runtime machine's own disk.  Every process is stopped at the end.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from oneos.cli.shell import control_path, master_pid
from oneos.fs.store import MiB
from oneos.testing.runtimes import EmbeddedRuntime, oneos, wait_for
from oneos.testing.ssh import ssh_argv, ssh_options

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("ssh", "sftp", "scp", "ssh-keygen")),
    reason="needs the OpenSSH client (ssh, sftp, scp, ssh-keygen)",
)

TIMEOUT = 120


class Door:
    """The runtime under test and how alice and bob reach its SSH door."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = {}
        for user in ("alice", "bob"):
            key = root / f"id_{user}"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            self.keys[user] = key
        home = root / "rt" / "embedded"
        home.mkdir(parents=True)
        (home / "authorized_keys").write_text(
            "".join(f"{user} {Path(f'{key}.pub').read_text()}" for user, key in self.keys.items())
        )
        self.runtime = EmbeddedRuntime(root / "rt")
        self.home = self.runtime.home
        ssh = wait_for(
            "the shell to listen",
            lambda: (
                json.loads((self.home / "runtime.json").read_text()).get("ssh")
                if (self.home / "runtime.json").exists()
                else None
            ),
            deadline=90,
            logs=self.runtime.log,
        )
        self.port = int(ssh.rsplit(":", 1)[1])

    def ssh(self, line: str, user: str = "alice") -> subprocess.CompletedProcess:
        return subprocess.run(
            [*ssh_argv(self.port, user, key=self.keys[user]), "--", line],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def sftp(self, batch: str, user: str = "alice", cwd: Path | None = None) -> subprocess.CompletedProcess:
        script = (cwd or self.root) / f"batch-{user}"
        script.write_text(batch)
        return subprocess.run(
            ["sftp", "-P", str(self.port), *ssh_options(self.keys[user]), "-b", str(script), f"{user}@127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=cwd or self.root,
        )

    def scp(self, *args: str, user: str = "alice") -> subprocess.CompletedProcess:
        return subprocess.run(
            ["scp", "-P", str(self.port), *ssh_options(self.keys[user]), *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    d = Door(tmp_path_factory.mktemp("sftp"))
    try:
        wait_for("alice's first login", lambda: d.ssh("pwd").returncode == 0, deadline=90, logs=d.runtime.log)
        wait_for("bob's first login", lambda: d.ssh("pwd", "bob").returncode == 0, deadline=90, logs=d.runtime.log)
        yield d
    finally:
        d.runtime.stop()


def data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_sftp_batch_moves_files_byte_exact(door, tmp_path):
    big = data(4 * MiB + 17, 1)
    (tmp_path / "big.bin").write_bytes(big)
    name = "größe ünï.txt"
    (tmp_path / name).write_bytes("héllo wörld\n".encode())
    marker = f"h5-sftp-{random.Random().getrandbits(40):x}"
    r = door.sftp(
        "\n".join(
            [
                "pwd",
                "mkdir work",
                "put big.bin work/big.bin",
                f'put "{name}" work/',
                f"put big.bin /tmp/{marker}",
                "ls -l work",
                "rename work/big.bin work/moved.bin",
                "get work/moved.bin back.bin",
                f'get "work/{name}" back.txt',
                "",
            ]
        ),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "Remote working directory: /home/alice" in r.stdout
    assert "big.bin" in r.stdout and name in r.stdout and "alice" in r.stdout
    assert (tmp_path / "back.bin").read_bytes() == big
    assert (tmp_path / "back.txt").read_bytes() == (tmp_path / name).read_bytes()
    # it is the OneOS tree: the shell sees it, the host's /tmp does not
    listed = door.ssh(f"ls -l work; wc -c /tmp/{marker}")
    assert listed.returncode == 0, listed.stderr
    assert "moved.bin" in listed.stdout and name in listed.stdout and "big.bin" not in listed.stdout
    assert str(len(big)) in listed.stdout
    assert not Path(f"/tmp/{marker}").exists()
    r = door.sftp(f'rm work/moved.bin\nrm "work/{name}"\nrmdir work\nrm /tmp/{marker}\nls\n', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert door.ssh("ls work").returncode != 0


def test_scp_copies_over_sftp_both_ways(door, tmp_path):
    payload = data(3 * MiB + 5, 2)
    (tmp_path / "up.bin").write_bytes(payload)
    up = door.scp(str(tmp_path / "up.bin"), "alice@127.0.0.1:scp-up.bin")
    assert up.returncode == 0, up.stderr
    assert door.ssh("wc -c scp-up.bin").stdout.split()[0] == str(len(payload))
    down = door.scp("alice@127.0.0.1:scp-up.bin", str(tmp_path / "down.bin"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "down.bin").read_bytes() == payload
    assert door.ssh("rm scp-up.bin").returncode == 0


def test_legacy_scp_never_touches_the_host_disk(door, tmp_path):
    """``scp -O`` asks the server to run its own scp: refused, so nothing lands on or leaves the runtime's disk."""
    (tmp_path / "payload").write_text("must not land on the host\n")
    landed = tmp_path / "landed"
    up = door.scp("-O", str(tmp_path / "payload"), f"alice@127.0.0.1:{landed}")
    assert up.returncode != 0 and "not served" in up.stderr, up
    assert not landed.exists()
    host_file = tmp_path / "host-secret"
    host_file.write_text("a file of the runtime machine\n")
    fetched = tmp_path / "fetched"
    down = door.scp("-O", f"alice@127.0.0.1:{host_file}", str(fetched))
    assert down.returncode != 0 and "not served" in down.stderr, down
    assert not fetched.exists()
    # nor did either reach the tree
    assert door.ssh(f"ls {landed}").returncode != 0


def test_another_users_private_home_is_refused(door, tmp_path):
    (tmp_path / "f").write_bytes(b"alice's own\n")
    assert door.sftp("put f private.txt\n", cwd=tmp_path).returncode == 0
    (tmp_path / "evil").write_bytes(b"bob was here\n")
    put = door.sftp("put evil /home/alice/private.txt\n", user="bob", cwd=tmp_path)
    assert put.returncode != 0 and "Permission denied" in put.stderr, put
    put_new = door.sftp("put evil /home/alice/new.txt\n", user="bob", cwd=tmp_path)
    assert put_new.returncode != 0 and "Permission denied" in put_new.stderr, put_new
    listing = door.sftp("ls /home/alice\n", user="bob", cwd=tmp_path)
    assert listing.returncode != 0 and "Permission denied" in listing.stderr, listing
    got = door.sftp("get /home/alice/private.txt stolen\n", user="bob", cwd=tmp_path)
    assert got.returncode != 0 and not (tmp_path / "stolen").exists()
    seen = door.ssh("cat private.txt; ls")
    assert seen.stdout.startswith("alice's own\n") and "new.txt" not in seen.stdout
    # bob's own home works
    ok = door.sftp("put evil mine.txt\nls -l\n", user="bob", cwd=tmp_path)
    assert ok.returncode == 0 and "mine.txt" in ok.stdout and "bob" in ok.stdout, ok.stderr


def test_oneos_sftp_runs_a_batch(door, tmp_path):
    payload = data(1 * MiB + 3, 3)
    (tmp_path / "p.bin").write_bytes(payload)
    batch = tmp_path / "batch"
    batch.write_text(f"put {tmp_path / 'p.bin'} oneos-sftp.bin\nls -l\nget oneos-sftp.bin {tmp_path / 'q.bin'}\n")
    env = {"ONEOS_HOME": str(door.home), "ONEOS_SSH_REUSE": "1"}
    control = control_path(door.home, "alice", "127.0.0.1", door.port, str(door.home / "client_key"))
    try:
        r = oneos("sftp", "--user", "alice", "-b", str(batch), env=env, timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr
        assert "oneos-sftp.bin" in r.stdout
        assert (tmp_path / "q.bin").read_bytes() == payload
        assert (door.home / "known_hosts").read_text().startswith(f"[127.0.0.1]:{door.port} ssh-ed25519 ")
        # it went over the connection 'oneos -c' shares: one login for both
        assert control is not None
        master = master_pid(control, "alice", "127.0.0.1")
        assert master is not None
        line = oneos("shell", "--user", "alice", "-c", "wc -c oneos-sftp.bin", env=env, timeout=TIMEOUT)
        assert line.stdout.split()[:1] == [str(len(payload))], line
        batch.write_text("get no-such-file\n")
        failed = oneos("sftp", "--user", "alice", "-b", str(batch), env=env, timeout=TIMEOUT)
        assert failed.returncode == 1 and "not found" in failed.stderr, failed
        assert master_pid(control, "alice", "127.0.0.1") == master
        # without reuse, a connection of its own
        alone = oneos("sftp", "--user", "alice", "-b", str(batch), env={**env, "ONEOS_SSH_REUSE": "0"})
        assert alone.returncode == 1 and "not found" in alone.stderr, alone
    finally:
        oneos("shell", "--user", "alice", "--close", env=env, timeout=TIMEOUT)  # the master this test started
