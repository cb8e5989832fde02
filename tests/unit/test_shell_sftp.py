"""The SFTP subsystem (oneos.shell.sftp) against an in-memory tree with owners and modes.

twisted.conch's own SFTP client talks to the real ``SFTPSubsystem`` over an
in-memory connection (twisted.test.iosim): every request goes through the
wire format, so what is checked is what a client sees (status codes,
names, attributes).  The tree (:class:`Tree`) keeps owners and modes and
applies the service's rules (oneos.fs.permissions) for the user the
session acts for; its streamed reads wait on the sink as the transfer
does, so the read-ahead bound is observable.  The wiring into the SSH
avatar, the end of a subsystem channel at EOF, the refused host subsystems
and ``oneos sftp``'s command line are checked at the end.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.filetransfer import (
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_PERMISSION_DENIED,
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    FileTransferClient,
    SFTPError,
)
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.test import iosim

from oneos.fs import errors, paths
from oneos.fs.permissions import READ, SEARCH, WRITE, may_chmod, permitted
from oneos.fs.store import MiB, NoSpace, Stat
from oneos.shell import sftp
from oneos.shell.sftp import READ_AHEAD, S_IFDIR, S_IFREG, SFTPServer, SFTPSubsystem

KiB = 1024
PUT = FXF_WRITE | FXF_CREAT | FXF_TRUNC


# -- an in-memory tree with owners and modes ---------------------------------------------------------


@dataclass
class Entry:
    kind: str
    owner: str
    mode: int
    data: bytes = b""
    mtime: float = 0.0
    children: set[str] = field(default_factory=set)


class Tree:
    """The tree as the file-system client shows it to *user*: the service's owner/other checks, streamed reads."""

    def __init__(self, chunk: int = 64 * KiB) -> None:
        self.chunk = chunk
        self.clock = 1000.0
        self.entries: dict[str, Entry] = {}
        self.read_opens = 0
        self.delivered = 0
        self.aborted = 0
        self.commits = 0
        self.fail_commit: Exception | None = None
        for path, owner, mode in (
            ("/", "root", 0o755),
            ("/home", "root", 0o755),
            ("/tmp", "root", 0o1777),
            ("/home/alice", "alice", 0o700),
            ("/home/bob", "bob", 0o700),
        ):
            self._add(path, Entry("dir", owner, mode))

    def as_user(self, user: str | None) -> View:
        return View(self, user)

    def _add(self, path: str, entry: Entry) -> None:
        self.clock += 1
        entry.mtime = self.clock
        self.entries[path] = entry
        if path != "/":
            self.entries[paths.dirname(path)].children.add(path)

    def put(self, path: str, data: bytes, owner: str = "alice", mode: int = 0o644) -> None:
        """Set a file's content directly (a new version: a new mtime)."""
        old = self.entries.get(path)
        self.clock += 1
        if old is not None:
            old.data, old.mtime = data, self.clock
        else:
            self._add(path, Entry("file", owner, mode, data))

    def stat(self, path: str) -> Stat:
        e = self.entries.get(path)
        if e is None:
            raise errors.NotFound(path)
        return Stat(path, "dir" if e.kind == "dir" else "file", len(e.data), e.mode, e.owner, e.mtime, e.mtime)


