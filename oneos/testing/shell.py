"""Doubles for the shell's tests: an in-memory file system and an output that keeps what it is given.

Unit tests of the interpreter and integration tests of the front ends both use
them, so they live here rather than in one test module importing another.
"""

from __future__ import annotations

import fnmatch
import time
from typing import Any

from twisted.internet import defer

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


class Out:
    """A writable that keeps every byte (a session's stdout or stderr)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    @property
    def text(self) -> str:
        return self.data.decode()
