#!/usr/bin/env python3
"""File-store benchmark: OneOS's stores beside their raw backends, in one run.

Prints, for each backend (SQLite file, MongoDB-wire server):

* streaming write and read of one large file (default 100 MiB) through the
  store's Writer/ChunkReader, in MiB/s, with the process's peak RSS growth;
  beside the same bytes written and read through the raw backend with the
  same chunk size - direct ``sqlite3`` blobs in one table, and pymongo's
  GridFS - so the store's own overhead is visible;
* create, stat and list of 1000 small files, in operations per second,
  beside the nearest raw equivalent (one row / one document per file).

MongoDB is the server named by ``ONEOS_TEST_MONGODB_URL`` if set, else a
SecantusDB started here on a free port (in-memory storage).  The raw
baselines run synchronously on the same machine, same server, same run.

    python benchmarks/bench_fs_store.py                  # 100 MiB, 1000 files
    python benchmarks/bench_fs_store.py --size-mib 8 --files 200
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent

from oneos.reactor import install_asyncio_reactor  # noqa: E402

install_asyncio_reactor()

from twisted.internet import defer, reactor  # noqa: E402

from oneos.fs.opening import open_store  # noqa: E402
from oneos.fs.store import CHUNK_SIZE, MiB  # noqa: E402

SMALL = b"x" * 100


class RSSWatch:
    """Peak resident memory above a starting point, sampled as work proceeds."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.start = self.proc.memory_info().rss
        self.peak = self.start

    def sample(self) -> None:
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / MiB


def pieces(total: int, size: int) -> Any:
    """*total* bytes in *size* pieces, distinct from each other, without holding them all."""
    block = os.urandom(size + 256)
    sent = 0
    i = 0
    while sent < total:
        n = min(size, total - sent)
        yield block[i % 256 : i % 256 + n]
        sent += n
        i += 1


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / MiB / seconds if seconds > 0 else float("inf")


# --- through the store ------------------------------------------------------------


async def store_stream(url: str, total: int) -> dict[str, float]:
    store = await open_store(url, reactor)
    try:
        watch = RSSWatch()
        t = time.perf_counter()
        writer = await store.open_write("/bench.bin")
        for n, piece in enumerate(pieces(total, store.chunk_size)):
            await writer.write(piece)
            if n % 16 == 0:
                watch.sample()
        await writer.commit()
        write_s = time.perf_counter() - t
        got = 0
        t = time.perf_counter()
        reader = await store.read_chunks("/bench.bin")
        async for chunk in reader:
            got += len(chunk)
            if got % (16 * store.chunk_size) < store.chunk_size:
                watch.sample()
        read_s = time.perf_counter() - t
        watch.sample()
        assert got == total, (got, total)
        await store.remove("/bench.bin")
        return {"write": rate(total, write_s), "read": rate(total, read_s), "rss": watch.growth_mib}
    finally:
        await store.close()


async def store_small_files(url: str, count: int) -> dict[str, float]:
    store = await open_store(url, reactor)
    try:
        await store.mkdir("/small", exist_ok=True)
        t = time.perf_counter()
        for i in range(count):
            await store.write(f"/small/f{i:05d}", SMALL)
        create_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(count):
            await store.stat(f"/small/f{i:05d}")
        stat_s = time.perf_counter() - t
        t = time.perf_counter()
        entries = await store.scandir("/small")
        list_s = time.perf_counter() - t
        assert len(entries) == count
        await store.remove("/small", recursive=True)
        return {"create": count / create_s, "stat": count / stat_s, "list": count / list_s}
    finally:
        await store.close()


# --- raw backends -------------------------------------------------------------------


