"""A writer killed mid-write, or cut off from its store, never leaves a partial file.

A real child process streams three writes at once (replacing a file,
appending to a file, creating a file) and is SIGKILLed once it has stored
several chunks of each; afterwards every file has exactly its old content
(or is still absent), and garbage collection removes the dead writer's
pending chunks.  For MongoDB, the server is also stopped under a live
writer: the writer fails with StoreUnavailable, and once the server is back
the file is whole and old.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from oneos.fs import errors as E
from oneos.fs.opening import open_store
from oneos.fs.store import WRITE_WINDOW
from oneos.testing.mongo import start_secantus

CHILD = r"""
import os, sys
from twisted.internet import asyncioreactor
asyncioreactor.install()
from twisted.internet import defer, reactor
from oneos.fs.opening import open_store

async def main(url):
    store = await open_store(url)
    writers = [
        await store.open_write("/f"),
        await store.open_write("/log", mode="append"),
        await store.open_write("/new"),
    ]
    block = os.urandom(store.chunk_size)
    n = 0
    while True:
        for w in writers:
            await w.write(block)
        n += 1
        sys.stdout.write(f"wrote {n}\n")
        sys.stdout.flush()

def failed(f):
    sys.stderr.write(f.getTraceback())
    reactor.stop()

reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(main(sys.argv[1])).addErrback(failed))
reactor.run()
"""

#: The child is killed once it reports this many chunks per writer.
KILL_AFTER = 8
DEADLINE = 60.0


class ChildWriter(protocol.ProcessProtocol):
    """Watches the child's progress lines; ``progressed`` fires at KILL_AFTER."""

    def __init__(self) -> None:
        self.progressed: defer.Deferred[int] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.out = b""
        self.err = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        lines = self.out.decode().splitlines()
        done = [int(line.split()[1]) for line in lines if line.startswith("wrote ")]
        if done and done[-1] >= KILL_AFTER and not self.progressed.called:
            self.progressed.callback(done[-1])

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        if not self.progressed.called:
            self.progressed.errback(AssertionError(f"child writer ended early: {self.err.decode(errors='replace')}"))
        self.ended.callback(None)


def within(d: defer.Deferred, what: str, seconds: float = DEADLINE) -> defer.Deferred:
    timer = reactor.callLater(seconds, lambda: d.called or d.errback(AssertionError(f"timed out waiting for {what}")))

    def stop(result):
        if timer.active():
            timer.cancel()
        return result

    return d.addBoth(stop)


class CrashContract:
    timeout = 120

    def store_url(self) -> str:
        raise NotImplementedError

    async def setUp(self) -> None:
        self.url = self.store_url()
        self.store = await open_store(self.url, reactor)
        self.addCleanup(self.store.close)

    async def test_killed_writer_leaves_old_content_or_nothing(self):
        store = self.store
        old = os.urandom(3 * store.chunk_size + 123)
        await store.write("/f", old)
        await store.write("/log", b"line 1\n")
        before = await store.usage()

        child = ChildWriter()
        process = reactor.spawnProcess(
            child, sys.executable, [sys.executable, "-c", CHILD, self.url], env=dict(os.environ)
        )
        try:
            await within(child.progressed, "the child to store some chunks")
        finally:
            if child.ended.called is False:
                process.signalProcess("KILL")
            await within(child.ended, "the child to die")

        during = await store.usage()
        self.assertEqual(during["pending_uploads"], 3, "the child was killed in the middle of its writes")
        # "wrote n" means n chunks accepted, of which at most WRITE_WINDOW are still in flight
        self.assertGreaterEqual(during["chunks"] - before["chunks"], 3 * (KILL_AFTER - WRITE_WINDOW))

        self.assertEqual(await store.read("/f"), old)
        self.assertEqual(await store.read("/log"), b"line 1\n")
        self.assertFalse(await store.exists("/new"))
        self.assertEqual(sorted(await store.listdir("/")), ["f", "log"])

        self.assertGreaterEqual(await store.collect_garbage(stale_after=0), 3)
        after = await store.usage()
        self.assertEqual(after, before)


class SQLiteCrash(CrashContract, unittest.TestCase):
    def store_url(self) -> str:
        return f"sqlite://{os.path.abspath(self.mktemp())}/fs.db"


@pytest.mark.mongo
class MongoCrash(CrashContract, unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _mongo(self, mongo_url):
        self._mongo_url = mongo_url

    def store_url(self) -> str:
        return self._mongo_url


@pytest.mark.mongo
class MongoConnectionLost(unittest.TestCase):
    """The server goes away under a writer; the file survives whole."""

    timeout = 120

    @pytest.fixture(autouse=True)
    def _dirs(self, tmp_path):
        self.tmp = Path(tmp_path)

    async def test_lost_server_mid_write(self):
        if os.environ.get("ONEOS_TEST_MONGODB_URL"):
            raise unittest.SkipTest("needs a server this test can stop and restart (runs on SecantusDB)")
        storage = self.tmp / "data"
        storage.mkdir()
        server = start_secantus(self.tmp, storage=str(storage))
        self.addCleanup(server.stop)
        url = server.url("lost")
        store = await open_store(url, reactor, op_timeout=2.0)
        self.addCleanup(store.close)
        old = os.urandom(2 * store.chunk_size)
        await store.write("/f", old)
        writer = await store.open_write("/f")
        for _ in range(3):
            await writer.write(os.urandom(store.chunk_size))

        server.stop()
        with self.assertRaises(E.StoreUnavailable) as caught:
            for _ in range(8):
                await writer.write(os.urandom(store.chunk_size))
            await writer.commit()
        self.assertIn("file store unavailable", str(caught.exception))
        with self.assertRaises(E.StoreUnavailable):
            await store.stat("/f")

        again = start_secantus(self.tmp, storage=str(storage), port=int(url.split(":")[2].split("/")[0]))
        self.addCleanup(again.stop)
        fresh = await open_store(url, reactor)
        self.addCleanup(fresh.close)
        self.assertEqual(await fresh.read("/f"), old)
        await fresh.collect_garbage(stale_after=0)
        usage = await fresh.usage()
        self.assertEqual((usage["files"], usage["pending_uploads"], usage["chunks"]), (1, 0, 2))
