"""The file-store interface of OneOS and the logic both backends share.

One file tree is shared by every runtime.  A store keeps it; two backends
implement the same interface and pass one contract test suite:

- :mod:`oneos.fs.sqlite_store` - ``sqlite:///abs/path.db``: embedded, one machine;
- :mod:`oneos.fs.mongo_store` - ``mongodb://host:port/db``: shared by a grid.

This module holds the contract (:class:`FileStore`, :class:`Stat`), the
streaming :class:`Writer` and :class:`ChunkReader`, and :class:`BaseStore`,
which the backends subclass; it imports neither backend.  Next to it:
:mod:`oneos.fs.planning` (the pure chunk and segment planning),
:mod:`oneos.fs.urls` (store URLs) and :mod:`oneos.fs.opening`
(:func:`~oneos.fs.opening.open_store`, which chooses the backend).

Every method returns a Twisted ``Deferred``, so the file-system kernel
service can drive a store from the reactor thread and answer RPCs while
other requests are in flight.  Content is never held whole: writes go
through a :class:`Writer` (``write`` chunk by chunk, then ``commit``) and
reads through a :class:`ChunkReader`, each holding a few chunks at most.

The content model, shared by both backends (see docs/filesystem.md):

- content is written in *chunks* of ``chunk_size`` bytes (256 KiB by default,
  fixed per store when it is created) under a fresh *content id*;
- a file is a list of *segments* ``(content, offset, length)``; a truncating
  write gives one segment, an append adds one (small tails are merged so the
  list stays short);
- chunks are written first, invisible; ``commit`` swaps the file's segment
  list in one atomic step, so readers see the old file or the new one, never a
  half; chunks no longer referenced are deleted right after, and pending
  chunks of writers that died are collected by :meth:`FileStore.collect_garbage`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, runtime_checkable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from oneos.fs import paths
from oneos.fs.errors import (
    FileChanged,
    FSError,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
)
from oneos.fs.planning import CommitPlan, Segment, batch_pieces, plan_append, plan_read

log = Logger()

KiB = 1024
MiB = 1024 * KiB

#: Default chunk size: large enough that per-chunk overhead (a row, a
#: document, a round trip) is small against the data, small enough that a
#: few chunks in memory per open file do not matter.
CHUNK_SIZE = 256 * KiB
#: Chunks fetched per round trip when reading, and how many chunk writes a
#: writer keeps in flight; memory per open file stays a few chunks.
READ_BATCH = 4
WRITE_WINDOW = 4
#: A pending upload refreshes its timestamp this often, so garbage
#: collection can tell a slow writer from a dead one.
TOUCH_INTERVAL = 60.0
#: Pending uploads untouched for longer are taken to be dead writers' leftovers.
STALE_UPLOAD = 3600.0
#: Free disk space (bytes) a SQLite store keeps for itself: content that would eat into it is
#: refused with NoSpace, so there is always room to delete (a delete writes to the journal too).
DISK_RESERVE = 8 * MiB

DEFAULT_OWNER = "root"
FILE_PERM = 0o644
DIR_PERM = 0o755

#: Bits an entry's mode may hold: setuid, setgid, sticky and the rwx triplets.
PERM_MASK = 0o7777
#: Longest owner name a store keeps (shell user names are at most 32 characters).
MAX_OWNER = 64


def check_perm(path: str | None, perm: Any) -> int:
    """*perm* if it is permission bits (an int in 0..0o7777), else InvalidArgument."""
    if isinstance(perm, bool) or not isinstance(perm, int) or not 0 <= perm <= PERM_MASK:
        raise InvalidArgument(path, f"a mode is permission bits between 0 and 0o7777, not {perm!r}")
    return perm


def check_owner(path: str | None, owner: Any) -> str:
    """*owner* if it can be an owner's name (1..64 printable characters, no spaces), else InvalidArgument."""
    if (
        not isinstance(owner, str)
        or not owner
        or len(owner) > MAX_OWNER
        or not owner.isprintable()
        or any(c.isspace() for c in owner)
        or "/" in owner
    ):
        raise InvalidArgument(path, f"{owner!r} is not a user name")
    return owner


class NoSpace(FSError):
    """The store's disk is full (or would be, but for the space kept to clean up)."""

    code = "ENOSPC"
    description = "no space left on the file store"


