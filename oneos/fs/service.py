"""The file-system service: one tree for every runtime.

Runs on the runtime that serves the network's store (see
:mod:`oneos.runtime.netstore`: the store host for SQLite, the leader for a
shared MongoDB).  Metadata operations are pubsub RPCs on the ``fs`` target;
file content never rides the broker: ``read_open`` and ``write_open``
register a one-time token with this runtime's transfer server
(``oneos.transfer``) and the caller streams the bytes over TCP.

``/etc/oneos`` holds the kernel's own state (users, keys, the SSH host key)
so that every runtime serves the same users with the same host key: it is
refused to requests that do not say ``system=True``.  Until the bus
authenticates its clients this guards against mistakes, not attackers.

If the store cannot be reached the service keeps running, answers every
request with a plain ``EIO ... unreachable`` error, and retries opening it
with backoff until it comes back; a store that is lost while served (its
maintenance fails and so does a read) is closed and reopened the same way.

Uploads do not outlive their writers: a write that fails (the store's
error, a full disk, the stream broke, the writer aborted) discards its
chunks at once; one whose writer goes quiet for ``upload_timeout`` seconds
is discarded then; and every ``gc_interval`` seconds the service keeps its
live uploads fresh, retries discards that failed (a full disk) and collects
uploads left by writers that died with an earlier service.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

import base64

from oneos.errors import describe
from oneos.fs import paths
from oneos.fs.errors import AlreadyExists, FSError, InvalidArgument, PermissionDenied, StoreUnavailable
from oneos.fs.reset import ensure_tree
from oneos.fs.store import DEFAULT_OWNER, FileStore, Writer, open_store, redact
from oneos.pubsub.rpc import RPCServer
from oneos.transfer import TransferServer

log = Logger()

#: RPC target of the file-system service.
TARGET = "fs"
#: Seconds between maintenance rounds: keep live uploads fresh, retry failed discards, collect abandoned uploads.
GC_INTERVAL = 30.0
#: Seconds a write stream may stay silent before its upload is discarded.
UPLOAD_TIMEOUT = 60.0
#: The kernel's own state; only requests with ``system=True`` reach it.
SYSTEM_DIR = "/etc/oneos"
#: Largest content ``read_small``/``write_small`` carry inside an RPC message.
SMALL_LIMIT = 256 * 1024


def guard(system: bool, path: str, *, holding: bool = False, itself: bool = False) -> None:
    """Refuse a user request for a path in the kernel's area.

    *holding*: also refuse a directory that holds the area (removing,
    renaming or copying ``/etc`` would take it along).  *itself*: the area's
    own directory may be looked at (``stat``), not into.
    """
    if system:
        return
    path = paths.normalise(path)
    inside = paths.is_within(path, SYSTEM_DIR) and not (itself and path == SYSTEM_DIR)
    if inside or (holding and paths.is_within(SYSTEM_DIR, path)):
        raise PermissionDenied(path, f"{SYSTEM_DIR} is the kernel's")


def visible(system: bool, found: list[str]) -> list[str]:
    """Glob results a user request may see."""
    return found if system else [p for p in found if not paths.is_within(paths.normalise(p), SYSTEM_DIR)]


class _ReaderSource:
    """A ChunkReader seen as a transfer Source."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def next(self) -> defer.Deferred:
        return self.reader.read_chunk()


class UploadAbandoned(FSError):
    """A write stream went quiet for longer than the service waits; what it wrote was discarded."""

    code = "ETIMEDOUT"
    description = "write abandoned"


class _WriterSink:
    """A store Writer seen as a transfer Sink; ``finish`` commits.

    A watchdog discards the upload when no data arrives for *timeout*
    seconds while the writer waits for its peer (a peer that vanished
    without closing its connection); time the store itself takes is not
    counted.  *done* is called once, when the sink is finished one way or
    another.
    """

    def __init__(self, writer: Writer, clock: Any = None, timeout: float | None = None,
                 done: Any = None) -> None:
        self.writer = writer
        self.clock = clock
        self.timeout = timeout
        self._done = done
        self._timer: IDelayedCall | None = None
        self.expired = False
        self.closed = False
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        if self.timeout and self.clock is not None and not self.closed:
            self._timer = self.clock.callLater(self.timeout, self._idle)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _close(self) -> None:
        self._disarm()
        if not self.closed:
            self.closed = True
            if self._done is not None:
                self._done(self)

    def _idle(self) -> None:
        self._timer = None
        self.expired = True
        log.warn("write to {path} abandoned: no data for {t:g}s; discarding what was written", path=self.writer.path,
                 t=self.timeout)
        self.abort()

    def write(self, data: bytes) -> defer.Deferred:
        if self.expired:
            return defer.fail(UploadAbandoned(self.writer.path, f"no data for {self.timeout:g}s"))
        self._disarm()

        def accepted(result: Any) -> Any:
            if not self.closed:
                self._arm()
            return result

        return self.writer.write(data).addBoth(accepted)

    def finish(self) -> defer.Deferred:
        self._disarm()

        def committed(result: Any) -> Any:
            self._close()
            return result

        return self.writer.commit().addCallback(lambda stat: stat.to_dict()).addBoth(committed)

    def abort(self) -> Any:
        self._close()
        return self.writer.abort().addErrback(lambda f: None)


