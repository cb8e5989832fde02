#!/usr/bin/env python3
"""File-system *service* benchmark: over the bus, over the direct channel, beside the raw backend.

For each backend (SQLite; MongoDB wire: ONEOS_TEST_MONGODB_URL or a
SecantusDB started here, unless ``--backends sqlite``) a real runtime is
started with that store, and one client process measures, in one run:

* **bus**: every call through the broker (``FSClient(direct=False)``: a
  request and an answer, two broker hops);
* **direct**: calls on the service's direct channel (one hop: a ticket
  over the bus once, then one TCP connection; oneos/pubsub/direct.py);
* **raw**: the same work on the raw backend in the same run (direct
  sqlite3 rows and blobs; pymongo and GridFS).

What is measured, each way:

* ``stat``: N stats one after the other (each waits for its answer), and
  ``stat pipelined``: the N sent at once (the channel keeps many calls
  outstanding);
* ``create``: N small files written (``FSClient.write``: a small file goes
  inside the call, one round trip);
* ``ls``: a directory of N entries listed, in calls per ``ls`` (``list_stat``:
  one) and listings per second;
* ``read``/``write``: one large file (default 100 MiB) streamed (an RPC to
  open it, then the bytes over a TCP stream), in MB/s (10^6 bytes).

The aims (issue 15): stat and create at least 3,000/s from one client on
SQLite, reads at least half the raw rate, ``ls`` in one round trip.  The
bus is measured first, then the direct channel (``ONEOS_BENCH_ORDER=direct,bus``
the other way round, to see that the order does not matter).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_fs_store as raw  # noqa: E402
from oneos.testing.runtimes import EmbeddedRuntime, wait_for  # noqa: E402

CHUNK = 256 * 1024
SMALL = b"x" * 100
MB = 1e6
#: the order the ways are measured in (ONEOS_BENCH_ORDER=direct,bus to check that it does not matter)
WAYS = tuple(os.environ.get("ONEOS_BENCH_ORDER", "bus,direct").split(","))


class Service:
    """Blocking access to FSClients over one broker connection, their reactor in a thread."""

    def __init__(self, url: str, home: Path) -> None:
        from oneos.reactor import install_asyncio_reactor

        install_asyncio_reactor()
        from twisted.internet import reactor

        from oneos.cli.common import cli_identity
        from oneos.fs.client import FSClient
        from oneos.pubsub.client import PubSubClient
        from oneos.pubsub.rpc import RPCClient

        self.reactor = reactor
        if not reactor.running:
            threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True).start()
        self.client = PubSubClient(url, reactor, keepalive=30)
        identity = cli_identity(home)  # the runtime owner's identity, as `oneos` commands there use
        if identity is not None:
            self.client.address = self.client.address.__class__(
                **{**self.client.address.__dict__, "username": identity.username, "password": identity.password}
            )
        self.call(self.client.startService)
        self.call(self.client.whenConnected)
        self.rpc = {
            "bus": RPCClient(self.client, reactor, default_timeout=60),
            "direct": RPCClient(self.client, reactor, default_timeout=60),
        }
        self.fs = {
            "bus": FSClient(self.rpc["bus"], reactor, timeout=60, direct=False),
            "direct": FSClient(self.rpc["direct"], reactor, timeout=60),
        }

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        from twisted.internet import defer, threads

        return threads.blockingCallFromThread(self.reactor, lambda: defer.maybeDeferred(fn, *args, **kw))

    def open_direct(self) -> str:
        """Make calls until the direct channel is open; its server's address."""
        route = self.rpc["direct"].route("fs")
        deadline = time.monotonic() + 30
        while not route.ready:
            if time.monotonic() > deadline:
                raise SystemExit(f"the direct channel did not open: {route.last_error}")
            self.call(self.fs["direct"].stat, "/")
            time.sleep(0.05)
        return route.server

    def close(self) -> None:
        for rpc in self.rpc.values():
            self.call(rpc.close)
        self.call(self.client.stopService)