class View:
    """What FSClient offers, acting for one user (None: the kernel)."""

    def __init__(self, tree: Tree, user: str | None) -> None:
        self.tree = tree
        self.user = user

    # the checks (as oneos.fs.service._Access, in short)
    def _need(self, path: str, want: int, where: str | None = None) -> None:
        e = self.tree.entries[path]
        if not permitted(self.user, e.owner, e.mode, want):
            raise errors.PermissionDenied(where or path)

    def _reach(self, path: str) -> None:
        current = "/"
        for name in paths.parts(paths.dirname(path)):
            self._need(current, SEARCH, path)
            current = paths.join(current, name)
            if current not in self.tree.entries:
                raise errors.NotFound(path)
            if self.tree.entries[current].kind != "dir":
                raise errors.NotADirectory(path)
        self._need(current, SEARCH, path)

    def _entry(self, path: str) -> Entry:
        self._reach(path)
        e = self.tree.entries.get(path)
        if e is None:
            raise errors.NotFound(path)
        return e

    def _writable(self, path: str) -> None:
        self._reach(path)
        if path in self.tree.entries:
            if self.tree.entries[path].kind == "file":
                self._need(path, WRITE)
        else:
            self._need(paths.dirname(path), WRITE | SEARCH, path)

    def _call(self, fn: Any, *args: Any, **kw: Any) -> defer.Deferred:
        return defer.maybeDeferred(fn, *args, **kw)

    # FSClient
    def stat(self, path: str) -> defer.Deferred:
        return self._call(lambda: (self._entry(path), self.tree.stat(path))[1])

    def access(self, path: str, mode: str = "r") -> defer.Deferred:
        def check() -> None:
            if "w" in mode:
                self._writable(path)
            if "r" in mode:
                self._entry(path)
                self._need(path, READ)

        return self._call(check)

    def listdir(self, path: str) -> defer.Deferred:
        def listing() -> list[Stat]:
            if self._entry(path).kind != "dir":
                raise errors.NotADirectory(path)
            self._need(path, READ)
            return [self.tree.stat(p) for p in sorted(self.tree.entries[path].children)]

        return self._call(listing)

    def mkdir(self, path: str, parents: bool = False, exist_ok: bool = False, *, perm: int | None = None) -> Any:
        def make() -> Stat:
            self._reach(path)
            if path in self.tree.entries:
                raise errors.AlreadyExists(path)
            self._need(paths.dirname(path), WRITE | SEARCH, path)
            self.tree._add(path, Entry("dir", self.user or "root", 0o755 if perm is None else perm))
            return self.tree.stat(path)

        return self._call(make)

    def remove(self, path: str, recursive: bool = False) -> defer.Deferred:
        def rm() -> None:
            e = self._entry(path)
            self._need(paths.dirname(path), WRITE | SEARCH, path)
            if e.children:
                raise errors.DirectoryNotEmpty(path)
            del self.tree.entries[path]
            self.tree.entries[paths.dirname(path)].children.discard(path)

        return self._call(rm)

    def rename(self, src: str, dst: str) -> defer.Deferred:
        def mv() -> Stat:
            e = self._entry(src)
            self._need(paths.dirname(src), WRITE | SEARCH, src)
            self._reach(dst)
            self._need(paths.dirname(dst), WRITE | SEARCH, dst)
            del self.tree.entries[src]
            self.tree.entries[paths.dirname(src)].children.discard(src)
            self.tree.entries.pop(dst, None)
            self.tree._add(dst, e)
            return self.tree.stat(dst)

        return self._call(mv)

    def chmod(self, path: str, perm: int) -> defer.Deferred:
        def change() -> Stat:
            e = self._entry(path)
            if not may_chmod(self.user, e.owner):
                raise errors.OperationNotPermitted(path)
            e.mode = perm
            return self.tree.stat(path)

        return self._call(change)

    def write_small(self, path: str, data: bytes, exclusive: bool = False) -> defer.Deferred:
        def write() -> Stat:
            self._writable(path)
            if exclusive and path in self.tree.entries:
                raise errors.AlreadyExists(path)
            self.tree.put(path, data, owner=self.user or "root")
            return self.tree.stat(path)

        return self._call(write)

    def write(self, path: str, data: bytes, mode: str = "truncate") -> defer.Deferred:
        return self.write_small(path, data)

    @defer.inlineCallbacks
    def read_into(self, path: str, sink: Any, offset: int = 0, length: int | None = None, on_open: Any = None) -> Any:
        """As FSClient.read_into over a transfer: the version opened, a piece at a time, waiting on the sink."""
        e = self._entry(path)
        if e.kind == "dir":
            raise errors.IsADirectory(path)
        self._need(path, READ)
        data = e.data
        self.tree.read_opens += 1
        if on_open is not None:
            on_open({"size": len(data), "stat": self.tree.stat(path).to_dict()})
        end = len(data) if length is None else min(len(data), offset + length)
        pos = offset
        try:
            while pos < end:
                piece = data[pos : min(end, pos + self.tree.chunk)]
                pos += len(piece)
                self.tree.delivered += len(piece)
                yield sink.write(piece)
            status = yield sink.finish()
        except Exception:
            self.tree.aborted += 1
            sink.abort()
            raise
        return status

    @defer.inlineCallbacks
    def write_from(self, path: str, source: Any, mode: str = "truncate") -> Any:
        self._writable(path)
        parts = []
        while True:
            piece = yield source.next()
            if not piece:
                break
            parts.append(piece)
        if self.tree.fail_commit is not None:
            raise self.tree.fail_commit
        old = self.tree.entries[path].data if mode == "append" and path in self.tree.entries else b""
        self.tree.put(path, old + b"".join(parts), owner=self.user or "root")
        self.tree.commits += 1
        return self.tree.stat(path)


