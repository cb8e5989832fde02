"""The file-system service: one tree for every runtime.

Runs on the runtime that serves the network's store (see
:mod:`oneos.runtime.netstore`: the store host for SQLite, the leader for a
shared MongoDB).  Metadata operations are pubsub RPCs on the ``fs`` target;
file content never rides the broker: ``read_open`` and ``write_open``
register a one-time token with this runtime's transfer server
(``oneos.transfer``) and the caller streams the bytes over TCP.

Calls can also come in one hop instead of two through the broker: the
service serves its RPC target on a direct TCP channel too
(:mod:`oneos.pubsub.direct`), listening on its runtime's stream interface
(with TLS when the streams use TLS).  A client gets a ticket with
``rpc_ticket`` over the bus and then sends its calls on one connection;
each is checked exactly as over the bus.  ``list_stat`` (``ls``: a
directory's stat and its entries') and ``stat_many`` (many paths at once:
a glob's matches for ``ls -l``) make the shell's listings one round trip.

``/etc/oneos`` holds the kernel's own state (users, keys, the SSH host key)
so that every runtime serves the same users with the same host key: it is
refused to requests that do not say ``system=True``.

Every request names the ``user`` it is made for (the RPC layer vouches for
it: a client identity always acts as its own user).  None is the kernel or
a runtime acting for itself and is never refused; the admin (``root``)
neither; anyone else is checked with POSIX owner/other rules
(:mod:`oneos.fs.permissions`): ``r`` on a file to read it, ``x`` on every
directory on the way, ``r`` on a directory to list it, ``w`` and ``x`` on a
directory to create, remove or rename entries in it (all the way down for a
recursive removal), ``w`` on a file to change it; only the owner or the
admin may ``chmod``, only the admin ``chown``.  What a user creates is the
user's, whatever ``owner`` the request names.

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

import base64
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from oneos.errors import describe
from oneos.fs import paths
from oneos.fs.errors import (
    AlreadyExists,
    FSError,
    InvalidArgument,
    NotADirectory,
    NotFound,
    OperationNotPermitted,
    PermissionDenied,
    StoreUnavailable,
)
from oneos.fs.opening import open_store
from oneos.fs.permissions import ADMIN, EXECUTE, READ, SEARCH, WRITE, may_chmod, may_chown, permitted, privileged
from oneos.fs.reset import ensure_tree
from oneos.fs.store import DEFAULT_OWNER, DIR_PERM, FileStore, Stat, Writer, check_perm, deferred_method
from oneos.fs.urls import redact
from oneos.pubsub.direct import DirectServer
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
#: Most paths one ``stat_many`` takes (its answer must fit one RPC message).
STAT_MANY_LIMIT = 2000
#: Methods a client identity (``oneos`` commands: USER@TAG) may call; the RPC layer makes them act as USER.
CLIENT_METHODS = (
    "stat",
    "exists",
    "listdir",
    "list_stat",
    "stat_many",
    "mkdir",
    "remove",
    "rename",
    "copy",
    "chmod",
    "chown",
    "access",
    "glob",
    "read_open",
    "write_open",
    "read_small",
    "write_small",
    "usage",
)

#: An RPC handler written as a coroutine: returns a Deferred, and keeps its signature visible
#: (the RPC server looks for a ``user`` argument to pass the caller's verified user in).
_rpc = deferred_method


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

    def __init__(self, writer: Writer, clock: Any = None, timeout: float | None = None, done: Any = None) -> None:
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
        log.warn(
            "write to {path} abandoned: no data for {t:g}s; discarding what was written",
            path=self.writer.path,
            t=self.timeout,
        )
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

    name = "fs"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        url: str,
        client: Any,
        transfer: TransferServer,
        reactor: Any,
        retry_max: float = 10.0,
        guard: Any = None,
        *,
        upload_timeout: float | None = UPLOAD_TIMEOUT,
        gc_interval: float = GC_INTERVAL,
        stale_upload: float | None = None,
        open_options: dict[str, Any] | None = None,
        direct: bool = True,
    ) -> None:
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
                "list_stat": self.list_stat,
                "stat_many": self.stat_many,
                "mkdir": self.mkdir,
                "remove": self.remove,
                "rename": self.rename,
                "copy": self.copy,
                "glob": self.glob,
                "read_open": self.read_open,
                "write_open": self.write_open,
                "read_small": self.read_small,
                "write_small": self.write_small,
                "chmod": self.chmod,
                "chown": self.chown,
                "access": self.access,
                "usage": self.usage,
            },
            guard=guard,
            clients=CLIENT_METHODS,
        )
        #: the same target on a direct TCP channel (*direct* and a transfer server: on the stream interface)
        self.direct: DirectServer | None = (
            DirectServer(reactor, self.server, tls=getattr(transfer, "tls", None))
            if direct and transfer is not None
            else None
        )

    # -- lifecycle -----------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self.server.start().addErrback(lambda f: log.failure("fs RPC target failed to start", f))
        self._listen_direct()
        self._open()

    def _listen_direct(self) -> None:
        """Serve the target on a direct channel too, beside the runtime's streams (DirectServer.listen_beside)."""
        if self.direct is not None:
            self.direct.listen_beside(self.transfer)

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
            self.last_error = (
                error
                if isinstance(error, StoreUnavailable)
                else StoreUnavailable(f"file store {redact(self.url)}", describe(error))
            )
            log.warn(
                "file store unreachable: {error}; retrying in {delay:.1f}s",
                error=str(self.last_error),
                delay=self._delay,
            )
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
        if self.direct is not None:
            # the channels' calls at work are answered (the store is still open); new ones go over the bus
            yield self.direct.stop()
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
    #
    # Every method takes ``user``: None is the kernel or a trusted caller (no checks), anyone else is
    # checked by the rules of oneos.fs.permissions before the store is touched (see _Access).
    # (``user is not None`` ahead of ``privileged(user)``, which covers None too, narrows the type to str.)

    @_rpc
    async def stat(self, path: str, system: bool = False, user: str | None = None) -> Any:
        path = paths.normalise(path)
        guard(system, path, itself=True)
        store = self._store()
        if user is not None and not privileged(user):
            await _Access(store, user).entry(path)
        return _wire(await store.stat(path))

    @_rpc
    async def exists(self, path: str, system: bool = False, user: str | None = None) -> Any:
        """Whether *path* exists; False too when a directory on the way may not be searched (as ``test -e``)."""
        path = paths.normalise(path)
        guard(system, path, itself=True)
        store = self._store()
        if user is not None and not privileged(user):
            try:
                await _Access(store, user).parent(path)
            except (PermissionDenied, NotFound, NotADirectory):
                return False
        return await store.exists(path)

    @_rpc
    async def listdir(self, path: str, system: bool = False, user: str | None = None) -> Any:
        path = paths.normalise(path)
        guard(system, path)
        store = self._store()
        if user is not None and not privileged(user):
            access = _Access(store, user)
            st = await access.entry(path)
            if st.is_dir:
                access.need(st, READ, path)
        return [_wire(s) for s in await store.scandir(path)]

    @_rpc
    async def list_stat(self, path: str, parent: bool = False, system: bool = False, user: str | None = None) -> Any:
        """``ls`` in one round trip: *path*'s stat and, for a directory, its entries' (*parent*: its parent's too).

        Checked as ``stat`` and then ``listdir`` would be: what ``stat``
        refuses fails the call; a directory that may not be listed comes
        back with the listing's error (``error``: kind and message) beside
        its stat, so ``ls`` reports it where it lists.
        """
        path = paths.normalise(path)
        guard(system, path, itself=True)
        store = self._store()
        access = _Access(store, user) if user is not None and not privileged(user) else None
        st = await access.entry(path) if access is not None else await store.stat(path)
        out: dict[str, Any] = {"stat": _wire(st), "entries": None}
        if parent:
            up = paths.dirname(path)
            if path == paths.ROOT:
                out["parent"] = out["stat"]
            else:  # reaching path searched every directory down to its parent
                out["parent"] = _wire(await access.stat(up) if access is not None else await store.stat(up))
        if st.is_dir:
            try:
                guard(system, path)
                if access is not None:
                    access.need(st, READ, path)
                out["entries"] = [_wire(s) for s in await store.scandir(path)]
            except StoreUnavailable:
                raise
            except FSError as e:
                out["error"] = {"kind": e.code, "message": str(e)}
        return out

    @_rpc
    async def stat_many(self, paths: list[str], system: bool = False, user: str | None = None) -> Any:
        """Many stats in one round trip (a glob's matches for ``ls -l``), in order.

        Each is checked as ``stat`` is; each answer is ``{"stat": ...}`` or
        ``{"error": {kind, message}}`` (what that ``stat`` would have raised).
        """
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise InvalidArgument(None, "stat_many takes a list of paths")
        if len(paths) > STAT_MANY_LIMIT:
            raise InvalidArgument(None, f"stat_many takes at most {STAT_MANY_LIMIT} paths, not {len(paths)}")
        store = self._store()
        # one access for the whole batch: a directory shared by many paths is looked up once
        access = _Access(store, user) if user is not None and not privileged(user) else None
        out: list[dict[str, Any]] = []
        for given in paths:
            try:
                path = _normalise(given)
                guard(system, path, itself=True)
                st = await access.entry(path) if access is not None else await store.stat(path)
                out.append({"stat": _wire(st)})
            except StoreUnavailable:
                raise
            except FSError as e:
                out.append({"error": {"kind": e.code, "message": str(e)}})
        return out

    @_rpc
    async def mkdir(
        self,
        path: str,
        parents: bool = False,
        exist_ok: bool = False,
        owner: str | None = None,
        perm: int = DIR_PERM,
        system: bool = False,
        user: str | None = None,
    ) -> Any:
        """Make a directory owned by *user* (the kernel and the admin may name another *owner*)."""
        path = paths.normalise(path)
        guard(system, path)
        check_perm(path, perm)
        store = self._store()
        if user is not None and not privileged(user):
            await _Access(store, user).making(path, parents)
        st = await store.mkdir(path, parents=parents, exist_ok=exist_ok, owner=owner_for(user, owner), perm=perm)
        return st.to_dict()

    @_rpc
    async def remove(self, path: str, recursive: bool = False, system: bool = False, user: str | None = None) -> Any:
        path = paths.normalise(path)
        guard(system, path, holding=True)
        store = self._store()
        if user is not None and not privileged(user):
            await _Access(store, user).removing(path, recursive)
        await store.remove(path, recursive=recursive)

    @_rpc
    async def rename(self, src: str, dst: str, system: bool = False, user: str | None = None) -> Any:
        src, dst = paths.normalise(src), paths.normalise(dst)
        guard(system, src, holding=True)
        guard(system, dst, holding=True)
        store = self._store()
        if user is not None and not privileged(user):
            await _Access(store, user).moving(src, dst)
        return (await store.rename(src, dst)).to_dict()

    @_rpc
    async def copy(
        self, src: str, dst: str, recursive: bool = False, system: bool = False, user: str | None = None
    ) -> Any:
        """Copy; what a user copies is the user's (the kernel's copies keep the source's owner)."""
        src, dst = paths.normalise(src), paths.normalise(dst)
        guard(system, src, holding=recursive)
        guard(system, dst)
        store = self._store()
        if user is not None and not privileged(user):
            await _Access(store, user).copying(src, dst, recursive)
        return (await store.copy(src, dst, recursive=recursive, owner=user)).to_dict()

    @_rpc
    async def chmod(self, path: str, perm: int, system: bool = False, user: str | None = None) -> Any:
        """Set an entry's permission bits: its owner or the admin only (EPERM for anyone else)."""
        path = paths.normalise(path)
        guard(system, path)
        check_perm(path, perm)
        store = self._store()
        if user is not None and not privileged(user):
            st = await _Access(store, user).entry(path)
            if not may_chmod(user, st.owner):
                raise OperationNotPermitted(path, f"only its owner or {ADMIN} may change its mode")
        return (await store.chmod(path, perm)).to_dict()

    @_rpc
    async def chown(self, path: str, owner: str, system: bool = False, user: str | None = None) -> Any:
        """Give an entry to *owner*: the admin only (EPERM for anyone else)."""
        path = paths.normalise(path)
        guard(system, path)
        if not may_chown(user):
            raise OperationNotPermitted(path, f"only {ADMIN} may change an owner")
        return (await self._store().chown(path, owner)).to_dict()

    @_rpc
    async def access(self, path: str, mode: str = "r", system: bool = False, user: str | None = None) -> Any:
        """Check, as ``access(2)`` does, that *user* may ``r``ead, ``w``rite or e``x``ecute *path*; raise if not.

        For something done on the user's behalf by another party (a program's
        ``< FILE`` read by its runtime).  ``w`` on a missing file asks whether
        it may be created.
        """
        path = paths.normalise(path)
        guard(system, path)
        if not mode or any(c not in "rwx" for c in mode):
            raise InvalidArgument(path, f"access mode is made of r, w and x, not {mode!r}")
        store = self._store()
        if user is None or privileged(user):
            if mode != "w":
                await store.stat(path)
            return None
        access = _Access(store, user)
        if "w" in mode:
            await access.writing(path)
        if "r" in mode or "x" in mode:
            st = await access.entry(path)
            access.need(st, (READ if "r" in mode else 0) | (EXECUTE if "x" in mode else 0), path)
        return None

    @_rpc
    async def glob(self, pattern: str, cwd: str = "/", system: bool = False, user: str | None = None) -> Any:
        """Matching paths; a user sees only entries of directories it may list (and reach)."""
        store = self._store()
        found = visible(system, await store.glob(pattern, cwd))
        if user is None or privileged(user):
            return found
        access = _Access(store, user)
        return [path for path in found if await access.listable(path)]

    @_rpc
    async def usage(self, user: str | None = None) -> Any:
        return await self._store().usage()

    @_rpc
    async def read_open(
        self, path: str, offset: int = 0, length: int | None = None, system: bool = False, user: str | None = None
    ) -> Any:
        """Open *path* for reading; the caller fetches the bytes with the token."""
        path = paths.normalise(path)
        guard(system, path)
        store = self._store()
        if user is not None and not privileged(user):
            await _Access(store, user).reading(path)
        reader = await store.read_chunks(path, offset, length)
        token, done = self.transfer.offer(source=_ReaderSource(reader))

        def closed(_: Any) -> None:
            reader.close()

        done.addBoth(closed)
        return {**self.transfer.where(), "token": token, "size": reader.length, "stat": reader.stat.to_dict()}

    @_rpc
    async def write_open(
        self, path: str, mode: str = "truncate", owner: str | None = None, system: bool = False, user: str | None = None
    ) -> Any:
        """Open *path* for writing; nothing is visible until the stream ends cleanly.

        A file this creates is *user*'s (the kernel and the admin may name another *owner*).
        """
        path = paths.normalise(path)
        guard(system, path)
        store = self._store()
        if user is not None and not privileged(user):
            await _Access(store, user).writing(path)
        writer = await store.open_write(path, mode, owner=owner_for(user, owner))  # type: ignore[arg-type]
        sink = _WriterSink(writer, self.reactor, self.upload_timeout, self.writers.discard)
        self.writers.add(sink)
        token, done = self.transfer.offer(sink=sink)
        done.addErrback(lambda f: log.info("write to {path} abandoned: {error}", path=path, error=f.getErrorMessage()))
        return {**self.transfer.where(), "token": token}

    @_rpc
    async def read_small(self, path: str, system: bool = False, user: str | None = None) -> Any:
        """A small file's content in the reply itself (base64), for kernel state read on every login."""
        path = paths.normalise(path)
        guard(system, path)
        store = self._store()
        if user is not None and not privileged(user):
            await _Access(store, user).reading(path)
        st = await store.stat(path)
        if st.size > SMALL_LIMIT:
            raise InvalidArgument(path, f"larger than {SMALL_LIMIT} bytes; stream it with read_open")
        data = await store.read(path)
        return {"data": base64.b64encode(data).decode(), "stat": st.to_dict()}

    @_rpc
    async def write_small(
        self, path: str, data: str, exclusive: bool = False, system: bool = False, user: str | None = None
    ) -> Any:
        """Write a small file from the request itself; *exclusive*: refuse if it exists (first writer wins)."""
        path = paths.normalise(path)
        guard(system, path)
        content = base64.b64decode(data.encode(), validate=True)
        if len(content) > SMALL_LIMIT:
            raise InvalidArgument(path, f"larger than {SMALL_LIMIT} bytes; stream it with write_open")
        store = self._store()
        # One service serves the tree at a time, so check-then-write cannot interleave with
        # another exclusive write here: the lock makes it atomic within this service.
        await self._exclusive.acquire()
        try:
            if user is not None and not privileged(user):
                await _Access(store, user).writing(path)
            if exclusive and (await store.exists(path)):
                raise AlreadyExists(path)
            st = await store.write(path, content, owner=owner_for(user, None))
        finally:
            self._exclusive.release()
        return st.to_dict()


