"""One contract suite for every file-store backend.

:class:`StoreContract` holds the tests; :class:`SQLiteContract` and
:class:`MongoContract` run them against ``sqlite:///<tmp>`` and against a
fresh database on the session's MongoDB-wire server (SecantusDB, or the
mongod named by ONEOS_TEST_MONGODB_URL).  Stores are opened with a small
chunk size so chunk boundaries, batching and append merging are exercised
with small data; time comes from a ``task.Clock`` so timestamps and garbage
collection are deterministic.
"""

from __future__ import annotations

import hashlib
import os
import random
import tracemalloc
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from oneos.fs import errors as E
from oneos.fs import store as store_module
from oneos.fs.opening import open_store
from oneos.fs.paths import MAX_NAME_BYTES
from oneos.fs.planning import MAX_SEGMENTS
from oneos.fs.store import CHUNK_SIZE, FileStore, Stat

SMALL_CHUNK = 1024
T0 = 1_700_000_000.0


class StoreFixture:
    """Opens a store per test; a backend mixin provides :meth:`store_url`."""

    timeout = 120
    chunk_size = SMALL_CHUNK

    def store_url(self) -> str:
        raise NotImplementedError

    async def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.url = self.store_url()
        self.store: FileStore = await open_store(self.url, reactor, chunk_size=self.chunk_size, clock=self.clock)
        self.addCleanup(self._close)

    async def _close(self) -> None:
        await self.store.close()

    async def reopen(self, **kw: Any) -> FileStore:
        await self.store.close()
        self.store = await open_store(self.url, reactor, clock=self.clock, **kw)
        return self.store

    async def assertFails(self, error: type[Exception], d: Any) -> Exception:
        try:
            await d
        except error as e:
            return e
        except Exception as e:  # pragma: no cover - shown as a failure
            self.fail(f"expected {error.__name__}, got {type(e).__name__}: {e}")
        self.fail(f"expected {error.__name__}, nothing raised")


