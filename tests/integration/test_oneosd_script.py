"""The ``oneosd`` console script: when it interviews, what it execs, its help."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from oneos.cli import oneosd
from oneos.twistd import twistd_command

HOME = Path("/oneos-home")


def plan(args, interactive=True, exists=False, environ=None):
    return oneosd.plan(
        args,
        environ={"ONEOS_HOME": str(HOME)} if environ is None else environ,
        interactive=interactive,
        exists=lambda path: exists,
    )


@pytest.mark.parametrize(
    "args,interactive,exists,interview",
    [
        ([], True, False, True),  # first run on a terminal: ask
        ([], False, False, False),  # no terminal: the embedded default at once
        ([], True, True, False),  # configured already
        (["--configure"], True, True, True),
        (["--configure"], False, True, True),
        (["--no-interview"], True, False, False),
    ],
)
def test_when_it_interviews(args, interactive, exists, interview):
    what = plan(args, interactive, exists)
    assert what.interview is interview and not what.help and not what.error
    assert what.argv == tuple(twistd_command("oneosd"))


def test_other_arguments_go_to_twistd_oneosd_in_order_and_answer_their_questions():
    what = plan(
        ["--configure", "--pubsub", "mqtt://10.0.0.1:1883", "--no-kernel", "--ssh", "tcp:0", "rt-1"], exists=True
    )
    assert what.argv == tuple(
        twistd_command("oneosd", "--pubsub", "mqtt://10.0.0.1:1883", "--no-kernel", "--ssh", "tcp:0", "rt-1")
    )
    assert what.argv[-8:-6] == ("--pidfile=", "oneosd") and "--nodaemon" in what.argv
    assert what.interview and what.preset == {
        "id": "rt-1",
        "pubsub": "mqtt://10.0.0.1:1883",
        "kernel": False,
        "listen": {"ssh": "tcp:0"},
    }
    # after '--' nothing is ours
    assert plan(["--", "--configure"]).argv[-3:] == ("oneosd", "--", "--configure")


def test_the_config_looked_for_is_the_one_the_runtime_will_read(tmp_path):
    looked = []
    for args in (["--home", str(tmp_path)], [f"--home={tmp_path}"]):
        oneosd.plan(args, environ={}, interactive=True, exists=lambda p: looked.append(p) or True)
        assert oneosd.plan(args, environ={}, interactive=True).argv[-len(args) :] == tuple(args)
    assert looked == [tmp_path / "config.json"] * 2
    assert plan([]).home == HOME
    assert plan([], environ={"ONEOS_HOME": "/elsewhere"}).home == Path("/elsewhere")


def test_help_and_contradictions():
    assert plan(["--pubsub", "x", "--help"]).help and plan(["-h"]).help
    assert "contradict" in plan(["--configure", "--no-interview"]).error


@pytest.mark.parametrize("args", [["--version"], ["--bogus"], ["rt-1", "--pubsub", "x"], ["a", "b"]])
def test_no_questions_before_twistd_rejects_the_arguments(args):
    what = plan(args)
    assert not what.interview and what.argv[-len(args) :] == tuple(args)


class Exec(Exception):
    pass


@pytest.fixture
def execv(monkeypatch):
    def fake(path, argv):
        raise Exec(path, argv)

    monkeypatch.setattr(oneosd.os, "execv", fake)


def test_first_run_interviews_then_execs_twistd(tmp_path, monkeypatch, capsys, execv):
    monkeypatch.setattr(oneosd, "_interactive", lambda: True)
    monkeypatch.setattr(sys, "stdin", io.StringIO("rt-first\n"))  # the rest keep their defaults
    with pytest.raises(Exec) as e:
        oneosd.main(["--home", str(tmp_path), "--memory", "512"])
    argv = twistd_command("oneosd", "--home", str(tmp_path), "--memory", "512")
    assert e.value.args == (argv[0], argv)
    assert json.loads((tmp_path / "config.json").read_text())["id"] == "rt-first"
    assert "Runtime id" in capsys.readouterr().out


def test_first_run_flags_are_answers_not_questions(tmp_path, monkeypatch, capsys, execv):
    monkeypatch.setattr(oneosd, "_interactive", lambda: True)
    monkeypatch.setattr(
        sys, "stdin", io.StringIO("\n\n\n\nyes\ncam:in:video\n\n")
    )  # store, memory, kernel, tags; devices
    with pytest.raises(Exec):
        oneosd.main(
            [
                "--home",
                str(tmp_path),
                "--pubsub",
                "mqtt://127.0.0.2:1883",
                "--ssh",
                "tcp:0",
                "--address",
                "10.1.1.1",
                "rt-1",
            ]
        )
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["id"], saved["pubsub"], saved["listen"]["ssh"], saved["address"]) == (
        "rt-1",
        "mqtt://127.0.0.2:1883",
        "tcp:0",
        "10.1.1.1",
    )
    assert [d["name"] for d in saved["devices"]] == ["cam"]
    out = capsys.readouterr().out
    assert "Runtime id (blank for a random one): rt-1 (given on the command line)" in out
    assert "Pubsub broker URL [" not in out and "Address other machines reach this one on (" not in out


def test_a_bad_flag_is_refused_before_any_question(tmp_path, monkeypatch, capsys, execv):
    monkeypatch.setattr(oneosd, "_interactive", lambda: True)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert oneosd.main(["--home", str(tmp_path), "--memory", "lots"]) == 1
    assert "config field 'memory_mb'" in capsys.readouterr().err


def test_a_cancelled_interview_starts_nothing(tmp_path, monkeypatch, capsys, execv):
    monkeypatch.setattr(oneosd, "_interactive", lambda: True)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert oneosd.main(["--home", str(tmp_path)]) == 1
    assert not (tmp_path / "config.json").exists()
    assert "not starting" in capsys.readouterr().err


def test_without_a_terminal_it_execs_at_once(tmp_path, monkeypatch, execv):
    monkeypatch.setattr(oneosd, "_interactive", lambda: False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("should not be read\n"))
    with pytest.raises(Exec):
        oneosd.main(["--home", str(tmp_path)])
    assert not (tmp_path / "config.json").exists() and sys.stdin.read() == "should not be read\n"


def script(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "oneos.cli.oneosd", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        **kw,
    )


def test_help_tells_the_truth():
    done = script("--help")
    assert done.returncode == 0, done.stderr
    for text in ("--configure", "--no-interview", "twistd -n oneosd", "--pubsub=", "--no-kernel", "RUNTIME_ID"):
        assert text in done.stdout


def test_really_becomes_twistd(tmp_path):
    # stdin is not a terminal: no questions, straight to 'twistd -n oneosd --version'
    done = script("--home", str(tmp_path), "--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Twisted version" in done.stdout
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "twistd.pid").exists()
