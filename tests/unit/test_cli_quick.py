"""``oneos -c LINE`` over a live master without the rest of the CLI (oneos/cli/quick.py).

What the fast path may use (a cached session file that is ours, for this
user, whose master listens) and what sends it back to the full command; that
the full command writes the file only for the default connection; and that a
warm one-liner loads nothing but ``os``, ``_socket`` and the module itself.
A real master and runtime are in tests/integration/test_shell_reuse.py.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneos.cli import main as cli_main
from oneos.cli import quick, shell


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home directly under /tmp: short enough for a UNIX socket in it, whatever pytest's basetemp is."""
    path = Path(tempfile.mkdtemp(prefix="q7-", dir="/tmp"))
    monkeypatch.setenv("ONEOS_HOME", str(path))
    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.delenv("ONEOS_SSH_REUSE", raising=False)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def master(home: Path) -> Iterator[Path]:
    """A UNIX socket that listens, standing for an OpenSSH master."""
    path = home / "mux"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    yield path
    s.close()


SESSION = ["/usr/bin/ssh", "-p", "2222", "-o", "ControlMaster=no", "-T", "alice@127.0.0.1", "--"]


def test_a_saved_session_runs_the_line_over_its_listening_master(home: Path, master: Path):
    quick.save(str(home), "alice", str(master), SESSION)
    assert (home / quick.SESSION_FILE).stat().st_mode & 0o777 == 0o600
    assert quick.warm_command("echo 'a b'; exit 3") == [*SESSION, "echo 'a b'; exit 3"]


def test_no_master_listening_means_the_full_command(home: Path, master: Path):
    quick.save(str(home), "alice", str(home / "gone"), SESSION)
    assert quick.warm_command("true") is None
    master.unlink()  # a stale socket: nobody accepts any more
    quick.save(str(home), "alice", str(master), SESSION)
    assert quick.warm_command("true") is None


def test_another_user_or_version_or_no_file_means_the_full_command(
    home: Path, master: Path, monkeypatch: pytest.MonkeyPatch
):
    assert quick.warm_command("true") is None  # nothing saved yet
    quick.save(str(home), "bob", str(master), SESSION)
    assert quick.warm_command("true") is None
    (home / quick.SESSION_FILE).write_bytes(b"\0".join([b"oneos-session 0", b"alice", str(master).encode(), b"x"]))
    assert quick.warm_command("true") is None
    quick.save(str(home), "alice", str(master), SESSION)
    monkeypatch.setenv("ONEOS_SSH_REUSE", "off")
    assert quick.warm_command("true") is None


def test_a_file_others_may_write_or_a_symlink_is_not_trusted(home: Path, master: Path):
    quick.save(str(home), "alice", str(master), SESSION)
    (home / quick.SESSION_FILE).chmod(0o620)
    assert quick.warm_command("true") is None
    (home / quick.SESSION_FILE).chmod(0o600)
    (home / quick.SESSION_FILE).rename(home / "elsewhere")
    (home / quick.SESSION_FILE).symlink_to(home / "elsewhere")
    assert quick.warm_command("true") is None


def test_an_unwritable_home_only_loses_the_fast_path(home: Path, master: Path):
    quick.save(str(home / "missing"), "alice", str(master), SESSION)  # no error
    assert not (home / "missing").exists() and os.listdir(home) == ["mux"]


def test_close_forgets_the_session(home: Path, master: Path, monkeypatch: pytest.MonkeyPatch):
    quick.save(str(home), "alice", str(master), SESSION)
    monkeypatch.setattr(shell, "stop_master", lambda path, user, host: True)
    assert shell.run(["--close"]) == 0
    assert not (home / quick.SESSION_FILE).exists()


class _Exec:
    """Stands for os.execv: records the command line instead of becoming it."""

    def __init__(self) -> None:
        self.argv: list[list[str]] = []

    def __call__(self, path: str, argv: list[str]) -> None:
        assert path == argv[0]
        self.argv.append(list(argv))


def test_the_full_command_saves_the_default_connection_only(home: Path, monkeypatch: pytest.MonkeyPatch):
    ran = _Exec()
    monkeypatch.setattr(os, "execv", ran)
    monkeypatch.setattr(shell, "ensure_master", lambda argv, path: (True, ""))
    (home / "runtime.json").write_text(json.dumps({"pid": os.getpid(), "ssh": "127.0.0.1:2222"}))
    shell.run(["-u", "bob", "-c", "true"])  # not the default connection: nothing saved
    assert not (home / quick.SESSION_FILE).exists()
    shell.run(["-c", "exit 3"])
    [_, session] = ran.argv
    control, saved = quick.load(str(home), "alice") or ("", [])
    assert saved == session[:-1] and session[-2:] == ["--", "exit 3"]
    assert f"ControlPath={control}" in session


def test_main_takes_the_fast_path_only_for_a_bare_dash_c(home: Path, master: Path, monkeypatch: pytest.MonkeyPatch):
    ran = _Exec()
    monkeypatch.setattr(os, "execv", ran)
    quick.save(str(home), "alice", str(master), SESSION)
    monkeypatch.setattr(sys, "argv", ["oneos", "-c", "pwd"])
    # execv is recorded, not done: main goes on to the full command, which finds no shell and says so
    monkeypatch.setattr(shell, "_configured", lambda: (_ for _ in ()).throw(shell.ShellClientError("no shell")))
    assert cli_main.main() == 1
    assert ran.argv == [[*SESSION, "pwd"]]
    ran.argv.clear()
    monkeypatch.setattr(sys, "argv", ["oneos", "-c", "pwd", "--host", "h"])
    cli_main.main()
    assert ran.argv == []


_WARM_PROBE = """
import os, sys
before = set(sys.modules)
def execv(path, argv):
    print(repr(argv))
    print(repr(sorted(set(sys.modules) - before)))
    os._exit(0)
os.execv = execv
sys.argv = ["oneos", "-c", "true"]
from oneos.cli.main import main
main()
"""


def test_a_warm_one_liner_loads_only_the_fast_path(home: Path, master: Path):
    quick.save(str(home), "alice", str(master), SESSION)
    result = subprocess.run(
        [sys.executable, "-c", _WARM_PROBE],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    argv_line, loaded_line = result.stdout.splitlines()[-2:]
    assert ast.literal_eval(argv_line) == [*SESSION, "true"]
    loaded = set(ast.literal_eval(loaded_line))
    assert {"oneos.cli.main", "oneos.cli.quick", "_socket"} <= loaded
    assert not loaded & {"argparse", "pathlib", "json", "re", "enum", "socket", "hashlib", "oneos.errors"}


def test_the_oneos_script_itself_loads_no_more_than_main():
    # bin/oneos is what pip installs as `oneos` (pyproject.toml script-files), unlike the script it
    # generates for an entry point, which imports re
    script = Path(__file__).resolve().parents[2] / "bin" / "oneos"
    result = subprocess.run(
        [sys.executable, str(script), "--version"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.startswith("oneos "), result.stderr
    imported = {row.rsplit("|", 1)[-1].strip() for row in result.stderr.splitlines() if row.startswith("import time:")}
    assert "oneos.cli.main" in imported and not imported & {"re", "argparse", "enum"}, imported
