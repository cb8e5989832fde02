"""Doubles for the shell's tests: an in-memory file system and an output that keeps what it is given.

Unit tests of the interpreter and integration tests of the front ends both use
them, so they live here rather than in one test module importing another.

The side-by-side tests (OneOS's interpreter beside ``/bin/bash``) use the
runners at the end: :func:`run_oneos` runs a line in the interpreter over a
:class:`PosixFakeFS`, :func:`run_bash_batch` runs many lines in one bash
process, each in its own copy of the same tree, so hundreds of cases cost
one process start.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from oneos.fs import errors, paths
from oneos.fs.store import Stat


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
        data = self.files[path] or b""
        return defer.succeed(data[offset : None if length is None else offset + length])

    def read_into(self, path: str, sink: Any, offset: int = 0, length: int | None = None) -> defer.Deferred:
        return self.read(path, offset, length).addCallback(sink.write)

    def write(self, path: str, data: bytes, mode: str = "truncate") -> defer.Deferred:
        self.files[path] = (self.files.get(path) or b"") + data if mode == "append" else data
        return defer.succeed(self._stat(path))

    @defer.inlineCallbacks
    def write_from(self, path: str, source: Any, mode: str = "truncate") -> Any:
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

    @defer.inlineCallbacks
    def list_stat(self, path: str, parent: bool = False) -> Any:
        """As FSClient.list_stat, from this double's stat and listdir."""
        from oneos.fs.client import Listing

        st = yield self.stat(path)
        up = (yield self.stat(paths.dirname(st.path))) if parent else None
        if not st.is_dir:
            return Listing(st, None, up)
        try:
            entries = yield self.listdir(st.path)
        except errors.FSError as e:
            return Listing(st, None, up, e)
        return Listing(st, entries, up)

    @defer.inlineCallbacks
    def stat_many(self, paths_: list[str]) -> Any:
        """As FSClient.stat_many: each path's Stat, or the error its stat raises."""
        out: list[Any] = []
        for path in paths_:
            try:
                out.append((yield self.stat(path)))
            except errors.FSError as e:
                out.append(e)
        return out