# -- a client connected to the subsystem ----------------------------------------------------------


class Wire:
    """conch's SFTP client and our subsystem, connected in memory; :meth:`get` pumps until a Deferred fires."""

    def __init__(self, fs: Any, home: str = "/home/alice", ready: defer.Deferred | None = None) -> None:
        self.server = SFTPServer(fs, home, ready=ready)
        self.subsystem = SFTPSubsystem(server=self.server)
        self.client = FileTransferClient()
        self.pump = iosim.connect(
            self.subsystem, iosim.makeFakeServer(self.subsystem), self.client, iosim.makeFakeClient(self.client)
        )

    def outcome(self, d: defer.Deferred) -> Any:
        self.pump.flush()
        seen: list[Any] = []
        d.addBoth(seen.append)
        assert seen, "no answer"
        return seen[0]

    def get(self, d: defer.Deferred) -> Any:
        result = self.outcome(d)
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def fails(self, d: defer.Deferred, code: int | type) -> BaseException:
        result = self.outcome(d)
        assert isinstance(result, Failure), f"expected a failure, got {result!r}"
        if isinstance(code, int):
            assert isinstance(result.value, SFTPError), result.value
            assert result.value.code == code, (result.value.code, result.value.message)
        else:
            assert isinstance(result.value, code), result.value
        return result.value

    def open(self, path: str, flags: int = FXF_READ, attrs: dict | None = None) -> Any:
        return self.get(self.client.openFile(path.encode(), flags, attrs or {}))

    def fsetstat(self, f: Any, attrs: dict) -> defer.Deferred:
        """FSETSTAT on an open handle (conch's ClientFile.setAttrs sends FSTAT by mistake)."""
        return self.client._sendRequest(filetransfer.FXP_FSETSTAT, f.handle + self.client._packAttributes(attrs))

    def upload(self, path: str, data: bytes, block: int = 32 * KiB, flags: int = PUT) -> None:
        f = self.open(path, flags)
        for pos in range(0, len(data), block):
            self.get(f.writeChunk(pos, data[pos : pos + block]))
        self.get(f.close())

    def download(self, path: str, block: int = 32 * KiB) -> bytes:
        f = self.open(path)
        out = bytearray()
        while True:
            result = self.outcome(f.readChunk(len(out), block))
            if isinstance(result, Failure):
                result.trap(EOFError)
                break
            out += result
        self.get(f.close())
        return bytes(out)

    def listing(self, path: str) -> list[tuple[bytes, bytes, dict]]:
        d = self.get(self.client.openDirectory(path.encode()))
        names: list[tuple[bytes, bytes, dict]] = []
        while True:
            result = self.outcome(d.read())
            if isinstance(result, Failure):
                result.trap(EOFError)
                break
            names += result
        self.get(d.close())
        return names


@pytest.fixture
def tree() -> Tree:
    return Tree()


@pytest.fixture
def alice(tree: Tree) -> Wire:
    return Wire(tree.as_user("alice"))


def blob(n: int) -> bytes:
    return random.Random(n).randbytes(n)


# -- paths ----------------------------------------------------------------------------------------


def test_realpath_starts_at_the_home(alice):
    assert alice.get(alice.client.realPath(b".")) == "/home/alice"
    assert alice.get(alice.client.realPath(b"a/./b/../c")) == "/home/alice/a/c"
    assert alice.get(alice.client.realPath(b"..")) == "/home"
    assert alice.get(alice.client.realPath(b"/tmp/")) == "/tmp"
    alice.fails(alice.client.realPath(b"/../.."), FX_FAILURE)  # '..' above / is refused, never clamped
    alice.fails(alice.client.getAttrs(b"\xff\xfe"), FX_FAILURE)  # not UTF-8