def sqlite_raw_stream(path: str, total: int) -> dict[str, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE blobs (n INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    watch = RSSWatch()
    t = time.perf_counter()
    for n, piece in enumerate(pieces(total, CHUNK_SIZE)):
        db.execute("INSERT INTO blobs(n, data) VALUES (?, ?)", (n, piece))
    write_s = time.perf_counter() - t
    watch.sample()
    t = time.perf_counter()
    got = 0
    for (data,) in db.execute("SELECT data FROM blobs ORDER BY n"):
        got += len(data)
    read_s = time.perf_counter() - t
    watch.sample()
    db.close()
    assert got == total
    return {"write": rate(total, write_s), "read": rate(total, read_s), "rss": watch.growth_mib}


def sqlite_raw_small(path: str, count: int) -> dict[str, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE files (name TEXT PRIMARY KEY, data BLOB, mtime REAL)")
    t = time.perf_counter()
    for i in range(count):
        db.execute("INSERT INTO files VALUES (?, ?, ?)", (f"f{i:05d}", SMALL, time.time()))
    create_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(count):
        db.execute("SELECT name, length(data), mtime FROM files WHERE name = ?", (f"f{i:05d}",)).fetchone()
    stat_s = time.perf_counter() - t
    t = time.perf_counter()
    rows = db.execute("SELECT name, length(data), mtime FROM files ORDER BY name").fetchall()
    list_s = time.perf_counter() - t
    assert len(rows) == count
    db.close()
    return {"create": count / create_s, "stat": count / stat_s, "list": count / list_s}


def mongo_raw_stream(url: str, db_name: str, total: int) -> dict[str, float]:
    import gridfs
    from pymongo import MongoClient

    client = MongoClient(url)
    try:
        bucket = gridfs.GridFSBucket(client[db_name], chunk_size_bytes=CHUNK_SIZE)
        watch = RSSWatch()
        t = time.perf_counter()
        with bucket.open_upload_stream("bench.bin") as up:
            for piece in pieces(total, CHUNK_SIZE):
                up.write(piece)
            file_id = up._id
        write_s = time.perf_counter() - t
        watch.sample()
        t = time.perf_counter()
        got = 0
        with bucket.open_download_stream(file_id) as down:
            while True:
                data = down.readchunk()
                if not data:
                    break
                got += len(data)
        read_s = time.perf_counter() - t
        watch.sample()
        assert got == total
        client.drop_database(db_name)
        return {"write": rate(total, write_s), "read": rate(total, read_s), "rss": watch.growth_mib}
    finally:
        client.close()


def mongo_raw_small(url: str, db_name: str, count: int) -> dict[str, float]:
    from pymongo import MongoClient

    client = MongoClient(url)
    try:
        coll = client[db_name]["files"]
        coll.create_index([("parent", 1), ("name", 1)], unique=True)
        t = time.perf_counter()
        for i in range(count):
            coll.insert_one({"parent": "small", "name": f"f{i:05d}", "data": SMALL, "mtime": time.time()})
        create_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(count):
            coll.find_one({"parent": "small", "name": f"f{i:05d}"}, {"data": 0})
        stat_s = time.perf_counter() - t
        t = time.perf_counter()
        rows = list(coll.find({"parent": "small"}, {"data": 0}).sort("name", 1))
        list_s = time.perf_counter() - t
        assert len(rows) == count
        client.drop_database(db_name)
        return {"create": count / create_s, "stat": count / stat_s, "list": count / list_s}
    finally:
        client.close()


# --- the run ------------------------------------------------------------------------


def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False)))  # noqa: E731
    return "\n".join([title, line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


async def run(args: argparse.Namespace, mongo_base: str | None, workdir: Path) -> None:
    total = int(args.size_mib * MiB)
    stream_rows: list[tuple[str, ...]] = []
    meta_rows: list[tuple[str, ...]] = []

    def stream_row(name: str, r: dict[str, float]) -> None:
        stream_rows.append((name, f"{r['write']:.0f}", f"{r['read']:.0f}", f"{r['rss']:.1f}"))

    def meta_row(name: str, r: dict[str, float]) -> None:
        meta_rows.append((name, f"{r['create']:.0f}", f"{r['stat']:.0f}", f"{r['list']:.0f}"))

    def step(what: str) -> None:
        print(f"  ... {what}", file=sys.stderr, flush=True)

    if "sqlite" in args.backends:
        step("sqlite store")
        stream_row("sqlite store", await store_stream(f"sqlite://{workdir}/store.db", total))
        meta_row("sqlite store", await store_small_files(f"sqlite://{workdir}/store-small.db", args.files))
        step("sqlite raw")
        stream_row("sqlite3 raw blobs", sqlite_raw_stream(str(workdir / "raw.db"), total))
        meta_row("sqlite3 raw rows", sqlite_raw_small(str(workdir / "raw-small.db"), args.files))
    if "mongo" in args.backends and mongo_base:
        tag = f"{os.getpid()}_{int(time.time())}"
        step("mongo store")
        stream_row("mongo store", await store_stream(f"{mongo_base}/bench_store_{tag}", total))
        meta_row("mongo store", await store_small_files(f"{mongo_base}/bench_small_{tag}", args.files))
        step("mongo raw")
        stream_row("pymongo GridFS raw", mongo_raw_stream(mongo_base, f"bench_gridfs_{tag}", total))
        meta_row("pymongo raw docs", mongo_raw_small(mongo_base, f"bench_docs_{tag}", args.files))
        from pymongo import MongoClient

        with MongoClient(mongo_base) as client:
            for name in (f"bench_store_{tag}", f"bench_small_{tag}"):
                client.drop_database(name)

    print()
    print(
        table(
            f"Streaming one {args.size_mib:g} MiB file ({CHUNK_SIZE // 1024} KiB chunks)",
            ("backend", "write MiB/s", "read MiB/s", "peak RSS +MiB"),
            stream_rows,
        )
    )
    print()
    print(
        table(
            f"{args.files} small files ({len(SMALL)} bytes) in one directory",
            ("backend", "create/s", "stat/s", "list entries/s"),
            meta_rows,
        )
    )
    print()
    print(f"mongo server: {mongo_base or 'not used'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=float, default=100.0, help="size of the streamed file (default 100)")
    parser.add_argument("--files", type=int, default=1000, help="number of small files (default 1000)")
    parser.add_argument("--backends", default="sqlite,mongo", help="comma-separated: sqlite, mongo")
    args = parser.parse_args()
    args.backends = set(args.backends.split(","))

    server = None
    mongo_base = None
    with tempfile.TemporaryDirectory(prefix="oneos-bench-fs-") as tmp:
        workdir = Path(tmp)
        if "mongo" in args.backends:
            from oneos.testing.mongo import mongo_server_from_env_or_start

            server = mongo_server_from_env_or_start(workdir / "mongo")
            mongo_base = server.base_url
        outcome: list[Any] = []

        def go() -> None:
            d = defer.Deferred.fromCoroutine(run(args, mongo_base, workdir))
            d.addBoth(lambda r: (outcome.append(r), reactor.stop()))

        reactor.callWhenRunning(go)
        try:
            reactor.run()
        finally:
            if server is not None:
                server.stop()
    if outcome and isinstance(outcome[0], defer.Failure):
        outcome[0].printTraceback()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