class Out:
    """A writable that keeps every byte (a session's stdout or stderr)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    @property
    def text(self) -> str:
        return self.data.decode()


class PosixFakeFS(FakeFS):
    """A FakeFS that fails where the real store fails, and globs as it does (one component at a time).

    FakeFS is lenient (``mkdir a/b`` without ``a`` works, ``*`` matches
    across ``/``); comparing the shell with bash needs the store's answers:
    a missing parent is ENOENT, a file where a directory should be ENOTDIR,
    writing a directory EISDIR, removing a non-empty directory without
    *recursive* ENOTEMPTY, and wildcards never match ``/`` nor a leading
    ``.`` (:func:`oneos.fs.paths.match_name`).
    """

    def _dir(self, path: str, whole: str) -> None:
        if path not in self.files:
            raise errors.NotFound(whole)
        if self.files[path] is not None:
            raise errors.NotADirectory(whole)

    def _stat(self, path: str) -> Stat:
        parent = paths.dirname(path)
        if path != "/" and parent in self.files and self.files[parent] is not None:
            raise errors.NotADirectory(path)
        return super()._stat(path)

    def mkdir(self, path: str, parents: bool = False, exist_ok: bool = False) -> defer.Deferred:
        try:
            if path in self.files:
                if self.files[path] is not None or not (exist_ok or parents):
                    raise errors.AlreadyExists(path)
                return defer.succeed(self._stat(path))
            parent = paths.dirname(path)
            if parents and parent not in self.files:
                self.mkdir(parent, parents=True).addErrback(lambda f: None)
            self._dir(parent, path)
        except errors.FSError as e:
            return defer.fail(e)
        self.files[path] = None
        return defer.succeed(self._stat(path))

    def write(self, path: str, data: bytes, mode: str = "truncate") -> defer.Deferred:
        try:
            self._dir(paths.dirname(path), path)
            if self.files.get(path, b"") is None:
                raise errors.IsADirectory(path)
        except errors.FSError as e:
            return defer.fail(e)
        return super().write(path, data, mode)

    def remove(self, path: str, recursive: bool = False) -> defer.Deferred:
        try:
            self._stat(path)
            if path == "/":
                raise errors.OperationNotPermitted(path, "the root directory cannot be removed")
            if not recursive and any(p.startswith(path.rstrip("/") + "/") for p in self.files):
                raise errors.DirectoryNotEmpty(path)
        except errors.FSError as e:
            return defer.fail(e)
        return super().remove(path, recursive)

    def rename(self, src: str, dst: str) -> defer.Deferred:
        try:
            self._stat(src)
            self._dir(paths.dirname(dst), dst)
            if self.files[src] is None and paths.is_within(dst, src) and dst != src:
                raise errors.InvalidArgument(dst, f"cannot move {src} into itself")
            if dst in self.files and dst != src:
                if self.files[dst] is None and self.files[src] is not None:
                    raise errors.IsADirectory(dst)
                if self.files[dst] is not None and self.files[src] is None:
                    raise errors.NotADirectory(dst)
                super().remove(dst, True)
        except errors.FSError as e:
            return defer.fail(e)
        if dst != src:
            for p in sorted(p for p in self.files if paths.is_within(p, src)):
                self.files[dst + p[len(src) :]] = self.files.pop(p)
        return defer.succeed(self._stat(dst))

    def copy(self, src: str, dst: str, recursive: bool = False) -> defer.Deferred:
        try:
            self._stat(src)
            if src == dst:
                raise errors.InvalidArgument(dst, f"{src} and {dst} are the same file")
            if self.files[src] is None and not recursive:
                raise errors.IsADirectory(src, "copying a directory needs recursive=True")
            self._dir(paths.dirname(dst), dst)
            if self.files[src] is not None and self.files.get(dst, b"") is None:
                raise errors.IsADirectory(dst)
            if self.files[src] is None and dst in self.files:
                raise errors.AlreadyExists(dst)
        except errors.FSError as e:
            return defer.fail(e)
        for p in sorted(p for p in self.files if paths.is_within(p, src)):
            self.files[dst + p[len(src) :]] = self.files[p]
        return defer.succeed(self._stat(dst))

    def chmod(self, path: str, perm: int) -> defer.Deferred:
        return defer.maybeDeferred(self._stat, path)

    def glob(self, pattern: str, cwd: str = "/") -> defer.Deferred:
        """As the store: component by component, ``**`` for any depth, no match of ``/`` or a leading ``.``."""
        found = ["/"]
        components = paths.glob_parts(pattern, cwd)
        for i, comp in enumerate(components):
            following: list[str] = []
            for base in found:
                if self.files.get(base, b"") is not None:
                    continue  # (not a directory)
                children = sorted(p for p in self.files if p != "/" and paths.dirname(p) == base)
                if comp == "**":
                    following.extend(self._below(base, include_files=i == len(components) - 1))
                elif paths.has_magic(comp):
                    following.extend(p for p in children if paths.match_name(paths.basename(p), comp))
                elif paths.join(base, comp) in self.files:
                    following.append(paths.join(base, comp))
            found = sorted(set(following))
        return defer.succeed(found)

    def _below(self, base: str, include_files: bool) -> list[str]:
        def hidden(p: str) -> bool:
            return any(name.startswith(".") for name in p[len(base) :].split("/"))

        return [base] + [
            p
            for p in self.files
            if p != base and paths.is_within(p, base) and not hidden(p) and (include_files or self.files[p] is None)
        ]


# --- side by side with bash ------------------------------------------------------

#: The user the side-by-side runs log in as; their home is /home/USER, the line runs in /w.
SIDE_USER = "ann"
SIDE_CWD = "/w"
#: The tree every side-by-side case starts from (path -> content, None for a directory).
SIDE_TREE: dict[str, bytes | None] = {"/home/ann": None, "/w": None}


@dataclass(frozen=True)
class ShellRun:
    """What one line did: its standard output and error (text) and its exit status."""

    stdout: str
    stderr: str
    status: int


def _tree(files: Mapping[str, bytes | None]) -> dict[str, bytes | None]:
    """The base tree, *files* added (with their parent directories)."""
    tree: dict[str, bytes | None] = {"/": None, "/home": None, "/tmp": None, **SIDE_TREE}
    for path, data in sorted(files.items()):
        parent = paths.dirname(path)
        while parent not in tree:
            tree[parent] = None
            parent = paths.dirname(parent)
        tree[path] = data
    return tree


def run_oneos(line: str, files: Mapping[str, bytes | None] = {}, *, rounds: int = 10_000) -> ShellRun:
    """Run *line* in a fresh OneOS session over a :class:`PosixFakeFS` holding *files* (cwd /w, home /home/ann).

    The grid's clock is a ``task.Clock`` advanced until the line is done,
    so built-ins that give the reactor a turn still finish without a
    reactor; a line still running after *rounds* turns is an error.
    """
    from oneos.shell.interpreter import Interpreter
    from oneos.shell.session import Grid, Session

    fs = PosixFakeFS()
    fs.files = _tree(files)
    clock = task.Clock()
    out, err = Out(), Out()
    session = Session(SIDE_USER, home=f"/home/{SIDE_USER}")
    session.cwd = session.env["PWD"] = SIDE_CWD
    interp = Interpreter(session, Grid(fs, None, None, clock), out, err)
    results: list[Any] = []
    interp.execute(line).addBoth(results.append)
    for _ in range(rounds):
        if results:
            break
        clock.advance(0.1)
    if not results:
        raise AssertionError(f"{line!r} did not finish")
    if not isinstance(results[0], int):
        results[0].raiseException()
    return ShellRun(out.data.decode("utf-8", "replace"), err.data.decode("utf-8", "replace"), results[0])


#: What bash runs for cases FIRST to LAST-1, each in a subshell, from tI/w, with HOME=tI/home/ann and no OLDPWD (as a
#: fresh login), waiting for its background jobs; mI/ holds its line and what it wrote (outside its tree).
_BASH_DRIVER = r"""
root=$PWD
for ((i = $1; i < $2; i++)); do
  d=$root/t$i m=$root/m$i
  (
    cd "$d/w" || exit 99
    unset OLDPWD
    export HOME="$d/home/ann"
    eval "$(<"$m/cmd")"
    s=$?
    wait
    exit $s
  ) >"$m/out" 2>"$m/err" </dev/null
  echo $? >"$m/rc"
