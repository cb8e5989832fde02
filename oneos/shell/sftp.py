"""SFTP on the shell's SSH server: the OneOS tree, as the logged-in user.

``sftp``, ``scp`` (OpenSSH 9 copies over SFTP unless given ``-O``) and any
SFTP client reach the tree through the ``sftp`` subsystem of the shell's SSH
door.  Every operation is a call of the file-system client made for the
session's user (:meth:`~oneos.shell.session.Grid.for_user`), so the tree's
owners and modes decide exactly as they do for the shell's own commands:
nothing here reads or writes the runtime machine's disk, except the spool
of an upload (below).

twisted.conch's :class:`FileTransferServer` speaks the protocol (version 3,
as OpenSSH); :class:`SFTPServer` is the ``ISFTPServer`` it asks.  What the
protocol wants and the tree has differ in three ways:

* **Whole files.**  The store commits whole files (an upload becomes visible
  once complete, docs/filesystem.md), but SFTP writes at offsets.  A file
  opened for writing is kept in a spooled temporary file on the runtime
  (in memory up to :data:`SPOOL_MEMORY`, then on its local disk, private to
  the runtime's account), written at the offsets the client gives, and
  streamed into the tree as one write when the client closes it; memory
  stays bounded whatever the size.  A file opened for writing without
  truncation keeps its old content: the parts not overwritten are fetched
  from the tree when needed (``scp``, which rewrites a file in place and
  then sets its size, fetches none); with ``APPEND`` only the new bytes are
  spooled and appended at close.  A connection that drops before the close
  commits nothing (conch's own server would close, i.e. commit, the
  half-written file).
* **Streamed reads.**  A read at an offset is served from one stream of the
  file (``read_into`` from that offset, through the transfer server) that
  runs ahead of the client's requests by at most :data:`READ_AHEAD` and is
  held back beyond that; consecutive reads ride the same stream, a jump
  elsewhere opens a new one.  A handle reads the version it opened: if the
  file is replaced meanwhile, a later read fails (ESTALE) rather than mix
  versions.
* **Names and errors.**  Paths are UTF-8, relative ones start at the user's
  home (``realpath .``).  Errors become SFTP status codes with the plain
  message (NO_SUCH_FILE for a missing entry, PERMISSION_DENIED for a
  refusal, OP_UNSUPPORTED for links and extensions, FAILURE with the
  reason for the rest); never a traceback.

Owners are user names in OneOS, not numbers: attributes carry no uid/gid,
and a ``chown``/``chgrp`` over SFTP is refused (use the shell's ``chown``).
The tree keeps its own times, which cannot be set: setting them is
accepted and ignored, so ``put -p`` works.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import IO, TYPE_CHECKING, Any, cast

from twisted.conch.interfaces import ISFTPFile, ISFTPServer
from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.filetransfer import (
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPError,
)
from twisted.internet import defer
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from oneos.errors import OneOSError, describe
from oneos.fs import paths
from oneos.fs.errors import FileChanged, InvalidPath, IsADirectory, NotADirectory, NotFound
from oneos.fs.permissions import mode_string
from oneos.fs.store import MiB, Stat
from oneos.shell.session import Session

if TYPE_CHECKING:
    from oneos.shell.service import ShellService

log = Logger()

#: bytes of an upload kept in memory before its spool moves to a temporary file on disk
SPOOL_MEMORY = 1 * MiB
#: how far a read stream may run ahead of what the client has asked for
READ_AHEAD = 2 * MiB
#: bytes of the spool sent to the tree per piece when a written file is committed
COMMIT_CHUNK = 256 * 1024
#: the largest answer to one READ (OpenSSH's own server's limit; a client asks again for the rest)
MAX_READ = 256 * 1024 - 1024
#: a write may start at most this far past the end of what is spooled (a hole is zeros to commit)
MAX_HOLE = 64 * MiB
#: what the server takes away from the permissions a client asks for when it creates an entry
UMASK = 0o022

# File-type bits of an SFTP ``permissions`` attribute: clients tell directories by them.
S_IFDIR, S_IFREG = 0o040000, 0o100000

#: errno names of OneOS errors -> the SFTP v3 status that means the same (as OpenSSH's server maps errno)
_STATUS = {
    "ENOENT": FX_NO_SUCH_FILE,
    "ENOTDIR": FX_NO_SUCH_FILE,
    "EACCES": FX_PERMISSION_DENIED,
    "EPERM": FX_PERMISSION_DENIED,
}


@implementer(ILogObserver)
class _WarningsOnly:
    """Passes on only conch's warnings and errors: it logs every SFTP packet at info level."""

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            globalLogPublisher(event)


