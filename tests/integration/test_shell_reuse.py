"""``oneos -c`` reuses one SSH connection: a real runtime, the real OpenSSH client and its master.

What must not change with reuse: the line's exit status, its stdout and
stderr kept apart, stdin piped through, and a command run with pipes
returning as soon as the line ends (a background master that kept our
pipes open would make ``subprocess.run`` wait for it: every call here has a
timeout shorter than the master's persistence).  A master whose runtime
went away, or that was killed, must not break the next command.  Every
master a test makes is stopped by the fixture, by its pid.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneos.cli import quick
from oneos.cli.shell import PERSIST_SECONDS, control_path, master_alive, master_pid
from oneos.testing.brokers import free_port
from oneos.testing.runtimes import EmbeddedRuntime, wait_for

USER = getpass.getuser()
#: shorter than the master's persistence: a call that waited for the background master would time out
CALL_TIMEOUT = 30.0
assert CALL_TIMEOUT < PERSIST_SECONDS


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Solo:
    """One runtime on a fixed SSH port and home, so a restarted one is the same server to ``oneos``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.runtime: EmbeddedRuntime | None = None
        self.masters: set[int] = set()

    @property
    def home(self) -> Path:
        return self.root / "embedded"

    def start(self) -> None:
        self.runtime = EmbeddedRuntime(self.root, "--ssh", f"tcp:{self.port}:interface=127.0.0.1")
        rt = self.runtime

        def ready() -> bool:
            try:
                written = json.loads((rt.home / "runtime.json").read_text()).get("ssh")
            except (OSError, ValueError):
                return False
            return written == f"127.0.0.1:{self.port}" and "now leads the kernel" in rt.log()

        wait_for("the runtime's shell", ready, deadline=90, logs=rt.log)

    def stop(self) -> None:
        if self.runtime is not None:
            self.runtime.stop()

    def oneos(self, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
        environ = {k: v for k, v in os.environ.items() if k != "ONEOS_SSH_REUSE"}
        result = subprocess.run(
            [sys.executable, "-m", "oneos.cli.main", *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=CALL_TIMEOUT,
            env={**environ, "ONEOS_HOME": str(self.home), **env},
        )
        pid = self.master()
        if pid is not None:
            self.masters.add(pid)
        return result

    def control(self) -> Path:
        path = control_path(self.home, USER, "127.0.0.1", self.port, str(self.home / "client_key"))
        assert path is not None
        return path

    def master(self) -> int | None:
        return master_pid(self.control(), USER, "127.0.0.1")


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[Solo]:
    s = Solo(tmp_path)
    try:
        s.start()
        yield s
    finally:
        for pid in s.masters:
            if _alive(pid):
                os.kill(pid, signal.SIGTERM)  # a master this test made (its pid from ssh -O check)
        s.stop()


#: a line writing to both stdout and stderr and ending with status 3
BOTH = "echo hi; echo oops 1>&2; exit 3"
BOTH_ERR = "oops\n"


def test_one_liners_share_one_connection(solo: Solo):
    first = solo.oneos("-c", BOTH)
    assert (first.returncode, first.stdout, first.stderr) == (3, "hi\n", BOTH_ERR)
    assert master_alive(solo.control())
    pid = solo.master()
    assert pid is not None

    cached = quick.load(str(solo.home), USER)
    assert cached is not None and cached[0] == str(solo.control())  # what the next one-liner starts from
    second = solo.oneos("-c", BOTH)
    assert (second.returncode, second.stdout, second.stderr) == (3, "hi\n", BOTH_ERR)
    assert solo.master() == pid  # the same connection, not a new login
    # ... reached by the fast path: ssh at once, without the argument parser or the configuration
    traced = solo.oneos("-c", "echo traced", PYTHONPROFILEIMPORTTIME="1")
    imported = {row.rsplit("|", 1)[-1].strip() for row in traced.stderr.splitlines() if row.startswith("import time:")}
    assert (traced.returncode, traced.stdout) == (0, "traced\n")
    assert "oneos.cli.quick" in imported and not imported & {"argparse", "oneos.cli.shell"}, imported

    piped = solo.oneos("-c", "wc -l", stdin="a\nb\n")
    assert (piped.returncode, piped.stdout.strip(), piped.stderr) == (0, "2", "")
    big = "x" * 1_000_000 + "\n"
    counted = solo.oneos("-c", "wc -c", stdin=big)
    assert (counted.returncode, counted.stdout.strip(), counted.stderr) == (0, str(len(big)), "")
    assert solo.master() == pid

    closed = solo.oneos("shell", "--close")
    assert (closed.returncode, closed.stderr) == (0, "")
    wait_for("the master to exit", lambda: not _alive(pid), deadline=15)
    assert not solo.control().exists() and not (solo.home / quick.SESSION_FILE).exists()


def test_no_reuse_logs_in_afresh(solo: Solo):
    for how in (("--no-reuse", "-c", "echo plain; exit 4"), ("-c", "echo plain; exit 4")):
        env = {} if how[0] == "--no-reuse" else {"ONEOS_SSH_REUSE": "0"}
        r = solo.oneos(*how, **env)
        assert (r.returncode, r.stdout, r.stderr) == (4, "plain\n", "")
        assert not solo.control().exists() and solo.master() is None


def test_a_killed_master_leaves_a_stale_socket_that_does_not_break_the_next_command(solo: Solo):
    r = solo.oneos("-c", "echo one")
    assert (r.returncode, r.stdout, r.stderr) == (0, "one\n", "")
    old = solo.master()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for("the master to die", lambda: not _alive(old), deadline=15)
    assert solo.control().exists() and not master_alive(solo.control())  # stale: nobody listens

    r = solo.oneos("-c", "echo two; exit 5")
    # exactly the line's output: no "Control socket connect(...): Connection refused" from ssh
    assert (r.returncode, r.stdout, r.stderr) == (5, "two\n", "")
    new = solo.master()
    assert new is not None and new != old


def test_a_restarted_runtime_does_not_break_the_next_command(solo: Solo):
    r = solo.oneos("-c", "echo before")
    assert (r.returncode, r.stdout, r.stderr) == (0, "before\n", "")
    old = solo.master()
    assert old is not None

    solo.stop()
    # the runtime closed the connection: the master does not linger for its 60 s
    wait_for("the master to exit with its runtime", lambda: not _alive(old), deadline=15)
    solo.start()  # the same home and SSH port: the same control path as before

    r = solo.oneos("-c", "echo after; exit 6")
    assert (r.returncode, r.stdout, r.stderr) == (6, "after\n", "")
    assert solo.master() not in (None, old)


def _masters_on(control: Path) -> list[int]:
    """Pids of ssh masters (``-M``) for *control*, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-M" in argv and f"ControlPath={control}".encode() in argv:
            found.append(int(entry.name))
    return found


def test_commands_started_at_once_start_one_master(solo: Solo):
    environ = {k: v for k, v in os.environ.items() if k != "ONEOS_SSH_REUSE"}
    environ["ONEOS_HOME"] = str(solo.home)
    calls = [
        subprocess.Popen(
            [sys.executable, "-m", "oneos.cli.main", "-c", f"echo n{i}; exit {i}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        for i in range(3)
    ]
    try:
        outcomes = [(c.communicate(timeout=CALL_TIMEOUT), c.returncode) for c in calls]
    finally:
        for c in calls:
            if c.poll() is None:
                c.kill()
                c.wait()
        solo.masters.update(_masters_on(solo.control()))
    assert outcomes == [((f"n{i}\n", ""), i) for i in range(3)]
    assert len(_masters_on(solo.control())) == 1


def test_the_interactive_shell_leaves_no_master_on_the_terminal(solo: Solo):
    pexpect = pytest.importorskip("pexpect")
    environ = {k: v for k, v in os.environ.items() if k != "ONEOS_SSH_REUSE"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "oneos.cli.main"],
        env={**environ, "ONEOS_HOME": str(solo.home)},
        timeout=CALL_TIMEOUT,
        dimensions=(24, 100),
    )
    try:
        child.expect_exact("$ ")
        child.sendline("echo inter''active")  # the output, not the echoed keys, says 'interactive'
        child.expect_exact("interactive")
        child.sendline("exit 7")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 7
    finally:
        if child.isalive():
            child.terminate(force=True)
        pid = solo.master()
        if pid is not None:
            solo.masters.add(pid)
    assert pid is not None
    # the master went to the background on its own: no controlling terminal, its stdio on /dev/null
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    assert int(fields[4]) == 0, "the master has a controlling terminal"  # tty_nr
    assert int(fields[3]) != os.getsid(0)  # its own session, not ours
    assert [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)] == ["/dev/null"] * 3
