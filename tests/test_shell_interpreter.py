"""The interpreter and built-ins against an in-memory file system (no network).

Programs (agents) need a real runtime: tests/test_shell_ssh.py covers them.
"""

from __future__ import annotations

import fnmatch
import time

from twisted.internet import defer

from oneos.fs import errors, paths
from oneos.fs.store import Stat
from oneos.shell.interpreter import Interpreter
from oneos.shell.session import Grid, Session
from oneos.shell.users import hash_password, verify_password


class FakeFS:
    """Just enough of FSClient: a dict of path -> bytes (None for directories)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes | None] = {"/": None, "/home": None, "/tmp": None}

    def _stat(self, path: str) -> Stat:
        if path not in self.files:
            raise errors.NotFound(path)
        data = self.files[path]
        return Stat(
            path,
            "dir" if data is None else "file",
            len(data or b""),
            0o755 if data is None else 0o644,
            "root",
            time.time(),
            time.time(),
        )

    def stat(self, path: str) -> defer.Deferred:
        return defer.maybeDeferred(self._stat, path)

    def exists(self, path: str) -> defer.Deferred:
        return defer.succeed(path in self.files)

    def listdir(self, path: str) -> defer.Deferred:
        self._stat(path)
        return defer.succeed([self._stat(p) for p in sorted(self.files) if p != "/" and paths.dirname(p) == path])

    def mkdir(self, path: str, parents: bool = False, exist_ok: bool = False) -> defer.Deferred:
        if path in self.files and not exist_ok:
            return defer.fail(errors.AlreadyExists(path))
        self.files[path] = None
        return defer.succeed(self._stat(path))

    def read(self, path: str, offset: int = 0, length: int | None = None) -> defer.Deferred:
        try:
            st = self._stat(path)
        except errors.FSError as e:
            return defer.fail(e)
        if st.is_dir:
            return defer.fail(errors.IsADirectory(path))
        data = self.files[path]
        return defer.succeed(data[offset : None if length is None else offset + length])

    def read_into(self, path: str, sink, offset: int = 0, length: int | None = None) -> defer.Deferred:
        return self.read(path, offset, length).addCallback(sink.write)

    def write(self, path: str, data: bytes, mode: str = "truncate") -> defer.Deferred:
        self.files[path] = (self.files.get(path) or b"") + data if mode == "append" else data
        return defer.succeed(self._stat(path))

    @defer.inlineCallbacks
    def write_from(self, path: str, source, mode: str = "truncate"):
        """As FSClient.write_from: the source read to its end, the file visible only then."""
        if paths.dirname(path) not in self.files:
            raise errors.NotFound(paths.dirname(path))
        parts = []
        while True:
            data = yield source.next()
            if not data:
                break
            parts.append(data)
        result = yield self.write(path, b"".join(parts), mode)
        return result

    def remove(self, path: str, recursive: bool = False) -> defer.Deferred:
        self._stat(path)
        for p in [p for p in self.files if p == path or p.startswith(path + "/")]:
            del self.files[p]
        return defer.succeed(None)

    def glob(self, pattern: str, cwd: str = "/") -> defer.Deferred:
        full = paths.join(cwd, pattern) if not pattern.startswith("/") else pattern
        return defer.succeed(sorted(p for p in self.files if fnmatch.fnmatchcase(p, full)))


class Out:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    @property
    def text(self) -> str:
        return self.data.decode()


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