class _Cancelled(Exception):
    """A read stream nobody wants any more (the handle was closed or the client moved elsewhere)."""


def sftp_error(error: BaseException) -> BaseException | None:
    """What the client is told for *error*: an SFTPError with a plain message (None: an unexpected error).

    EOFError and NotImplementedError pass through: conch answers them with
    EOF and OP_UNSUPPORTED.  SFTP version 3 has no "already exists" status
    (OpenSSH's client shows 11 as "Unknown status"), so that is a FAILURE
    whose message says it.
    """
    if isinstance(error, (SFTPError, EOFError, NotImplementedError)):
        return error
    if isinstance(error, OneOSError):
        code = getattr(error, "code", None) or getattr(error, "kind", None)
        return SFTPError(_STATUS.get(str(code), FX_FAILURE), describe(error))
    if isinstance(error, OSError):  # the spool on the runtime's disk (full, unwritable)
        return SFTPError(FX_FAILURE, f"cannot spool the upload on the runtime: {error.strerror or error}")
    return None


def _attrs(st: Stat) -> dict[str, int]:
    """An entry's SFTP attributes: size, type and permission bits, times (no uid/gid: owners are names)."""
    mtime = max(0, int(st.mtime))
    return {
        "size": st.size,
        "permissions": (S_IFDIR if st.is_dir else S_IFREG) | st.mode,
        "atime": mtime,
        "mtime": mtime,
    }


def _longname(st: Stat, name: str) -> str:
    """The ``ls -l`` line OpenSSH's ``sftp`` shows as is (no groups in OneOS: ``-`` in that column)."""
    when = time.strftime("%b %d %H:%M", time.localtime(st.mtime))
    return f"{mode_string(st.kind, st.mode)}    1 {st.owner:<8} {'-':<8} {st.size:>12} {when} {name}"


def _same_version(a: Stat, b: Stat) -> bool:
    return a.size == b.size and a.mtime == b.mtime and a.kind == b.kind


def _perm(attrs: dict[str, Any]) -> int | None:
    """The permission bits a client asked for (the file-type bits dropped), or None."""
    perm = attrs.get("permissions")
    return None if perm is None else int(perm) & 0o7777


class _Listing:
    """An opened directory: conch iterates it for READDIR and closes it."""

    def __init__(self, entries: list[Stat]) -> None:
        self._entries: Iterator[Stat] = iter(entries)

    def __iter__(self) -> _Listing:
        return self

    def __next__(self) -> tuple[bytes, bytes, dict[str, int]]:
        st = next(self._entries)
        name = paths.basename(st.path)
        return name.encode("utf-8"), _longname(st, name).encode("utf-8"), _attrs(st)

    def close(self) -> None:
        self._entries = iter(())


# -- reading -------------------------------------------------------------------------------------


