"""The shell on a real grid: one broker, three runtime processes, the real OpenSSH client.

Every runtime is configured with its own SSH port; the shell is a kernel
service, so only the leader serves it, and the test logs in there.  It then
checks what only a grid can show: a pipeline whose stages run on three
different runtimes, wired runtime to runtime, and ``ps`` listing agents from
several runtimes.  Waiting is always "until a condition holds, or a deadline".
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from oneos.testing.brokers import start_oneospsd
from oneos.testing.runtimes import RuntimeProcess, free_port, leaders, live, statuses, wait_for
from oneos.testing.ssh import ssh_argv

pytestmark = pytest.mark.skipif(
    shutil.which("ssh") is None or shutil.which("ssh-keygen") is None, reason="needs the OpenSSH client"
)


class ShellGrid:
    def __init__(self, root) -> None:
        self.root = root
        self.broker = start_oneospsd(root / "broker")
        self.key = root / "id_grid"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.ports = {f"rt-{i}": free_port() for i in (1, 2, 3)}
        self.procs = {}
        for rid, port in self.ports.items():
            home = root / rid
            home.mkdir(parents=True)
            # the leader may be any of them: each has the key and its own port
            (home / "authorized_keys").write_text(f"alice {self.key.with_suffix('.pub').read_text()}")
            self.procs[rid] = RuntimeProcess(
                rid, self.broker.url, root, config={"listen": {"ssh": f"tcp:{port}:interface=127.0.0.1"}}
            )
        self.leader = ""

    def logs(self) -> str:
        return "\n".join(f"== {p.id}\n{p.log()[-3000:]}" for p in self.procs.values())

    def ssh_argv(self) -> list[str]:
        return ssh_argv(self.ports[self.leader], "alice", key=self.key)

    def ssh(self, line: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.ssh_argv(), "--", line], capture_output=True, text=True, timeout=timeout, input=input
        )

    def stop(self) -> None:
        for p in self.procs.values():
            p.stop()
        self.broker.stop()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    g = ShellGrid(tmp_path_factory.mktemp("shell-grid"))
    try:
        view = wait_for(
            "3 live runtimes and a leader",
            lambda: (v := statuses(g.broker.url)) and len(live(v)) == 3 and len(leaders(v)) == 1 and v,
            deadline=60,
            logs=g.logs,
        )
        g.leader = leaders(view)[0]
        wait_for("the leader's shell to answer", lambda: g.ssh("ls /").returncode == 0, deadline=60, logs=g.logs)
        yield g
    finally:
        g.stop()


def rows_of_ps(text: str) -> list[dict[str, str]]:
    lines = text.splitlines()
    header = lines[0].split()
    return [dict(zip(header, line.split(), strict=False)) for line in lines[1:] if line.strip()]


def test_pipeline_across_three_runtimes(grid):
    r = grid.ssh("seq 1 1000 @rt-1 | grep 7 @rt-2 | wc -l @rt-3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "271"  # the numbers 1..1000 with a 7 in them
    # each stage reports where it ran, and the bytes went runtime to runtime
    r = grid.ssh(
        "sh -c 'echo $ONEOS_RUNTIME; cat' @rt-1 | sh -c 'echo $ONEOS_RUNTIME; cat' @rt-2"
        " | sh -c 'echo $ONEOS_RUNTIME; cat' @rt-3"
    )
    assert r.stdout.split() == ["rt-3", "rt-2", "rt-1"], r.stderr
    # the session's input reaches the first stage, wherever it runs
    r = grid.ssh("tr a-z A-Z @rt-2 | sort @rt-3 > /tmp/sorted.txt; cat /tmp/sorted.txt", input="pear\napple\n")
    assert r.stdout == "APPLE\nPEAR\n", r.stderr


def test_ps_shows_agents_of_several_runtimes(grid):
    p = subprocess.Popen(
        [*grid.ssh_argv(), "--", "sleep 120 @rt-1 | sleep 120 @rt-2 | sleep 120 @rt-3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:

        def sleepers() -> set[str]:
            return {
                row["RUNTIME"]
                for row in rows_of_ps(grid.ssh("ps").stdout)
                if row.get("NAME") == "sleep" and row.get("STATE") == "running"
            }

        assert wait_for(
            "sleep agents on the three runtimes",
            lambda: sleepers() == {"rt-1", "rt-2", "rt-3"},
            deadline=60,
            logs=grid.logs,
        )
    finally:
        p.kill()  # the client vanishes: its session's agents are stopped, wherever they run
        p.wait()
    wait_for("the agents to be stopped", lambda: not sleepers(), deadline=60, logs=grid.logs)