def test_requests_wait_until_the_home_is_made(tree):
    ready: defer.Deferred = defer.Deferred()
    wire = Wire(tree.as_user("alice"), ready=ready)
    answer = wire.client.realPath(b".")
    wire.pump.flush()
    assert not answer.called
    wire.server.home = "/"  # what the login ended with (the store was down: home is /)
    ready.callback(None)
    assert wire.get(answer) == "/"


# -- writing and reading ----------------------------------------------------------------------------


def test_upload_is_committed_whole_at_close_and_belongs_to_the_user(tree, alice):
    data = blob(3 * MiB + 123)
    f = alice.open("big.bin", PUT)
    blocks = list(range(0, len(data), 32 * KiB))
    for pos in reversed(blocks):  # offsets, not order, decide where bytes go
        alice.get(f.writeChunk(pos, data[pos : pos + 32 * KiB]))
    assert "/home/alice/big.bin" not in tree.entries, "nothing is visible before the close"
    attrs = alice.get(f.getAttrs())
    assert attrs["size"] == len(data)
    alice.get(f.close())
    e = tree.entries["/home/alice/big.bin"]
    assert e.data == data and e.owner == "alice" and tree.commits == 1


def test_sequential_reads_ride_one_stream_and_stay_bounded_ahead(tree, alice):
    data = blob(16 * MiB)
    tree.put("/home/alice/f", data)
    f = alice.open("f")
    assert alice.get(f.getAttrs())["size"] == len(data)
    assert alice.get(f.readChunk(0, 32 * KiB)) == data[: 32 * KiB]
    assert tree.delivered <= 32 * KiB + READ_AHEAD + tree.chunk, "the stream runs at most READ_AHEAD ahead"
    out = bytearray(data[: 32 * KiB])
    while len(out) < len(data):
        # a pipelined client: 8 requests in flight
        ds = [f.readChunk(len(out) + i * 32 * KiB, 32 * KiB) for i in range(8)]
        for d in ds:
            result = alice.outcome(d)
            if isinstance(result, Failure):
                result.trap(EOFError)
            else:
                out += result
    assert bytes(out) == data
    assert tree.read_opens == 1
    alice.fails(f.readChunk(len(data), 32 * KiB), EOFError)
    alice.get(f.close())


def test_a_jump_opens_a_new_stream_and_closes_the_old(tree, alice):
    data = blob(12 * MiB)
    tree.put("/home/alice/f", data)
    f = alice.open("f")
    assert alice.get(f.readChunk(0, 1000)) == data[:1000]
    far = 10 * MiB
    assert alice.get(f.readChunk(far, 5000)) == data[far : far + 5000]
    assert tree.read_opens == 2 and tree.aborted == 1, "the first stream was cancelled, not read to its end"
    assert alice.get(f.readChunk(0, 10)) == data[:10]  # back to the start: a third stream
    assert tree.read_opens == 3
    alice.get(f.close())
    alice.pump.flush()
    assert tree.delivered < 3 * (READ_AHEAD + tree.chunk + 5000), "no stream read on past its bound"


def test_a_file_replaced_while_read_fails_rather_than_mixing_versions(tree, alice):
    tree.put("/home/alice/f", blob(8 * MiB))
    f = alice.open("f")
    alice.get(f.readChunk(0, 100))
    tree.put("/home/alice/f", b"x" * (8 * MiB))  # a new version (same size, new mtime)
    error = alice.fails(f.readChunk(6 * MiB, 100), FX_FAILURE)  # a new stream: it finds another version
    assert "changed" in error.message


def test_write_without_truncation_starts_from_the_content(tree, alice):
    tree.put("/home/alice/f", b"abcdef")
    f = alice.open("f", FXF_WRITE | FXF_READ)
    assert alice.get(f.readChunk(0, 100)) == b"abcdef"
    alice.get(f.writeChunk(1, b"XY"))
    alice.get(f.writeChunk(8, b"!"))  # past the end: a hole of zeros, as a POSIX file
    alice.get(f.close())
    assert tree.entries["/home/alice/f"].data == b"aXYdef\0\0!"