class _Stream:
    """One streamed read of a file from an offset, a bounded distance ahead of the client's requests.

    It is the sink of ``fs.read_into``: what arrives is kept from the lowest
    offset still wanted; when more than :data:`READ_AHEAD` lies beyond every
    request, its ``write`` answer is held, which stops the transfer reading
    its socket, which stops the serving runtime.  Cancelling fails that held
    answer, which closes the transfer's connection.
    """

    def __init__(self, fs: Any, path: str, offset: int, version: Stat) -> None:
        self.path = path
        self.version = version
        #: file offset of ``buffer[0]``
        self.start = offset
        self.buffer = bytearray()
        #: the end of the furthest request answered so far
        self.position = offset
        self.waiting: list[tuple[int, int, defer.Deferred]] = []
        self.ended = False
        self.failure: Failure | None = None
        self.held: defer.Deferred | None = None
        #: takes no new requests; cancels itself once the ones it has are answered
        self.retired = False
        self.cancelled = False
        self.changed = False
        d = fs.read_into(path, self, offset=offset, on_open=self._opened)
        d.addCallbacks(self._finished, self._failed)

    @property
    def end(self) -> int:
        return self.start + len(self.buffer)

    def accepts(self, offset: int) -> bool:
        """Whether a request at *offset* can be answered from this stream (now or as it goes on)."""
        if self.retired or self.cancelled or self.failure is not None:
            return False
        return self.start <= offset and (self.ended or offset <= self.end + READ_AHEAD)

    def read(self, offset: int, length: int) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiting.append((offset, length, d))
        self._serve()
        return d

    def retire(self) -> None:
        self.retired = True
        if not self.waiting:
            self.cancel()

    def cancel(self, why: BaseException | None = None) -> None:
        """Stop: pending requests fail with *why* (if any), the transfer is closed, the buffer dropped."""
        if self.cancelled:
            return
        self.cancelled = True
        waiting, self.waiting = self.waiting, []
        for _, _, d in waiting:
            d.errback(why or SFTPError(FX_FAILURE, "the file was closed"))
        self.buffer = bytearray()
        held, self.held = self.held, None
        if held is not None:
            held.errback(_Cancelled())

    # the Sink fs.read_into writes to
    def _opened(self, where: dict[str, Any]) -> None:
        stat = where.get("stat")
        if stat is not None and not _same_version(Stat.from_dict(stat), self.version):
            self.changed = True  # refused at the first write (or the end): the reader is then closed too

    def write(self, data: bytes) -> defer.Deferred:
        if self.cancelled:
            return defer.fail(_Cancelled())
        if self.changed:
            return defer.fail(FileChanged(self.path))
        self.buffer += data
        self._serve()
        if self._ahead() > READ_AHEAD and not self.cancelled:
            self.held = defer.Deferred()
            return self.held
        return defer.succeed(None)

    def finish(self) -> defer.Deferred:
        if self.changed:
            return defer.fail(FileChanged(self.path))
        return defer.succeed({"size": self.end})

    def abort(self) -> None:
        """The transfer gave up; :meth:`_failed` hears why."""

    # --
    def _finished(self, _: Any) -> None:
        self.ended = True
        self._serve()

    def _failed(self, failure: Failure) -> None:
        if failure.check(_Cancelled) or self.cancelled:
            return
        self.failure = failure
        self._serve()

    def _ahead(self) -> int:
        """Bytes held beyond everything asked for."""
        wanted = max([self.position, self.start] + [o + n for o, n, _ in self.waiting])
        return self.end - wanted

    def _serve(self) -> None:
        ready: list[tuple[defer.Deferred, Any]] = []
        still: list[tuple[int, int, defer.Deferred]] = []
        for offset, length, d in self.waiting:
            if self.failure is not None:
                ready.append((d, self.failure))
            elif offset + length <= self.end or self.ended:
                lo = offset - self.start
                piece = bytes(self.buffer[lo : lo + length])
                self.position = max(self.position, offset + len(piece))
                ready.append((d, piece))
            else:
                still.append((offset, length, d))
        self.waiting = still
        keep = min([self.position] + [o for o, _, _ in still])
        if keep > self.start:  # keep <= end: what was answered came from the buffer
            del self.buffer[: keep - self.start]  # bytearray drops a prefix without copying the rest
            self.start = keep
        if self.held is not None and self._ahead() <= READ_AHEAD:
            held, self.held = self.held, None
            held.callback(None)
        for d, result in ready:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        if self.retired and not self.waiting:
            self.cancel()