Kind = Literal["file", "dir"]
WriteMode = Literal["truncate", "append"]
WRITE_MODES = ("truncate", "append")


@dataclass(frozen=True)
class Stat:
    """What ``stat`` says about one entry.

    ``ctime`` is when the entry was created and ``mtime`` when its content
    (or, for a directory, its list of entries) last changed; both are Unix
    times in seconds.  ``mode`` holds permission bits only (``0o644``).
    """

    path: str
    kind: Kind
    size: int
    mode: int
    owner: str
    ctime: float
    mtime: float

    @property
    def name(self) -> str:
        return paths.basename(self.path)

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for RPC replies.

        The fields are flat and immutable, so ``__dict__`` is what
        ``dataclasses.asdict`` builds, for a thirtieth of its cost (it copies
        recursively): every answer that creates or changes an entry carries one.
        """
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stat:
        return cls(
            path=str(data["path"]),
            kind="dir" if data["kind"] == "dir" else "file",
            size=int(data["size"]),
            mode=int(data["mode"]),
            owner=str(data["owner"]),
            ctime=float(data["ctime"]),
            mtime=float(data["mtime"]),
        )


# --- the interface ----------------------------------------------------------


@runtime_checkable
class FileStore(Protocol):
    """A POSIX-like file tree.  Every method returns a Deferred.

    Paths are normalised with :func:`oneos.fs.paths.normalise` (absolute,
    ``..`` resolved) before use; errors are :mod:`oneos.fs.errors` classes.
    """

    url: str
    chunk_size: int

    def stat(self, path: str) -> Deferred[Stat]: ...
    def exists(self, path: str) -> Deferred[bool]: ...
    def listdir(self, path: str) -> Deferred[list[str]]: ...
    def scandir(self, path: str) -> Deferred[list[Stat]]: ...
    def mkdir(
        self,
        path: str,
        *,
        parents: bool = False,
        exist_ok: bool = False,
        owner: str = DEFAULT_OWNER,
        perm: int = DIR_PERM,
    ) -> Deferred[Stat]: ...
    def read_chunks(self, path: str, offset: int = 0, length: int | None = None) -> Deferred[ChunkReader]: ...
    def read(self, path: str, offset: int = 0, length: int | None = None) -> Deferred[bytes]: ...
    def open_write(
        self, path: str, mode: WriteMode = "truncate", *, owner: str = DEFAULT_OWNER, perm: int = FILE_PERM
    ) -> Deferred[Writer]: ...
    def write(
        self, path: str, data: bytes, mode: WriteMode = "truncate", *, owner: str = DEFAULT_OWNER, perm: int = FILE_PERM
    ) -> Deferred[Stat]: ...
    def remove(self, path: str, *, recursive: bool = False) -> Deferred[None]: ...
    def rename(self, src: str, dst: str) -> Deferred[Stat]: ...
    def chmod(self, path: str, perm: int) -> Deferred[Stat]: ...
    def chown(self, path: str, owner: str) -> Deferred[Stat]: ...
    def copy(self, src: str, dst: str, *, recursive: bool = False, owner: str | None = None) -> Deferred[Stat]: ...
    def glob(self, pattern: str, cwd: str = "/") -> Deferred[list[str]]: ...
    def usage(self) -> Deferred[dict[str, int]]: ...
    def collect_garbage(self, stale_after: float = STALE_UPLOAD, *, full: bool = False) -> Deferred[int]: ...
    def wipe(self) -> Deferred[None]: ...
    def close(self) -> Deferred[None]: ...


#: Entries one glob may visit before it is refused (see FileStore.glob).
GLOB_LIMIT = 100_000


def deferred_method(fn: Callable[..., Any]) -> Callable[..., Deferred[Any]]:
    """Expose an ``async def`` method as a Deferred-returning one.

    The store is written with ``async``/``await`` for readability, but its
    callers (services, RPC handlers, ``inlineCallbacks`` code) expect
    Deferreds, so every public method returns one.
    """

    def wrapper(*args: Any, **kwargs: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(fn(*args, **kwargs))

    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


class ChunkReader:
    """Streams a byte range of a file, a chunk at a time.

    ``read_chunk()`` gives the next piece (at most ``chunk_size`` bytes) or
    ``b""`` at the end; ``async for chunk in reader`` works too, and
    :meth:`pump` feeds a sink with back-pressure.  At most two batches of
    ``READ_BATCH`` chunks are held (the one being handed out and the one
    prefetched), whatever the file's size.

    The reader works on the version of the file it opened; if that version is
    replaced and its chunks removed mid-read it fails with
    :class:`~oneos.fs.errors.FileChanged` rather than mixing versions.
    """

    def __init__(
        self, store: BaseStore, stat: Stat, segments: Sequence[Segment], offset: int, length: int | None
    ) -> None:
        self.store = store
        self.stat = stat
        self.path = stat.path
        available = max(0, stat.size - offset)
        self.length = available if length is None else min(length, available)
        self._batches = batch_pieces(plan_read(segments, store.chunk_size, offset, self.length), READ_BATCH)
        self._ready: list[bytes] = []
        self._prefetch: Deferred[list[bytes]] | None = None
        self._lock = defer.DeferredLock()
        self._closed = False
        self.delivered = 0

    def _fetch_next(self) -> Deferred[list[bytes]] | None:
        run = next(self._batches, None)
        if run is None:
            return None
        first, last = run[0].n, run[-1].n

        def cut(chunks: list[bytes]) -> list[bytes]:
            return [chunk[p.lo : p.hi] for chunk, p in zip(chunks, run, strict=False)]

        d = self.store._load_chunks(self.path, run[0].content, first, last)
        return d.addCallback(cut)

    async def _read_chunk(self) -> bytes:
        if self._closed:
            return b""
        if not self._ready:
            pending = self._prefetch if self._prefetch is not None else self._fetch_next()
            self._prefetch = None
            if pending is None:
                return b""
            self._ready = list(await pending)
            self._prefetch = self._fetch_next()
        chunk = self._ready.pop(0)
        self.delivered += len(chunk)
        return chunk

    def read_chunk(self) -> Deferred[bytes]:
        """The next chunk of data, or ``b""`` once the range is exhausted."""
        return self._lock.run(lambda: Deferred.fromCoroutine(self._read_chunk()))

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    @deferred_method
    async def pump(self, sink: Callable[[bytes], Any]) -> int:
        """Call ``sink(chunk)`` for every chunk, waiting on any Deferred it returns; return the byte count."""
        total = 0
        async for chunk in self:
            result = sink(chunk)
            if isinstance(result, Deferred):
                await result
            total += len(chunk)
        return total

    def close(self) -> None:
        """Stop reading; drops what is buffered."""
        self._closed = True
        self._ready = []
        if self._prefetch is not None:
            self._prefetch.addErrback(lambda _: None)
            self._prefetch = None


class Writer:
    """One streamed write: ``write`` data, then ``commit`` (or ``abort``).

    Nothing written is visible until ``commit`` fires; then the whole new
    content replaces (truncate) or extends (append) the file in one atomic
    step.  ``write`` returns a Deferred that fires once the data is accepted;
    waiting for it before writing more keeps memory to ``WRITE_WINDOW + 1``
    chunks.  A writer that is never committed (a crash, a lost connection)
    leaves only invisible pending chunks, removed by garbage collection.
    """

    def __init__(
        self,
        store: BaseStore,
        path: str,
        mode: WriteMode,
        owner: str,
        perm: int,
        base: tuple[Segment, ...] | None,
        keep: tuple[Segment, ...],
    ) -> None:
        self.store = store
        self.path = path
        self.mode = mode
        self.owner = owner
        self.perm = perm
        self._base = base
        self._keep = keep
        self._skip = 0
        self._buffer = bytearray()
        self._chunks_sent = 0
        self._in_flight = 0
        self._upload_lock = defer.DeferredLock()
        self._upload_started = False
        self._content: Any = None
        self._waiters: list[Deferred[None]] = []
        self._drained: list[Deferred[None]] = []
        self._failure: BaseException | None = None
        self._state = "open"
        self._last_touch = store.clock.seconds()
        #: Bytes handed to ``write`` (including an absorbed tail).
        self.size = 0
        #: Most bytes buffered or in flight at once (tests check it stays bounded).
        self.peak_buffered = 0

    # -- writing ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"writer for {self.path} is already {self._state}")

    def write(self, data: bytes) -> Deferred[None]:
        """Add *data*; the Deferred fires when the writer can take more."""
        try:
            self._check_open()
        except ValueError as e:
            return defer.fail(e)
        if self._failure is not None:
            return defer.fail(self._failure)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return defer.fail(TypeError(f"write() takes bytes, not {type(data).__name__}"))
        self._buffer += data
        self.size += len(data)
        self._pump()
        if self._accepting():
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def _accepting(self) -> bool:
        return len(self._buffer) < self.store.chunk_size and self._in_flight < WRITE_WINDOW

    def _note_peak(self) -> None:
        held = len(self._buffer) + self._in_flight * self.store.chunk_size
        self.peak_buffered = max(self.peak_buffered, held)

    def _pump(self, final: bool = False) -> None:
        size = self.store.chunk_size
        self._note_peak()
        while (
            self._failure is None
            and self._in_flight < WRITE_WINDOW
            and (len(self._buffer) >= size or (final and self._buffer))
        ):
            piece = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._send(self._chunks_sent, piece)
            self._chunks_sent += 1

    async def _get_content(self) -> Any:
        """The pending content id, registering the upload on first use (once)."""
        if self._content is None:
            await self._upload_lock.acquire()
            try:
                if self._content is None:
                    self._content = await self.store._begin_upload(self.path)
                    self._upload_started = True
            finally:
                self._upload_lock.release()
        return self._content

    def _send(self, n: int, piece: bytes) -> None:
        self._in_flight += 1
        self._note_peak()

        async def put() -> None:
            content = await self._get_content()
            await self.store._put_chunk(content, n, piece)
            now = self.store.clock.seconds()
            if now - self._last_touch > TOUCH_INTERVAL:
                self._last_touch = now
                await self.store._touch_upload(content)

        def done(result: Any) -> None:
            self._in_flight -= 1
            if isinstance(result, defer.Failure):
                if self._failure is None:
                    error = result.value
                    if isinstance(error, NoSpace) and error.path is None:
                        error = NoSpace(self.path, error.detail)
                    self._failure = error
            self._after_send()

        Deferred.fromCoroutine(put()).addBoth(done)

    def _after_send(self) -> None:
        if self._failure is not None:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.errback(self._failure)
        else:
            self._pump(final=self._state == "committing")
            if self._accepting():
                waiters, self._waiters = self._waiters, []
                for w in waiters:
                    w.callback(None)
        if self._in_flight == 0:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def _wait_drained(self) -> Deferred[None]:
        if self._in_flight == 0:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    @deferred_method
    async def flush(self) -> None:
        """Wait until every full chunk written so far is stored (the tail stays buffered).

        Not needed for correctness - ``commit`` does it - but lets a caller
        pace itself on storage, and keeps a long write's pending upload
        visibly fresh to garbage collection.
        """
        self._check_open()
        self._pump()
        while self._in_flight or (len(self._buffer) >= self.store.chunk_size and self._failure is None):
            await self._wait_drained()
            self._pump()
        if self._failure is not None:
            raise self._failure

    # -- finishing -------------------------------------------------------------

    @deferred_method
    async def commit(self) -> Stat:
        """Make everything written visible at once; returns the file's new Stat."""
        self._check_open()
        self._state = "committing"
        try:
            if (
                self._failure is None
                and not self._upload_started
                and self._in_flight == 0
                and len(self._buffer) < self.store.chunk_size
            ):
                plan = self._plan(content=None)
                stat = await self.store._commit_small(plan, bytes(self._buffer))
            else:
                self._pump(final=True)
                while self._in_flight or (self._buffer and self._failure is None):
                    await self._wait_drained()
                    self._pump(final=True)
                if self._failure is not None:
                    raise self._failure
                content = await self._get_content()
                stat = await self.store._commit_upload(self._plan(content))
        except BaseException:
            self._state = "failed"
            await self._discard()
            raise
        self._state = "committed"
        self._buffer = bytearray()
        return stat

    def _plan(self, content: Any) -> CommitPlan:
        return CommitPlan(
            path=self.path,
            content=content,
            size=self.size,
            append=self.mode == "append",
            base=self._base,
            keep=self._keep,
            skip=self._skip,
            owner=self.owner,
            perm=self.perm,
        )

    def keep_alive(self) -> Deferred[None]:
        """Refresh the pending upload's timestamp, so garbage collection leaves a slow but live writer alone."""
        if self._content is None or self._state not in ("open", "committing"):
            return defer.succeed(None)
        self._last_touch = self.store.clock.seconds()
        return self.store._touch_upload(self._content)

    async def _discard(self) -> None:
        self._buffer = bytearray()
        while self._in_flight:
            await self._wait_drained()
        if self._content is not None:
            await self.store._abort_quietly(self._content, self.path)

    @deferred_method
    async def abort(self) -> None:
        """Drop everything written; the file is left as it was."""
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        await self._discard()


