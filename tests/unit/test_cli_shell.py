"""``oneos`` / ``oneos -c``: the ssh command lines, where the shared connection's socket lives, and start-up.

The connection reuse itself (a real master, a real runtime) is in
tests/integration/test_shell_reuse.py; here are the decisions around it,
which need no server: the control socket's path (private directory, length
limit, fallbacks), the opt-out, the argv of the master and of a session,
and that the CLI's help and ``-c`` do not load Twisted.
"""

from __future__ import annotations

import importlib
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
from oneos.cli import shell
from oneos.cli.shell import (
    MAX_CONTROL_PATH,
    control_path,
    ensure_master,
    master_alive,
    master_argv,
    reuse_wanted,
    ssh_argv,
)


def _short_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory with a short path directly under /tmp, removed afterwards.

    pytest's tmp_path grows with its run counter and the test's name (it was
    over the socket limit in CI's ``pytest-195``), so a test that expects the
    home's own ``ssh-control`` to fit must not live under it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_home_parent() -> Iterator[Path]:
    """Where test homes go: short enough that the home's socket path always fits."""
    yield from _short_dir("h6h-")


@pytest.fixture
def home(short_home_parent: Path) -> Path:
    h = short_home_parent / "h"
    h.mkdir()
    return h


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory standing for /tmp."""
    yield from _short_dir("h6u-")


# --- where the control socket goes -------------------------------------------------------


def test_the_socket_lives_in_a_private_directory_of_the_home(home: Path, short_tmp: Path):
    path = control_path(home, "alice", "127.0.0.1", 2222, env={}, tmp=str(short_tmp))
    assert path is not None and path.parent == home / "ssh-control"
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert len(os.fsencode(path)) <= MAX_CONTROL_PATH
    # the same connection finds the same socket; another user, server, key or home does not share it
    assert control_path(home, "alice", "127.0.0.1", 2222, env={}, tmp=str(short_tmp)) == path
    others = {
        control_path(home, "bob", "127.0.0.1", 2222, env={}, tmp=str(short_tmp)),
        control_path(home, "alice", "127.0.0.2", 2222, env={}, tmp=str(short_tmp)),
        control_path(home, "alice", "127.0.0.1", 2223, env={}, tmp=str(short_tmp)),
        control_path(home, "alice", "127.0.0.1", 2222, str(home / "other_key"), env={}, tmp=str(short_tmp)),
    }
    assert path not in others and len(others) == 4


def test_a_home_too_long_for_a_unix_socket_falls_back_to_the_runtime_dir_then_tmp(tmp_path: Path, short_tmp: Path):
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    runtime_dir = short_tmp / "run"
    runtime_dir.mkdir(mode=0o700)
    path = control_path(deep, "alice", "127.0.0.1", 2222, env={"XDG_RUNTIME_DIR": str(runtime_dir)}, tmp="/nowhere")
    assert path is not None and path.parent == runtime_dir / "oneos-ssh"
    assert not (deep / "ssh-control").exists()  # not even made
    path = control_path(deep, "alice", "127.0.0.1", 2222, env={}, uid=os.getuid(), tmp=str(short_tmp))
    assert path is not None and path.parent == short_tmp / f"oneos-{os.getuid()}-ssh"
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    # nowhere short enough: no reuse (the caller then connects as before)
    assert control_path(deep, "alice", "127.0.0.1", 2222, env={}, tmp=str(deep)) is None


def test_a_directory_that_is_not_private_or_not_ours_is_never_used(home: Path, short_tmp: Path):
    loose = home / "ssh-control"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    path = control_path(home, "alice", "127.0.0.1", 2222, env={}, tmp=str(short_tmp))
    assert path is not None and path.parent == short_tmp / f"oneos-{os.getuid()}-ssh"
    # another account's directory (here: not the uid we are told we run as)
    assert control_path(home, "alice", "127.0.0.1", 2222, env={}, uid=os.getuid() + 1, tmp=str(short_tmp)) is None
    # a symlink to a private directory is refused too (someone else could have pointed it anywhere)
    target = short_tmp / "elsewhere"
    target.mkdir(mode=0o700)
    (short_tmp / "linked").mkdir()
    (short_tmp / "linked" / f"oneos-{os.getuid()}-ssh").symlink_to(target)
    assert control_path(home, "alice", "127.0.0.1", 2222, env={}, tmp=str(short_tmp / "linked")) is None


def test_a_path_ssh_would_take_apart_is_skipped(short_home_parent: Path, short_tmp: Path):
    spaced = short_home_parent / "my home"
    spaced.mkdir()
    path = control_path(spaced, "alice", "127.0.0.1", 2222, env={}, tmp=str(short_tmp))
    assert path is not None and path.parent == short_tmp / f"oneos-{os.getuid()}-ssh"
    percent = short_home_parent / "100%"
    percent.mkdir()
    path = control_path(percent, "alice", "127.0.0.1", 2222, env={}, tmp=str(short_tmp))
    assert path is not None and "%" not in str(path)


def test_an_unwritable_home_falls_back(short_home_parent: Path, short_tmp: Path):
    missing = short_home_parent / "no-such-home"
    path = control_path(missing, "alice", "127.0.0.1", 2222, env={}, tmp=str(short_tmp))
    assert path is not None and path.parent == short_tmp / f"oneos-{os.getuid()}-ssh"
    assert not missing.exists()


@pytest.mark.parametrize(
    ("flag", "env", "wanted"),
    [
        (False, {}, True),
        (True, {}, False),
        (False, {"ONEOS_SSH_REUSE": "0"}, False),
        (False, {"ONEOS_SSH_REUSE": "no"}, False),
        (False, {"ONEOS_SSH_REUSE": " OFF "}, False),
        (False, {"ONEOS_SSH_REUSE": "false"}, False),
        (False, {"ONEOS_SSH_REUSE": "1"}, True),
        (False, {"ONEOS_SSH_REUSE": ""}, True),
        (True, {"ONEOS_SSH_REUSE": "1"}, False),
    ],
)
def test_reuse_can_be_turned_off_by_flag_or_environment(flag: bool, env: dict, wanted: bool):
    assert reuse_wanted(flag, env) is wanted


# --- the ssh command lines -------------------------------------------------------------------


def _option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1].split("=", 1)[1] for i, a in enumerate(argv[:-1]) if a == "-o" and argv[i + 1].startswith(name)]


def test_a_session_over_a_master_is_a_client_only(home: Path):
    control = home / "ssh-control" / "abc"
    argv = ssh_argv("127.0.0.1", 2222, "alice", home, "echo hi", "/k", False, control=control)
    assert argv[0].endswith("ssh")
    assert _option(argv, "ControlMaster") == ["no"]  # never becomes a master itself (see ensure_master)
    assert _option(argv, "ControlPath") == [str(control)]
    assert _option(argv, "ControlPersist") == []
    assert argv[-4:] == ["-T", "alice@127.0.0.1", "--", "echo hi"]
    assert argv[argv.index("-i") + 1] == "/k"


def test_no_reuse_turns_multiplexing_off_and_the_old_call_is_unchanged(home: Path):
    argv = ssh_argv("127.0.0.1", 2222, "alice", home, None, None, True, control="none")
    assert _option(argv, "ControlPath") == ["none"] and _option(argv, "ControlMaster") == ["no"]
    assert argv[-2:] == ["-t", "alice@127.0.0.1"]
    # the positional call other commands use (oneos sftp) says nothing about multiplexing
    plain = ssh_argv("127.0.0.1", 2222, "alice", home, "ls", None, False)
    assert _option(plain, "Control") == []
    assert plain[-4:] == ["-T", "alice@127.0.0.1", "--", "ls"]


def test_the_host_key_is_pinned_for_sessions_and_masters_alike(home: Path):
    (home / "ssh_host_key.pub").write_text("ssh-ed25519 AAAAkey comment\n")
    session = ssh_argv("127.0.0.1", 2222, "alice", home, "ls", None, False, control=home / "c")
    master = master_argv("127.0.0.1", 2222, "alice", home, None, home / "c")
    for argv in (session, master):
        assert _option(argv, "UserKnownHostsFile") == [str(home / "known_hosts")]
        assert _option(argv, "StrictHostKeyChecking") == ["yes"]
    assert (home / "known_hosts").read_text() == "[127.0.0.1]:2222 ssh-ed25519 AAAAkey\n"  # written once


def test_the_master_logs_in_then_detaches_and_persists(home: Path):
    control = home / "ssh-control" / "abc"
    argv = master_argv("10.0.0.5", 2200, "bob", home, "/k", control, persist=60)
    assert argv.count("-M") == 1 and _option(argv, "ControlMaster") == []  # -M twice would mean "ask"
    assert "-N" in argv and "-f" in argv
    assert _option(argv, "ControlPath") == [str(control)]
    assert _option(argv, "ControlPersist") == ["60"]
    assert _option(argv, "ServerAliveInterval") == ["10"]
    assert argv[argv.index("-p") + 1] == "2200" and argv[-1] == "bob@10.0.0.5"
    assert "--" not in argv


# --- the master's socket ---------------------------------------------------------------------


def test_master_alive_tells_a_listening_socket_from_a_stale_one(short_tmp: Path):
    path = short_tmp / "sock"
    assert not master_alive(path)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen(1)
        assert master_alive(path)
    assert path.exists() and not master_alive(path)  # the file of a master that died


def test_ensure_master_leaves_a_running_master_alone(short_tmp: Path):
    path = short_tmp / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen(1)
        assert ensure_master(["/nonexistent/ssh"], path) == (True, "")  # never ran


def test_ensure_master_removes_a_stale_socket_and_reports_a_failed_login(short_tmp: Path):
    path = short_tmp / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # never listens: what a killed master leaves
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('Permission denied (publickey).\\n'); sys.exit(255)"]
    ready, said = ensure_master(failing, path)
    assert (ready, said) == (False, "Permission denied (publickey).\n")
    assert not path.exists()


def test_ensure_master_does_not_trust_a_master_that_does_not_listen(short_tmp: Path):
    path = short_tmp / "sock"
    ready, said = ensure_master([sys.executable, "-c", "pass"], path)
    assert (ready, said) == (False, "")


# --- oneos shell's decisions -------------------------------------------------------------------


class _Calls:
    """Stands for os.execv: records the ssh command line instead of becoming ssh."""

    def __init__(self) -> None:
        self.argv: list[list[str]] = []

    def __call__(self, path: str, argv: list[str]) -> None:
        assert path == argv[0]
        self.argv.append(list(argv))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, home: Path) -> _Calls:
    recorded = _Calls()
    monkeypatch.setattr(os, "execv", recorded)
    monkeypatch.setenv("ONEOS_HOME", str(home))
    monkeypatch.delenv("ONEOS_SSH_REUSE", raising=False)
    return recorded


def test_c_runs_over_the_master_it_made_sure_of(calls: _Calls, monkeypatch: pytest.MonkeyPatch, home: Path):
    started: list[tuple[list[str], Path]] = []
    monkeypatch.setattr(shell, "ensure_master", lambda argv, path: started.append((argv, path)) or (True, ""))
    shell.run(["--host", "127.0.0.1", "--port", "2222", "-u", "alice", "-c", "exit 3"])
    [(master, path)] = started
    assert "-M" in master and path.parent == home / "ssh-control"
    [session] = calls.argv
    assert _option(session, "ControlPath") == [str(path)] and session[-2:] == ["--", "exit 3"]


def test_a_failed_master_login_is_reported_as_ssh_would(
    calls: _Calls, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.setattr(shell, "ensure_master", lambda argv, path: (False, "alice@127.0.0.1: Permission denied.\n"))
    assert shell.run(["--host", "127.0.0.1", "--port", "2222", "-u", "alice", "-c", "true"]) == 255
    assert calls.argv == []
    assert capsys.readouterr().err == "alice@127.0.0.1: Permission denied.\n"


def test_a_master_that_did_not_come_up_falls_back_to_a_connection_of_our_own(
    calls: _Calls, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(shell, "ensure_master", lambda argv, path: (False, ""))
    shell.run(["--host", "127.0.0.1", "--port", "2222", "-u", "alice", "-c", "true"])
    assert _option(calls.argv[0], "ControlPath") == ["none"]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_no_reuse_starts_no_master(calls: _Calls, monkeypatch: pytest.MonkeyPatch, home: Path, how: str):
    monkeypatch.setattr(shell, "ensure_master", lambda argv, path: pytest.fail("no master wanted"))
    argv = ["--host", "127.0.0.1", "--port", "2222", "-u", "alice", "-c", "true"]
    if how == "flag":
        argv.insert(0, "--no-reuse")
    else:
        monkeypatch.setenv("ONEOS_SSH_REUSE", "0")
    shell.run(argv)
    assert _option(calls.argv[0], "ControlPath") == ["none"]
    assert not (home / "ssh-control").exists()


def test_oneos_no_reuse_dash_c_is_the_shell(calls: _Calls, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(shell, "ensure_master", lambda argv, path: pytest.fail("no master wanted"))
    cli_main.main(["--no-reuse", "-c", "true", "--host", "127.0.0.1", "--port", "2222"])
    assert _option(calls.argv[0], "ControlPath") == ["none"]


def test_close_stops_only_our_master(calls: _Calls, monkeypatch: pytest.MonkeyPatch, home: Path):
    stopped: list[Path] = []
    monkeypatch.setattr(shell, "stop_master", lambda path, user, host: stopped.append(path) or True)
    assert shell.run(["--host", "127.0.0.1", "--port", "2222", "-u", "alice", "--close"]) == 0
    assert stopped == [control_path(home, "alice", "127.0.0.1", 2222)]
    assert calls.argv == []  # no session


def test_the_shell_help_names_the_opt_out(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit):
        shell.run(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-reuse" in text and "ONEOS_SSH_REUSE=0" in text and "--close" in text


def test_the_address_comes_from_the_running_runtime(home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ONEOS_HOME", str(home))
    (home / "runtime.json").write_text(json.dumps({"pid": os.getpid(), "ssh": "0.0.0.0:4022"}))
    assert shell._configured() == ("127.0.0.1", 4022, home)


# --- start-up --------------------------------------------------------------------------------


def test_the_help_summaries_are_the_commands_own():
    for name, target in cli_main.COMMANDS.items():
        module_name, _, function = target.partition(":")
        module = importlib.import_module(module_name if "." in module_name else f"oneos.cli.{module_name}")
        own = getattr(module, "SUMMARIES", {}).get(function or "run") or module.SUMMARY
        if name in cli_main.SUMMARIES:
            assert cli_main.SUMMARIES[name] == own, name
        assert cli_main.summary(name) == own


def test_help_lists_every_command(capsys: pytest.CaptureFixture):
    assert cli_main.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli_main.COMMANDS:
        assert f"\n  {name:<12}{cli_main.summary(name)}" in out
    assert "--no-reuse" in out


_STARTUP_PROBE = """
import json, os, sys
os.execv = lambda path, argv: None  # no ssh: only what the CLI imports matters here
from oneos.cli.main import main
for argv in (["--help"], ["status", "--help"], ["run", "--help"], ["shell", "--help"],
             ["-c", "true", "--no-reuse"], ["-c", "true", "--host", "127.0.0.1", "--port", "9", "--no-reuse"],
             ["status", "--pubsub", "mqtt://127.0.0.1:9", "--timeout", "0"]):  # status: no time to connect
    try:
        main(argv)
    except SystemExit:
        pass
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"twisted", "cryptography", "OpenSSL", "asyncio", "psutil"})
heavy += sorted({"oneos.config", "oneos.pubsub.client", "subprocess"} & set(sys.modules))
print(json.dumps(heavy), file=sys.stderr)
"""


def test_help_dash_c_and_status_load_no_twisted(tmp_path: Path):
    # a fresh interpreter: this one has imported everything already; 'oneos -c' finds the shell in
    # runtime.json (the pid must be alive: ours)
    (tmp_path / "runtime.json").write_text(json.dumps({"pid": os.getpid(), "ssh": "127.0.0.1:9"}))
    env = dict(os.environ, ONEOS_HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", _STARTUP_PROBE], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stderr.strip().splitlines()[-1]) == []