@implementer(ISFTPFile)
class _ReadFile:
    """A file opened for reading: answers reads from streams of the version it opened."""

    def __init__(self, server: SFTPServer, path: str, stat: Stat) -> None:
        self.server = server
        self.path = path
        self.stat = stat
        self.streams: list[_Stream] = []

    def readChunk(self, offset: int, length: int) -> defer.Deferred:
        length = min(length, MAX_READ)
        if offset >= self.stat.size or length <= 0:
            return defer.fail(EOFError())
        stream = next((s for s in self.streams if s.accepts(offset)), None)
        if stream is None:
            stream = _Stream(self.server.fs, self.path, offset, self.stat)
            for old in self.streams:
                old.retire()
            self.streams = [s for s in self.streams if not s.cancelled] + [stream]
        return self.server.guard(stream.read(offset, length))

    def writeChunk(self, offset: int, data: bytes) -> defer.Deferred:
        return defer.fail(SFTPError(FX_PERMISSION_DENIED, f"{self.path}: not opened for writing"))

    def getAttrs(self) -> dict[str, int]:
        return _attrs(self.stat)

    def setAttrs(self, attrs: dict[str, Any]) -> defer.Deferred:
        return self.server.setAttrs(self.path.encode("utf-8"), attrs)

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        streams, self.streams = self.streams, []
        for s in streams:
            s.cancel()


# -- writing -------------------------------------------------------------------------------------


class _SpoolSource:
    """The spool, from its start, as the Source ``fs.write_from`` streams into the tree."""

    def __init__(self, spool: IO[bytes]) -> None:
        self.spool = spool
        spool.seek(0)

    def next(self) -> defer.Deferred:
        return defer.succeed(self.spool.read(COMMIT_CHUNK))


class _SpoolSink:
    """Appends bytes of the file's old content to the spool (see :meth:`_WriteFile._fill`)."""

    def __init__(self, spool: IO[bytes], path: str, version: Stat) -> None:
        self.spool = spool
        self.path = path
        self.version = version
        self.changed = False

    def opened(self, where: dict[str, Any]) -> None:
        stat = where.get("stat")
        self.changed = stat is not None and not _same_version(Stat.from_dict(stat), self.version)

    def _replaced(self) -> defer.Deferred:
        return defer.fail(
            SFTPError(FX_FAILURE, f"{self.path}: another writer replaced it while it was open; nothing was written")
        )

    def write(self, data: bytes) -> defer.Deferred:
        if self.changed:
            return self._replaced()
        self.spool.seek(0, os.SEEK_END)
        self.spool.write(data)
        return defer.succeed(None)

    def finish(self) -> defer.Deferred:
        if self.changed:
            return self._replaced()
        return defer.succeed({})

    def abort(self) -> None:
        pass


