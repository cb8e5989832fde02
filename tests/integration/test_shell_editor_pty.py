"""The line editor as a user meets it: a real runtime, the real OpenSSH client on a real pty (pexpect).

What is typed goes through the local pty (raw mode: ssh forwards each key as
it comes), the SSH channel, insults, the editor; what is shown comes back the
same way.  Checked: non-ASCII typed in names and contents arrives exactly
(``ls`` and ``cat`` show it), the Emacs keys edit the line, Ctrl-R finds an
earlier line, and the history of one session is there, with Up, in the next
(``~/.oneos_history`` in the tree).  Every wait is an ``expect`` with a
deadline; the runtime and every client are stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from oneos.testing.runtimes import oneos, wait_for
from oneos.testing.ssh import ssh_argv

pexpect = pytest.importorskip("pexpect")

pytestmark = pytest.mark.skipif(
    shutil.which("ssh") is None or shutil.which("ssh-keygen") is None, reason="needs the OpenSSH client"
)

PROMPT = b"ann@oneos:~$ "
UP = b"\x1b[A"


class Door:
    """The runtime's SSH door and a key that logs in as ann."""

    def __init__(self, runtime, port: int, key: Path) -> None:
        self.runtime = runtime
        self.port = port
        self.key = key

    def argv(self) -> list[str]:
        return ssh_argv(self.port, "ann", key=self.key)

    def run(self, line: str) -> subprocess.CompletedProcess:
        """One line through ``ssh HOST LINE`` (no terminal, no editor)."""
        return subprocess.run([*self.argv(), "--", line], capture_output=True, timeout=60)

    def terminal(self) -> pexpect.spawn:
        """An interactive login on a pty of 24 x 80, at its first prompt."""
        argv = self.argv()
        env = dict(os.environ, TERM="xterm", LANG="C.UTF-8")
        child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(24, 80), timeout=30)
        child.expect_exact(PROMPT)
        return child


@pytest.fixture
def door(embedded_runtime, tmp_path):
    runtime = embedded_runtime()
    key = tmp_path / "id_ann"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    added = oneos(
        "user", "addkey", "ann", str(key) + ".pub", "--pubsub", runtime.url, env={"ONEOS_HOME": str(runtime.home)}
    )
    assert added.returncode == 0, added.stderr
    address = wait_for(
        "the shell to listen",
        lambda: json.loads((runtime.home / "runtime.json").read_text()).get("ssh"),
        deadline=60,
        logs=runtime.log,
    )
    d = Door(runtime, int(address.rsplit(":", 1)[1]), key)
    wait_for("the tree to answer", lambda: d.run("true").returncode == 0, deadline=60, logs=runtime.log)
    return d


def _close(child: pexpect.spawn) -> None:
    if child.isalive():
        child.close(force=True)


def test_typing_editing_searching_and_history_across_sessions(door):
    first = door.terminal()
    try:
        # non-ASCII in a file name and its content: exact, end to end
        first.send('echo ünï > "日本語 ü.txt"\r'.encode())
        first.expect_exact(PROMPT)
        first.send(b"ls\r")
        first.expect_exact("日本語 ü.txt".encode())
        first.expect_exact(PROMPT)
        first.send('cat "日本語 ü.txt"\r'.encode())
        first.expect_exact("ünï\r\n".encode())
        first.expect_exact(PROMPT)
        listed = door.run("ls /home/ann")
        assert "日本語 ü.txt".encode() in listed.stdout.splitlines(), listed

        # Ctrl-A / Ctrl-E
        first.send(b"cho edited\x01e\x05 fine\r")
        first.expect_exact(b"edited fine\r\n")
        first.expect_exact(PROMPT)
        # Ctrl-U
        first.send(b"rm -r everything\x15echo after-u\r")
        first.expect_exact(b"after-u\r\n")
        first.expect_exact(PROMPT)
        # Ctrl-W, then a word typed in its place
        first.send(b"echo w1 w2\x17w3\r")
        first.expect_exact(b"w1 w3\r\n")
        first.expect_exact(PROMPT)

        # Ctrl-R finds the earlier line; Enter runs it again
        first.send(b"\x12")
        first.expect_exact(b"(reverse-i-search)`': ")
        first.send(b"after")  # each letter narrows the search; the last one redraws from the query's end
        first.expect_exact(b"r': echo after-u")
        first.send(b"\r")  # the line was empty: this output comes only from the line found
        first.expect_exact(b"after-u\r\n")
        first.expect_exact(PROMPT)
        first.send(b"\x04")  # Ctrl-D on the empty line: logout
        first.expect(pexpect.EOF)
    finally:
        _close(first)

    wait_for(
        "the history file to hold the last line",
        lambda: b"echo after-u" in door.run("cat /home/ann/.oneos_history").stdout.splitlines()[-1:],
        deadline=30,
        logs=door.runtime.log,
    )
    second = door.terminal()
    try:
        second.send(UP)  # the last line of the first session
        second.expect_exact(b"echo after-u")
        second.send(b"\r")
        second.expect_exact(b"after-u\r\n")
        second.expect_exact(PROMPT)
        second.send(b"\x12\xe6\x97\xa5")  # Ctrl-R 日: lines of the first session, found by a CJK character
        second.expect_exact('日\': cat "日本語 ü.txt"'.encode())
        second.send(b"\x12")  # again: the older one
        second.expect_exact('echo ünï > "日本語 ü.txt"'.encode())
        second.send(b"\x07exit\r")
        second.expect(pexpect.EOF)
    finally:
        _close(second)
