"""The shell service end to end: a real runtime, the real OpenSSH client.

One embedded runtime (its own broker, SQLite store) serves SSH on a free
loopback port for the whole module; users log in with a key pair made here
by ssh-keygen, or with a password from ``oneos user add`` (given to ssh
through SSH_ASKPASS).  Waiting is always "until a condition holds, or a
deadline".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _runtimes import free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
                                reason="needs the OpenSSH client")

# Until oneos/runtime/app.py imports oneos.shell.server itself, the runtime
# is started through this wrapper, which registers the shell kernel service.
_BOOT = ("import sys\nfrom oneos.reactor import install_asyncio_reactor\ninstall_asyncio_reactor()\n"
         "import oneos.shell.server\nfrom oneos.twistd import main\nmain()\n")


def _cli(module: str, function: str = "run") -> list[str]:
    """argv running a CLI module's entry (works before it is registered in oneos.cli.main)."""
    return [sys.executable, "-c", f"import sys; from oneos.cli.{module} import {function}; sys.exit({function}(sys.argv[1:]))"]


class ShellRuntime:
    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.ssh_port = free_port()
        self.telnet_port = free_port()
        self.url = f"mqtt://127.0.0.1:{free_port()}"
        (self.home / "config.json").write_text(json.dumps({"listen": {
            "ssh": f"tcp:{self.ssh_port}:interface=127.0.0.1",
            "telnet": f"tcp:{self.telnet_port}:interface=127.0.0.1",
        }}))
        self.key = root / "id_test"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.other_key = root / "id_other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.other_key)], check=True)
        (self.home / "authorized_keys").write_text(f"alice {self.key.with_suffix('.pub').read_text()}")
        self.log_path = root / "runtime.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, ONEOS_HOME=str(self.home), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BOOT, "--nodaemon", "--pidfile=", "oneosd", "--id", "solo", "--pubsub", self.url],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=root)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ssh_argv(self, user: str = "alice", key: Path | None = None, *extra: str) -> list[str]:
        return ["ssh", "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(key or self.key),
                *extra, f"{user}@127.0.0.1"]

    def ssh(self, line: str, user: str = "alice", key: Path | None = None, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ssh_argv(user, key), "--", line], capture_output=True, text=True,
                              timeout=timeout, input=input)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self._log.close()


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    rt = ShellRuntime(tmp_path_factory.mktemp("shell"))
    try:
        wait_for("the shell to listen", lambda: "shell serving ssh" in rt.log() and "now leads the kernel" in rt.log(),
                 deadline=60, logs=rt.log)
        wait_for("the file system to answer", lambda: rt.ssh("ls /").returncode == 0, deadline=60, logs=rt.log)
        yield rt
    finally:
        rt.stop()


def test_ls_pwd_cd(shell):
    r = shell.ssh("pwd; cd /; pwd; ls")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "/home/alice"
    assert lines[1] == "/"
    assert {"home/", "tmp/", "bin/"} <= set(lines[2:])


def test_redirect_into_oneos_file_then_cat(shell):
    r = shell.ssh("echo hello grid > /tmp/greeting.txt && echo more >> /tmp/greeting.txt")
    assert r.returncode == 0, r.stderr
    r = shell.ssh("cat /tmp/greeting.txt")
    assert r.stdout == "hello grid\nmore\n"
    # a program's output into a OneOS file, and back through a program
    r = shell.ssh("python3 -c 'print(6 * 7)' > /tmp/answer.txt; sort -r < /tmp/answer.txt; cat /tmp/answer.txt | wc -l")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["42", "1"]


