"""The SQLite store's point reads on the reactor thread, beside its worker thread.

A stat, the look-up an open makes and a small listing are answered on the
reactor thread, on a read-only connection of their own, while no write is
on its way through the worker thread; otherwise they queue behind the write
as before.  These tests check what that must keep: a read sees every write
asked for before it, answered or not; large listings and file content stay
on the thread; a read the reactor-thread connection cannot make goes to the
thread.  "Answered on the reactor thread" is seen as a Deferred that has its
result when the call returns (the thread answers in a later reactor turn);
nothing here is timed.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from oneos.fs import errors as E
from oneos.fs import sqlite_store
from oneos.fs.opening import open_store
from oneos.fs.sqlite_store import SQLiteStore

T0 = 1_700_000_000.0


def answered_now(d: defer.Deferred) -> bool:
    """Whether *d* has its result already (``called`` is also true for a Deferred waiting on another)."""
    seen: list[bool] = []

    def note(result: Any) -> Any:
        seen.append(True)
        return result

    d.addBoth(note)
    return bool(seen)


class PointReads(unittest.TestCase):
    timeout = 60

    async def open(self, target: str | None = None, **kw: Any) -> SQLiteStore:
        if target is None:
            directory = os.path.abspath(self.mktemp())
            target = f"{directory}/fs.db"
        clock = task.Clock()
        clock.advance(T0)
        store = await open_store(f"sqlite://{target}", reactor, chunk_size=1024, clock=clock, **kw)
        self.addCleanup(store.close)
        assert isinstance(store, SQLiteStore)
        return store

    async def test_a_stat_after_an_answered_write_is_answered_at_once_and_sees_it(self):
        store = await self.open()
        await store.write("/f", b"old")
        written = await store.write("/f", b"new content")
        before = (store.reads_inline, store.reads_queued)
        d = store.stat("/f")
        self.assertTrue(answered_now(d), "answered on the reactor thread, not queued")
        st = await d
        self.assertEqual((st.size, st.mtime), (len(b"new content"), written.mtime))
        self.assertEqual((store.reads_inline, store.reads_queued), (before[0] + 1, before[1]))
        made = await store.mkdir("/d")
        self.assertEqual(await store.stat("/d"), made)
        await store.remove("/d")
        with self.assertRaises(E.NotFound):
            await store.stat("/d")

    async def test_a_read_asked_while_a_write_is_on_its_way_queues_behind_it_and_sees_it(self):
        store = await self.open()
        await store.mkdir("/d")
        write = store.write("/d/f", b"x" * 10)
        self.assertFalse(answered_now(write), "a write goes through the worker thread")
        queued = store.reads_queued
        stat = store.stat("/d/f")
        listing = store.scandir("/d")
        self.assertFalse(answered_now(stat) or answered_now(listing), "queued behind the write, as on one thread")
        self.assertEqual(store.reads_queued, queued + 2)
        self.assertEqual((await stat).size, 10)
        self.assertEqual([s.name for s in await listing], ["f"])
        await write
        self.assertTrue(answered_now(store.stat("/d/f")), "nothing on its way: the reactor thread again")

    async def test_errors_are_answered_on_the_reactor_thread_as_on_the_thread(self):
        store = await self.open()
        await store.write("/f", b"data")
        missing, through_file = store.stat("/nope"), store.stat("/f/x")
        self.assertTrue(answered_now(missing) and answered_now(through_file))
        with self.assertRaises(E.NotFound):
            await missing
        with self.assertRaises(E.NotADirectory):
            await through_file
        with self.assertRaises(E.NotADirectory):
            await store.scandir("/f")
        with self.assertRaises(E.InvalidPath):
            await store.stat("/a/../..")
        self.assertTrue(await store.exists("/f"))
        self.assertFalse(await store.exists("/f/x"))

    async def test_small_listings_on_the_reactor_thread_larger_ones_on_the_thread(self):
        self.patch(sqlite_store, "INLINE_LISTING", 3)
        store = await self.open()
        await store.mkdir("/small")
        await store.mkdir("/large")
        for name in "cab":
            await store.write(f"/small/{name}", name.encode())
        for name in "edcba":
            await store.write(f"/large/{name}", name.encode())
        small = store.scandir("/small")
        self.assertTrue(answered_now(small))
        self.assertEqual([s.path for s in await small], ["/small/a", "/small/b", "/small/c"])
        large = store.scandir("/large")
        self.assertFalse(answered_now(large), "more entries than the reactor thread lists: the worker thread")
        self.assertEqual([s.name for s in await large], ["a", "b", "c", "d", "e"])
        self.assertEqual(await store.listdir("/"), ["large", "small"])

    async def test_content_is_read_on_the_thread_and_stats_go_on_beside_it(self):
        store = await self.open()
        data = os.urandom(5000)  # five chunks of 1 KiB, in two batches
        await store.write("/big", data)
        reader = await store.read_chunks("/big")
        first = reader.read_chunk()
        self.assertFalse(answered_now(first), "chunks are loaded on the worker thread")
        st = store.stat("/big")
        self.assertTrue(answered_now(st), "a content read on its way does not hold point reads back")
        self.assertEqual((await st).size, 5000)
        chunks = [await first]
        async for chunk in reader:
            chunks.append(chunk)
        self.assertEqual(b"".join(chunks), data)

    async def test_a_read_the_reactor_thread_cannot_make_goes_to_the_thread(self):
        store = await self.open()
        await store.write("/f", b"data")
        assert store._reader is not None
        store._reader.close()  # every statement on it now fails with a SQLite error
        queued = store.reads_queued
        d = store.stat("/f")
        self.assertFalse(answered_now(d))
        self.assertEqual((await d).size, 4)
        self.assertEqual(store.reads_queued, queued + 1)

    async def test_a_database_in_memory_reads_on_its_thread(self):
        store = await self.open(":memory:")
        await store.write("/f", b"data")
        d = store.stat("/f")
        self.assertFalse(answered_now(d), "a second connection would open another database")
        self.assertEqual((await d).size, 4)
        self.assertEqual(store.reads_inline, 0)

    async def test_the_reactor_thread_connection_changes_nothing_and_closes_with_the_store(self):
        store = await self.open()
        reader = store._reader
        assert reader is not None
        with self.assertRaises(Exception) as cm:
            reader.execute("DELETE FROM inodes")
        self.assertIn("readonly", str(cm.exception))
        await store.close()
        self.assertIsNone(store._reader)
        with self.assertRaises(E.StoreUnavailable):
            await store.stat("/")

    async def test_many_interleaved_writes_and_reads_each_see_what_came_before(self):
        store = await self.open()
        await store.mkdir("/d")
        calls: list[defer.Deferred] = []
        for i in range(20):
            calls.append(store.write(f"/d/f{i}", b"x" * i))
            calls.append(store.stat(f"/d/f{i}"))
            calls.append(store.scandir("/d"))
        answers = await defer.gatherResults(calls)
        for i in range(20):
            _, st, listing = answers[3 * i : 3 * i + 3]
            self.assertEqual(st.size, i)
            self.assertEqual(len(listing), i + 1)