class FileSystemService(service.Service):
    """Serves the store at *url* over RPC and the transfer server."""

    name = "fs"

    def __init__(self, url: str, client: Any, transfer: TransferServer, reactor: Any, retry_max: float = 10.0,
                 guard: Any = None, *, upload_timeout: float | None = UPLOAD_TIMEOUT, gc_interval: float = GC_INTERVAL,
                 stale_upload: float | None = None, open_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.client = client
        self.transfer = transfer
        self.reactor = reactor
        self.retry_max = retry_max
        #: seconds a write stream may send nothing before its upload is discarded (None: no limit)
        self.upload_timeout = upload_timeout
        #: seconds between maintenance rounds
        self.gc_interval = gc_interval
        #: pending uploads nobody here writes, untouched this long, are collected (writers of an
        #: earlier service; a live writer refreshes its upload at least every TOUCH_INTERVAL)
        self.stale_upload = stale_upload if stale_upload is not None else max(2 * (upload_timeout or 0), 120.0)
        #: extra arguments for open_store (tests: chunk_size, reserve)
        self.open_options = dict(open_options or {})
        #: write streams in progress
        self.writers: set[_WriterSink] = set()
        self.store: FileStore | None = None
        self.last_error: BaseException = StoreUnavailable(f"file store {url}", "not opened yet")
        self._retry: IDelayedCall | None = None
        self._gc: task.LoopingCall | None = None
        self._delay = 0.5
        self._exclusive = defer.DeferredLock()
        self.server = RPCServer(
            client,
            TARGET,
            {
                "stat": self.stat,
                "exists": self.exists,
                "listdir": self.listdir,
                "mkdir": self.mkdir,
                "remove": self.remove,
                "rename": self.rename,
                "copy": self.copy,
                "glob": self.glob,
                "read_open": self.read_open,
                "write_open": self.write_open,
                "read_small": self.read_small,
                "write_small": self.write_small,
                "usage": self.usage,
            },
            guard=guard,
        )

    # -- lifecycle -----------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self.server.start().addErrback(lambda f: log.failure("fs RPC target failed to start", f))
        self._open()

    def _open(self) -> None:
        self._retry = None

        @defer.inlineCallbacks
        def opened(store: FileStore) -> Any:
            if not self.running:
                yield store.close()
                return
            # A brand-new store gets the standard tree (/bin, /home, /tmp...)
            # so a fresh machine is usable without running reset-fs first.
            if not (yield store.scandir("/")):
                created = yield Deferred.fromCoroutine(ensure_tree(store))
                log.info("new file store: created {dirs}", dirs=" ".join(created))
            self.store = store
            self._delay = 0.5
            log.info("file system serving {url}", url=redact(self.url))
            # Pending uploads of writers that died (crash, lost connection)
            # are invisible; collect them now and then.
            self._gc = task.LoopingCall(self._collect)
            self._gc.clock = self.reactor
            self._gc.start(self.gc_interval, now=True)

        def failed(failure: Any) -> None:
            if not self.running:
                return
            error = failure.value
            self.last_error = error if isinstance(error, StoreUnavailable) else StoreUnavailable(f"file store {self.url}", describe(error))
            log.warn("file store unreachable: {error}; retrying in {delay:.1f}s", error=str(self.last_error), delay=self._delay)
            self._retry = self.reactor.callLater(self._delay, self._open)
            self._delay = min(self.retry_max, self._delay * 2)

        open_store(self.url, self.reactor, **self.open_options).addCallbacks(opened, failed)

    @defer.inlineCallbacks
    def _collect(self) -> Any:
        """One maintenance round; never fails (the LoopingCall would stop)."""
        store = self.store
        if store is None:
            return
        try:
            # Live writers first: a slow peer must not lose its upload to the collection below.
            for sink in list(self.writers):
                try:
                    yield sink.writer.keep_alive()
                except FSError:
                    pass  # that writer fails on its own
            if getattr(store, "leftovers", 0):
                n = yield store.discard_leftovers()  # type: ignore[attr-defined]
                if n:
                    log.info("discarded {n} failed write(s) left behind earlier", n=n)
            n = yield store.collect_garbage(self.stale_upload)
            if n:
                log.info("collected {n} abandoned upload(s)", n=n)
        except StoreUnavailable as e:
            yield self._check_store(store, e)
        except Exception as e:
            log.warn("file store maintenance failed: {e}", e=describe(e))

    @defer.inlineCallbacks
    def _check_store(self, store: FileStore, error: BaseException) -> Any:
        """Maintenance could not reach the store: if a read fails too, drop it and open it again."""
        try:
            yield store.stat("/")
        except StoreUnavailable as e:
            self._lost(store, e)
        except Exception:
            pass
        else:
            log.warn("file store maintenance failed: {e}", e=describe(error))

    def _lost(self, store: FileStore, error: BaseException) -> None:
        if self.store is not store or not self.running:
            return
        self.store = None
        self.last_error = error
        log.warn("file store lost: {error}; opening it again", error=str(error))
        if self._gc is not None and self._gc.running:
            self._gc.stop()
        for sink in list(self.writers):
            sink.abort()
        store.close().addErrback(lambda f: None)
        self._retry = self.reactor.callLater(self._delay, self._open)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        if self._gc is not None and self._gc.running:
            self._gc.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        yield self.server.stop()
        # writes in progress cannot finish now: discard what they wrote while the store is open
        yield defer.DeferredList([defer.maybeDeferred(sink.abort) for sink in list(self.writers)])
        store, self.store = self.store, None
        if store is not None:
            yield store.close()

    def _store(self) -> FileStore:
        if self.store is None:
            raise self.last_error
        return self.store

    # -- RPC methods ---------------------------------------------------------
    def stat(self, path: str, system: bool = False) -> defer.Deferred:
        guard(system, path, itself=True)
        return self._store().stat(path).addCallback(lambda s: s.to_dict())

    def exists(self, path: str, system: bool = False) -> defer.Deferred:
        guard(system, path, itself=True)
        return self._store().exists(path)

    def listdir(self, path: str, system: bool = False) -> defer.Deferred:
        guard(system, path)
        return self._store().scandir(path).addCallback(lambda stats: [s.to_dict() for s in stats])

    def mkdir(self, path: str, parents: bool = False, exist_ok: bool = False, owner: str = DEFAULT_OWNER,
              system: bool = False) -> defer.Deferred:
        guard(system, path)
        return self._store().mkdir(path, parents=parents, exist_ok=exist_ok, owner=owner).addCallback(lambda s: s.to_dict())

    def remove(self, path: str, recursive: bool = False, system: bool = False) -> defer.Deferred:
        guard(system, path, holding=True)
        return self._store().remove(path, recursive=recursive)

    def rename(self, src: str, dst: str, system: bool = False) -> defer.Deferred:
        guard(system, src, holding=True)
        guard(system, dst, holding=True)
        return self._store().rename(src, dst).addCallback(lambda s: s.to_dict())

    def copy(self, src: str, dst: str, recursive: bool = False, system: bool = False) -> defer.Deferred:
        guard(system, src, holding=recursive)
        guard(system, dst)
        return self._store().copy(src, dst, recursive=recursive).addCallback(lambda s: s.to_dict())

    def glob(self, pattern: str, cwd: str = "/", system: bool = False) -> defer.Deferred:
        return self._store().glob(pattern, cwd).addCallback(lambda found: visible(system, found))

    def usage(self) -> defer.Deferred:
        return self._store().usage()

    @defer.inlineCallbacks
    def read_open(self, path: str, offset: int = 0, length: int | None = None, system: bool = False) -> Any:
        """Open *path* for reading; the caller fetches the bytes with the token."""
        guard(system, path)
        reader = yield self._store().read_chunks(path, offset, length)
        token, done = self.transfer.offer(source=_ReaderSource(reader))
        done.addBoth(lambda r: (reader.close(), None)[1])
        return {**self.transfer.where(), "token": token, "size": reader.length, "stat": reader.stat.to_dict()}

    @defer.inlineCallbacks
    def write_open(self, path: str, mode: str = "truncate", owner: str = DEFAULT_OWNER, system: bool = False) -> Any:
        """Open *path* for writing; nothing is visible until the stream ends cleanly."""
        guard(system, path)
        writer = yield self._store().open_write(path, mode, owner=owner)
        sink = _WriterSink(writer, self.reactor, self.upload_timeout, self.writers.discard)
        self.writers.add(sink)
        token, done = self.transfer.offer(sink=sink)
        done.addErrback(lambda f: log.info("write to {path} abandoned: {error}", path=path, error=f.getErrorMessage()))
        return {**self.transfer.where(), "token": token}

    @defer.inlineCallbacks
    def read_small(self, path: str, system: bool = False) -> Any:
        """A small file's content in the reply itself (base64), for kernel state read on every login."""
        guard(system, path)
        store = self._store()
        st = yield store.stat(path)
        if st.size > SMALL_LIMIT:
            raise InvalidArgument(path, f"larger than {SMALL_LIMIT} bytes; stream it with read_open")
        data = yield store.read(path)
        return {"data": base64.b64encode(data).decode(), "stat": st.to_dict()}

    @defer.inlineCallbacks
    def write_small(self, path: str, data: str, exclusive: bool = False, system: bool = False) -> Any:
        """Write a small file from the request itself; *exclusive*: refuse if it exists (first writer wins)."""
        guard(system, path)
        content = base64.b64decode(data.encode(), validate=True)
        if len(content) > SMALL_LIMIT:
            raise InvalidArgument(path, f"larger than {SMALL_LIMIT} bytes; stream it with write_open")
        store = self._store()
        # One service serves the tree at a time, so check-then-write cannot interleave with
        # another exclusive write here: the lock makes it atomic within this service.
        yield self._exclusive.acquire()
        try:
            if exclusive and (yield store.exists(path)):
                raise AlreadyExists(path)
            st = yield store.write(path, content)
        finally:
            self._exclusive.release()
        return st.to_dict()