def test_ps_shows_a_running_agent_and_kill_stops_it(shell):
    p = subprocess.Popen([*shell.ssh_argv(), "--", "sleep 30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for("the agent in ps", lambda: " sleep " in shell.ssh("ps").stdout, deadline=30, logs=shell.log)
        agent = [line.split()[0] for line in shell.ssh("ps").stdout.splitlines() if " sleep " in line][0]
        r = shell.ssh(f"kill {agent}")
        assert r.returncode == 0, r.stderr
        assert p.wait(timeout=30) == 128 + 15  # the killed agent's status comes back through ssh
    finally:
        if p.poll() is None:
            p.kill()


def test_background_job_and_fg(shell):
    r = shell.ssh("python3 -c 'print(5)' > /tmp/bg.txt & jobs; fg; cat /tmp/bg.txt")
    assert r.returncode == 0, r.stderr
    assert "[1] started" in r.stdout and r.stdout.endswith("5\n")


def test_exit_codes(shell):
    assert shell.ssh("true").returncode == 0
    assert shell.ssh("false").returncode == 1
    assert shell.ssh("exit 7").returncode == 7
    r = shell.ssh("no-such-command-here")
    assert r.returncode == 127 and "command not found" in r.stderr
    r = shell.ssh("cat /no/such/file")
    assert r.returncode == 1 and "no such file" in r.stderr
    r = shell.ssh("echo 'unterminated")
    assert r.returncode == 2 and "syntax error" in r.stderr
    r = shell.ssh("python3 -c 'import sys; sys.exit(3)'; echo status=$?")
    assert r.stdout == "status=3\n"
    assert shell.ssh("false || true && echo ok").stdout == "ok\n"


def test_oneos_c_client(shell, tmp_path):
    env = dict(os.environ, ONEOS_HOME=str(shell.home))
    base = [*_cli("shell"), "--user", "alice", "--identity", str(shell.key)]
    r = subprocess.run([*base, "-c", "echo from-client; exit 5"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 5, r.stderr
    assert r.stdout == "from-client\n"
    r = subprocess.run([*base, "-c", "ls /tmp"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr


def test_auth_refused_without_leaking(shell):
    r = shell.ssh("ls", key=shell.other_key)
    assert r.returncode == 255
    r2 = shell.ssh("ls", user="nobody-here")
    assert r2.returncode == 255
    # the same refusal whether the user exists or not
    assert r.stderr.replace("alice", "X") == r2.stderr.replace("nobody-here", "X")


def test_password_login(shell, tmp_path):
    env = dict(os.environ, ONEOS_HOME=str(shell.home))
    r = subprocess.run([*_cli("user"), "add", "bob", "--password-stdin"],
                       input="s3cret-pw\n", capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in (shell.home / "users.json").read_text()

    def attempt(password: str) -> subprocess.CompletedProcess:
        askpass = tmp_path / f"askpass-{len(password)}.sh"
        askpass.write_text(f"#!/bin/sh\necho '{password}'\n")
        askpass.chmod(0o755)
        argv = ["ssh", "-p", str(shell.ssh_port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password",
                "-o", "NumberOfPasswordPrompts=1", "bob@127.0.0.1", "whoami"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0"))

    ok = attempt("s3cret-pw")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "bob\n"
    started = time.monotonic()
    bad = attempt("wrong-pw")
    assert bad.returncode == 255
    assert time.monotonic() - started >= 0.4  # refusals are delayed


def test_two_sessions_keep_separate_cwd_and_env(shell):
    """Two interactive sessions at once, each fed lines without a terminal."""
    procs = [subprocess.Popen([*shell.ssh_argv(), "-T"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    a, b = procs
    a.stdin.write("mkdir -p /tmp/sa; cd /tmp/sa; X=one\n")
    a.stdin.flush()
    b.stdin.write("cd /bin; X=two\n")
    b.stdin.flush()
    a.stdin.write("pwd; echo $X\n")
    b.stdin.write("pwd; echo $X\n")
    outs = [p.communicate(timeout=60) for p in procs]
    assert outs[0][0].split() == ["/tmp/sa", "one"], outs[0]
    assert outs[1][0].split() == ["/bin", "two"], outs[1]
    assert a.returncode == 0 and b.returncode == 0


def test_bad_input_does_not_break_the_session(shell):
    huge = "echo " + "x" * 70000
    r = shell.ssh(huge)
    assert r.returncode in (2, 255)  # refused by the parser (or by ssh's own limits)
    r = subprocess.run([*shell.ssh_argv(), "-T"], input=b"\x00\xff\xfe garbage\n\x1b[A\x07\necho still-here\n",
                       capture_output=True, timeout=60)
    assert b"still-here" in r.stdout
    assert shell.ssh("echo alive").stdout == "alive\n"


def test_client_vanishing_stops_its_agents(shell):
    p = subprocess.Popen([*shell.ssh_argv(), "--", "sleep 300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for("sleep 300 to run", lambda: " sleep " in shell.ssh("ps").stdout, deadline=30, logs=shell.log)
    p.kill()
    p.wait()
    wait_for("the agent to be stopped", lambda: " sleep " not in shell.ssh("ps").stdout, deadline=30, logs=shell.log)