def test_rewriting_in_place_fetches_only_the_old_bytes_it_keeps(tree, alice):
    old = blob(5 * MiB)
    tree.put("/home/alice/f", old)
    new = blob(3 * MiB + 1)
    # scp's way: open without truncating, write everything from 0, then set the size
    f = alice.open("f", FXF_WRITE | FXF_CREAT)
    for pos in range(0, len(new), 32 * KiB):
        alice.get(f.writeChunk(pos, new[pos : pos + 32 * KiB]))
    assert alice.get(f.getAttrs())["size"] == len(old)  # the old tail is still there until cut
    alice.get(alice.fsetstat(f, {"size": len(new)}))
    alice.get(f.close())
    assert tree.entries["/home/alice/f"].data == new
    assert tree.read_opens == 0, "the old content was never fetched"
    # a write in the middle keeps the old bytes on both sides: fetched as ranges, when needed
    tree.put("/home/alice/g", b"abcdefghij")
    g = alice.open("g", FXF_WRITE)
    alice.get(g.writeChunk(5, b"XY"))
    alice.get(g.close())
    assert tree.entries["/home/alice/g"].data == b"abcdeXYhij"
    assert tree.read_opens == 2 and tree.delivered == 8  # [0, 5) before the write, [7, 10) at the close


def test_a_file_replaced_while_open_for_writing_is_not_mixed(tree, alice):
    tree.put("/home/alice/f", b"0123456789")
    f = alice.open("f", FXF_WRITE)
    alice.get(f.writeChunk(0, b"AB"))
    tree.put("/home/alice/f", b"another version")
    error = alice.fails(f.close(), FX_FAILURE)
    assert "replaced" in error.message
    assert tree.entries["/home/alice/f"].data == b"another version"


def test_handles_refuse_the_other_direction(tree, alice):
    tree.put("/home/alice/f", b"x")
    reader = alice.open("f")
    alice.fails(reader.writeChunk(0, b"y"), FX_PERMISSION_DENIED)
    writer = alice.open("f", FXF_WRITE)
    alice.fails(writer.readChunk(0, 1), FX_PERMISSION_DENIED)


def test_append_sends_only_the_new_bytes(tree, alice):
    tree.put("/home/alice/log", b"one\n")
    f = alice.open("log", FXF_WRITE | FXF_APPEND)
    alice.get(f.writeChunk(0, b"two\n"))  # the offset is ignored: every write goes to the end
    alice.get(f.writeChunk(0, b"three\n"))
    assert alice.get(f.getAttrs())["size"] == len(b"one\ntwo\nthree\n")
    alice.get(f.close())
    assert tree.entries["/home/alice/log"].data == b"one\ntwo\nthree\n"
    assert tree.read_opens == 0, "the old content was not fetched"


def test_exclusive_create_claims_the_name_at_open(tree, alice):
    f = alice.open("lock", FXF_WRITE | FXF_CREAT | FXF_EXCL)
    assert tree.entries["/home/alice/lock"].data == b""
    alice.fails(alice.client.openFile(b"lock", FXF_WRITE | FXF_CREAT | FXF_EXCL, {}), FX_FAILURE)
    alice.get(f.writeChunk(0, b"mine"))
    alice.get(f.close())
    assert tree.entries["/home/alice/lock"].data == b"mine"


def test_open_without_create_needs_the_file(alice):
    alice.fails(alice.client.openFile(b"nothing", FXF_WRITE, {}), FX_NO_SUCH_FILE)
    alice.fails(alice.client.openFile(b"nothing", FXF_READ, {}), FX_NO_SUCH_FILE)
    alice.fails(alice.client.openFile(b"/home", FXF_READ, {}), FX_FAILURE)  # a directory
    alice.fails(alice.client.openFile(b"/home", PUT, {}), FX_FAILURE)


def test_a_dropped_connection_commits_nothing(tree, alice):
    f = alice.open("half", PUT)
    alice.get(f.writeChunk(0, b"x" * 100_000))
    alice.subsystem.connectionLost(Failure(ConnectionError("gone")))
    assert "/home/alice/half" not in tree.entries and tree.commits == 0


