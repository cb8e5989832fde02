"""A MongoDB-wire server for the txmongo file-store tests.

``ONEOS_TEST_MONGODB_URL`` (e.g. ``mongodb://127.0.0.1:27017``) selects a real
``mongod``; otherwise SecantusDB (pip package ``secantusdb``, a test extra)
is started as ``python -m secantus --port P --storage-path :memory:`` on a
free loopback port, once per test session.  Start-up is awaited by
condition (the port answers a ``ping``) with a deadline, never a fixed sleep.

Each test gets a fresh database name from :func:`mongo_url` and the
database is dropped afterwards.  The plain functions are reused by
``benchmarks/bench_fs_store.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from oneos.testing.brokers import free_port

ENV_URL = "ONEOS_TEST_MONGODB_URL"


@dataclass
class MongoServer:
    """Where a MongoDB-wire server is, and the process if we started it."""

    base_url: str
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    dbs: list[str] = field(default_factory=list)

    def url(self, db: str) -> str:
        """The server's URL with database *db* (options of the base URL kept)."""
        parts = urlsplit(self.base_url)
        return urlunsplit(parts._replace(path=f"/{db}"))

    def fresh_url(self, prefix: str = "oneos_test") -> str:
        db = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.dbs.append(db)
        return self.url(db)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _ping(url: str, timeout: float = 1.0) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: Any = MongoClient(url, serverSelectionTimeoutMS=int(timeout * 1000), connectTimeoutMS=int(timeout * 1000))
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def start_secantus(
    directory: Path, deadline: float = 60.0, *, storage: str = ":memory:", port: int | None = None
) -> MongoServer:
    """SecantusDB on a loopback port (a free one unless given); returns once it answers.

    *storage* is ``:memory:`` (gone when it stops) or a directory, so a test
    can stop the server and start it again on the same data.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = directory / "secantus.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port), "--storage-path", storage],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    server = MongoServer(f"mongodb://127.0.0.1:{port}", proc, log_path)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"secantus exited with {proc.returncode}:\n{server.log()}")
        if _port_open(port) and _ping(server.base_url):
            return server
        time.sleep(0.05)  # polling interval, not a synchronisation delay
    server.stop()
    raise RuntimeError(f"secantus did not answer on port {port} within {deadline}s:\n{server.log()}")


def mongo_server_from_env_or_start(directory: Path) -> MongoServer:
    """A real mongod if ONEOS_TEST_MONGODB_URL is set, else a SecantusDB we start."""
    url = os.environ.get(ENV_URL)
    if url:
        parts = urlsplit(url)
        return MongoServer(urlunsplit(parts._replace(path="")))
    return start_secantus(directory)


def drop_database(server: MongoServer, db: str) -> None:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: Any = MongoClient(server.url(db), serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(db)
    except PyMongoError:
        pass
    finally:
        client.close()
