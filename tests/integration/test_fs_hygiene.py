"""Failed and abandoned uploads give their space back: the SQLite store and the fs service, in process.

The store keeps a disk reserve (content that would eat into it is refused
with ENOSPC, so there is always room to delete), never leaves a transaction
open after a failure, does not zero freed pages (Debian's SQLite is built
with SECURE_DELETE, which made deleting as costly as writing), and hands
freed pages back to the file system.  The service discards a failed
write's upload at once and a quiet one after ``upload_timeout``.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from oneos.fs.errors import StoreUnavailable, from_wire
from oneos.fs.opening import open_store
from oneos.fs.service import FileSystemService
from oneos.fs.store import NoSpace
from oneos.transfer import TransferError, TransferServer, _ClientConnection, _connect, send

MiB = 1024 * 1024


def db_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory) if f.startswith("fs.db"))


class SQLiteHygiene(unittest.TestCase):
    timeout = 60

    async def open(self, **kw):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.url = f"sqlite:///{os.path.abspath(self.dir)}/fs.db"
        store = await open_store(self.url, reactor, **kw)
        self.addCleanup(store.close)
        return store

    async def test_content_that_would_eat_into_the_reserve_is_refused_and_left_nowhere(self):
        store = await self.open(chunk_size=1024, reserve=1 << 60)
        await store.mkdir("/d")  # metadata still works
        with self.assertRaises(NoSpace) as cm:
            await store.write("/d/f", os.urandom(10_000))
        e = cm.exception
        self.assertEqual((e.code, e.path), ("ENOSPC", "/d/f"))
        self.assertIn("/d/f: no space left on the file store", str(e))
        self.assertIn("kept for the store's own bookkeeping", str(e))
        with self.assertRaises(NoSpace):
            await store.write("/d/small", b"x" * 100)  # a one-chunk write too
        usage = await store.usage()
        self.assertEqual((usage["pending_uploads"], usage["chunks"], usage["files"]), (0, 0, 0))
        self.assertEqual(from_wire("ENOSPC", str(e)).code, "ENOSPC")  # what a client sees

    async def test_a_streamed_write_hitting_the_reserve_fails_and_discards_at_once(self):
        store = await self.open(chunk_size=1024)
        writer = await store.open_write("/f")
        await writer.write(b"a" * 4096)
        await writer.flush()
        store.reserve = 1 << 60  # the disk "fills up" mid-write
        with self.assertRaises(NoSpace):
            for _ in range(20):
                await writer.write(b"b" * 1024)
            await writer.commit()
        await writer.abort()
        usage = await store.usage()
        self.assertEqual((usage["pending_uploads"], usage["chunks"]), (0, 0))
        store.reserve = 0
        await store.write("/g", b"fine")  # and the store works on

    async def test_no_transaction_is_left_open_after_a_failure(self):
        store = await self.open()
        await store._run(lambda: store._conn.execute("BEGIN IMMEDIATE"))  # a stray one, as a failed COMMIT leaves
        await store.mkdir("/after")  # would be "cannot start a transaction within a transaction"

        def rolls_back_by_itself(c):
            c.execute("ROLLBACK")  # what SQLite does on a full disk
            raise sqlite3.OperationalError("database or disk is full")

        with self.assertRaises(StoreUnavailable) as cm:
            await store._tx(rolls_back_by_itself)
        self.assertIn("disk is full", str(cm.exception))  # the real error, not "cannot rollback"
        self.assertTrue(await store.exists("/after"))

    async def test_disk_full_from_sqlite_is_enospc(self):
        store = await self.open()

        def full():
            err = sqlite3.OperationalError("database or disk is full")
            err.sqlite_errorcode = 13
            raise err

        with self.assertRaises(NoSpace):
            await store._run(full)

    async def test_new_databases_free_pages_cheaply_and_give_them_back(self):
        store = await self.open()
        pragmas = await store._run(
            lambda: (
                store._conn.execute("PRAGMA secure_delete").fetchone()[0],
                store._conn.execute("PRAGMA auto_vacuum").fetchone()[0],
            )
        )
        self.assertEqual(pragmas, (2, 2))  # FAST, INCREMENTAL
        await store.write("/keep", b"k" * 1000)
        before = db_bytes(self.dir)
        writer = await store.open_write("/big")
        for _ in range(24):
            await writer.write(os.urandom(256 * 1024))
        await writer.flush()
        self.assertGreater(db_bytes(self.dir), before + 5 * MiB)
        await writer.abort()
        self.assertLess(db_bytes(self.dir), before + 1 * MiB)
        self.assertEqual(await store.read("/keep"), b"k" * 1000)

    async def test_a_discard_that_failed_is_retried(self):
        store = await self.open(chunk_size=1024)
        writer = await store.open_write("/f")
        await writer.write(b"x" * 5000)
        await writer.flush()
        real = store._abort_upload

        def failing(content):
            return defer.fail(NoSpace(None, "the disk is full"))

        store._abort_upload = failing
        await writer.abort()
        self.assertEqual(store.leftovers, 1)
        self.assertEqual((await store.usage())["pending_uploads"], 1)
        self.assertEqual(await store.discard_leftovers(), 0)  # still failing: kept for later
        store._abort_upload = real
        self.assertEqual(await store.discard_leftovers(), 1)
        self.assertEqual(store.leftovers, 0)
        usage = await store.usage()
        self.assertEqual((usage["pending_uploads"], usage["chunks"]), (0, 0))


class Endless:
    """A source that sends one piece and then nothing: a writer that vanished without a word."""

    def __init__(self):
        self.sent = False

    def next(self):
        if not self.sent:
            self.sent = True
            return defer.succeed(b"x" * 300_000)
        return defer.Deferred()  # never


class Pieces:
    def __init__(self, n, size):
        self.n, self.size = n, size

    def next(self):
        self.n -= 1
        return defer.succeed(b"p" * self.size if self.n >= 0 else b"")


class Failing:
    def __init__(self):
        self.n = 0

    def next(self):
        self.n += 1
        if self.n > 3:
            return defer.fail(RuntimeError("the local file could not be read"))
        return defer.succeed(b"y" * 200_000)


class ServiceHygiene(unittest.TestCase):
    timeout = 60

    async def setUp(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.transfer = TransferServer(reactor)
        await self.transfer.listen()
        self.addCleanup(self.transfer.stopService)
        self.svc = FileSystemService(
            f"sqlite:///{directory}/fs.db",
            client=None,
            transfer=self.transfer,
            reactor=reactor,
            upload_timeout=0.5,
            gc_interval=0.2,
            open_options={"chunk_size": 64 * 1024},
        )
        self.svc.running = True
        self.svc.server.start = lambda: defer.succeed(None)
        self.svc.server.stop = lambda: defer.succeed(None)
        self.svc._open()
        for _ in range(100):
            if self.svc.store is not None:
                break
            await task.deferLater(reactor, 0.05)
        self.addCleanup(self.svc.stopService)

    async def usage(self):
        return await self.svc.store.usage()

    async def wait(self, what, check, deadline=10.0):
        end = reactor.seconds() + deadline
        while reactor.seconds() < end:
            if await check():
                return
            await task.deferLater(reactor, 0.05)
        self.fail(f"timed out waiting for {what}")

    async def test_a_writer_that_goes_quiet_is_discarded_after_the_timeout(self):
        where = await self.svc.write_open("/quiet")
        proto = _ClientConnection(where["token"], Endless(), None)
        _connect(reactor, where["host"], where["port"], proto).addErrback(lambda f: None)

        async def pending():
            return (await self.usage())["pending_uploads"] == 1

        await self.wait("chunks of the quiet writer", pending)

        async def gone():
            u = await self.usage()
            return u["pending_uploads"] == 0 and u["chunks"] == 0 and not self.svc.writers

        await self.wait("the quiet upload to be discarded", gone, deadline=5)
        self.assertFalse(await self.svc.store.exists("/quiet"))
        proto.transport.abortConnection()  # (the stream's connection itself is the transfer layer's business)
        await task.deferLater(reactor, 0.1)

    async def test_a_write_whose_sender_fails_is_discarded_at_once(self):
        self.svc.upload_timeout = 30.0  # so what discards it is the failure, not the silence
        where = await self.svc.write_open("/broken")
        with self.assertRaises(RuntimeError):  # the sender's own error; the server saw the stream break
            await send(reactor, where["host"], where["port"], where["token"], Failing())

        async def gone():
            u = await self.usage()
            return u["pending_uploads"] == 0 and u["chunks"] == 0

        await self.wait("the failed upload to be discarded", gone, deadline=5)  # long before the timeout

    async def test_a_write_refused_for_space_is_a_clear_error_and_leaves_nothing(self):
        self.svc.store.reserve = 1 << 60
        where = await self.svc.write_open("/full")
        with self.assertRaises(TransferError) as cm:
            await send(reactor, where["host"], where["port"], where["token"], Pieces(5, 200_000))
        self.assertEqual(cm.exception.kind, "ENOSPC")
        self.assertIn("/full: no space left on the file store", str(cm.exception))
        u = await self.usage()
        self.assertEqual((u["pending_uploads"], u["chunks"]), (0, 0))
        self.svc.store.reserve = 0
        where = await self.svc.write_open("/fits")
        await send(reactor, where["host"], where["port"], where["token"], Once())
        self.assertTrue(await self.svc.store.exists("/fits"))

    async def test_uploads_left_by_an_earlier_service_are_collected(self):
        store = self.svc.store
        writer = await store.open_write("/orphan")  # nobody here streams it: a dead writer's leftover
        await writer.write(b"o" * 200_000)
        await writer.flush()
        self.svc.stale_upload = 0.3

        async def gone():
            return (await self.usage())["pending_uploads"] == 0

        await self.wait("the orphan upload to be collected", gone, deadline=5)

    async def test_a_slow_live_writer_is_kept_fresh(self):
        self.svc.stale_upload = 0.3  # far shorter than the writer's pauses
        self.svc.upload_timeout = None
        where = await self.svc.write_open("/slow")
        source = Slow()
        d = send(reactor, where["host"], where["port"], where["token"], source)
        stat = await d
        self.assertEqual(stat["size"], 3 * 100_000)
        self.assertEqual(await self.svc.store.read("/slow"), b"z" * 300_000)


class Once:
    """Sends 1 KiB, then ends."""

    done = False

    def next(self):
        if self.done:
            return defer.succeed(b"")
        self.done = True
        return defer.succeed(b"q" * 1024)


class Slow:
    """Three pieces a second apart (longer than the stale age)."""

    def __init__(self):
        self.n = 0

    def next(self):
        self.n += 1
        if self.n > 3:
            return defer.succeed(b"")
        if self.n == 1:
            return defer.succeed(b"z" * 100_000)
        return task.deferLater(reactor, 1.0, lambda: b"z" * 100_000)