def test_a_failed_commit_is_reported_and_stays_failed(tree, alice):
    tree.fail_commit = NoSpace("/home/alice/f")
    f = alice.open("f", PUT)
    alice.get(f.writeChunk(0, b"data"))
    error = alice.fails(f.close(), FX_FAILURE)
    assert "no space" in error.message
    alice.fails(alice.client.openFile(b"f", FXF_READ, {}), FX_NO_SUCH_FILE)
    alice.fails(f.close(), FX_FAILURE)  # closing again is not a success


def test_a_far_hole_is_refused(alice):
    f = alice.open("f", PUT)
    alice.fails(f.writeChunk(sftp.MAX_HOLE + 10, b"x"), FX_FAILURE)


def test_new_files_get_the_asked_mode_less_the_umask(tree, alice):
    alice.get(alice.client.openFile(b"f", PUT, {"permissions": S_IFREG | 0o666}).addCallback(lambda f: f.close()))
    assert tree.entries["/home/alice/f"].mode == 0o644
    f = alice.open("g", PUT)
    alice.get(alice.fsetstat(f, {"permissions": 0o600, "atime": 1, "mtime": 2}))  # 'put -p': times are ignored
    alice.get(f.close())
    assert tree.entries["/home/alice/g"].mode == 0o600


# -- the user's rights -----------------------------------------------------------------------------


def test_another_user_is_refused_with_permission_denied(tree):
    tree.put("/home/alice/secret", b"s3cret")
    bob = Wire(tree.as_user("bob"), home="/home/bob")
    bob.fails(bob.client.openFile(b"/home/alice/x", PUT, {}), FX_PERMISSION_DENIED)
    bob.fails(bob.client.openFile(b"/home/alice/secret", FXF_READ, {}), FX_PERMISSION_DENIED)
    bob.fails(bob.client.openDirectory(b"/home/alice"), FX_PERMISSION_DENIED)
    bob.fails(bob.client.removeFile(b"/home/alice/secret"), FX_PERMISSION_DENIED)
    bob.fails(bob.client.renameFile(b"/home/alice/secret", b"/tmp/s"), FX_PERMISSION_DENIED)
    bob.fails(bob.client.setAttrs(b"/home/alice/secret", {"permissions": 0o666}), FX_PERMISSION_DENIED)
    bob.fails(bob.client.makeDirectory(b"/x", {}), FX_PERMISSION_DENIED)
    assert set(tree.entries) >= {"/home/alice/secret"} and "/home/alice/x" not in tree.entries
    assert tree.entries["/home/alice/secret"].mode == 0o644
    # bob's own home and /tmp are his to use
    bob.upload("/tmp/b", b"bob's")
    assert tree.entries["/tmp/b"].owner == "bob"
    bob.fails(bob.client.setAttrs(b"/home/alice", {"permissions": 0o777}), FX_PERMISSION_DENIED)  # EPERM


def test_missing_entries_are_no_such_file(alice):
    alice.fails(alice.client.getAttrs(b"nope"), FX_NO_SUCH_FILE)
    alice.fails(alice.client.openDirectory(b"nope"), FX_NO_SUCH_FILE)
    alice.fails(alice.client.removeFile(b"nope"), FX_NO_SUCH_FILE)
    alice.fails(alice.client.removeDirectory(b"nope"), FX_NO_SUCH_FILE)
    alice.fails(alice.client.renameFile(b"nope", b"other"), FX_NO_SUCH_FILE)


# -- directories, attributes, names ----------------------------------------------------------------


def test_listing_shows_utf8_names_types_and_owners(tree, alice):
    tree.put("/home/alice/ünï.txt", b"hi")
    alice.get(alice.client.makeDirectory("dïr".encode(), {"permissions": 0o777}))
    names = {name.decode(): (long.decode(), attrs) for name, long, attrs in alice.listing(".")}
    assert set(names) == {"ünï.txt", "dïr"}
    long, attrs = names["dïr"]
    assert attrs["permissions"] == S_IFDIR | 0o755  # the umask took 022
    assert long.startswith("drwxr-xr-x") and "alice" in long and long.endswith("dïr")
    long, attrs = names["ünï.txt"]
    assert attrs["permissions"] == S_IFREG | 0o644 and attrs["size"] == 2 and "uid" not in attrs
    assert long.startswith("-rw-r--r--")
    st = alice.get(alice.client.getAttrs("ünï.txt".encode()))
    assert st["size"] == 2 and st["mtime"] == int(tree.entries["/home/alice/ünï.txt"].mtime)


