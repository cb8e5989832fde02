"""The SQLite backend: the embedded default store of a one-machine OneOS.

SQLite is synchronous and allows one writer at a time, so the store owns one
connection used from one dedicated worker thread: every write, every chunk
of content and every large read is a function shipped to that thread
(``deferToThreadPool``), so the reactor never waits on them and they run
one after the other.  The database runs in WAL mode so other processes
(``oneos reset-fs``, a second runtime on the same machine) can read while
one writes.

Point reads (the stat of one path, the entry an open looks up, the listing
of a small directory) are answered on the reactor thread instead, on a
second, read-only connection: such a query by indexed path costs a few
tens of microseconds, several times less than handing it to the thread and
back, which bounded a ``stat`` at about 1,500 a second.  They are answered
there only while no write is on its way through the worker thread; then
they queue behind it as before, so every read sees every write asked for
before it, as when all ran on the one thread (WAL lets the second
connection read beside the writer, and it sees each commit as soon as it is
made).  A database in memory (``:memory:``) cannot be opened twice: all its
work stays on the thread.

Schema (format 1)::

    meta(key, value)                        chunk size, format version
    inodes(id, parent, name, kind, size, mode, owner, ctime, mtime, segments)
                                            UNIQUE(parent, name); root is id 1
    chunks(content, n, data)                PRIMARY KEY(content, n)
    uploads(content, touched, path)         pending (uncommitted) content ids

A write inserts its chunks under a fresh content id registered in
``uploads`` (each chunk in its own short transaction, so a large write does
not hold the write lock); ``commit`` is one transaction that swaps the
file's segment list, deletes the chunks it released and the ``uploads`` row.
A crash before that commit leaves only a pending upload, which
:meth:`SQLiteStore.collect_garbage` removes once stale.

A full disk must not wedge the store: in WAL mode even a DELETE needs room
(its frames go to the journal, and the journal can only restart once a
checkpoint has copied it into the database file; with the SECURE_DELETE
build option many distributions use, it also zeroes every freed page, so
``secure_delete`` is set to FAST).  So content is refused
with :class:`~oneos.fs.store.NoSpace` while the disk's free space is below
``reserve`` bytes (8 MiB by default), which leaves room to delete; a
statement that still meets a full disk (another program filled it) fails
with ``NoSpace`` too and leaves no transaction open.  New databases use
``auto_vacuum=INCREMENTAL``, and discarding uploads (abort, garbage
collection) hands the freed pages back to the file system, so the space
shows up as free again (``df``), not only as reusable inside the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

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
    DISK_RESERVE,
    STALE_UPLOAD,
    BaseStore,
    MiB,
    NoSpace,
    Stat,
    deferred_method,
)
from oneos.fs.urls import StoreURL

log = Logger()

T = TypeVar("T")

FORMAT = 1
ROOT_ID = 1
#: sqlite3's primary result code for "database or disk is full".
_SQLITE_FULL = 13
#: Free pages handed back to the file system per step (each step is one small transaction).
_SHRINK_STEP = 256
#: The journal (WAL) file is cut back to this size when it restarts.
_JOURNAL_LIMIT = 4 * MiB
#: Entries a listing reads on the reactor thread; a larger directory is listed on the worker thread.
INLINE_LISTING = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inodes (
    id INTEGER PRIMARY KEY,
    parent INTEGER,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('file', 'dir')),
    size INTEGER NOT NULL DEFAULT 0,
    mode INTEGER NOT NULL,
    owner TEXT NOT NULL,
    ctime REAL NOT NULL,
    mtime REAL NOT NULL,
    segments TEXT NOT NULL DEFAULT '[]',
    UNIQUE (parent, name)
);
CREATE TABLE IF NOT EXISTS chunks (
    content INTEGER NOT NULL,
    n INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (content, n)
);
CREATE TABLE IF NOT EXISTS uploads (
    content INTEGER PRIMARY KEY AUTOINCREMENT,
    touched REAL NOT NULL,
    path TEXT NOT NULL
);
"""