class Pieces:
    def __init__(self, total: int) -> None:
        self.it = raw.pieces(total, CHUNK)

    def next(self) -> Any:
        from twisted.internet import defer

        return defer.succeed(next(self.it, b""))


class Count:
    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> Any:
        from twisted.internet import defer

        self.n += len(data)
        return defer.succeed(None)

    def finish(self) -> Any:
        from twisted.internet import defer

        return defer.succeed({"size": self.n})

    def abort(self) -> None:
        pass


class Counted:
    """Counts the calls an RPC client makes (the round trips of an operation)."""

    def __init__(self, rpc: Any) -> None:
        self.rpc = rpc
        self.calls = 0
        self._call = rpc.call

    def __enter__(self) -> Counted:
        def counting(*args: Any, **kw: Any) -> Any:
            self.calls += 1
            return self._call(*args, **kw)

        self.rpc.call = counting
        return self

    def __exit__(self, *exc: Any) -> None:
        self.rpc.call = self._call


def one_way(svc: Service, way: str, total: int, count: int) -> dict[str, float]:
    """Every figure through one FSClient (*way*: bus or direct)."""
    from twisted.internet import defer

    fs = svc.fs[way]
    top = f"/bench-{way}"
    svc.call(fs.mkdir, top, exist_ok=True)
    names = [f"{top}/f{i:05d}" for i in range(count)]

    @defer.inlineCallbacks
    def sequential(op: Any) -> Any:
        t = time.perf_counter()
        for name in names:
            yield op(name)
        return time.perf_counter() - t

    @defer.inlineCallbacks
    def pipelined(op: Any) -> Any:
        t = time.perf_counter()
        yield defer.gatherResults([op(name) for name in names], consumeErrors=True)
        return time.perf_counter() - t

    out: dict[str, float] = {}
    out["create"] = count / svc.call(sequential, lambda n: fs.write(n, SMALL))
    out["stat"] = count / svc.call(sequential, fs.stat)
    out["stat pipelined"] = count / svc.call(pipelined, fs.stat)
    with Counted(svc.rpc[way]) as counted:
        listing = svc.call(fs.list_stat, top)
    assert len(listing.entries) == count
    out["ls calls"] = counted.calls

    @defer.inlineCallbacks
    def listings(n: int) -> Any:
        t = time.perf_counter()
        for _ in range(n):
            yield fs.list_stat(top)
        return time.perf_counter() - t

    rounds = 20
    out["ls"] = rounds / svc.call(listings, rounds)
    t = time.perf_counter()
    svc.call(fs.write_from, f"{top}/big.bin", Pieces(total))
    out["write"] = total / (time.perf_counter() - t) / MB
    sink = Count()
    t = time.perf_counter()
    svc.call(fs.read_into, f"{top}/big.bin", sink)
    out["read"] = total / (time.perf_counter() - t) / MB
    assert sink.n == total
    svc.call(fs.remove, top, recursive=True)
    return out


def raw_figures(name: str, work: Path, total: int, count: int, mongo: Any) -> dict[str, float]:
    if name == "sqlite":
        stream = raw.sqlite_raw_stream(str(work / "raw.sqlite3"), total)
        small = raw.sqlite_raw_small(str(work / "raw-small.sqlite3"), count)
    else:
        db = f"raw_{uuid.uuid4().hex[:8]}"
        stream = raw.mongo_raw_stream(mongo.url(""), db, total)
        small = raw.mongo_raw_small(mongo.url(""), db + "s", count)
    mib = 2**20 / MB  # bench_fs_store rates are MiB/s
    return {
        "write": stream["write"] * mib,
        "read": stream["read"] * mib,
        "create": small["create"],
        "stat": small["stat"],
        "stat pipelined": small["stat"],
        "ls": small["list"] / count,  # listings of the whole directory per second
        "ls calls": 1,
    }


