"""One computer across machines: the README's several-machines steps on three network namespaces.

Three hosts on a bridge (h1 runs the broker), each with its own runtime
started exactly as the README says (``oneosd --pubsub mqtt://BROKER:1883``,
plus an id so the test can name them) and its own ``ONEOS_HOME``.  Every
command runs inside a host, so a listener on loopback or an address a peer
cannot reach fails here as it would between machines.  Faults are real
SIGKILLs.  Skipped with the reason when namespaces cannot be made.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from oneos.testing.hosts import BROKER_PORT, HostProcess, oneos_in, start_broker_in, start_in, statuses_in
from oneos.testing.runtimes import wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("ssh") is None or shutil.which("ssh-keygen") is None, reason="needs the OpenSSH client"
)

ONEOSD = str(Path(sys.executable).with_name("oneosd"))


class Machines:
    """Three hosts, a broker on h1 and a runtime per host, as the README sets them up."""

    def __init__(self, net, root: Path) -> None:
        self.net = net
        self.root = root
        self.h1, self.h2, self.h3 = net.hosts
        self.url = f"mqtt://{self.h1.addr}:{BROKER_PORT}"
        self.broker = start_broker_in(self.h1, root / "broker", secure=True)
        self.runtimes: dict[str, HostProcess] = {}
        self.hosts = {"rt-a": self.h1, "rt-b": self.h2, "rt-c": self.h3}
        # README step 1 and 2: the broker's machine invites every other one, which joins with its token
        for rid in self.hosts:
            self.join(rid, "--name", rid)
        self.join("observer", "--user", "observer", host=self.h3)

    def join(self, who: str, *invite: str, host=None) -> None:
        token = oneos_in(self.h1, "invite", *invite, "--broker", self.url, home=self.root / "broker" / "home")
        assert token.returncode == 0, token.stderr
        joined = oneos_in(host or self.hosts[who], "join", token.stdout.strip(), home=self.home(who))
        assert joined.returncode == 0, joined.stderr

    def home(self, rid: str) -> Path:
        return self.root / rid

    def start(self, rid: str, *extra: str) -> HostProcess:
        """``oneosd --pubsub URL`` in the runtime's host (README step 2), with our id."""
        home = self.home(rid)
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, ONEOS_HOME=str(home), PYTHONUNBUFFERED="1")
        argv = [ONEOSD, "--pubsub", self.url, "--id", rid, "--stats-interval", "0.5", *extra]
        proc = start_in(self.hosts[rid], argv, home / f"runtime-{len(self.runtimes)}.log", env=env, cwd=home)
        self.runtimes[rid] = proc
        return proc

    def kill(self, rid: str) -> None:
        proc = self.runtimes[rid]
        proc.process.send_signal(signal.SIGKILL)
        proc.process.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(f"== {rid}\n{p.log()[-4000:]}" for rid, p in self.runtimes.items())

    def oneos(self, rid: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``oneos ...`` on *rid*'s machine, with that machine's ONEOS_HOME (README step 3)."""
        return oneos_in(self.hosts[rid], *args, home=self.home(rid), timeout=timeout)

    def view(self) -> dict:
        return statuses_in(self.h3, self.url, home=self.root / "observer")

    def wait_alive(self, ids: set[str], leader: str | None = None, deadline: float = 60) -> dict:
        def check():
            view = self.view()
            alive = {k for k, v in view.items() if v["state"] == "alive" and v["ssh"]}
            leaders = [k for k, v in view.items() if v["state"] == "alive" and v["leader"]]
            if ids <= alive and len(leaders) == 1 and (leader is None or leaders == [leader]):
                return view
            return None

        return wait_for(f"{sorted(ids)} alive with shells, one leader", check, deadline=deadline, logs=self.logs)


class Session:
    """An open shell session (``oneos`` with its input on a pipe), fed one line at a time."""

    def __init__(self, machines: Machines, rid: str) -> None:
        env = dict(os.environ, ONEOS_HOME=str(machines.home(rid)))
        self.proc = machines.hosts[rid].popen(
            [sys.executable, "-m", "oneos.cli.main"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.out = b""
        self.n = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            data = self.proc.stdout.read1(65536)
            if not data:
                return
            self.out += data

    def run(self, line: str, deadline: float = 60) -> tuple[int, str]:
        self.n += 1
        marker = f"__done_{self.n}__"
        start = len(self.out)
        self.proc.stdin.write(f"{line}\necho {marker} $?\n".encode())
        self.proc.stdin.flush()
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            text = self.out[start:].decode(errors="replace")
            if marker in text:
                body, _, tail = text.partition(marker)
                return int(tail.split()[0]), body
            assert self.proc.poll() is None, f"the session ended: {self.out.decode(errors='replace')[-2000:]}"
            time.sleep(0.05)  # polling the reader thread's buffer; the marker decides
        raise AssertionError(f"no answer to {line!r} in {deadline}s: {self.out[start:].decode(errors='replace')}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def machines(netns, tmp_path):
    m = Machines(netns(3), tmp_path)
    yield m


def test_readme_several_machines_and_failover(machines, tmp_path):
    m = machines
    m.start("rt-a")
    m.wait_alive({"rt-a"})
    m.start("rt-b")
    m.start("rt-c")
    view = m.wait_alive({"rt-a", "rt-b", "rt-c"}, leader="rt-a")
    # each runtime streams and serves the shell on the address its peers reach, and says so
    for rid, host in m.hosts.items():
        assert view[rid]["stream"].startswith(host.addr + ":"), view[rid]
        assert view[rid]["ssh"] == f"{host.addr}:2222" and view[rid]["pid"] > 0
    assert view["rt-a"]["fs_serving"]

    # a program on another machine, its output here
    r = m.oneos("rt-b", "run", "--on", "rt-a", "sh", "-c", "echo out-of-a; echo err-of-a >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr.strip()) == (3, "out-of-a\n", "err-of-a"), r

    # one tree: a file put from h2 is the same file read from h3
    data = os.urandom(3 * 1024 * 1024 + 7)
    (tmp_path / "blob").write_bytes(data)
    r = m.oneos("rt-b", "fs", "put", str(tmp_path / "blob"), "/tmp/blob")
    assert r.returncode == 0, r.stderr
    r = m.oneos("rt-c", "fs", "get", "/tmp/blob", str(tmp_path / "back"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back").read_bytes() == data

    # the shell on every machine, with the same tree and the same host key
    for rid in m.hosts:
        r = m.oneos(rid, "-c", "ls /tmp")
        assert r.returncode == 0 and "blob" in r.stdout, (rid, r.stdout, r.stderr, m.logs())
    keys = {(m.home(rid) / "ssh_host_key.pub").read_text() for rid in m.hosts}
    assert len(keys) == 1, "every front door shows the network's one host key"

    # a user added on one machine logs in on another
    # (--password-stdin reads standard input: give it through a shell pipe inside the host)
    r = m.h3.run(
        ["sh", "-c", f"echo alice-pw | {sys.executable} -m oneos.cli.main user add alice --password-stdin"],
        env=dict(os.environ, ONEOS_HOME=str(m.home("rt-c"))),
    )
    assert r.returncode == 0, r.stderr
    r = m.oneos("rt-a", "user", "list")
    assert "alice" in r.stdout.split(), r

    # SIGKILL the store host (also the leader): the tree is unavailable, clearly, not empty
    m.kill("rt-a")
    m.wait_alive({"rt-b", "rt-c"})
    r = m.oneos("rt-b", "fs", "ls", "/tmp")
    assert r.returncode != 0 and "store host rt-a is down" in r.stderr, r
    r = m.oneos("rt-c", "-c", "ls /tmp")
    assert r.returncode != 0 and "store host rt-a is down" in r.stderr + r.stdout, r

    # it comes back with its files; the leadership stays where it went (sticky)
    m.start("rt-a")
    view = m.wait_alive({"rt-a", "rt-b", "rt-c"})
    new_leader = next(k for k, v in view.items() if v["state"] == "alive" and v["leader"])
    assert new_leader != "rt-a"
    wait_for("the tree back", lambda: m.oneos("rt-c", "fs", "ls", "/tmp").stdout.count("blob") == 1, logs=m.logs)

    # an open shell on a third machine survives the leader's SIGKILL
    survivor = ({"rt-b", "rt-c"} - {new_leader}).pop()
    session = Session(m, survivor)
    try:
        status, out = session.run("ls /tmp")
        assert status == 0 and "blob" in out, out
        m.kill(new_leader)

        def works_again():
            status, out = session.run("ps; ls /tmp")
            return status == 0 and "blob" in out

        wait_for("the open shell to work again after the failover", works_again, deadline=60, logs=m.logs)
    finally:
        session.close()

    # files, users and the host key are unchanged after the failover
    r = m.oneos(survivor, "fs", "get", "/tmp/blob", str(tmp_path / "after"))
    assert r.returncode == 0 and (tmp_path / "after").read_bytes() == data, r.stderr
    assert "alice" in m.oneos("rt-a", "user", "list").stdout.split()
    assert (m.home(survivor) / "ssh_host_key.pub").read_text() in keys


def test_an_unreachable_stream_address_is_a_clear_error(machines):
    m = machines
    m.start("rt-a")
    # rt-b advertises an address its peers cannot reach: its streams listen on h2's loopback
    m.start("rt-b", "--address", "127.0.0.1")
    m.wait_alive({"rt-a", "rt-b"})
    r = m.oneos("rt-a", "run", "--on", "rt-b", "echo", "lost?")
    assert r.returncode != 0, r
    assert "cannot connect to stream address 127.0.0.1:" in r.stderr and "lost?" not in r.stdout, r


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_a_gigabyte_through_builtin_pipelines_across_machines(machines, tmp_path):
    """1 GiB (ONEOS_TEST_BIG_MB) put from one machine, piped by another's shell: exact, in bounded memory."""
    import hashlib

    m = machines
    m.start("rt-a")
    m.wait_alive({"rt-a"})
    m.start("rt-b")
    m.wait_alive({"rt-a", "rt-b"})
    size = int(os.environ.get("ONEOS_TEST_BIG_MB", "1024")) * 2**20
    big = tmp_path / "big"
    digest = hashlib.sha256()
    with open(big, "wb") as f:
        block = os.urandom(4 * 2**20)
        for i in range(size // len(block)):
            piece = block[:8] + i.to_bytes(8, "big") + block[16:]  # no two blocks alike
            digest.update(piece)
            f.write(piece)
    r = m.oneos("rt-b", "fs", "put", str(big), "/tmp/big", timeout=600)
    assert r.returncode == 0, r.stderr
    big.unlink()
    r = m.oneos("rt-b", "-c", "cat /tmp/big | wc -c", timeout=600)
    assert (r.returncode, r.stdout.strip()) == (0, str(size)), r.stderr
    r = m.oneos("rt-b", "-c", "cat /tmp/big | sha256sum", timeout=600)
    assert r.returncode == 0 and r.stdout.split()[0] == digest.hexdigest(), r.stderr
    for rid in ("rt-a", "rt-b"):
        peak = vm_hwm_mb(m.runtimes[rid].process.pid)
        assert peak < 300, f"{rid} peaked at {peak:.0f} MiB moving {size >> 20} MiB"
