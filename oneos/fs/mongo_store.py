"""The MongoDB backend (txmongo): one file tree shared by every runtime of a grid.

It must work on a standalone ``mongod`` (no multi-document transactions) and
on SecantusDB (the MongoDB-wire server the tests use), so every step that
must be atomic is a *single-document* operation:

- an entry is one document in ``fs_inodes`` holding its ``parent`` id and
  ``name`` (unique index on both) plus its metadata and segment list, so a
  rename or move - of a whole directory tree too - is one ``findAndModify``;
- content goes to ``fs_chunks`` under a fresh content id registered in
  ``fs_uploads``; ``commit`` is one ``findAndModify`` that swaps the file's
  segment list, conditional on the generation ``v`` read before (a
  concurrent committer makes it retry, so the last commit wins whole);
- removing moves the entry under the hidden ``trash`` directory in one
  update (it vanishes from the tree at once, subtree included) and then
  deletes the documents; leftovers of a crash are finished by
  :meth:`MongoStore.collect_garbage`.

Content is owned by exactly one file or one pending upload; chunks are only
deleted once nothing references them, checked in an order that cannot race
a commit (upload record first, then references).

Known limits without transactions (documented in docs/filesystem.md):
replacing an existing target by ``rename`` takes two updates (the old
target is moved to the trash first), so for an instant the target name is
absent; two renames moving two directories into each other at the same
moment can detach both.  Neither can leave partial file content.

txmongo connects through the global reactor; the injected *clock* only
dates entries and uploads.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.logger import Logger
from twisted.python.failure import Failure
from txmongo import filter as qf
from txmongo.connection import ConnectionPool
from txmongo.errors import TimeExceeded

from oneos.fs import paths
from oneos.fs.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    FileChanged,
    FSError,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    OperationNotPermitted,
    StoreUnavailable,
)
from oneos.fs.planning import CommitPlan, Segment, commit_segments, contents_of
from oneos.fs.store import (
    CHUNK_SIZE,
    DEFAULT_OWNER,
    DIR_PERM,
    STALE_UPLOAD,
    BaseStore,
    Stat,
    deferred_method,
)
from oneos.fs.urls import StoreURL, redact

log = Logger()

T = TypeVar("T")

FORMAT = 1
ROOT_ID = "root"
TRASH_ID = "trash"
#: Collection names are prefixed so the file system can share a database.
INODES, CHUNKS, UPLOADS, META = "fs_inodes", "fs_chunks", "fs_uploads", "fs_meta"
#: How many times a commit or rename retries after losing a race.
MAX_RETRIES = 50
#: Documents deleted per request when purging a large directory.
DELETE_BATCH = 500

_CONNECTION_ERRORS = (PyMongoError, TimeExceeded, ConnectError, ConnectionClosed, defer.CancelledError)


def _guarded(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn driver and connection failures inside *fn* into StoreUnavailable."""

    @functools.wraps(fn)
    async def wrapper(self: MongoStore, *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StoreUnavailable(self.where, "the store is closed")
        try:
            return await fn(self, *args, **kwargs)
        except FSError:
            raise
        except _CONNECTION_ERRORS as e:
            raise StoreUnavailable(self.where, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None

    return wrapper


def mongo_method(fn: Callable[..., Awaitable[T]]) -> Callable[..., Deferred[T]]:
    """A public store method: Deferred-returning, with failures translated."""
    return deferred_method(_guarded(fn))


def _segments(doc: dict[str, Any] | None) -> tuple[Segment, ...]:
    if doc is None:
        return ()
    return tuple(Segment(s["c"], s["o"], s["n"]) for s in doc.get("segments", ()))


def _dump_segments(segments: Iterable[Segment]) -> list[dict[str, Any]]:
    return [{"c": s.content, "o": s.offset, "n": s.length} for s in segments]


def _stat(doc: dict[str, Any], path: str) -> Stat:
    return Stat(
        path=path,
        kind="dir" if doc["kind"] == "dir" else "file",
        size=int(doc.get("size", 0)),
        mode=int(doc["mode"]),
        owner=str(doc["owner"]),
        ctime=float(doc["ctime"]),
        mtime=float(doc["mtime"]),
    )


def _dir_doc(_id: Any, parent: Any, name: str, owner: str, perm: int, now: float) -> dict[str, Any]:
    return {
        "_id": _id,
        "parent": parent,
        "name": name,
        "kind": "dir",
        "size": 0,
        "mode": perm,
        "owner": owner,
        "ctime": now,
        "mtime": now,
        "v": 0,
        "segments": [],
    }


class MongoStore(BaseStore):
    """A :class:`~oneos.fs.store.FileStore` in a MongoDB database, via txmongo."""

    def __init__(self, parsed: StoreURL, pool: ConnectionPool, reactor: Any, clock: Any, op_timeout: float) -> None:
        self.url = parsed.url
        self.where = f"MongoDB {redact(parsed.url)}"
        self.clock = clock
        self.chunk_size = CHUNK_SIZE
        self._pool = pool
        self._db = pool[parsed.target]
        self._inodes = self._db[INODES]
        self._chunks = self._db[CHUNKS]
        self._uploads = self._db[UPLOADS]
        self._meta = self._db[META]
        self._t = op_timeout
        self._reactor = reactor
        self._closed = False

    # -- opening and closing -----------------------------------------------------

    @classmethod
    def open(
        cls,
        parsed: StoreURL,
        reactor: Any,
        *,
        chunk_size: int | None = None,
        connect_timeout: float = 10.0,
        clock: Any = None,
        op_timeout: float = 30.0,
    ) -> Deferred[MongoStore]:
        async def opening() -> MongoStore:
            pool = ConnectionPool(parsed.url, pool_size=2, retry_delay=1.0, max_delay=5.0)
            store = cls(parsed, pool, reactor, clock or reactor, op_timeout)
            try:
                try:
                    await pool.command("admin", {"ping": 1}, timeout=connect_timeout)
                except (TimeExceeded, defer.CancelledError):
                    raise StoreUnavailable(
                        store.where, f"no answer within {connect_timeout:g}s (is mongod running and reachable?)"
                    ) from None
                await store._setup(chunk_size)
            except BaseException:
                await pool.disconnect()
                raise
            log.info("opened file store {url} (chunk size {size})", url=store.where, size=store.chunk_size)
            return store

        async def guarded() -> MongoStore:
            try:
                return await opening()
            except FSError:
                raise
            except _CONNECTION_ERRORS as e:
                raise StoreUnavailable(f"MongoDB {redact(parsed.url)}", f"{type(e).__name__}: {e}") from None

        return Deferred.fromCoroutine(guarded())

    async def _setup(self, chunk_size: int | None) -> None:
        """Create indexes, the format record, the root and the trash (all idempotent)."""
        await self._w(self._inodes.create_index(qf.sort([("parent", 1), ("name", 1)]), unique=True, name="parent_name"))
        await self._w(self._inodes.create_index(qf.sort([("segments.c", 1)]), name="segments_content"))
        await self._w(self._chunks.create_index(qf.sort([("c", 1), ("n", 1)]), unique=True, name="content_n"))
        await self._w(self._uploads.create_index(qf.sort([("touched", 1)]), name="touched"))
        try:
            await self._w(
                self._meta.insert_one({"_id": "format", "version": FORMAT, "chunk_size": chunk_size or CHUNK_SIZE})
            )
        except DuplicateKeyError:
            pass
        meta = await self._w(self._meta.find_one({"_id": "format"}))
        if meta is None or meta.get("version") != FORMAT:
            raise StoreUnavailable(self.where, f"unknown store format {meta and meta.get('version')!r}")
        self.chunk_size = int(meta["chunk_size"])
        now = self._now()
        for doc in (
            _dir_doc(ROOT_ID, None, "", DEFAULT_OWNER, DIR_PERM, now),
            _dir_doc(TRASH_ID, None, ".trash", DEFAULT_OWNER, 0o700, now),
        ):
            try:
                await self._w(self._inodes.insert_one(doc))
            except DuplicateKeyError:
                pass

    @deferred_method
    async def close(self) -> None:
        """Disconnect from MongoDB."""
        if self._closed:
            return
        self._closed = True
        await self._pool.disconnect()

    def _now(self) -> float:
        return float(self.clock.seconds())

    def _w(self, d: Deferred[T]) -> Deferred[T]:
        """Bound one driver call by the operation timeout.

        txmongo's own ``timeout=`` keeps each reply in a reference cycle
        until the cyclic garbage collector runs, which made a streamed read
        hold most of a file in memory; this timer is dropped as soon as the
        call finishes, so replies are freed at once.
        """
        timer: list[Any] = [self._reactor.callLater(self._t, d.cancel)]

        def finished(result: Any) -> Any:
            t = timer.pop()
            if t.active():
                t.cancel()
            elif isinstance(result, Failure) and result.check(defer.CancelledError):
                raise StoreUnavailable(self.where, f"no answer within {self._t:g}s")
            return result

        return d.addBoth(finished)

    # -- tree helpers -------------------------------------------------------------

    async def _child(self, parent: Any, name: str, projection: dict[str, int] | None = None) -> dict[str, Any] | None:
        return await self._w(self._inodes.find_one({"parent": parent, "name": name}, projection))

    async def _resolve(self, path: str) -> dict[str, Any]:
        """The document of an existing entry, walking from the root one name at a time."""
        components = paths.parts(path)
        if not components:
            root = await self._w(self._inodes.find_one({"_id": ROOT_ID}))
            if root is None:
                raise StoreUnavailable(self.where, "the root directory is missing; run 'oneos reset-fs'")
            return root
        current: dict[str, Any] = {"_id": ROOT_ID, "kind": "dir"}
        for name in components:
            if current["kind"] != "dir":
                raise NotADirectory(path)
            child = await self._child(current["_id"], name)
            if child is None:
                raise NotFound(path)
            current = child
        return current

    async def _resolve_dir(self, path: str, for_path: str) -> dict[str, Any]:
        try:
            doc = await self._resolve(path)
        except NotFound:
            raise NotFound(for_path) from None
        except NotADirectory:
            raise NotADirectory(for_path) from None
        if doc["kind"] != "dir":
            raise NotADirectory(for_path)
        return doc

    async def _touch_dir(self, inode: Any, now: float) -> bool:
        """Set a directory's mtime; False if it no longer exists."""
        result = await self._w(self._inodes.update_one({"_id": inode, "kind": "dir"}, {"$set": {"mtime": now}}))
        return bool(result.matched_count)

    async def _has_children(self, inode: Any) -> bool:
        return await self._w(self._inodes.find_one({"parent": inode}, {"_id": 1})) is not None

    async def _delete_contents(self, contents: Iterable[Any]) -> None:
        ids = list(contents)
        for start in range(0, len(ids), DELETE_BATCH):
            await self._w(self._chunks.delete_many({"c": {"$in": ids[start : start + DELETE_BATCH]}}))

    async def _trash(self, doc: dict[str, Any], now: float) -> bool:
        """Detach *doc* (and so its subtree) from the tree in one update."""
        moved = await self._w(
            self._inodes.find_one_and_update(
                {"_id": doc["_id"], "parent": doc["parent"], "name": doc["name"]},
                {"$set": {"parent": TRASH_ID, "name": str(doc["_id"]), "trashed": now}},
                {"_id": 1},
            )
        )
        return moved is not None

    async def _untrash(self, doc: dict[str, Any], parent: Any, name: str) -> None:
        """Put back an entry a failed rename had trashed (or purge it if its name was taken)."""
        try:
            back = await self._w(
                self._inodes.find_one_and_update(
                    {"_id": doc["_id"], "parent": TRASH_ID},
                    {"$set": {"parent": parent, "name": name}, "$unset": {"trashed": ""}},
                )
            )
        except DuplicateKeyError:
            back = None
        if back is None:
            await self._purge(doc)

    async def _purge(self, top: dict[str, Any]) -> None:
        """Delete a detached entry and everything below it, chunks first.

        Bottom-up, so a crash half-way leaves a smaller detached tree for
        garbage collection, never orphaned documents; a directory's children
        are looked up once more after it is deleted, catching an entry
        created in it meanwhile (its creator sees the directory gone and
        withdraws too).
        """
        projection = {"_id": 1, "kind": 1, "segments": 1}
        stack: list[tuple[dict[str, Any], bool]] = [(top, False)]
        while stack:
            doc, expanded = stack.pop()
            if doc["kind"] != "dir":
                await self._delete_contents(contents_of(_segments(doc)))
                await self._w(self._inodes.delete_one({"_id": doc["_id"]}))
                continue
            if expanded:
                await self._w(self._inodes.delete_one({"_id": doc["_id"]}))
                late = await self._w(self._inodes.find({"parent": doc["_id"]}, projection))
                stack.extend((child, False) for child in late)
                continue
            stack.append((doc, True))
            children = await self._w(self._inodes.find({"parent": doc["_id"]}, projection))
            files = [c for c in children if c["kind"] != "dir"]
            for start in range(0, len(files), DELETE_BATCH):
                batch = files[start : start + DELETE_BATCH]
                released: set[Any] = set()
                for f in batch:
                    released |= contents_of(_segments(f))
                await self._delete_contents(released)
                await self._w(self._inodes.delete_many({"_id": {"$in": [f["_id"] for f in batch]}}))
            stack.extend((c, False) for c in children if c["kind"] == "dir")

    # -- metadata operations -------------------------------------------------------

    @mongo_method
    async def stat(self, path: str) -> Stat:
        path = paths.normalise(path)
        return _stat(await self._resolve(path), path)

    @mongo_method
    async def scandir(self, path: str) -> list[Stat]:
        """Stats of a directory's entries, sorted by name."""
        path = paths.normalise(path)
        doc = await self._resolve(path)
        if doc["kind"] != "dir":
            raise NotADirectory(path)
        children = await self._w(self._inodes.find({"parent": doc["_id"]}, {"segments": 0}))
        return sorted((_stat(c, paths.join(path, c["name"])) for c in children), key=lambda s: s.path)

    @mongo_method
    async def mkdir(
        self,
        path: str,
        *,
        parents: bool = False,
        exist_ok: bool = False,
        owner: str = DEFAULT_OWNER,
        perm: int = DIR_PERM,
    ) -> Stat:
        """Create a directory (and missing parents if *parents*, like ``mkdir -p``)."""
        path = paths.normalise(path)
        components = paths.parts(path)
        if not components:
            if parents or exist_ok:
                return _stat(await self._resolve(path), path)
            raise AlreadyExists(path)
        current: dict[str, Any] = {"_id": ROOT_ID, "kind": "dir"}
        for i, name in enumerate(components):
            last = i == len(components) - 1
            child = await self._child(current["_id"], name)
            if child is None:
                if not (last or parents):
                    raise NotFound(path)
                now = self._now()
                doc = _dir_doc(ObjectId(), current["_id"], name, owner, perm, now)
                try:
                    await self._w(self._inodes.insert_one(doc))
                except DuplicateKeyError:  # created meanwhile by someone else
                    child = await self._child(current["_id"], name)
                    if child is None:
                        raise NotFound(path) from None
                    if child["kind"] != "dir":
                        raise (AlreadyExists(path) if last else NotADirectory(path)) from None
                    if last and not (exist_ok or parents):
                        raise AlreadyExists(path) from None
                else:
                    if not await self._touch_dir(current["_id"], now):
                        await self._w(self._inodes.delete_one({"_id": doc["_id"]}))
                        raise NotFound(path)
                    child = doc
            elif child["kind"] != "dir":
                raise AlreadyExists(path) if last else NotADirectory(path)
            elif last and not (exist_ok or parents):
                raise AlreadyExists(path)
            current = child
        return _stat(current, path)

    @mongo_method
    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file or an empty directory; a whole tree if *recursive*.

        The entry leaves the tree in one update; its documents and chunks are
        deleted right after.
        """
        path = paths.normalise(path)
        if path == paths.ROOT:
            raise OperationNotPermitted(path, "the root directory cannot be removed")
        doc = await self._resolve(path)
        if doc["kind"] == "dir" and not recursive and await self._has_children(doc["_id"]):
            raise DirectoryNotEmpty(path)
        now = self._now()
        if not await self._trash(doc, now):
            raise NotFound(path)
        await self._touch_dir(doc["parent"], now)
        await self._purge(doc)

    @mongo_method
    async def rename(self, src: str, dst: str) -> Stat:
        """POSIX rename: moves an entry (a whole tree for a directory) in one update.

        An existing *dst* (a file, or an empty directory) is replaced: it is
        moved to the trash first, then *src* takes its name.
        """
        src = paths.normalise(src)
        dst = paths.normalise(dst)
        if paths.ROOT in (src, dst):
            raise OperationNotPermitted(paths.ROOT, "the root directory cannot be moved or replaced")
        dparent_path, dname = paths.split(dst)
        for _attempt in range(MAX_RETRIES):
            doc = await self._resolve(src)
            if doc["kind"] == "dir" and src != dst and paths.is_within(dst, src):
                raise InvalidArgument(dst, f"cannot move {src} into itself")
            dparent = await self._resolve_dir(dparent_path, dst)
            if src == dst:
                return _stat(doc, dst)
            now = self._now()
            target = await self._child(dparent["_id"], dname)
            if target is not None:
                if doc["kind"] == "file" and target["kind"] == "dir":
                    raise IsADirectory(dst)
                if doc["kind"] == "dir" and target["kind"] != "dir":
                    raise NotADirectory(dst)
                if target["kind"] == "dir" and await self._has_children(target["_id"]):
                    raise DirectoryNotEmpty(dst)
                if not await self._trash(target, now):
                    continue
            try:
                moved = await self._w(
                    self._inodes.find_one_and_update(
                        {"_id": doc["_id"], "parent": doc["parent"], "name": doc["name"]},
                        {"$set": {"parent": dparent["_id"], "name": dname}},
                        return_document=ReturnDocument.AFTER,
                    )
                )
            except DuplicateKeyError:  # dst created meanwhile: replace that one instead
                if target is not None:
                    await self._purge(target)
                continue
            if moved is None:  # src moved or removed meanwhile
                if target is not None:
                    await self._untrash(target, dparent["_id"], dname)
                continue
            await self._touch_dir(doc["parent"], now)
            await self._touch_dir(dparent["_id"], now)
            if target is not None:
                await self._purge(target)
            return _stat(moved, dst)
        raise FSError(dst, "gave up after repeated concurrent changes")

    @mongo_method
    async def _set_attributes(self, path: str, changes: dict[str, Any]) -> Stat:
        """chmod/chown: one update of the entry's document, which a concurrent commit cannot undo
        (commits ``$set`` only the content fields)."""
        doc = await self._resolve(path)
        updated = await self._w(
            self._inodes.find_one_and_update(
                {"_id": doc["_id"], "parent": doc["parent"], "name": doc["name"]},
                {"$set": {name: changes[name] for name in ("mode", "owner") if name in changes}},
                {"segments": 0},
                return_document=ReturnDocument.AFTER,
            )
        )
        if updated is None:  # removed or moved meanwhile
            raise NotFound(path)
        return _stat(updated, path)

    # -- content primitives ------------------------------------------------------------

    @mongo_method
    async def _node(self, path: str) -> tuple[Stat, tuple[Segment, ...]]:
        doc = await self._resolve(path)
        return _stat(doc, path), _segments(doc)

    @mongo_method
    async def _prepare_write(self, path: str) -> tuple[Stat | None, tuple[Segment, ...]]:
        parent_path, name = paths.split(path)
        parent = await self._resolve_dir(parent_path, path)
        doc = await self._child(parent["_id"], name)
        if doc is None:
            return None, ()
        if doc["kind"] == "dir":
            raise IsADirectory(path)
        return _stat(doc, path), _segments(doc)

    @mongo_method
    async def _load_chunks(self, path: str, content: Any, first: int, last: int) -> list[bytes]:
        docs = await self._w(
            self._chunks.find(
                {"c": content, "n": {"$gte": first, "$lte": last}},
                {"_id": 0, "n": 1, "d": 1},
                sort=qf.sort([("n", 1)]),
            )
        )
        if [d["n"] for d in docs] != list(range(first, last + 1)):
            raise FileChanged(path)
        return [bytes(d["d"]) for d in docs]

    @mongo_method
    async def _begin_upload(self, path: str) -> Any:
        content = ObjectId()
        await self._w(self._uploads.insert_one({"_id": content, "touched": self._now(), "path": path}))
        return content

    @mongo_method
    async def _put_chunk(self, content: Any, n: int, data: bytes) -> None:
        await self._w(self._chunks.insert_one({"c": content, "n": n, "d": bytes(data)}))

    @mongo_method
    async def _touch_upload(self, content: Any) -> None:
        await self._w(self._uploads.update_one({"_id": content}, {"$set": {"touched": self._now()}}))

    @mongo_method
    async def _commit_small(self, plan: CommitPlan, data: bytes) -> Stat:
        """Register the upload and store its one chunk in parallel, then commit."""
        content = ObjectId()
        record = self._w(self._uploads.insert_one({"_id": content, "touched": self._now(), "path": plan.path}))
        steps = [record]
        if data:
            steps.append(self._w(self._chunks.insert_one({"c": content, "n": 0, "d": bytes(data)})))
        try:
            try:
                await defer.gatherResults(steps, consumeErrors=True)
            except defer.FirstError as e:
                e.subFailure.raiseException()
            return await self._commit(replace(plan, content=content), claim=False)
        except BaseException:
            await self._abort_quietly(content, plan.path)
            raise

    @mongo_method
    async def _commit_upload(self, plan: CommitPlan) -> Stat:
        return await self._commit(plan, claim=True)

    async def _commit(self, plan: CommitPlan, claim: bool) -> Stat:
        """Swap the file's segment list in one findAndModify (or insert the new file).

        *claim* refreshes the upload record first, so garbage collection
        cannot take a long write's chunks while it commits (and fails if it
        already has); a small write's record was made a moment ago.
        """
        if claim:
            claimed = await self._w(
                self._uploads.find_one_and_update({"_id": plan.content}, {"$set": {"touched": self._now()}}, {"_id": 1})
            )
            if claimed is None:
                raise FSError(plan.path, "the pending write was discarded (stale) before its commit")
        parent_path, name = paths.split(plan.path)
        for _attempt in range(MAX_RETRIES):
            parent = await self._resolve_dir(parent_path, plan.path)
            doc = await self._child(parent["_id"], name)
            if doc is not None and doc["kind"] == "dir":
                raise IsADirectory(plan.path)
            current = _segments(doc) if doc is not None else None
            new = commit_segments(current, plan)
            size = sum(s.length for s in new)
            released = contents_of(current or ()) - contents_of(new)
            if plan.content not in contents_of(new):
                released.add(plan.content)
            now = self._now()
            if doc is None:
                doc = {
                    "_id": ObjectId(),
                    "parent": parent["_id"],
                    "name": name,
                    "kind": "file",
                    "size": size,
                    "mode": plan.perm,
                    "owner": plan.owner,
                    "ctime": now,
                    "mtime": now,
                    "v": 0,
                    "segments": _dump_segments(new),
                }
                try:
                    await self._w(self._inodes.insert_one(doc))
                except DuplicateKeyError:
                    continue  # created meanwhile: commit over it
                if not await self._touch_dir(parent["_id"], now):
                    await self._w(self._inodes.delete_one({"_id": doc["_id"]}))
                    raise NotFound(plan.path)
                updated = doc
            else:
                if released - {plan.content}:
                    # remembered first, so a crash right after the swap leaves them findable
                    await self._w(
                        self._uploads.update_one(
                            {"_id": plan.content}, {"$set": {"releasing": list(released - {plan.content})}}
                        )
                    )
                updated = await self._w(
                    self._inodes.find_one_and_update(
                        {"_id": doc["_id"], "v": doc.get("v", 0)},
                        {"$set": {"segments": _dump_segments(new), "size": size, "mtime": now}, "$inc": {"v": 1}},
                        return_document=ReturnDocument.AFTER,
                    )
                )
                if updated is None:
                    log.debug("commit to {path} lost a race; retrying", path=plan.path)
                    continue
            break
        else:
            raise FSError(plan.path, "gave up after repeated concurrent commits")
        await self._delete_contents(released)
        await self._w(self._uploads.delete_one({"_id": plan.content}))
        return _stat(updated, plan.path)

    @mongo_method
    async def _abort_upload(self, content: Any) -> None:
        # Never delete content a commit made live (a commit can fail after its swap).
        if await self._w(self._inodes.find_one({"segments.c": content}, {"_id": 1})) is None:
            await self._delete_contents([content])
        await self._w(self._uploads.delete_one({"_id": content}))

    # -- maintenance ---------------------------------------------------------------------

    @mongo_method
    async def usage(self) -> dict[str, int]:
        """Counts for ``df``-like reports and tests: files, dirs, bytes, chunks, pending uploads."""
        live = {"parent": {"$ne": TRASH_ID}, "_id": {"$ne": TRASH_ID}}
        files = await self._w(self._inodes.count_documents({**live, "kind": "file"}))
        dirs = await self._w(self._inodes.count_documents({**live, "kind": "dir"}))
        total = 0
        for row in await self._w(
            self._inodes.aggregate(
                [{"$match": {**live, "kind": "file"}}, {"$group": {"_id": None, "total": {"$sum": "$size"}}}]
            )
        ):
            total += int(row.get("total", 0))
        chunks = await self._w(self._chunks.count_documents({}))
        pending = await self._w(self._uploads.count_documents({}))
        return {"files": files, "dirs": dirs, "bytes": total, "chunks": chunks, "pending_uploads": pending}

    async def _unreferenced(self, content: Any) -> bool:
        return await self._w(self._inodes.find_one({"segments.c": content}, {"_id": 1})) is None

    @mongo_method
    async def collect_garbage(self, stale_after: float = STALE_UPLOAD, *, full: bool = False) -> int:
        """Finish what dead writers and interrupted removals left behind.

        Removes pending uploads untouched for *stale_after* seconds (and the
        contents a crashed commit was releasing) and purges entries trashed
        before then: that covers every crash window, and costs in proportion
        to the leftovers.  *full* also sweeps every content id in the chunks
        collection for ones nothing refers to - a belt-and-braces check whose
        cost grows with the store.  Returns how many content ids were removed.
        """
        cutoff = self._now() - stale_after
        removed = 0
        stale = await self._w(self._uploads.find({"touched": {"$lte": cutoff}}))
        for record in stale:
            for content in [record["_id"], *record.get("releasing", [])]:
                if await self._unreferenced(content):
                    await self._delete_contents([content])
                    removed += 1
            await self._w(self._uploads.delete_one({"_id": record["_id"]}))
        for doc in await self._w(self._inodes.find({"parent": TRASH_ID, "trashed": {"$lte": cutoff}})):
            await self._purge(doc)
        if full:
            removed += await self._sweep_unreferenced()
        if removed:
            log.info("file store {url}: collected {n} unreferenced content set(s)", url=self.where, n=removed)
        return removed

    async def _sweep_unreferenced(self) -> int:
        """Delete chunks of content ids that no upload and no file refers to.

        Upload record first, references second: a commit references its
        content before it drops its record, so this order cannot race it.
        """
        removed = 0
        for content in await self._w(self._chunks.distinct("c")):
            if await self._w(self._uploads.find_one({"_id": content}, {"_id": 1})) is not None:
                continue
            if await self._unreferenced(content):
                await self._delete_contents([content])
                removed += 1
        return removed

    @mongo_method
    async def wipe(self) -> None:
        """Delete every file and directory (the root stays); for ``reset-fs --force``."""
        now = self._now()
        await self._w(self._inodes.delete_many({"_id": {"$nin": [ROOT_ID, TRASH_ID]}}))
        await self._w(self._chunks.delete_many({}))
        await self._w(self._uploads.delete_many({}))
        await self._w(
            self._inodes.update_one(
                {"_id": ROOT_ID}, {"$set": {"mtime": now, "ctime": now, "mode": DIR_PERM, "owner": DEFAULT_OWNER}}
            )
        )
        log.info("file store {url} wiped", url=self.where)


__all__ = ["MongoStore"]
