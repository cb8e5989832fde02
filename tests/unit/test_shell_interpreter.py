"""The interpreter and built-ins against an in-memory file system (no network).

Programs (agents) need a real runtime: tests/integration/test_shell_ssh.py covers them.
"""

from __future__ import annotations

from oneos.shell.interpreter import Interpreter
from oneos.shell.session import Grid, Session
from oneos.shell.users import hash_password, verify_password
from oneos.testing.shell import FakeFS, Out


def make(fs: FakeFS | None = None, user: str = "ann"):
    fs = fs or FakeFS()
    out, err = Out(), Out()
    interp = Interpreter(Session(user, home="/home"), Grid(fs, None, None, None), out, err)
    return interp, out, err, fs


def run(interp: Interpreter, line: str) -> int:
    results: list = []
    interp.execute(line).addBoth(results.append)
    assert results, "the fake file system answers synchronously"
    return results[0]


def test_echo_variables_and_status():
    interp, out, err, _ = make()
    assert run(interp, 'X=hello; echo "$X" ${X}-world $?; false; echo $?') == 0
    assert out.text == "hello hello-world 0\n1\n"


def test_and_or_lists():
    interp, out, _, _ = make()
    run(interp, "true && echo a || echo b; false && echo c || echo d")
    assert out.text == "a\nd\n"


def test_cd_pwd_and_missing_directory():
    interp, out, err, _ = make()
    assert run(interp, "cd /tmp; pwd") == 0
    assert run(interp, "cd /nope") == 1
    assert out.text == "/tmp\n"
    assert "no such file" in err.text
    assert interp.session.cwd == "/tmp"


def test_redirections_to_oneos_files():
    interp, out, err, fs = make()
    run(interp, "cd /tmp; echo one > f; echo two >> f; cat < f; cat nope 2> e; cat nope > both 2>&1")
    assert fs.files["/tmp/f"] == b"one\ntwo\n"
    assert out.text == "one\ntwo\n"
    assert b"no such file" in fs.files["/tmp/e"] and b"no such file" in fs.files["/tmp/both"]


def test_builtin_pipelines_and_globs():
    interp, out, _, fs = make()
    fs.files.update({"/tmp/a.txt": b"1\n2\n3\n", "/tmp/b.txt": b"x\n", "/tmp/c.log": b""})
    run(interp, "cd /tmp; ls *.txt; cat a.txt | tail -n 2 | wc -l; echo '*.txt'")
    assert out.text.split() == ["a.txt", "b.txt", "2", "*.txt"]


def test_streaming_builtins_yes_head_tail_tee_wc():
    interp, out, err, fs = make()
    fs.files["/tmp/n"] = b"".join(b"%d\n" % i for i in range(1, 101))
    assert (
        run(interp, "cd /tmp; yes ab | head -n 2; tail -n 2 n | tee t1 | wc -l; head -n 1 < n; cat n | tail -n 1") == 0
    )
    assert out.text.split() == ["ab", "ab", "2", "1", "100"]
    assert fs.files["/tmp/t1"] == b"99\n100\n"
    assert run(interp, "yes | head -n 1 > /tmp/y; cat /tmp/y; yes | true") == 0
    assert out.text.endswith("100\ny\n") and err.text == ""
    assert run(interp, "cat /tmp/n > /nodir/f") == 1 and "no such file" in err.text


def test_syntax_errors_and_export():
    interp, out, err, _ = make()
    assert run(interp, "echo 'open") == 2
    assert "syntax error" in err.text
    run(interp, "export A=1; B=2")
    assert interp.session.agent_env({"C": "3"})["A"] == "1"
    assert "B" not in interp.session.agent_env({}) and interp.session.env["B"] == "2"


def test_exit_and_history():
    interp, out, _, _ = make()
    run(interp, "echo a")
    assert run(interp, "exit 9; echo never") == 9
    assert interp.exit_status == 9
    assert interp.session.history == ["echo a", "exit 9; echo never"]
    assert out.text == "a\n"


def test_sessions_are_separate():
    fs = FakeFS()
    a, b = make(fs)[0], make(fs)[0]
    run(a, "cd /tmp; X=1")
    assert b.session.cwd == "/home" and "X" not in b.session.env


def test_password_hashes():
    stored = hash_password("pw-1", n=2**10)
    assert verify_password("pw-1", stored) and not verify_password("pw-2", stored)
    assert not verify_password("pw-1", "garbage")