def test_remove_rename_rmdir_follow_sftp_v3(tree, alice):
    tree.put("/home/alice/a", b"A")
    tree.put("/home/alice/b", b"B")
    alice.get(alice.client.makeDirectory(b"d", {}))
    tree.put("/home/alice/d/inside", b"i")
    alice.fails(alice.client.renameFile(b"a", b"b"), FX_FAILURE)  # v3: never onto an existing name
    assert tree.entries["/home/alice/b"].data == b"B"
    alice.get(alice.client.renameFile(b"a", b"c"))
    assert tree.entries["/home/alice/c"].data == b"A" and "/home/alice/a" not in tree.entries
    alice.fails(alice.client.removeFile(b"d"), FX_FAILURE)  # a directory: rmdir
    alice.fails(alice.client.removeDirectory(b"d"), FX_FAILURE)  # not empty
    alice.fails(alice.client.removeDirectory(b"c"), FX_NO_SUCH_FILE)  # a file (ENOTDIR, as OpenSSH maps it)
    alice.get(alice.client.removeFile(b"d/inside"))
    alice.get(alice.client.removeDirectory(b"d"))
    alice.get(alice.client.removeFile(b"c"))
    alice.fails(alice.client.makeDirectory(b"b", {}), FX_FAILURE)  # exists
    assert sorted(p for p in tree.entries if p.startswith("/home/alice/")) == ["/home/alice/b"]


def test_set_attributes(tree, alice):
    tree.put("/home/alice/f", b"content")
    alice.get(alice.client.setAttrs(b"f", {"permissions": S_IFREG | 0o600, "atime": 5, "mtime": 6}))
    assert tree.entries["/home/alice/f"].mode == 0o600
    alice.fails(alice.client.setAttrs(b"f", {"uid": 0, "gid": 0}), NotImplementedError)  # owners are names
    alice.fails(alice.client.setAttrs(b"f", {"size": 3}), NotImplementedError)
    alice.get(alice.client.setAttrs(b"f", {"size": 0}))
    assert tree.entries["/home/alice/f"].data == b""


def test_links_and_extensions_are_unsupported(alice):
    alice.fails(alice.client.makeLink(b"l", b"t"), NotImplementedError)
    alice.fails(alice.client.readLink(b"l"), NotImplementedError)
    alice.fails(alice.client.extendedRequest(b"statvfs@openssh.com", b""), NotImplementedError)


def test_an_unexpected_error_is_a_plain_failure(tree, caplog):
    class Broken(View):
        def stat(self, path: str) -> defer.Deferred:
            return defer.fail(RuntimeError("boom"))

    wire = Wire(Broken(tree, "alice"))
    error = wire.fails(wire.client.getAttrs(b"x"), FX_FAILURE)
    assert "internal error" in error.message and "boom" not in error.message


def test_an_unknown_handle_is_a_plain_failure(alice):
    stray = filetransfer.ClientFile(alice.client, b"not-a-handle")
    alice.fails(stray.readChunk(0, 10), FX_FAILURE)


# -- wiring ----------------------------------------------------------------------------------------