ROWS = (
    ("stat", "/s", "one after the other"),
    ("stat pipelined", "/s", "all sent at once"),
    ("create", "/s", "small files, one after the other"),
    ("ls calls", "", "calls per ls of a directory"),
    ("ls", "/s", "listings of the directory"),
    ("write", "MB/s", "one large file, streamed"),
    ("read", "MB/s", "one large file, streamed"),
)


def report(name: str, figures: dict[str, dict[str, float]]) -> list[str]:
    lines = [f"  {name}:", f"    {'':<16}{'bus':>10}{'direct':>10}{'raw':>10}  direct/bus  raw/direct"]
    for key, unit, what in ROWS:
        bus, direct, base = figures["bus"][key], figures["direct"][key], figures["raw"][key]
        if key == "ls calls":
            lines.append(f"    {key:<16}{bus:>10.0f}{direct:>10.0f}{base:>10.0f}  {'':>10}  {'':>10}  {what}")
            continue
        lines.append(
            f"    {key:<16}{bus:>10.1f}{direct:>10.1f}{base:>10.1f}  {direct / bus:>9.2f}x  {base / direct:>9.2f}x"
            f"  {unit} {what}"
        )
    return lines


#: issue 15's aims on SQLite, over the direct channel: (figure, least rate per second) and reads against raw
AIM_RATE = 3000.0
AIM_READ = 0.5


def aims(figures: dict[str, dict[str, float]]) -> list[str]:
    """Issue 15's aims for SQLite, each said met or not beside the figure it is judged on."""
    direct, base = figures["direct"], figures["raw"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = ["    aims (issue 15, direct channel):"]
    for key in ("stat", "create"):
        lines.append(
            f"      {key} one after the other: {direct[key]:,.0f}/s, aim {AIM_RATE:,.0f}/s: "
            f"{verdict(direct[key] >= AIM_RATE)}"
        )
    ratio = direct["read"] / base["read"]
    lines.append(f"      read: {ratio:.2f}x raw, aim {AIM_READ}x: {verdict(ratio >= AIM_READ)}")
    lines.append(f"      ls in one call: {direct['ls calls']:.0f} call(s): {verdict(direct['ls calls'] == 1)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,mongodb", help="comma list of sqlite, mongodb")
    args = parser.parse_args()
    total = args.size_mib * 2**20
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    work = Path(tempfile.mkdtemp(prefix="oneos-bench-fs-"))
    mongo = None
    if "mongodb" in backends:
        from oneos.testing.mongo import mongo_server_from_env_or_start

        mongo = mongo_server_from_env_or_start(work / "mongo")
    results: list[str] = []
    try:
        for name in backends:
            if name == "sqlite":
                store = f"sqlite:///{work / 'svc.sqlite3'}"
            else:
                assert mongo is not None
                store = mongo.url(f"bench_{uuid.uuid4().hex[:8]}")
            rt = EmbeddedRuntime(work / name, "--store", store)
            figures: dict[str, dict[str, float]] = {}
            try:
                wait_for("the file system", lambda: "file system serving" in rt.log(), deadline=60, logs=rt.log)  # noqa: B023 - called before the loop moves on
                svc = Service(rt.url, rt.home)
                try:
                    server = svc.open_direct()
                    for way in WAYS:
                        figures[way] = one_way(svc, way, total, args.files)
                finally:
                    svc.close()
            finally:
                rt.stop()
            figures["raw"] = raw_figures(name, work, total, args.files, mongo)
            results += report(f"{name} (direct channel to {server})", figures)
            if name == "sqlite":
                results += aims(figures)
    finally:
        if mongo is not None:
            mongo.stop()
        shutil.rmtree(work, ignore_errors=True)  # two copies of the large file per backend
    print(
        f"file-system service, bus vs direct channel vs raw backend: {args.size_mib} MiB stream, "
        f"{args.files} small files, {os.cpu_count()} cores"
    )
    print("\n".join(results))


if __name__ == "__main__":
    main()