#: for methods whose ``paths`` argument hides the module
_normalise = paths.normalise


def _wire(st: Stat) -> dict[str, Any]:
    """``st.to_dict()``, fast: the answers of stat, listings and stat_many carry many stats.

    ``Stat`` is a flat frozen dataclass, so its ``__dict__`` is exactly what
    ``dataclasses.asdict`` builds, for a thirtieth of the cost (asdict
    copies recursively): 30 ms less per listing of a thousand entries.
    """
    return dict(vars(st))


def owner_for(user: str | None, owner: str | None) -> str:
    """Who owns what a request creates: the user itself; the kernel and the admin may name someone else."""
    if user is None or privileged(user):
        return owner or user or DEFAULT_OWNER
    return user


class _Access:
    """The permission checks of one request by a user who is neither the kernel nor the admin.

    Each check raises the error the operation would meet (PermissionDenied,
    or NotFound/NotADirectory for a path that cannot be reached) and returns
    when the operation may go ahead; the store then does it.  Stats read are
    kept for the request, so a directory is looked up once however many
    checks pass through it.  A check and the operation are two steps: an
    entry changed by someone else in between is judged as it was.
    """

    def __init__(self, store: FileStore, user: str) -> None:
        self.store = store
        self.user = user
        self._seen: dict[str, Stat] = {}

    async def stat(self, path: str) -> Stat:
        st = self._seen.get(path)
        if st is None:
            st = self._seen[path] = await self.store.stat(path)
        return st

    def need(self, st: Stat, want: int, path: str) -> None:
        """Refuse *path* (EACCES) unless the user has *want* on the entry *st*."""
        if not permitted(self.user, st.owner, st.mode, want):
            raise PermissionDenied(path)

    async def parent(self, path: str) -> Stat:
        """The directory holding *path*, once every directory from / down to it may be searched."""
        st = await self.stat(paths.ROOT)
        if path == paths.ROOT:
            return st
        current = paths.ROOT
        for name in paths.parts(paths.dirname(path)):
            self.need(st, SEARCH, path)
            current = paths.join(current, name)
            try:
                st = await self.stat(current)
            except NotFound:
                raise NotFound(path) from None
            if not st.is_dir:
                raise NotADirectory(path)
        self.need(st, SEARCH, path)
        return st

    async def entry(self, path: str) -> Stat:
        """*path*'s Stat, once it may be reached (stat, chmod)."""
        await self.parent(path)
        return await self.stat(path)

    async def reading(self, path: str) -> None:
        """Reading a file: r on it (a directory is the store's EISDIR)."""
        st = await self.entry(path)
        if st.is_file:
            self.need(st, READ, path)

    async def writing(self, path: str) -> None:
        """Writing a file: w on it if it exists, else w and x on its directory to create it."""
        parent = await self.parent(path)
        try:
            st = await self.stat(path)
        except NotFound:
            self.need(parent, WRITE | SEARCH, path)
            return
        if st.is_file:
            self.need(st, WRITE, path)

    async def making(self, path: str, parents: bool) -> None:
        """Making a directory (and its missing parents): w and x where the first new one goes."""
        here = await self.stat(paths.ROOT)
        current = paths.ROOT
        names = paths.parts(path)
        for i, name in enumerate(names):
            self.need(here, SEARCH, path)
            current = paths.join(current, name)
            try:
                st = await self.stat(current)
            except NotFound:
                if i < len(names) - 1 and not parents:
                    raise NotFound(path) from None
                self.need(here, WRITE, path)
                return
            if not st.is_dir:
                return  # the store says EEXIST or ENOTDIR
            here = st
        # it exists: the store says whether that is fine (exist_ok)

    async def removing(self, path: str, recursive: bool) -> None:
        """Removing: w and x on its directory; for a tree, r, w and x on every directory with entries in it."""
        if path == paths.ROOT:
            return  # the store refuses (EPERM)
        parent = await self.parent(path)
        st = await self.stat(path)
        self.need(parent, WRITE | SEARCH, path)
        if not (recursive and st.is_dir):
            return
        stack = [st]
        while stack:
            directory = stack.pop()
            entries = await self.store.scandir(directory.path)
            if entries:
                self.need(directory, READ | WRITE | SEARCH, directory.path)
                stack.extend(e for e in entries if e.is_dir)

    async def moving(self, src: str, dst: str) -> None:
        """Renaming: w and x on the directory it leaves and on the one it enters."""
        if paths.ROOT in (src, dst):
            return  # the store refuses (EPERM)
        parent = await self.parent(src)
        await self.stat(src)
        self.need(parent, WRITE | SEARCH, src)
        self.need(await self.parent(dst), WRITE | SEARCH, dst)

    async def copying(self, src: str, dst: str, recursive: bool) -> None:
        """Copying: read the source (a tree: r and x on its directories, r on its files), write the destination."""
        st = await self.entry(src)
        if st.is_file:
            self.need(st, READ, src)
        elif recursive:
            stack = [st]
            while stack:
                directory = stack.pop()
                self.need(directory, READ | SEARCH, directory.path)
                for e in await self.store.scandir(directory.path):
                    if e.is_dir:
                        stack.append(e)
                    else:
                        self.need(e, READ, e.path)
        await self.writing(dst)

    async def listable(self, path: str) -> bool:
        """Whether a glob may show *path*: its directory may be reached and listed."""
        try:
            self.need(await self.parent(path), READ, path)
        except FSError:
            return False
        return True