class StoreContract(StoreFixture):
    """The behaviour every backend must have."""

    # -- the root and directories ----------------------------------------------

    async def test_root_exists_and_is_empty(self):
        root = await self.store.stat("/")
        self.assertEqual((root.path, root.kind), ("/", "dir"))
        self.assertEqual(await self.store.listdir("/"), [])
        self.assertTrue(await self.store.exists("/"))

    async def test_mkdir_and_stat(self):
        st = await self.store.mkdir("/home", owner="alice", perm=0o750)
        self.assertEqual((st.path, st.kind, st.owner, st.mode, st.size), ("/home", "dir", "alice", 0o750, 0))
        self.assertEqual((st.ctime, st.mtime), (T0, T0))
        self.assertEqual(await self.store.stat("/home/"), st)
        self.assertEqual(await self.store.listdir("/"), ["home"])

    async def test_mkdir_errors(self):
        await self.store.mkdir("/a")
        await self.assertFails(E.AlreadyExists, self.store.mkdir("/a"))
        await self.assertFails(E.AlreadyExists, self.store.mkdir("/"))
        await self.assertFails(E.NotFound, self.store.mkdir("/missing/b"))
        await self.store.write("/a/f", b"x")
        await self.assertFails(E.NotADirectory, self.store.mkdir("/a/f/b"))
        await self.assertFails(E.AlreadyExists, self.store.mkdir("/a/f", exist_ok=True))
        await self.assertFails(E.NotADirectory, self.store.mkdir("/a/f/b/c", parents=True))

    async def test_mkdir_parents_and_exist_ok(self):
        st = await self.store.mkdir("/x/y/z", parents=True)
        self.assertEqual(st.path, "/x/y/z")
        self.assertEqual(await self.store.listdir("/x/y"), ["z"])
        again = await self.store.mkdir("/x/y/z", parents=True)
        self.assertEqual(again, st)
        self.assertEqual(await self.store.mkdir("/x/y", exist_ok=True), await self.store.stat("/x/y"))
        self.assertEqual((await self.store.mkdir("/", parents=True)).path, "/")

    async def test_stat_errors(self):
        await self.assertFails(E.NotFound, self.store.stat("/nope"))
        await self.store.write("/f", b"data")
        await self.assertFails(E.NotADirectory, self.store.stat("/f/x"))
        await self.assertFails(E.NotADirectory, self.store.listdir("/f"))
        self.assertFalse(await self.store.exists("/f/x"))
        self.assertFalse(await self.store.exists("/nope"))
        self.assertTrue(await self.store.exists("/f"))

    async def test_scandir_gives_stats_sorted(self):
        for name in ("b", "a", "C", "é"):
            await self.store.write(f"/{name}", name.encode())
        await self.store.mkdir("/d")
        entries = await self.store.scandir("/")
        self.assertEqual([e.name for e in entries], ["C", "a", "b", "d", "é"])
        self.assertEqual({e.kind for e in entries}, {"file", "dir"})
        self.assertEqual([e.size for e in entries if e.is_file], [1, 1, 1, 2])

    async def test_paths_are_normalised(self):
        await self.store.mkdir("/a/b", parents=True)
        await self.store.write("//a/./b/../b//f", b"hi")
        self.assertEqual(await self.store.read("/a/b/f"), b"hi")
        self.assertEqual((await self.store.stat("/a/b/./f/")).path, "/a/b/f")

    # -- bad input ----------------------------------------------------------------------

    async def test_bad_paths_are_refused(self):
        await self.assertFails(E.InvalidPath, self.store.stat("/../etc"))
        await self.assertFails(E.InvalidPath, self.store.write("/a/../../x", b""))
        await self.assertFails(E.InvalidPath, self.store.mkdir("/bad\x00name"))
        await self.assertFails(E.InvalidPath, self.store.write("", b""))
        await self.assertFails(E.NameTooLong, self.store.mkdir("/" + "n" * (MAX_NAME_BYTES + 1)))
        await self.assertFails(E.NameTooLong, self.store.mkdir("/" + "é" * 128))  # 256 bytes
        await self.assertFails(E.NameTooLong, self.store.stat("/" + "/".join(["d" * 200] * 21)))
        longest = "é" * 127 + "x"  # exactly 255 bytes
        await self.store.mkdir("/" + longest)
        self.assertEqual(await self.store.listdir("/"), [longest])

    async def test_writing_to_a_directory_is_refused(self):
        await self.store.mkdir("/d")
        await self.assertFails(E.IsADirectory, self.store.write("/d", b"x"))
        await self.assertFails(E.IsADirectory, self.store.write("/", b"x"))
        await self.assertFails(E.IsADirectory, self.store.write("/d", b"x", mode="append"))
        await self.assertFails(E.IsADirectory, self.store.read("/d"))
        await self.assertFails(E.NotFound, self.store.write("/missing/f", b"x"))
        await self.store.write("/f", b"x")
        await self.assertFails(E.NotADirectory, self.store.write("/f/g", b"x"))
        await self.assertFails(E.InvalidArgument, self.store.open_write("/g", mode="overwrite"))
        await self.assertFails(E.InvalidArgument, self.store.read("/f", offset=-1))

    async def test_removing_root_is_not_permitted(self):
        e = await self.assertFails(E.OperationNotPermitted, self.store.remove("/", recursive=True))
        self.assertEqual(e.code, "EPERM")
        await self.assertFails(E.OperationNotPermitted, self.store.rename("/", "/x"))
        await self.assertFails(E.OperationNotPermitted, self.store.remove("/a/.."))

    # -- content ----------------------------------------------------------------------------

    async def test_round_trip_at_chunk_boundaries(self):
        cs = self.store.chunk_size
        for size in (0, 1, cs - 1, cs, cs + 1, 3 * cs + 5):
            data = os.urandom(size)
            st = await self.store.write("/f", data)
            self.assertEqual(st.size, size)
            self.assertEqual(await self.store.read("/f"), data, f"size {size}")
        usage = await self.store.usage()
        self.assertEqual(usage["chunks"], 4, "old versions' chunks are deleted")
        self.assertEqual(usage["pending_uploads"], 0)

    async def test_range_reads(self):
        cs = self.store.chunk_size
        data = os.urandom(5 * cs + 17)
        await self.store.write("/f", data)
        rng = random.Random(7)
        cases = [
            (0, None),
            (0, 0),
            (cs - 1, 2),
            (cs, cs),
            (2 * cs + 3, 3 * cs),
            (len(data) - 1, 10),
            (len(data), 5),
            (len(data) + 100, None),
        ]
        cases += [(rng.randrange(len(data)), rng.randrange(3 * cs)) for _ in range(20)]
        for offset, length in cases:
            want = data[offset:] if length is None else data[offset : offset + length]
            self.assertEqual(await self.store.read("/f", offset, length), want, (offset, length))

    async def test_chunk_reader_streams_in_chunks(self):
        cs = self.store.chunk_size
        data = os.urandom(11 * cs + 3)
        await self.store.write("/f", data)
        reader = await self.store.read_chunks("/f", offset=5)
        self.assertEqual(reader.length, len(data) - 5)
        got = []
        async for chunk in reader:
            self.assertLessEqual(len(chunk), cs)
            got.append(chunk)
        self.assertEqual(b"".join(got), data[5:])
        self.assertEqual(await reader.read_chunk(), b"")
        sink: list[bytes] = []
        reader = await self.store.read_chunks("/f", 0, 2 * cs)
        self.assertEqual(await reader.pump(sink.append), 2 * cs)
        self.assertEqual(b"".join(sink), data[: 2 * cs])

    async def test_truncate_replaces_and_keeps_owner_and_mode(self):
        await self.store.write("/f", b"first version, long", owner="bob", perm=0o600)
        self.clock.advance(5)
        st = await self.store.write("/f", b"second", owner="eve", perm=0o666)
        self.assertEqual(await self.store.read("/f"), b"second")
        self.assertEqual((st.owner, st.mode, st.size, st.ctime, st.mtime), ("bob", 0o600, 6, T0, T0 + 5))

    # -- owner and mode ---------------------------------------------------------------------

    async def test_chmod_changes_only_the_mode(self):
        await self.store.write("/f", b"content", owner="bob", perm=0o644)
        await self.store.mkdir("/d", owner="bob")
        self.clock.advance(5)
        st = await self.store.chmod("/f", 0o600)
        self.assertEqual(
            (st.path, st.kind, st.owner, st.mode, st.size, st.ctime, st.mtime), ("/f", "file", "bob", 0o600, 7, T0, T0)
        )
        self.assertEqual(await self.store.stat("/f"), st)
        self.assertEqual(await self.store.read("/f"), b"content")
        self.assertEqual((await self.store.chmod("/d/", 0o1777)).mode, 0o1777)
        self.assertEqual((await self.store.stat("/d")).mode, 0o1777)
        self.assertEqual((await self.store.chmod("/", 0o711)).mode, 0o711)
        self.assertEqual((await self.store.stat("/")).mode, 0o711)
        self.assertEqual((await self.store.chmod("/f", 0)).mode, 0)

    async def test_chown_changes_only_the_owner(self):
        await self.store.write("/f", b"content", owner="bob", perm=0o640)
        await self.store.mkdir("/d/e", parents=True)
        self.clock.advance(5)
        st = await self.store.chown("/f", "alice")
        self.assertEqual((st.owner, st.mode, st.size, st.ctime, st.mtime), ("alice", 0o640, 7, T0, T0))
        self.assertEqual((await self.store.stat("/f")).owner, "alice")
        self.assertEqual((await self.store.chown("/d", "carol")).owner, "carol")
        self.assertEqual((await self.store.stat("/d/e")).owner, "root", "not recursive")
        self.assertEqual([s.owner for s in await self.store.scandir("/")], ["carol", "alice"])

    async def test_owner_and_mode_survive_writes_renames_and_reopening(self):
        await self.store.mkdir("/a")
        await self.store.write("/a/f", b"one")
        await self.store.chmod("/a/f", 0o600)
        await self.store.chown("/a/f", "bob")
        await self.store.write("/a/f", b"two, longer than one")
        await self.store.write("/a/f", b" and appended", mode="append")
        st = await self.store.rename("/a/f", "/a/g")
        self.assertEqual((st.owner, st.mode), ("bob", 0o600))
        store = await self.reopen()
        st = await store.stat("/a/g")
        self.assertEqual((st.owner, st.mode), ("bob", 0o600))
        self.assertEqual(await store.read("/a/g"), b"two, longer than one and appended")

    async def test_chmod_and_chown_errors(self):
        await self.assertFails(E.NotFound, self.store.chmod("/missing", 0o644))
        await self.assertFails(E.NotFound, self.store.chown("/missing/x", "bob"))
        await self.store.write("/f", b"x")
        await self.assertFails(E.NotADirectory, self.store.chmod("/f/x", 0o644))
        for bad in (-1, 0o10000, "644", 6.0, True, None):
            await self.assertFails(E.InvalidArgument, self.store.chmod("/f", bad))
        for bad in ("", "two words", "a/b", "x" * 65, "tab\t", 5, None):
            await self.assertFails(E.InvalidArgument, self.store.chown("/f", bad))
        await self.assertFails(E.InvalidPath, self.store.chmod("/../f", 0o644))
        st = await self.store.stat("/f")
        self.assertEqual((st.owner, st.mode), ("root", 0o644), "a refused change changes nothing")

    async def test_append(self):
        await self.store.write("/log", b"one\n", mode="append")
        await self.store.write("/log", b"two\n", mode="append")
        st = await self.store.write("/log", b"", mode="append")
        self.assertEqual(await self.store.read("/log"), b"one\ntwo\n")
        self.assertEqual(st.size, 8)

    async def test_many_appends_stay_correct_and_compact(self):
        cs = self.store.chunk_size
        rng = random.Random(3)
        model = b""
        for i in range(80):
            piece = os.urandom(rng.choice([1, 7, cs // 3, cs - 1, cs + 5, 2 * cs]))
            await self.store.write("/f", piece, mode="append")
            model += piece
            if i % 25 == 0:
                self.assertEqual(await self.store.read("/f"), model)
        self.assertEqual(await self.store.read("/f"), model)
        _, segments = await self.store._node("/f")
        self.assertLessEqual(len(segments), MAX_SEGMENTS)
        usage = await self.store.usage()
        stored_chunks_bound = len(model) // cs + 2 * len(segments) + 1
        self.assertLessEqual(usage["chunks"], stored_chunks_bound, "absorbed tails are not kept twice")

    async def test_empty_file(self):
        st = await self.store.write("/empty", b"")
        self.assertEqual((st.size, st.kind), (0, "file"))
        self.assertEqual(await self.store.read("/empty"), b"")
        self.assertEqual(await self.store.read("/empty", 10, 10), b"")

    # -- streamed writes and atomic commit ----------------------------------------------------

    async def test_write_is_invisible_until_commit(self):
        cs = self.store.chunk_size
        await self.store.write("/f", b"old")
        writer = await self.store.open_write("/f")
        new = await self.store.open_write("/new")
        for _ in range(5):
            await writer.write(os.urandom(cs))
            await new.write(os.urandom(cs))
        await writer.flush()
        await new.flush()
        self.assertEqual(await self.store.read("/f"), b"old")
        self.assertFalse(await self.store.exists("/new"))
        self.assertEqual((await self.store.usage())["pending_uploads"], 2)
        st = await writer.commit()
        self.assertEqual(st.size, 5 * cs)
        self.assertEqual((await self.store.stat("/f")).size, 5 * cs)
        await new.abort()
        self.assertFalse(await self.store.exists("/new"))
        usage = await self.store.usage()
        self.assertEqual((usage["chunks"], usage["pending_uploads"]), (5, 0))

    async def test_writer_refuses_use_after_commit(self):
        writer = await self.store.open_write("/f")
        await writer.write(b"abc")
        await writer.commit()
        await self.assertFails(ValueError, writer.write(b"more"))
        await self.assertFails(ValueError, writer.commit())
        await writer.abort()  # harmless
        self.assertEqual(await self.store.read("/f"), b"abc")

    async def test_commit_fails_cleanly_if_parent_vanished(self):
        cs = self.store.chunk_size
        await self.store.mkdir("/d")
        writer = await self.store.open_write("/d/f")
        await writer.write(os.urandom(3 * cs))
        await self.store.remove("/d")
        await self.assertFails(E.NotFound, writer.commit())
        usage = await self.store.usage()
        self.assertEqual((usage["chunks"], usage["pending_uploads"], usage["files"]), (0, 0, 0))

    async def test_concurrent_writers_never_interleave(self):
        cs = self.store.chunk_size
        a, b = os.urandom(7 * cs + 1), os.urandom(9 * cs + 2)
        wa = await self.store.open_write("/f")
        wb = await self.store.open_write("/f")
        for i in range(0, max(len(a), len(b)), cs // 2):
            await defer.gatherResults([wa.write(a[i : i + cs // 2]), wb.write(b[i : i + cs // 2])])
        await wb.commit()
        self.assertEqual(await self.store.read("/f"), b)
        await wa.commit()
        self.assertEqual(await self.store.read("/f"), a)
        usage = await self.store.usage()
        self.assertEqual(usage["chunks"], 8, "the loser's chunks are gone")

    async def test_concurrent_commits_race_whole(self):
        data = [bytes([i]) * (3 * self.store.chunk_size + 1 + i) for i in range(6)]
        await defer.gatherResults([self.store.write("/f", d) for d in data])
        self.assertIn(await self.store.read("/f"), data)
        self.assertEqual((await self.store.usage())["chunks"], 4)

    async def test_concurrent_appends_all_land_whole(self):
        cs = self.store.chunk_size
        await self.store.write("/log", b"start|")
        pieces = [bytes([65 + i]) * (cs // 2 + i) for i in range(4)]
        writers = [await self.store.open_write("/log", mode="append") for _ in pieces]
        for w, p in zip(writers, pieces, strict=False):
            await w.write(p)
        for w in reversed(writers):
            await w.commit()
        content = await self.store.read("/log")
        self.assertTrue(content.startswith(b"start|"))
        self.assertEqual(len(content), 6 + sum(map(len, pieces)))
        for p in pieces:
            self.assertIn(p, content)
        self.assertEqual(content, b"start|" + b"".join(reversed(pieces)))

    async def test_reader_never_mixes_versions(self):
        cs = self.store.chunk_size
        old, new = os.urandom(40 * cs), os.urandom(40 * cs)
        await self.store.write("/f", old)
        reader = await self.store.read_chunks("/f")
        got = [await reader.read_chunk()]
        await self.store.write("/f", new)
        try:
            async for chunk in reader:
                got.append(chunk)
        except E.FileChanged as e:
            self.assertEqual(e.code, "ESTALE")
            self.assertTrue(old.startswith(b"".join(got)))
        else:  # pragma: no cover - only if every chunk was already buffered
            self.assertEqual(b"".join(got), old)
        self.assertEqual(await self.store.read("/f"), new)

    async def test_writer_memory_is_bounded(self):
        cs = self.store.chunk_size
        writer = await self.store.open_write("/f")
        digest = hashlib.sha256()
        for _ in range(200):
            piece = os.urandom(cs // 3)
            digest.update(piece)
            await writer.write(piece)
        # one caller write far larger than a chunk is taken in pieces
        big = os.urandom(20 * cs)
        digest.update(big)
        await writer.write(big)
        await writer.commit()
        self.assertLessEqual(writer.peak_buffered, (store_module.WRITE_WINDOW + 1) * cs + len(big))
        read = hashlib.sha256()
        reader = await self.store.read_chunks("/f")
        await reader.pump(read.update)
        self.assertEqual(read.hexdigest(), digest.hexdigest())

    # -- remove, rename, copy ------------------------------------------------------------------

    async def test_remove(self):
        await self.store.mkdir("/d/e", parents=True)
        await self.store.write("/d/e/f", os.urandom(3000))
        await self.store.write("/d/g", b"g")
        await self.assertFails(E.DirectoryNotEmpty, self.store.remove("/d"))
        await self.store.remove("/d/g")
        self.assertEqual(await self.store.listdir("/d"), ["e"])
        await self.store.remove("/d", recursive=True)
        self.assertEqual(await self.store.listdir("/"), [])
        await self.assertFails(E.NotFound, self.store.remove("/d"))
        await self.store.mkdir("/empty")
        await self.store.remove("/empty")
        usage = await self.store.usage()
        self.assertEqual((usage["files"], usage["dirs"], usage["chunks"]), (0, 1, 0))

    async def test_remove_updates_parent_mtime(self):
        await self.store.mkdir("/d")
        self.clock.advance(10)
        await self.store.write("/d/f", b"x")
        self.assertEqual((await self.store.stat("/d")).mtime, T0 + 10)
        self.clock.advance(10)
        await self.store.remove("/d/f")
        self.assertEqual((await self.store.stat("/d")).mtime, T0 + 20)

    async def test_rename_file_and_tree(self):
        await self.store.mkdir("/a/b", parents=True)
        await self.store.write("/a/b/f", b"content")
        await self.store.mkdir("/z")
        st = await self.store.rename("/a", "/z/moved")
        self.assertEqual((st.path, st.kind), ("/z/moved", "dir"))
        self.assertEqual(await self.store.read("/z/moved/b/f"), b"content")
        self.assertFalse(await self.store.exists("/a"))
        st = await self.store.rename("/z/moved/b/f", "/g")
        self.assertEqual((st.path, st.size), ("/g", 7))
        self.assertEqual(await self.store.listdir("/z/moved/b"), [])
        same = await self.store.rename("/g", "/g")
        self.assertEqual(same.path, "/g")

    async def test_rename_replaces_a_file(self):
        await self.store.write("/src", b"new content")
        await self.store.write("/dst", os.urandom(5000))
        await self.store.rename("/src", "/dst")
        self.assertEqual(await self.store.read("/dst"), b"new content")
        self.assertEqual(await self.store.listdir("/"), ["dst"])
        usage = await self.store.usage()
        self.assertEqual((usage["files"], usage["chunks"]), (1, 1))

    async def test_rename_rules(self):
        await self.store.mkdir("/d/sub", parents=True)
        await self.store.mkdir("/empty")
        await self.store.mkdir("/full")
        await self.store.write("/full/x", b"x")
        await self.store.write("/f", b"f")
        await self.assertFails(E.IsADirectory, self.store.rename("/f", "/empty"))
        await self.assertFails(E.NotADirectory, self.store.rename("/d", "/f"))
        await self.assertFails(E.DirectoryNotEmpty, self.store.rename("/d", "/full"))
        await self.assertFails(E.InvalidArgument, self.store.rename("/d", "/d/sub/d"))
        await self.assertFails(E.NotFound, self.store.rename("/nope", "/x"))
        await self.assertFails(E.NotFound, self.store.rename("/f", "/nope/x"))
        await self.assertFails(E.NotADirectory, self.store.rename("/f", "/f/x"))
        await self.store.rename("/d", "/empty")
        self.assertEqual(await self.store.listdir("/empty"), ["sub"])
        self.assertEqual(await self.store.listdir("/"), ["empty", "f", "full"])

    async def test_copy_file_and_tree(self):
        data = os.urandom(4 * self.store.chunk_size + 9)
        await self.store.mkdir("/src/inner", parents=True)
        await self.store.write("/src/inner/f", data, perm=0o600, owner="bob")
        await self.store.write("/src/g", b"g")
        st = await self.store.copy("/src/inner/f", "/copy")
        self.assertEqual((st.size, st.mode, st.owner), (len(data), 0o600, "bob"))
        self.assertEqual(await self.store.read("/copy"), data)
        await self.store.copy("/src/g", "/copy", owner="eve")  # replaces a file
        self.assertEqual(await self.store.read("/copy"), b"g")
        await self.assertFails(E.IsADirectory, self.store.copy("/src", "/dst"))
        await self.assertFails(E.InvalidArgument, self.store.copy("/src", "/src/inner/x", recursive=True))
        await self.assertFails(E.InvalidArgument, self.store.copy("/copy", "/copy"))
        await self.store.copy("/src", "/dst", recursive=True)
        self.assertEqual(await self.store.glob("/dst/**"), ["/dst", "/dst/g", "/dst/inner", "/dst/inner/f"])
        self.assertEqual(await self.store.read("/dst/inner/f"), data)
        await self.assertFails(E.AlreadyExists, self.store.copy("/src", "/dst", recursive=True))

    # -- glob ------------------------------------------------------------------------------------

    async def test_glob(self):
        for path in ("/a/x.txt", "/a/y.txt", "/a/.hidden.txt", "/a/sub/z.txt", "/b/x.py", "/b/deep/er/w.txt"):
            await self.store.mkdir(path.rsplit("/", 1)[0], parents=True)
            await self.store.write(path, b"")
        g = self.store.glob
        self.assertEqual(await g("/a/*.txt"), ["/a/x.txt", "/a/y.txt"])
        self.assertEqual(await g("/a/.*"), ["/a/.hidden.txt"])
        self.assertEqual(await g("/?/x.*"), ["/a/x.txt", "/b/x.py"])
        self.assertEqual(await g("/a/[xz].txt"), ["/a/x.txt"])
        self.assertEqual(await g("/**/*.txt"), ["/a/sub/z.txt", "/a/x.txt", "/a/y.txt", "/b/deep/er/w.txt"])
        self.assertEqual(await g("*/sub", cwd="/a/.."), ["/a/sub"])
        self.assertEqual(await g("/a/x.txt"), ["/a/x.txt"])
        self.assertEqual(await g("/a/nope"), [])
        self.assertEqual(await g("/nope/*"), [])
        self.assertEqual(await g("/a/x.txt/*"), [])

    # -- metadata, usage, garbage, wipe, persistence ----------------------------------------------

    async def test_stat_crosses_the_wire(self):
        st = await self.store.write("/f", b"abc", owner="carol")
        self.assertEqual(Stat.from_dict(st.to_dict()), st)
        e = await self.assertFails(E.NotFound, self.store.stat("/nope"))
        wire = e.to_wire()
        again = E.from_wire(wire["code"], wire["message"], wire["path"])
        self.assertIsInstance(again, E.NotFound)
        self.assertEqual((str(again), again.path), (str(e), "/nope"))

    async def test_dead_writers_leftovers_are_collected_when_stale(self):
        cs = self.store.chunk_size
        await self.store.write("/keep", os.urandom(2 * cs))
        writer = await self.store.open_write("/lost")
        await writer.write(os.urandom(3 * cs))  # never committed: the writer "died"
        await writer.flush()
        usage = await self.store.usage()
        self.assertEqual((usage["pending_uploads"], usage["chunks"]), (1, 5))
        self.assertEqual(await self.store.collect_garbage(), 0, "a fresh upload may still be committed")
        self.clock.advance(store_module.STALE_UPLOAD + 1)
        self.assertEqual(await self.store.collect_garbage(), 1)
        usage = await self.store.usage()
        self.assertEqual((usage["pending_uploads"], usage["chunks"], usage["files"]), (0, 2, 1))
        await self.assertFails(E.FSError, writer.commit())
        self.assertFalse(await self.store.exists("/lost"))
        self.assertEqual(len(await self.store.read("/keep")), 2 * cs)

    async def test_full_sweep_spares_live_and_pending_content(self):
        cs = self.store.chunk_size
        data = os.urandom(3 * cs + 1)
        await self.store.write("/f", data)
        await self.store.write("/g", b"small", mode="append")
        writer = await self.store.open_write("/pending")
        await writer.write(os.urandom(2 * cs))
        await writer.flush()
        before = await self.store.usage()
        self.assertEqual(await self.store.collect_garbage(full=True), 0)
        self.assertEqual(await self.store.usage(), before)
        await writer.commit()
        self.assertEqual(await self.store.read("/f"), data)
        self.assertEqual((await self.store.stat("/pending")).size, 2 * cs)

    async def test_long_writes_stay_fresh(self):
        cs = self.store.chunk_size
        writer = await self.store.open_write("/slow")
        for _ in range(4):
            self.clock.advance(store_module.STALE_UPLOAD / 2)
            await writer.write(os.urandom(cs))
            await writer.flush()  # stored, and the upload's timestamp refreshed
        await self.store.collect_garbage()
        await writer.commit()
        self.assertEqual((await self.store.stat("/slow")).size, 4 * cs)

    async def test_usage(self):
        await self.store.mkdir("/d")
        await self.store.write("/d/f", os.urandom(2500))
        await self.store.write("/g", b"12345")
        usage = await self.store.usage()
        self.assertEqual(
            {k: usage[k] for k in ("files", "dirs", "bytes", "chunks", "pending_uploads")},
            {"files": 2, "dirs": 2, "bytes": 2505, "chunks": 4, "pending_uploads": 0},
        )

    async def test_wipe(self):
        await self.store.mkdir("/d/e", parents=True)
        await self.store.write("/d/e/f", os.urandom(3000))
        await self.store.wipe()
        self.assertEqual(await self.store.listdir("/"), [])
        usage = await self.store.usage()
        self.assertEqual((usage["files"], usage["dirs"], usage["chunks"]), (0, 1, 0))
        await self.store.write("/after", b"ok")
        self.assertEqual(await self.store.read("/after"), b"ok")

    async def test_data_persists_and_chunk_size_is_fixed_at_creation(self):
        data = os.urandom(5000)
        await self.store.mkdir("/d")
        await self.store.write("/d/f", data)
        store = await self.reopen(chunk_size=4096)
        self.assertEqual(store.chunk_size, self.chunk_size)
        self.assertEqual(await store.read("/d/f"), data)

    async def test_closed_store_fails_plainly(self):
        await self.store.close()
        e = await self.assertFails(E.StoreUnavailable, self.store.stat("/"))
        self.assertIn("closed", str(e))
        await self.store.close()  # twice is harmless


class LargeFileContract(StoreFixture):
    """Real 256 KiB chunks and a file large enough to show memory stays bounded."""

    timeout = 180
    chunk_size = CHUNK_SIZE
    size = 32 * 1024 * 1024

    async def test_large_file_round_trip_with_bounded_memory(self):
        cs = self.store.chunk_size
        block = os.urandom(cs)
        tracemalloc.start()
        try:
            writer = await self.store.open_write("/big")
            digest = hashlib.sha256()
            for i in range(self.size // cs):
                piece = block[i % 7 :] + block[: i % 7]  # distinct chunks without holding them
                digest.update(piece)
                await writer.write(piece)
            await writer.commit()
            _, write_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            reader = await self.store.read_chunks("/big")
            read = hashlib.sha256()
            await reader.pump(read.update)
            _, read_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(read.hexdigest(), digest.hexdigest())
        self.assertEqual((await self.store.stat("/big")).size, self.size)
        bound = 12 * cs + 4 * 1024 * 1024
        self.assertLess(write_peak, bound, f"writing {self.size >> 20} MiB peaked at {write_peak >> 20} MiB")
        self.assertLess(read_peak, bound, f"reading {self.size >> 20} MiB peaked at {read_peak >> 20} MiB")


# --- the backends ------------------------------------------------------------------------


class SQLiteBackend:
    def store_url(self) -> str:
        return f"sqlite://{os.path.abspath(self.mktemp())}/fs.db"


class MongoBackend:
    @pytest.fixture(autouse=True)
    def _mongo(self, mongo_url):
        self._mongo_url = mongo_url

    def store_url(self) -> str:
        return self._mongo_url


class SQLiteContract(SQLiteBackend, StoreContract, unittest.TestCase):
    pass


class SQLiteLargeFile(SQLiteBackend, LargeFileContract, unittest.TestCase):
    pass


@pytest.mark.mongo
class MongoContract(MongoBackend, StoreContract, unittest.TestCase):
    pass


@pytest.mark.mongo
class MongoLargeFile(MongoBackend, LargeFileContract, unittest.TestCase):
    pass