@implementer(ISFTPFile)
class _WriteFile:
    """A file opened for writing: written at offsets into the spool, committed to the tree when closed.

    Opened without truncation, the file's old content is not copied at
    once: the spool holds the file from offset 0 up to its own length, and
    the old bytes beyond that (up to ``old_end``) are fetched from the tree
    only when something needs them: a write or read past the spool, or the
    close.  ``scp`` (which opens without truncating, writes the whole file
    from 0 and then sets its size) therefore never fetches the old file.
    Operations run one after another, as a fetch may be under way.
    """

    def __init__(self, server: SFTPServer, path: str, flags: int, stat: Stat | None, dirty: bool) -> None:
        self.server = server
        self.path = path
        self.flags = flags
        #: the entry when it was opened (None: it is created at the close)
        self.stat = stat
        self.append = bool(flags & FXF_APPEND) and not flags & FXF_TRUNC and stat is not None
        keep_old = stat is not None and not flags & FXF_TRUNC
        #: append: the size the file had (the spool holds only what is added)
        self.base = stat.size if self.append and stat is not None else 0
        #: otherwise: where the old content still wanted ends (bytes past the spool are fetched when needed)
        self.old_end = stat.size if keep_old and not self.append and stat is not None else 0
        self.spool: IO[bytes] = cast(IO[bytes], tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY))
        #: something to commit at the close (truncated, created, written)
        self.dirty = dirty
        #: permission bits to give the file once committed
        self.perm: int | None = None
        self.closing: defer.Deferred | None = None
        #: why the commit failed (a second close says so again)
        self.failed: Failure | None = None
        self.committed = False
        self.discarded = False
        self._queue: defer.Deferred = defer.succeed(None)

    def _serial(self, op: Callable[[], Any]) -> defer.Deferred:
        """Run *op* once the operations before it are done; fires with its result."""
        result: defer.Deferred = defer.Deferred()

        def run(_: Any) -> defer.Deferred:
            done = defer.maybeDeferred(op)
            done.addBoth(lambda outcome: (result.errback if isinstance(outcome, Failure) else result.callback)(outcome))
            return done.addErrback(lambda _: None)  # one failure does not stop the ones after it

        self._queue.addCallback(run)
        return result

    def _size(self) -> int:
        self.spool.seek(0, os.SEEK_END)
        return self.spool.tell()

    def _fill(self, upto: int) -> defer.Deferred:
        """Fetch the old content from the end of the spool up to *upto* (at most ``old_end``) into the spool."""
        size = self._size()
        upto = min(upto, self.old_end)
        if upto <= size or self.stat is None:
            return defer.succeed(None)
        sink = _SpoolSink(self.spool, self.path, self.stat)
        return self.server.fs.read_into(self.path, sink, offset=size, length=upto - size, on_open=sink.opened)

    def _open(self) -> None:
        if self.closing is not None or self.discarded:
            raise SFTPError(FX_FAILURE, f"{self.path}: the file is closed")

    def readChunk(self, offset: int, length: int) -> defer.Deferred:
        if not self.flags & FXF_READ:
            return defer.fail(SFTPError(FX_PERMISSION_DENIED, f"{self.path}: not opened for reading"))
        if self.append:
            return defer.fail(SFTPError(FX_OP_UNSUPPORTED, f"{self.path}: reading a file opened to append"))
        length = min(length, MAX_READ)

        async def read() -> bytes:
            self._open()
            await self._fill(offset + length)
            self.spool.seek(offset)
            data = self.spool.read(length)
            if not data:
                raise EOFError()
            return data

        return self.server.guard(self._serial(lambda: defer.Deferred.fromCoroutine(read())))

    def writeChunk(self, offset: int, data: bytes) -> defer.Deferred:
        async def write() -> None:
            self._open()
            size = self._size()
            if self.append:
                at = size  # every write goes to the end (SFTP's APPEND)
            elif offset > max(size, self.old_end) + MAX_HOLE:
                raise SFTPError(FX_FAILURE, f"{self.path}: a write more than {MAX_HOLE // MiB} MiB past the end")
            else:
                at = offset
                await self._fill(at)  # the old bytes before it, if it starts past the spool
            if at + len(data) > SPOOL_MEMORY:
                # to disk before a seek past the end: an in-memory hole would be real zeros (no-op once there)
                cast(Any, self.spool).rollover()
            self.spool.seek(at)
            self.spool.write(data)
            self.dirty = True

        return self.server.guard(self._serial(lambda: defer.Deferred.fromCoroutine(write())))

    def getAttrs(self) -> defer.Deferred:
        def attrs() -> dict[str, int]:
            found = _attrs(self.stat) if self.stat is not None else {"permissions": S_IFREG | 0o644}
            found["size"] = self.base + self._size() if self.append else max(self._size(), self.old_end)
            if self.perm is not None:
                found["permissions"] = S_IFREG | self.perm
            return found

        return self._serial(attrs)

    def setAttrs(self, attrs: dict[str, Any]) -> defer.Deferred:
        async def change() -> None:
            self.server.check_attrs(self.path, attrs)
            if "size" in attrs:
                if self.append:
                    raise SFTPError(FX_OP_UNSUPPORTED, f"{self.path}: truncating a file opened to append")
                self._open()
                size = int(attrs["size"])
                await self._fill(size)
                self.old_end = min(self.old_end, size)
                if size > self._size():
                    cast(Any, self.spool).rollover()  # a file on disk grows with zeros; memory would not
                self.spool.truncate(size)
                self.dirty = True
            if _perm(attrs) is not None:
                self.perm = _perm(attrs)

        return self.server.guard(self._serial(lambda: defer.Deferred.fromCoroutine(change())))

    def close(self) -> defer.Deferred:
        """Commit the spool as the file's new content (then the asked-for mode); fires when it is in the tree.

        conch keeps a handle whose close failed, so a client may close it
        again: it is told the same failure, never a success.
        """
        if self.failed is not None:
            return defer.fail(self.failed)
        if self.committed:
            return defer.succeed(None)
        if self.closing is not None:
            return defer.fail(SFTPError(FX_FAILURE, f"{self.path}: already being closed"))
        self.closing = self._serial(lambda: defer.Deferred.fromCoroutine(self._commit()))
        return self.closing.addBoth(self._release)

    async def _commit(self) -> None:
        fs = self.server.fs
        if self.dirty:
            await self._fill(self.old_end)
            mode = "append" if self.append else "truncate"
            await fs.write_from(self.path, _SpoolSource(self.spool), mode)
        if self.perm is not None:
            await fs.chmod(self.path, self.perm)

    def _release(self, result: Any) -> Any:
        self.spool.close()
        if isinstance(result, Failure):
            self.failed = result
        else:
            self.committed = True
        return result

    def abort(self) -> None:
        """The connection went before the close: nothing is committed (a close under way goes on)."""
        if self.closing is None and not self.discarded:
            self.discarded = True
            self.spool.close()
            if self.dirty:
                log.info("sftp: discarded an unfinished upload of {path}", path=self.path)