# --- the shared base class --------------------------------------------------


class BaseStore:
    """Logic common to both backends, built on a few backend primitives.

    Backends implement the metadata operations (``stat``, ``scandir``,
    ``mkdir``, ``remove``, ``rename``, ...) and the content primitives below
    (``_node``, ``_load_chunks``, ``_begin_upload``, ``_put_chunk``,
    ``_commit_upload``, ...); reading, writing, copying and globbing are
    written once here on top of them.
    """

    url: str
    chunk_size: int
    clock: Any

    # -- backend primitives ------------------------------------------------

    def _node(self, path: str) -> Deferred[tuple[Stat, tuple[Segment, ...]]]:
        """Stat and segments of an existing entry (NotFound/NotADirectory otherwise)."""
        raise NotImplementedError

    def _prepare_write(self, path: str) -> Deferred[tuple[Stat | None, tuple[Segment, ...]]]:
        """Check *path* can be written (parent is a directory, path is not); its stat and segments if it exists."""
        raise NotImplementedError

    def _load_chunks(self, path: str, content: Any, first: int, last: int) -> Deferred[list[bytes]]:
        """Chunks ``first..last`` of *content*; FileChanged(path) if any is gone."""
        raise NotImplementedError

    def _begin_upload(self, path: str) -> Deferred[Any]:
        """Register a new pending content id (so a dead writer's chunks can be found)."""
        raise NotImplementedError

    def _put_chunk(self, content: Any, n: int, data: bytes) -> Deferred[None]:
        raise NotImplementedError

    def _touch_upload(self, content: Any) -> Deferred[None]:
        raise NotImplementedError

    def _commit_upload(self, plan: CommitPlan) -> Deferred[Stat]:
        """Atomically point the file at the new content; delete released chunks."""
        raise NotImplementedError

    def _abort_upload(self, content: Any) -> Deferred[None]:
        raise NotImplementedError

    def _set_attributes(self, path: str, changes: dict[str, Any]) -> Deferred[Stat]:
        """Set an existing entry's ``mode`` and/or ``owner`` (already checked) in one atomic step; its new Stat."""
        raise NotImplementedError

    @deferred_method
    async def _commit_small(self, plan: CommitPlan, data: bytes) -> Stat:
        """Commit a write whose data all fits in one chunk (backends may do it in fewer steps)."""
        content = await self._begin_upload(plan.path)
        try:
            if data:
                await self._put_chunk(content, 0, data)
            return await self._commit_upload(replace(plan, content=content))
        except BaseException:
            await self._abort_quietly(content, plan.path)
            raise

    async def _abort_quietly(self, content: Any, path: str) -> None:
        """Drop a pending upload after a failure, without hiding that failure."""
        try:
            await self._abort_upload(content)
        except Exception as e:  # the store may be gone, or its disk full: retried by discard_leftovers
            log.warn("could not discard pending upload for {path} yet: {error}", path=path, error=e)
            self._leftovers()[content] = path

    def _leftovers(self) -> dict[Any, str]:
        """content id -> path of failed writes' uploads still to discard (backends need no __init__ for it)."""
        return self.__dict__.setdefault("_leftover_uploads", {})  # type: ignore[no-any-return]

    @property
    def leftovers(self) -> int:
        """Pending uploads of failed writes whose discard failed and waits to be retried."""
        return len(self._leftovers())

    @deferred_method
    async def discard_leftovers(self) -> int:
        """Retry discarding the pending uploads whose discard failed; returns how many went."""
        done = 0
        for content, path in list(self._leftovers().items()):
            try:
                await self._abort_upload(content)
            except Exception as e:
                log.debug("pending upload for {path} still not discarded: {error}", path=path, error=e)
                break  # the store is still unwell: the next round tries again
            self._leftovers().pop(content, None)
            done += 1
        return done

    # -- shared operations ---------------------------------------------------

    @deferred_method
    async def chmod(self, path: str, perm: int) -> Stat:
        """Set an entry's permission bits (``0o7777`` at most); its content, owner and times stay."""
        path = paths.normalise(path)
        return await self._set_attributes(path, {"mode": check_perm(path, perm)})

    @deferred_method
    async def chown(self, path: str, owner: str) -> Stat:
        """Give an entry to *owner*; its content, mode and times stay.  (Who may is the service's business.)"""
        path = paths.normalise(path)
        return await self._set_attributes(path, {"owner": check_owner(path, owner)})

    @deferred_method
    async def exists(self, path: str) -> bool:
        path = paths.normalise(path)
        try:
            await self.stat(path)  # type: ignore[attr-defined]
        except (NotFound, NotADirectory):
            return False
        return True

    @deferred_method
    async def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted."""
        return [s.name for s in await self.scandir(path)]  # type: ignore[attr-defined]

    @deferred_method
    async def read_chunks(self, path: str, offset: int = 0, length: int | None = None) -> ChunkReader:
        """A :class:`ChunkReader` over bytes ``[offset, offset+length)`` of a file."""
        path = paths.normalise(path)
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgument(path, "offset and length must not be negative")
        stat, segments = await self._node(path)
        if stat.is_dir:
            raise IsADirectory(path)
        return ChunkReader(self, stat, segments, offset, length)

    @deferred_method
    async def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes of a file (or a range of it), whole in memory: for small files."""
        reader = await self.read_chunks(path, offset, length)
        parts: list[bytes] = []
        async for chunk in reader:
            parts.append(chunk)
        return b"".join(parts)

    @deferred_method
    async def open_write(
        self, path: str, mode: WriteMode = "truncate", *, owner: str = DEFAULT_OWNER, perm: int = FILE_PERM
    ) -> Writer:
        """Start a streamed write; nothing is visible until the writer's ``commit``.

        A file that exists keeps its owner and mode; *owner* and *perm* apply
        to a file the commit creates.
        """
        path = paths.normalise(path)
        if mode not in WRITE_MODES:
            raise InvalidArgument(path, f"write mode must be one of {', '.join(WRITE_MODES)}, not {mode!r}")
        if path == paths.ROOT:
            raise IsADirectory(path)
        for _attempt in range(3):
            existing, segments = await self._prepare_write(path)
            if mode == "truncate":
                return Writer(self, path, mode, owner, perm, None, ())
            keep, absorb = plan_append(segments, self.chunk_size)
            writer = Writer(self, path, mode, owner, perm, tuple(segments) if existing else None, keep)
            try:
                for run in batch_pieces(plan_read(absorb, self.chunk_size), READ_BATCH):
                    chunks = await self._load_chunks(path, run[0].content, run[0].n, run[-1].n)
                    for chunk, piece in zip(chunks, run, strict=False):
                        await writer.write(chunk[piece.lo : piece.hi])
            except FileChanged:
                await writer.abort()
                log.debug("append to {path}: file changed while copying its tail; retrying", path=path)
                continue
            writer._skip = writer.size
            return writer
        raise FileChanged(path, "it kept changing while an append was being prepared")

    @deferred_method
    async def write(
        self, path: str, data: bytes, mode: WriteMode = "truncate", *, owner: str = DEFAULT_OWNER, perm: int = FILE_PERM
    ) -> Stat:
        """Write *data* (truncate or append) and commit."""
        if mode == "truncate" and len(data) < self.chunk_size:
            # One chunk at most: the commit checks the path itself, so skip
            # the separate look-up open_write does (a round trip on MongoDB).
            path = paths.normalise(path)
            if path == paths.ROOT:
                raise IsADirectory(path)
            plan = CommitPlan(path, None, len(data), False, None, (), 0, owner, perm)
            return await self._commit_small(plan, bytes(data))
        writer = await self.open_write(path, mode, owner=owner, perm=perm)
        view = memoryview(data)
        try:
            for start in range(0, len(view), self.chunk_size):
                await writer.write(view[start : start + self.chunk_size])
        except BaseException:
            await writer.abort()
            raise
        return await writer.commit()

    @deferred_method
    async def copy(self, src: str, dst: str, *, recursive: bool = False, owner: str | None = None) -> Stat:
        """Copy a file (streamed), or a directory tree when *recursive*.

        A file copy replaces an existing destination file; a directory copy
        needs a destination that does not exist.  Permission bits are kept;
        the owner is *owner* if given, else the source's.
        """
        src = paths.normalise(src)
        dst = paths.normalise(dst)
        s = await self.stat(src)  # type: ignore[attr-defined]
        if src == dst:
            raise InvalidArgument(dst, f"{src} and {dst} are the same file")
        if s.is_file:
            reader = await self.read_chunks(src)
            writer = await self.open_write(dst, owner=owner or s.owner, perm=s.mode)
            try:
                await reader.pump(writer.write)
            except BaseException:
                reader.close()
                await writer.abort()
                raise
            return await writer.commit()
        if not recursive:
            raise IsADirectory(src, "copying a directory needs recursive=True")
        if paths.is_within(dst, src):
            raise InvalidArgument(dst, f"cannot copy {src} into itself")
        top = await self.mkdir(dst, owner=owner or s.owner, perm=s.mode)  # type: ignore[attr-defined]
        for child in await self.scandir(src):  # type: ignore[attr-defined]
            await self.copy(child.path, paths.join(dst, child.name), recursive=True, owner=owner)
        return top

    @deferred_method
    async def glob(self, pattern: str, cwd: str = paths.ROOT) -> list[str]:
        """Paths matching a shell pattern (``*``, ``?``, ``[...]``, and ``**`` for any depth), sorted.

        As in a shell, wildcards do not match a leading ``.``.
        """
        components = paths.glob_parts(pattern, cwd)
        # (path, known to exist and be a directory?)
        found: list[tuple[str, bool]] = [(paths.ROOT, True)]
        budget = [GLOB_LIMIT]  # entries a pattern may visit: a runaway glob ends with an error, not a hog

        def spend(n: int) -> None:
            budget[0] -= n
            if budget[0] < 0:
                raise InvalidArgument(pattern, f"the pattern visits more than {GLOB_LIMIT} entries; narrow it")

        for i, comp in enumerate(components):
            last = i == len(components) - 1
            following: list[tuple[str, bool]] = []
            if comp == "**":
                for base, _ in found:
                    walked = await self._walk_dirs(base, include_files=last)
                    spend(len(walked))
                    following.extend(walked)
            elif paths.has_magic(comp):
                for base, _ in found:
                    try:
                        entries = await self.scandir(base)  # type: ignore[attr-defined]
                    except (NotFound, NotADirectory):
                        continue
                    spend(len(entries))
                    following.extend((e.path, e.is_dir) for e in entries if paths.match_name(e.name, comp))
            else:
                following = [(paths.join(base, comp), False) for base, _ in found]
            # '**/**' reaches a path many ways: keep each once (a known directory wins)
            merged: dict[str, bool] = {}
            for path, known in following:
                merged[path] = merged.get(path, False) or known
            found = list(merged.items())
        result = []
        for path, known in found:
            if known or await self.exists(path):
                result.append(path)
        return sorted(set(result))

    async def _walk_dirs(self, base: str, include_files: bool) -> list[tuple[str, bool]]:
        """*base* and every non-hidden directory below it (and files too, if asked)."""
        out: list[tuple[str, bool]] = []
        stack = [base]
        while stack:
            current = stack.pop()
            try:
                entries = await self.scandir(current)  # type: ignore[attr-defined]
            except (NotFound, NotADirectory):
                continue
            out.append((current, True))
            if len(out) > GLOB_LIMIT:
                raise InvalidArgument(
                    base, f"'**' below here visits more than {GLOB_LIMIT} entries; narrow the pattern"
                )
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir:
                    stack.append(e.path)
                elif include_files:
                    out.append((e.path, True))
        return out


__all__ = [
    "CHUNK_SIZE",
    "PERM_MASK",
    "BaseStore",
    "ChunkReader",
    "FileStore",
    "NoSpace",
    "Stat",
    "Writer",
]