done
"""


def run_bash_batch(
    cases: Sequence[tuple[str, Mapping[str, bytes | None]]],
    root: Path,
    bash: str = "/bin/bash",
    timeout: float = 60,
    processes: int = 2,
) -> list[ShellRun]:
    """Run each ``(line, files)`` in bash, in *processes* bash processes at once; a result per case, in order.

    Each case gets its own copy of the tree under *root* (``t0``, ``t1``
    ...), the same tree :func:`run_oneos` builds, and runs as ``eval`` in a
    subshell, so one case's ``cd``, variables and ``exit`` stay its own.
    The environment is fixed (``LC_ALL=C``: byte order, ASCII classes;
    ``USER``, ``HOME``, ``PATH`` only), and the case's tree is written back
    as ``/`` in its output, so ``pwd`` reads ``/w`` on both sides.
    """
    root = root.resolve()
    for i, (line, files) in enumerate(cases):
        base = f"{root}/t{i}"
        tree = _tree(files)  # (directories first, so every file's parent exists)
        for path in sorted(p for p, data in tree.items() if data is None):
            os.makedirs(base + path, exist_ok=True)
        for path, data in tree.items():
            if data is not None:
                with open(base + path, "wb") as f:
                    f.write(data)
        os.mkdir(f"{root}/m{i}")
        with open(f"{root}/m{i}/cmd", "w", encoding="utf-8") as text:
            text.write(line)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "USER": SIDE_USER}
    share = -(-len(cases) // max(1, processes))
    running = [
        subprocess.Popen(
            [bash, "-c", _BASH_DRIVER, "bash", str(start), str(min(start + share, len(cases)))], env=env, cwd=root
        )
        for start in range(0, len(cases), share or 1)
    ]
    try:
        for process in running:
            if process.wait(timeout=timeout) != 0:
                raise RuntimeError(f"the bash driver failed with status {process.returncode}")
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait()
    results = []
    for i in range(len(cases)):
        prefix, meta = str(root / f"t{i}"), root / f"m{i}"

        def local(data: bytes, prefix: str = prefix) -> str:
            return data.decode("utf-8", "replace").replace(prefix + "/", "/").replace(prefix, "/")

        status = int((meta / "rc").read_text())
        results.append(ShellRun(local((meta / "out").read_bytes()), local((meta / "err").read_bytes()), status))
    return results