# -- the server ------------------------------------------------------------------------------------


@implementer(ISFTPServer)
class SFTPServer:
    """The ``ISFTPServer`` of one SFTP session: the tree through *fs* (a client acting for one user).

    *home* is where relative paths start; *ready*, when given, fires once
    the home exists (made at the first login): requests wait for it.
    """

    def __init__(self, fs: Any, home: str, ready: defer.Deferred | None = None, avatar: Any = None) -> None:
        self.fs = fs
        self.home = home
        self.avatar = avatar
        self._waiting: list[defer.Deferred] | None = None
        if ready is not None:
            self._waiting = []
            ready.addBoth(self._ready)

    def _ready(self, _: Any) -> None:
        waiting, self._waiting = self._waiting or [], None
        for d in waiting:
            d.callback(None)

    def _run(self, work: Callable[[], Coroutine[Any, Any, Any]]) -> defer.Deferred:
        """Run *work* once the session is ready; its errors become SFTP statuses."""
        if self._waiting is None:
            return self.guard(defer.Deferred.fromCoroutine(work()))
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return self.guard(d.addCallback(lambda _: defer.Deferred.fromCoroutine(work())))

    def guard(self, d: defer.Deferred) -> defer.Deferred:
        return d.addErrback(self._translate)

    def _translate(self, failure: Failure) -> Failure:
        error = sftp_error(failure.value)
        if error is None:
            log.failure("sftp: a request failed unexpectedly", failure)
            error = SFTPError(FX_FAILURE, "internal error (the runtime's log says more)")
        return Failure(error)

    def path(self, name: bytes) -> str:
        """A client's path (UTF-8, relative to the home) as a normalised tree path."""
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidPath(repr(name)[2:-1], "not valid UTF-8") from None
        return paths.normalise(text or ".", self.home)

    async def _stat_or_none(self, path: str) -> Stat | None:
        try:
            return cast(Stat, await self.fs.stat(path))
        except NotFound:
            return None

    def check_attrs(self, path: str, attrs: dict[str, Any]) -> None:
        """Refuse what cannot be set: owners by number."""
        if "uid" in attrs or "gid" in attrs:
            raise SFTPError(
                FX_OP_UNSUPPORTED, f"{path}: owners are user names in OneOS; use 'chown USER PATH' in the shell"
            )

    # ISFTPServer
    def gotVersion(self, otherVersion: int, extData: dict[bytes, bytes]) -> dict[bytes, bytes]:
        return {}

    def openFile(self, filename: bytes, flags: int, attrs: dict[str, Any]) -> defer.Deferred:
        async def work() -> Any:
            path = self.path(filename)
            if flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC):
                return await self._open_write(path, flags, attrs)
            st = await self.fs.stat(path)
            if st.is_dir:
                raise IsADirectory(path)
            await self.fs.access(path, "r")
            return _ReadFile(self, path, st)

        return self._run(work)

    async def _open_write(self, path: str, flags: int, attrs: dict[str, Any]) -> _WriteFile:
        st = await self._stat_or_none(path)
        if st is not None and st.is_dir:
            raise IsADirectory(path)
        if st is None and not flags & FXF_CREAT:
            raise NotFound(path)
        if st is not None and flags & FXF_CREAT and flags & FXF_EXCL:
            raise SFTPError(FX_FAILURE, f"{path}: file exists")
        await self.fs.access(path, "w")
        if st is not None and flags & FXF_READ:
            await self.fs.access(path, "r")
        created = st is None
        if created and flags & FXF_EXCL:
            # exclusive: claim the name now (atomically in the service), as open(O_EXCL) would
            st = await self.fs.write_small(path, b"", exclusive=True)
        handle = _WriteFile(self, path, flags, st, dirty=created or bool(flags & FXF_TRUNC))
        perm = _perm(attrs)
        if created and perm is not None:
            handle.perm = perm & ~UMASK
        return handle

    def removeFile(self, filename: bytes) -> defer.Deferred:
        async def work() -> None:
            path = self.path(filename)
            if (await self.fs.stat(path)).is_dir:
                raise IsADirectory(path, "remove a directory with rmdir")
            await self.fs.remove(path)

        return self._run(work)

    def renameFile(self, oldpath: bytes, newpath: bytes) -> defer.Deferred:
        async def work() -> None:
            src, dst = self.path(oldpath), self.path(newpath)
            # SFTP v3: renaming onto an existing name is an error (the tree's rename would replace it)
            if src != dst and await self._stat_or_none(dst) is not None:
                raise SFTPError(FX_FAILURE, f"{dst}: file exists")
            await self.fs.rename(src, dst)

        return self._run(work)

    def makeDirectory(self, path: bytes, attrs: dict[str, Any]) -> defer.Deferred:
        async def work() -> None:
            target = self.path(path)
            perm = _perm(attrs)
            if perm is None:
                await self.fs.mkdir(target)
            else:
                await self.fs.mkdir(target, perm=perm & ~UMASK)

        return self._run(work)

    def removeDirectory(self, path: bytes) -> defer.Deferred:
        async def work() -> None:
            target = self.path(path)
            if not (await self.fs.stat(target)).is_dir:
                raise NotADirectory(target)
            await self.fs.remove(target)

        return self._run(work)

    def openDirectory(self, path: bytes) -> defer.Deferred:
        async def work() -> _Listing:
            return _Listing(await self.fs.listdir(self.path(path)))

        return self._run(work)

    def getAttrs(self, path: bytes, followLinks: bool) -> defer.Deferred:
        async def work() -> dict[str, int]:
            return _attrs(await self.fs.stat(self.path(path)))

        return self._run(work)

    def setAttrs(self, path: bytes, attrs: dict[str, Any]) -> defer.Deferred:
        async def work() -> None:
            target = self.path(path)
            self.check_attrs(target, attrs)
            st = await self.fs.stat(target)
            if "size" in attrs and int(attrs["size"]) != st.size:
                if int(attrs["size"]) != 0 or st.is_dir:
                    raise SFTPError(FX_OP_UNSUPPORTED, f"{target}: only truncating to 0 bytes is supported")
                await self.fs.write(target, b"")
            perm = _perm(attrs)
            if perm is not None and perm != st.mode:
                await self.fs.chmod(target, perm)
            # times: the tree keeps its own (accepted and ignored, so 'put -p' works)

        return self._run(work)

    def readLink(self, path: bytes) -> defer.Deferred:
        return defer.fail(NotImplementedError("the OneOS tree has no symbolic links"))

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> defer.Deferred:
        return defer.fail(NotImplementedError("the OneOS tree has no symbolic links"))

    def realPath(self, path: bytes) -> defer.Deferred:
        async def work() -> bytes:
            return self.path(path).encode("utf-8")

        return self._run(work)

    def extendedRequest(self, extendedName: bytes, extendedData: bytes) -> defer.Deferred:
        name = extendedName.decode("utf-8", "replace")
        return defer.fail(NotImplementedError(f"the SFTP extension {name!r} is not supported"))