def test_the_avatar_serves_sftp_as_its_user_from_the_home_made_at_login(tree):
    from oneos.shell.session import Grid
    from oneos.shell.ssh import ShellAvatar

    prepared: list[Any] = []

    class Shell:
        grid = Grid(tree.as_user(None), None, None, None)

        def prepare(self, login: Any) -> defer.Deferred:
            prepared.append(login.session)
            d: defer.Deferred = defer.Deferred()
            prepared.append(d)
            return d

    class GridAs(Grid):
        def for_user(self, user: str) -> Grid:
            return Grid(tree.as_user(user), None, None, None)

    Shell.grid = GridAs(tree.as_user(None), None, None, None)
    avatar = ShellAvatar("bob", Shell())  # type: ignore[arg-type]
    subsystem = avatar.lookupSubsystem(b"sftp", b"")
    assert isinstance(subsystem, SFTPSubsystem)
    client = FileTransferClient()
    pump = iosim.connect(subsystem, iosim.makeFakeServer(subsystem), client, iosim.makeFakeClient(client))
    session, ready = prepared
    assert session.user == "bob" and session.home == "/home/bob"
    where = client.realPath(b".")
    pump.flush()
    assert not where.called, "nothing is answered before the home exists"
    ready.callback(None)
    pump.flush()
    assert where.result == "/home/bob"
    denied = client.openFile(b"/home/alice/x", PUT, {})
    pump.flush()
    assert isinstance(denied.result, Failure) and denied.result.value.code == FX_PERMISSION_DENIED
    denied.addErrback(lambda f: None)


def test_a_subsystem_channel_ends_at_the_clients_eof_with_status_0():
    from oneos.shell.ssh import SessionChannel

    class Client:
        def __init__(self) -> None:
            self.ended: list[Failure] = []

        def processEnded(self, reason: Failure) -> None:
            self.ended.append(reason)

    for made_session in (False, True):
        channel = SessionChannel()
        if made_session:
            channel.session = object()  # type: ignore[assignment]  # an env request made the ShellSession
        client = channel.client = Client()  # type: ignore[assignment]
        channel.running_subsystem = True
        channel.eofReceived()
        (reason,) = client.ended
        assert reason.value.exitCode == 0


def test_host_file_transfer_programs_are_refused():
    from oneos.shell.ssh import host_subsystem

    for line in (
        "scp -t /tmp/x",
        "scp -f /etc/passwd",
        "/usr/lib/openssh/sftp-server",
        "sftp-server -e",
        "internal-sftp",
    ):
        refusal = host_subsystem(line)
        assert refusal is not None and "not served" in refusal and "sftp" in refusal, line
    for line in ("ls /", "echo sftp-server", "cat scp -t"):
        assert host_subsystem(line) is None, line


# -- oneos sftp ------------------------------------------------------------------------------------


def test_oneos_sftp_takes_only_its_leading_options():
    from oneos.cli.sftp import parse

    assert parse(["--user", "bob", "--port=2200", "-b", "batch"]) == ({"user": "bob", "port": "2200"}, ["-b", "batch"])
    assert parse(["-b", "x", "--user", "bob"]) == ({}, ["-b", "x", "--user", "bob"])
    assert parse(["-i", "k", "--", "-u", "v"]) == ({"identity": "k"}, ["-u", "v"])
    assert parse([]) == ({}, [])


def test_oneos_sftp_connects_as_oneos_does(tmp_path: Path):
    import shutil

    from oneos.cli.sftp import sftp_argv

    if shutil.which("sftp") is None or shutil.which("ssh") is None:
        pytest.skip("needs the OpenSSH client")
    (tmp_path / "ssh_host_key.pub").write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyHostKeyHostKeyHostKeyHost\n"
    )
    argv = sftp_argv("127.0.0.1", 2299, "alice", tmp_path, "/k/id", ["-b", "batch"])
    assert Path(argv[0]).name == "sftp"
    assert argv[1:3] == ["-P", "2299"] and argv[-3:] == ["-b", "batch", "alice@127.0.0.1"]
    assert "-p" not in argv and "-T" not in argv and "-t" not in argv
    assert argv[argv.index("-i") + 1] == "/k/id"
    known = tmp_path / "known_hosts"
    assert f"UserKnownHostsFile={known}" in argv and "StrictHostKeyChecking=yes" in argv
    assert known.read_text().startswith("[127.0.0.1]:2299 ssh-ed25519 ")
    assert sftp_argv("::1", 22, "bob", tmp_path, None, [])[-1] == "bob@[::1]"


def test_longname_has_the_ls_l_columns():
    st = Stat("/f", "file", 1, 0o644, "alice", 0.0, time.time())
    assert sftp._longname(st, "f").split()[:4] == ["-rw-r--r--", "1", "alice", "-"]