_COLUMNS = "id, parent, name, kind, size, mode, owner, ctime, mtime, segments"


def _segments(row: sqlite3.Row | None) -> tuple[Segment, ...]:
    if row is None:
        return ()
    return tuple(Segment(c, o, n) for c, o, n in json.loads(row["segments"]))


def _dump_segments(segments: Iterable[Segment]) -> str:
    return json.dumps([[s.content, s.offset, s.length] for s in segments], separators=(",", ":"))


def _stat(row: sqlite3.Row, path: str) -> Stat:
    return Stat(
        path=path,
        kind=row["kind"],
        size=row["size"],
        mode=row["mode"],
        owner=row["owner"],
        ctime=row["ctime"],
        mtime=row["mtime"],
    )


class _TooLarge(Exception):
    """A read found more than it may do on the reactor thread: it is done on the worker thread instead."""


class SQLiteStore(BaseStore):
    """A :class:`~oneos.fs.store.FileStore` in one SQLite database file."""

    def __init__(self, url: str, target: str, reactor: Any, clock: Any, reserve: int = DISK_RESERVE) -> None:
        self.url = url
        self.target = target
        self.reactor = reactor
        self.clock = clock
        #: free disk bytes content may not eat into (room to delete when the disk fills up)
        self.reserve = reserve
        self.chunk_size = CHUNK_SIZE
        self._conn: sqlite3.Connection | None = None
        #: the read-only connection point reads use on the reactor thread (None: in memory, or it failed to open)
        self._reader: sqlite3.Connection | None = None
        #: jobs that may write, handed to the worker thread and not answered yet (reads wait behind them)
        self._writing = 0
        #: point reads answered on the reactor thread, and those sent to the worker thread (for tests and tuning)
        self.reads_inline = 0
        self.reads_queued = 0
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=f"oneos-fs-sqlite:{target}")
        self._shutdown_trigger: Any = None
        self._closed = False
        self._shrinking = False

    # -- opening and closing ---------------------------------------------------

    @classmethod
    def open(
        cls,
        parsed: StoreURL,
        reactor: Any,
        *,
        chunk_size: int | None = None,
        clock: Any = None,
        reserve: int = DISK_RESERVE,
    ) -> Deferred[SQLiteStore]:
        store = cls(parsed.url, parsed.target, reactor, clock or reactor, reserve)
        store._pool.start()
        store._shutdown_trigger = reactor.addSystemEventTrigger("during", "shutdown", store._stop_pool)

        def failed(failure: Any) -> Any:
            store._stop_pool()
            return failure

        def opened(size: int) -> SQLiteStore:
            store.chunk_size = size
            return store

        d = store._run(store._open_sync, chunk_size, store._now()).addCallback(opened)
        d.addErrback(failed)
        return d

    def _open_sync(self, chunk_size: int | None, now: float) -> int:
        try:
            if self.target != ":memory:":
                os.makedirs(os.path.dirname(self.target) or "/", exist_ok=True)
            conn = sqlite3.connect(self.target, isolation_level=None, check_same_thread=False, timeout=30.0)
        except (OSError, sqlite3.Error) as e:
            raise StoreUnavailable(f"sqlite database {self.target}", str(e)) from None
        conn.row_factory = sqlite3.Row
        self._conn = conn
        conn.execute("PRAGMA busy_timeout = 30000")
        # Only takes effect on a new database (before its first table): freed pages can then be
        # given back to the file system (see _shrink_sync); an older one keeps its freed pages for reuse.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_LIMIT}")
        # Debian (and others) build SQLite with SECURE_DELETE: every freed page is zeroed, so
        # deleting 20 MB wrote 20 MB to the journal, which on a full disk cannot be done, and the
        # space a failed upload held could never be freed.  FAST zeroes only what costs no I/O.
        conn.execute("PRAGMA secure_delete = FAST")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)  # idempotent; executescript must run outside a transaction

        def setup(c: sqlite3.Connection) -> int:
            c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?)", (str(FORMAT),))
            c.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('chunk_size', ?)", (str(chunk_size or CHUNK_SIZE),)
            )
            c.execute(
                "INSERT OR IGNORE INTO inodes(id, parent, name, kind, mode, owner, ctime, mtime) VALUES (?, NULL, '', 'dir', ?, ?, ?, ?)",
                (ROOT_ID, DIR_PERM, DEFAULT_OWNER, now, now),
            )
            fmt = int(c.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0])
            if fmt != FORMAT:
                raise StoreUnavailable(f"sqlite database {self.target}", f"unknown store format {fmt}")
            return int(c.execute("SELECT value FROM meta WHERE key = 'chunk_size'").fetchone()[0])

        size = self._tx_sync(setup)
        self._reader = self._open_reader()
        log.info("opened file store {url} (chunk size {size})", url=self.url, size=size)
        return size

    def _open_reader(self) -> sqlite3.Connection | None:
        """The read-only connection for point reads on the reactor thread (database thread, at opening).

        It never waits for a lock (a busy database sends the read to the
        worker thread, which waits); without it every read goes to the thread.
        """
        if self.target == ":memory:":
            return None  # a second connection would open another, empty, database
        try:
            reader = sqlite3.connect(self.target, isolation_level=None, check_same_thread=False, timeout=0)
            reader.row_factory = sqlite3.Row
            reader.execute("PRAGMA query_only = 1")
        except sqlite3.Error as e:
            log.warn("sqlite database {db}: every read goes through its thread: {error}", db=self.target, error=str(e))
            return None
        return reader

    def _stop_pool(self) -> None:
        if self._pool.started:
            self._pool.stop()

    @deferred_method
    async def close(self) -> None:
        """Close the database and stop the worker thread."""
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

        def close_sync() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await deferToThreadPool(self.reactor, self._pool, close_sync)
        finally:
            if self._shutdown_trigger is not None:
                self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
                self._shutdown_trigger = None
            self._stop_pool()

    # -- running work on the database thread -------------------------------------

    def _run(self, fn: Callable[..., T], *args: Any, writes: bool = True) -> Deferred[T]:
        """Run ``fn(*args)`` on the database thread, translating SQLite failures.

        *writes*: the job may change the database; until it is answered,
        point reads queue behind it rather than run on the reactor thread.
        """
        if self._closed:
            return Deferred.fromCoroutine(self._raise_closed())

        def guarded() -> T:
            try:
                self._end_stray_transaction()
                return fn(*args)
            except FSError:
                raise
            except sqlite3.Error as e:
                if getattr(e, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL:
                    raise NoSpace(None, f"the disk holding {self.target} is full") from None
                raise StoreUnavailable(f"sqlite database {self.target}", str(e)) from None

        d = deferToThreadPool(self.reactor, self._pool, guarded)
        if writes:
            self._writing += 1
            d.addBoth(self._written)  # first in the chain: counted out before anyone hears the answer
        return d

    def _written(self, result: T) -> T:
        self._writing -= 1
        return result

    def _inline(self, fn: Callable[..., T], *args: Any) -> Deferred[T] | None:
        """``fn(conn, *args)``, a read, answered on the reactor thread; None when it must go to the worker thread.

        Only while no write is on its way through the thread (so the read
        sees it, as it would queued behind it).  A SQLite error (the
        database busy or broken) also leaves the read to the thread, which
        waits for locks and reports failures as every job does.
        """
        reader = self._reader
        if reader is None or self._writing or self._closed:
            return None
        try:
            reader.execute("BEGIN")  # one snapshot for the whole look-up
            try:
                result = fn(reader, *args)
            finally:
                reader.execute("ROLLBACK")
        except _TooLarge:
            return None
        except sqlite3.Error as e:
            log.debug("sqlite database {db}: read sent to the thread: {error}", db=self.target, error=str(e))
            try:
                if reader.in_transaction:
                    reader.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # a closed or broken connection holds no transaction
            return None
        except Exception:
            self.reads_inline += 1
            return defer.fail()
        self.reads_inline += 1
        return defer.succeed(result)

    def _read(self, fn: Callable[..., T], *args: Any, queued: tuple[Any, ...] | None = None) -> Deferred[T]:
        """``fn(conn, *args)``, a point read: on the reactor thread when it can be (see :meth:`_inline`).

        On the worker thread it is called with *queued* instead of *args*
        when given (a listing without its limit: ``fn`` raised ``_TooLarge``).
        """
        done = self._inline(fn, *args)
        if done is not None:
            return done
        self.reads_queued += 1
        return self._tx(fn, *(args if queued is None else queued), write=False)

    async def _raise_closed(self) -> Any:
        raise StoreUnavailable(f"sqlite database {self.target}", "the store is closed")

    def _tx_sync(self, fn: Callable[..., T], *args: Any, write: bool = True) -> T:
        """``fn(conn, *args)`` inside one transaction (IMMEDIATE when it writes)."""
        conn = self._conn
        if conn is None:
            raise StoreUnavailable(f"sqlite database {self.target}", "the store is closed")
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back by itself (a full disk does that); a
            # failed COMMIT may leave the transaction open: never leave one behind.
            self._end_stray_transaction()
            raise
        return result

    def _end_stray_transaction(self) -> None:
        """Roll back a transaction left open by a failure (database thread)."""
        conn = self._conn
        if conn is not None and conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as e:
                log.warn("sqlite database {db}: rollback failed: {error}", db=self.target, error=str(e))

    def _check_space(self, size: int) -> None:
        """Refuse *size* bytes of content if the disk would be left with less than the reserve (database thread)."""
        if self.target == ":memory:" or self.reserve <= 0:
            return
        directory = os.path.dirname(self.target) or "/"
        try:
            st = os.statvfs(directory)
        except OSError:
            return  # cannot tell: let SQLite find out
        free = st.f_bavail * st.f_frsize
        if free - size < self.reserve:
            raise NoSpace(
                None,
                f"{free / MiB:.1f} MiB free on the disk holding {self.target}, "
                f"{self.reserve / MiB:g} MiB kept for the store's own bookkeeping",
            )

    def _shrink_step_sync(self) -> bool:
        """Give up to _SHRINK_STEP free pages back to the file system (database thread); True: more to do."""
        conn = self._conn
        if conn is None or self.target == ":memory:":
            return False
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # not INCREMENTAL: an older database
            return False
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if free > 0:
            conn.execute(f"PRAGMA incremental_vacuum({min(free, _SHRINK_STEP)})").fetchall()
            left = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if 0 < left < free:
                return True
        # Copy the journal into the file (cut to its new size) and empty the journal; do not
        # wait for readers in other processes: the journal's next restart does it then.
        conn.execute("PRAGMA busy_timeout = 100")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.execute("PRAGMA busy_timeout = 30000")
        return False

    async def _shrink(self) -> None:
        """Hand freed pages back to the file system, a small step per job so other operations go between."""
        if self._shrinking:
            return  # the one running goes on until nothing is free
        self._shrinking = True
        try:
            while await self._run(self._shrink_step_sync):
                pass
        except FSError as e:
            log.info("sqlite database {db}: could not give free space back yet: {error}", db=self.target, error=str(e))
        finally:
            self._shrinking = False

    def _tx(self, fn: Callable[..., T], *args: Any, write: bool = True) -> Deferred[T]:
        return self._run(lambda: self._tx_sync(fn, *args, write=write), writes=write)

    def _now(self) -> float:
        return float(self.clock.seconds())

    # -- tree helpers (database thread) ----------------------------------------

    @staticmethod
    def _child(c: sqlite3.Connection, parent: int, name: str) -> sqlite3.Row | None:
        return c.execute(f"SELECT {_COLUMNS} FROM inodes WHERE parent = ? AND name = ?", (parent, name)).fetchone()

    @staticmethod
    def _root(c: sqlite3.Connection) -> sqlite3.Row:
        return c.execute(f"SELECT {_COLUMNS} FROM inodes WHERE id = ?", (ROOT_ID,)).fetchone()

    def _resolve(self, c: sqlite3.Connection, path: str) -> sqlite3.Row:
        names = paths.parts(path)
        if not names:
            return self._root(c)
        row: sqlite3.Row | None = None
        parent = ROOT_ID  # the root is always there, a directory: no need to read it on the way down
        for name in names:
            if row is not None:
                if row["kind"] != "dir":
                    raise NotADirectory(path)
                parent = row["id"]
            row = self._child(c, parent, name)
            if row is None:
                raise NotFound(path)
        assert row is not None  # names is not empty
        return row

    def _resolve_dir(self, c: sqlite3.Connection, path: str, for_path: str) -> sqlite3.Row:
        """The directory *path*, reported against *for_path* when missing."""
        try:
            row = self._resolve(c, path)
        except NotFound:
            raise NotFound(for_path) from None
        except NotADirectory:
            raise NotADirectory(for_path) from None
        if row["kind"] != "dir":
            raise NotADirectory(for_path)
        return row

    @staticmethod
    def _touch_dir(c: sqlite3.Connection, inode: int, now: float) -> None:
        c.execute("UPDATE inodes SET mtime = ? WHERE id = ?", (now, inode))

    @staticmethod
    def _delete_contents(c: sqlite3.Connection, contents: Iterable[Any]) -> None:
        c.executemany("DELETE FROM chunks WHERE content = ?", [(x,) for x in contents])

    def _subtree(self, c: sqlite3.Connection, inode: int) -> list[sqlite3.Row]:
        return c.execute(
            """WITH RECURSIVE sub(id) AS (SELECT ? UNION ALL SELECT i.id FROM inodes i JOIN sub ON i.parent = sub.id)
               SELECT i.id, i.segments FROM inodes i JOIN sub ON i.id = sub.id""",
            (inode,),
        ).fetchall()

    def _delete_tree(self, c: sqlite3.Connection, inode: int) -> None:
        rows = self._subtree(c, inode)
        released: set[Any] = set()
        for row in rows:
            released |= contents_of(_segments(row))
        self._delete_contents(c, released)
        c.executemany("DELETE FROM inodes WHERE id = ?", [(row["id"],) for row in rows])

    # -- metadata operations -----------------------------------------------------

    def stat(self, path: str) -> Deferred[Stat]:
        # not a coroutine: on the reactor thread it is answered at once, and a coroutine cost a tenth of that
        try:
            path = paths.normalise(path)
        except Exception:
            return defer.fail()
        return self._read(lambda c: _stat(self._resolve(c, path), path))

    @deferred_method
    async def scandir(self, path: str) -> list[Stat]:
        """Stats of a directory's entries, sorted by name.

        A directory of up to :data:`INLINE_LISTING` entries is listed on the
        reactor thread (a point read); a larger one on the worker thread.
        """
        path = paths.normalise(path)

        def scan(c: sqlite3.Connection, limit: int | None) -> list[Stat]:
            row = self._resolve(c, path)
            if row["kind"] != "dir":
                raise NotADirectory(path)
            query = f"SELECT {_COLUMNS} FROM inodes WHERE parent = ? ORDER BY name"
            if limit is None:
                children = c.execute(query, (row["id"],)).fetchall()
            else:
                children = c.execute(query + " LIMIT ?", (row["id"], limit + 1)).fetchall()
                if len(children) > limit:
                    raise _TooLarge()
            return [_stat(child, paths.join(path, child["name"])) for child in children]

        return await self._read(scan, INLINE_LISTING, queued=(None,))

    @deferred_method
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
        now = self._now()

        def make(c: sqlite3.Connection) -> Stat:
            row = self._root(c)
            components = paths.parts(path)
            if not components:
                if parents or exist_ok:
                    return _stat(row, path)
                raise AlreadyExists(path)
            for i, name in enumerate(components):
                last = i == len(components) - 1
                child = self._child(c, row["id"], name)
                if child is None:
                    if not (last or parents):
                        raise NotFound(path)
                    c.execute(
                        "INSERT INTO inodes(parent, name, kind, mode, owner, ctime, mtime) VALUES (?, ?, 'dir', ?, ?, ?, ?)",
                        (row["id"], name, perm, owner, now, now),
                    )
                    self._touch_dir(c, row["id"], now)
                    child = self._child(c, row["id"], name)
                    assert child is not None  # inserted just above, in this transaction
                elif child["kind"] != "dir":
                    raise (AlreadyExists(path) if last else NotADirectory(path))
                elif last and not (exist_ok or parents):
                    raise AlreadyExists(path)
                row = child
            return _stat(row, path)

        return await self._tx(make)

    @deferred_method
    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file or an empty directory; a whole tree if *recursive*. Atomic."""
        path = paths.normalise(path)
        if path == paths.ROOT:
            raise OperationNotPermitted(path, "the root directory cannot be removed")
        now = self._now()

        def rm(c: sqlite3.Connection) -> None:
            row = self._resolve(c, path)
            if row["kind"] == "dir" and not recursive:
                if c.execute("SELECT 1 FROM inodes WHERE parent = ? LIMIT 1", (row["id"],)).fetchone():
                    raise DirectoryNotEmpty(path)
            self._delete_tree(c, row["id"])
            self._touch_dir(c, row["parent"], now)

        await self._tx(rm)

    @deferred_method
    async def rename(self, src: str, dst: str) -> Stat:
        """POSIX rename in one transaction: replaces a file, or an empty directory, at *dst*."""
        src = paths.normalise(src)
        dst = paths.normalise(dst)
        if paths.ROOT in (src, dst):
            raise OperationNotPermitted(paths.ROOT, "the root directory cannot be moved or replaced")
        now = self._now()

        def mv(c: sqlite3.Connection) -> Stat:
            row = self._resolve(c, src)
            if row["kind"] == "dir" and src != dst and paths.is_within(dst, src):
                raise InvalidArgument(dst, f"cannot move {src} into itself")
            dparent_path, dname = paths.split(dst)
            dparent = self._resolve_dir(c, dparent_path, dst)
            if src == dst:
                return _stat(row, dst)
            target = self._child(c, dparent["id"], dname)
            if target is not None:
                if row["kind"] == "file" and target["kind"] == "dir":
                    raise IsADirectory(dst)
                if row["kind"] == "dir" and target["kind"] == "file":
                    raise NotADirectory(dst)
                if (
                    target["kind"] == "dir"
                    and c.execute("SELECT 1 FROM inodes WHERE parent = ? LIMIT 1", (target["id"],)).fetchone()
                ):
                    raise DirectoryNotEmpty(dst)
                self._delete_tree(c, target["id"])
            c.execute("UPDATE inodes SET parent = ?, name = ? WHERE id = ?", (dparent["id"], dname, row["id"]))
            self._touch_dir(c, row["parent"], now)
            self._touch_dir(c, dparent["id"], now)
            return _stat(c.execute(f"SELECT {_COLUMNS} FROM inodes WHERE id = ?", (row["id"],)).fetchone(), dst)

        return await self._tx(mv)

    def _set_attributes(self, path: str, changes: dict[str, Any]) -> Deferred[Stat]:
        """chmod/chown: one UPDATE of the entry's row (BaseStore checked the values)."""
        columns = [name for name in ("mode", "owner") if name in changes]

        def change(c: sqlite3.Connection) -> Stat:
            row = self._resolve(c, path)
            assignments = ", ".join(f"{name} = ?" for name in columns)
            c.execute(f"UPDATE inodes SET {assignments} WHERE id = ?", (*(changes[n] for n in columns), row["id"]))
            return _stat(c.execute(f"SELECT {_COLUMNS} FROM inodes WHERE id = ?", (row["id"],)).fetchone(), path)

        return self._tx(change)

    # -- content primitives --------------------------------------------------------

    def _node(self, path: str) -> Deferred[tuple[Stat, tuple[Segment, ...]]]:
        def node(c: sqlite3.Connection) -> tuple[Stat, tuple[Segment, ...]]:
            row = self._resolve(c, path)
            return _stat(row, path), _segments(row)

        return self._read(node)

    def _prepare_write(self, path: str) -> Deferred[tuple[Stat | None, tuple[Segment, ...]]]:
        def prepare(c: sqlite3.Connection) -> tuple[Stat | None, tuple[Segment, ...]]:
            parent_path, name = paths.split(path)
            parent = self._resolve_dir(c, parent_path, path)
            row = self._child(c, parent["id"], name)
            if row is None:
                return None, ()
            if row["kind"] == "dir":
                raise IsADirectory(path)
            return _stat(row, path), _segments(row)

        return self._read(prepare)

    def _load_chunks(self, path: str, content: Any, first: int, last: int) -> Deferred[list[bytes]]:
        def load() -> list[bytes]:
            assert self._conn is not None
            rows = self._conn.execute(
                "SELECT n, data FROM chunks WHERE content = ? AND n BETWEEN ? AND ? ORDER BY n", (content, first, last)
            ).fetchall()
            if [r[0] for r in rows] != list(range(first, last + 1)):
                raise FileChanged(path)
            return [r[1] for r in rows]

        return self._run(load, writes=False)

    def _begin_upload_sync(self, c: sqlite3.Connection, path: str, now: float) -> int:
        cursor = c.execute("INSERT INTO uploads(touched, path) VALUES (?, ?)", (now, path))
        return int(cursor.lastrowid or 0)

    def _begin_upload(self, path: str) -> Deferred[Any]:
        now = self._now()
        return self._tx(self._begin_upload_sync, path, now)

    def _put_chunk(self, content: Any, n: int, data: bytes) -> Deferred[None]:
        def put() -> None:
            assert self._conn is not None
            self._check_space(len(data))
            self._conn.execute("INSERT INTO chunks(content, n, data) VALUES (?, ?, ?)", (content, n, data))

        return self._run(put)

    def _touch_upload(self, content: Any) -> Deferred[None]:
        now = self._now()

        def touch() -> None:
            assert self._conn is not None
            self._conn.execute("UPDATE uploads SET touched = ? WHERE content = ?", (now, content))

        return self._run(touch)

    def _commit_sync(self, c: sqlite3.Connection, plan: CommitPlan, now: float) -> Stat:
        if c.execute("SELECT 1 FROM uploads WHERE content = ?", (plan.content,)).fetchone() is None:
            raise FSError(plan.path, "the pending write was discarded (stale) before its commit")
        parent_path, name = paths.split(plan.path)
        parent = self._resolve_dir(c, parent_path, plan.path)
        row = self._child(c, parent["id"], name)
        if row is not None and row["kind"] == "dir":
            raise IsADirectory(plan.path)
        current = _segments(row) if row is not None else None
        new = commit_segments(current, plan)
        size = sum(s.length for s in new)
        released = contents_of(current or ()) - contents_of(new)
        if plan.content not in contents_of(new):
            released.add(plan.content)
        if row is None:
            c.execute(
                "INSERT INTO inodes(parent, name, kind, size, mode, owner, ctime, mtime, segments) VALUES (?, ?, 'file', ?, ?, ?, ?, ?, ?)",
                (parent["id"], name, size, plan.perm, plan.owner, now, now, _dump_segments(new)),
            )
            self._touch_dir(c, parent["id"], now)
        else:
            c.execute(
                "UPDATE inodes SET size = ?, mtime = ?, segments = ? WHERE id = ?",
                (size, now, _dump_segments(new), row["id"]),
            )
        self._delete_contents(c, released)
        c.execute("DELETE FROM uploads WHERE content = ?", (plan.content,))
        return _stat(self._child(c, parent["id"], name), plan.path)  # type: ignore[arg-type]

    def _commit_upload(self, plan: CommitPlan) -> Deferred[Stat]:
        return self._tx(self._commit_sync, plan, self._now())

    def _commit_small(self, plan: CommitPlan, data: bytes) -> Deferred[Stat]:
        """A write that fits one chunk is one transaction: no pending state at all."""
        now = self._now()

        def small(c: sqlite3.Connection) -> Stat:
            if data:
                try:
                    self._check_space(len(data))
                except NoSpace as e:
                    raise NoSpace(plan.path, e.detail) from None
            content = self._begin_upload_sync(c, plan.path, now)
            if data:
                c.execute("INSERT INTO chunks(content, n, data) VALUES (?, 0, ?)", (content, data))
            return self._commit_sync(c, replace(plan, content=content), now)

        return self._tx(small)

    @deferred_method
    async def _abort_upload(self, content: Any) -> None:
        def abort(c: sqlite3.Connection) -> bool:
            # only while still pending: after a commit the chunks are live
            if c.execute("DELETE FROM uploads WHERE content = ?", (content,)).rowcount:
                self._delete_contents(c, [content])
                return True
            return False

        if await self._tx(abort):
            await self._shrink()

    # -- maintenance -----------------------------------------------------------------

    @deferred_method
    async def usage(self) -> dict[str, int]:
        """Counts for ``df``-like reports and tests: files, dirs, bytes, chunks, pending uploads."""

        def count(c: sqlite3.Connection) -> dict[str, int]:
            files, size = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM inodes WHERE kind = 'file'"
            ).fetchone()
            dirs = c.execute("SELECT COUNT(*) FROM inodes WHERE kind = 'dir'").fetchone()[0]
            chunks, stored = c.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM chunks").fetchone()
            pending = c.execute("SELECT COUNT(*) FROM uploads").fetchone()[0]
            return {
                "files": files,
                "dirs": dirs,
                "bytes": size,
                "chunks": chunks,
                "stored_bytes": stored,
                "pending_uploads": pending,
            }

        return await self._tx(count, write=False)

    @deferred_method
    async def collect_garbage(self, stale_after: float = STALE_UPLOAD, *, full: bool = False) -> int:
        """Remove pending uploads untouched for *stale_after* seconds.

        With *full*, also sweep for chunks no file or upload refers to (none
        should exist: commits and removals are transactions).  Returns how
        many content ids were removed.
        """
        cutoff = self._now() - stale_after

        def collect(c: sqlite3.Connection) -> int:
            stale = [r[0] for r in c.execute("SELECT content FROM uploads WHERE touched <= ?", (cutoff,))]
            self._delete_contents(c, stale)
            c.executemany("DELETE FROM uploads WHERE content = ?", [(x,) for x in stale])
            if not full:
                return len(stale)
            orphans = [
                r[0]
                for r in c.execute(
                    """SELECT DISTINCT content FROM chunks
                       WHERE content NOT IN (SELECT content FROM uploads)
                         AND content NOT IN (SELECT json_extract(s.value, '$[0]') FROM inodes, json_each(inodes.segments) AS s)"""
                )
            ]
            self._delete_contents(c, orphans)
            return len(stale) + len(orphans)

        removed = await self._tx(collect)
        if removed:
            await self._shrink()
            log.info("file store {url}: collected {n} unreferenced content set(s)", url=self.url, n=removed)
        return removed

    @deferred_method
    async def wipe(self) -> None:
        """Delete every file and directory (the root stays); for ``reset-fs --force``."""
        now = self._now()

        def wipe(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM chunks")
            c.execute("DELETE FROM uploads")
            c.execute("DELETE FROM inodes WHERE id != ?", (ROOT_ID,))
            c.execute(
                "UPDATE inodes SET mtime = ?, ctime = ?, mode = ?, owner = ? WHERE id = ?",
                (now, now, DIR_PERM, DEFAULT_OWNER, ROOT_ID),
            )

        await self._tx(wipe)
        log.info("file store {url} wiped", url=self.url)


__all__ = ["SQLiteStore"]