class SFTPSubsystem(filetransfer.FileTransferServer):
    """The ``sftp`` subsystem of a shell login (conch calls it with the avatar: ``user``, ``shell``).

    Differences from conch's server: the ISFTPServer is built here (no
    global adapter); a connection that drops discards its unfinished
    uploads instead of closing (committing) them; statuses carry UTF-8
    messages (conch's are ASCII only); a READ or WRITE on an unknown handle
    is answered (conch's server fails to); conch's per-packet info logging
    is kept out of the runtime's log.
    """

    _log = Logger(namespace="oneos.shell.sftp.protocol", observer=_WarningsOnly())

    def __init__(self, data: bytes | None = None, avatar: Any = None, server: SFTPServer | None = None) -> None:
        filetransfer.FileTransferBase.__init__(self)
        self.client = server if server is not None else self.for_login(avatar)
        self.openFiles: dict[bytes, Any] = {}
        self.openDirs: dict[bytes, Any] = {}

    @staticmethod
    def for_login(avatar: Any) -> SFTPServer:
        """The user's tree: the user's file-system client, relative paths from the home made at first login."""
        shell: ShellService = avatar.shell
        user: str = avatar.user
        login = _Login(Session(user, home=paths.join("/home", user)))
        gate: defer.Deferred = defer.Deferred()
        server = SFTPServer(shell.grid.for_user(user).fs, login.session.home, ready=gate, avatar=avatar)

        def opened(_: Any) -> None:
            server.home = login.session.home  # "/" when the home could not be made
            log.info("sftp: {user} started a session (home {home})", user=user, home=server.home)

        shell.prepare(cast(Any, login)).addBoth(opened).addBoth(gate.callback)  # prepare() uses only .session
        return server

    def connectionLost(self, reason: Any = None) -> None:
        filetransfer.FileTransferBase.connectionLost(self, reason)
        files, self.openFiles = self.openFiles, {}
        for handle in files.values():
            handle.abort()
        dirs, self.openDirs = self.openDirs, {}
        for listing, _ in dirs.values():
            listing.close()

    def _ebRead(self, reason: Failure, requestId: bytes) -> None:
        """A READ on an unknown handle: conch calls this but does not define it (the client would wait forever)."""
        self._ebStatus(reason, requestId, b"read failed")

    def _ebWrite(self, reason: Failure, requestId: bytes) -> None:
        """A WRITE on an unknown handle (as :meth:`_ebRead`)."""
        self._ebStatus(reason, requestId, b"write failed")

    def _ebStatus(self, reason: Failure, requestId: bytes, msg: bytes = b"request failed") -> None:
        error = reason.value
        if isinstance(error, SFTPError):
            self._sendStatus(requestId, error.code, str(error.message).encode("utf-8", "replace"))
        elif isinstance(error, EOFError):
            self._sendStatus(requestId, filetransfer.FX_EOF, b"end of file")
        elif isinstance(error, NotImplementedError):
            text = str(error.args[0]) if error.args else "not supported"
            self._sendStatus(requestId, FX_OP_UNSUPPORTED, text.encode("utf-8", "replace"))
        elif isinstance(error, KeyError):  # a handle this session never gave (or already closed)
            self._sendStatus(requestId, FX_FAILURE, b"no such handle")
        elif isinstance(error, OSError) and error.errno == errno.ENOENT:
            self._sendStatus(requestId, FX_NO_SUCH_FILE, b"no such handle")
        else:
            translated = sftp_error(error)
            if translated is None:
                log.failure("sftp: a request failed unexpectedly", reason)
                translated = SFTPError(FX_FAILURE, "internal error (the runtime's log says more)")
            self._ebStatus(Failure(translated), requestId, msg)


class _Login:
    """What :meth:`ShellService.prepare` needs of a login (its session): an SFTP session has no interpreter."""

    def __init__(self, session: Session) -> None:
        self.session = session
