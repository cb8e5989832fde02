#!/usr/bin/env python3
"""File-system *service* benchmark: through a runtime, beside the raw backend.

For each backend (SQLite; MongoDB wire: ONEOS_TEST_MONGODB_URL or a
SecantusDB started here) a real runtime is started with that store and:

* one large file (default 100 MiB) is written and read back through the
  file-system service (RPC to open, TCP stream for the bytes), in MB/s,
  beside the same bytes through the raw backend in the same run (direct
  sqlite3 blobs; pymongo GridFS) — ``benchmarks/bench_fs_store.py`` has the
  store-level figures in between;
* 1000 small files are created, stat'ed and listed through the service, in
  operations per second, beside one row/document per file in the raw backend.

The aim: service throughput within 2x of the raw backend.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_fs_store as raw  # noqa: E402
from oneos.testing.mongo import mongo_server_from_env_or_start  # noqa: E402
from oneos.testing.runtimes import EmbeddedRuntime, wait_for  # noqa: E402

CHUNK = 256 * 1024
SMALL = b"x" * 100


class Service:
    """A blocking facade over FSClient, its reactor in a thread."""

    def __init__(self, url: str) -> None:
        from oneos.reactor import install_asyncio_reactor

        install_asyncio_reactor()
        from twisted.internet import reactor

        from oneos.fs.client import FSClient
        from oneos.pubsub.client import PubSubClient
        from oneos.pubsub.rpc import RPCClient

        self.reactor = reactor
        if not reactor.running:
            threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True).start()
        self.client = PubSubClient(url, reactor, keepalive=30)
        self.call(self.client.startService)
        self.call(self.client.whenConnected)
        self.fs = FSClient(RPCClient(self.client, reactor, default_timeout=30), reactor, timeout=30)

    def call(self, fn, *args, **kw):
        from twisted.internet import defer, threads

        return threads.blockingCallFromThread(self.reactor, lambda: defer.maybeDeferred(fn, *args, **kw))

    def close(self) -> None:
        self.call(self.client.stopService)


class Pieces:
    def __init__(self, total: int) -> None:
        self.it = raw.pieces(total, CHUNK)

    def next(self):
        from twisted.internet import defer

        return defer.succeed(next(self.it, b""))


class Count:
    def __init__(self) -> None:
        self.n = 0

    def write(self, data):
        from twisted.internet import defer

        self.n += len(data)
        return defer.succeed(None)

    def finish(self):
        from twisted.internet import defer

        return defer.succeed({"size": self.n})

    def abort(self):
        pass


def through_service(svc: Service, total: int, count: int) -> dict[str, float]:
    t = time.perf_counter()
    svc.call(svc.fs.write_from, "/bench.bin", Pieces(total))
    write_s = time.perf_counter() - t
    sink = Count()
    t = time.perf_counter()
    svc.call(svc.fs.read_into, "/bench.bin", sink)
    read_s = time.perf_counter() - t
    assert sink.n == total
    svc.call(svc.fs.mkdir, "/small", exist_ok=True)
    t = time.perf_counter()
    for i in range(count):
        svc.call(svc.fs.write, f"/small/f{i:05d}", SMALL)
    create_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(count):
        svc.call(svc.fs.stat, f"/small/f{i:05d}")
    stat_s = time.perf_counter() - t
    t = time.perf_counter()
    rows = svc.call(svc.fs.listdir, "/small")
    list_s = time.perf_counter() - t
    assert len(rows) == count
    svc.call(svc.fs.remove, "/small", recursive=True)
    svc.call(svc.fs.remove, "/bench.bin")
    return {
        "write": total / write_s / 1e6,
        "read": total / read_s / 1e6,
        "create": count / create_s,
        "stat": count / stat_s,
        "list": count / list_s,
    }


def row(
    name: str, service: dict[str, float], baseline: dict[str, float], unit: str, keys: tuple[str, ...]
) -> list[str]:
    out = []
    for k in keys:
        ratio = baseline[k] / service[k] if service[k] else float("inf")
        out.append(
            f"  {name:<8} {k:<7} service {service[k]:>10.1f} {unit:<6} raw {baseline[k]:>10.1f} {unit:<6} raw/service {ratio:5.2f}x"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    total = args.size_mib * 2**20
    work = Path(tempfile.mkdtemp(prefix="oneos-bench-fs-"))
    mongo = mongo_server_from_env_or_start(work / "mongo")
    results = []
    try:
        for name, store in (
            ("sqlite", f"sqlite:///{work / 'svc.sqlite3'}"),
            ("mongodb", mongo.url(f"bench_{uuid.uuid4().hex[:8]}")),
        ):
            rt = EmbeddedRuntime(work / name, "--store", store)
            try:
                wait_for("the file system", lambda: "file system serving" in rt.log(), deadline=60, logs=rt.log)  # noqa: B023 - called before the loop moves on
                svc = Service(rt.url)
                try:
                    service = through_service(svc, total, args.files)
                finally:
                    svc.close()
            finally:
                rt.stop()
            if name == "sqlite":
                stream = raw.sqlite_raw_stream(str(work / "raw.sqlite3"), total)
                small = raw.sqlite_raw_small(str(work / "raw-small.sqlite3"), args.files)
            else:
                db = f"raw_{uuid.uuid4().hex[:8]}"
                stream = raw.mongo_raw_stream(mongo.url(""), db, total)
                small = raw.mongo_raw_small(mongo.url(""), db + "s", args.files)
            baseline = {**{k: stream[k] for k in ("write", "read")}, **small}
            results += row(name, service, baseline, "MB/s", ("write", "read"))
            results += row(name, service, baseline, "ops/s", ("create", "stat", "list"))
    finally:
        mongo.stop()
    print(
        f"file-system service vs raw backend: {args.size_mib} MiB stream, {args.files} small files, {os.cpu_count()} cores"
    )
    print("\n".join(results))


if __name__ == "__main__":
    main()
