"""``reset-fs``: the standard tree on a fresh store, idempotence, refusal without --force.

The library function runs on both backends in-process; the command runs as
a real child process (``python -m oneos.cli.reset_fs``, and ``oneos
reset-fs`` once registered in oneos.cli.main) to check what a user sees:
one plain line, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.trial import unittest

from oneos.fs.opening import open_store
from oneos.fs.reset import INITIAL_TREE, StoreNotEmpty, reset_fs
from oneos.testing.mongo import free_port

STANDARD = sorted(p.lstrip("/") for p, _ in INITIAL_TREE)


class ResetContract:
    timeout = 60

    def store_url(self) -> str:
        raise NotImplementedError

    def setUp(self) -> None:
        self.url = self.store_url()

    async def listing(self) -> tuple[list[str], list[str]]:
        store = await open_store(self.url, reactor)
        try:
            return await store.listdir("/"), await store.glob("/**")
        finally:
            await store.close()

    async def test_fresh_store_gets_the_standard_tree(self):
        result = await reset_fs(self.url, reactor=reactor)
        self.assertEqual(result.created, [p for p, _ in INITIAL_TREE])
        self.assertFalse(result.wiped)
        names, everything = await self.listing()
        self.assertEqual(names, STANDARD)
        self.assertEqual(len(everything), 1 + len(INITIAL_TREE))
        store = await open_store(self.url, reactor)
        try:
            self.assertEqual((await store.stat("/tmp")).mode, 0o1777)
        finally:
            await store.close()

    async def test_idempotent(self):
        await reset_fs(self.url, reactor=reactor)
        again = await reset_fs(self.url, reactor=reactor)
        self.assertEqual((again.created, again.wiped), ([], False))
        self.assertIn("already present", again.describe())
        self.assertEqual((await self.listing())[0], STANDARD)

    async def test_missing_standard_directories_are_added(self):
        await reset_fs(self.url, reactor=reactor)
        store = await open_store(self.url, reactor)
        await store.remove("/tmp")
        await store.close()
        result = await reset_fs(self.url, reactor=reactor)
        self.assertEqual(result.created, ["/tmp"])

    async def test_refuses_a_non_empty_store_without_force(self):
        await reset_fs(self.url, reactor=reactor)
        store = await open_store(self.url, reactor)
        await store.mkdir("/home/alice")
        await store.write("/home/alice/notes", b"keep me")
        await store.close()
        with self.assertRaises(StoreNotEmpty) as caught:
            await reset_fs(self.url, reactor=reactor)
        self.assertIn("/home/alice", str(caught.exception))
        self.assertIn("--force", str(caught.exception))
        self.assertEqual(caught.exception.code, "ENOTEMPTY")
        store = await open_store(self.url, reactor)
        self.assertEqual(await store.read("/home/alice/notes"), b"keep me")
        await store.close()

        forced = await reset_fs(self.url, force=True, reactor=reactor)
        self.assertTrue(forced.wiped)
        self.assertEqual(forced.created, [p for p, _ in INITIAL_TREE])
        names, everything = await self.listing()
        self.assertEqual((names, len(everything)), (STANDARD, 1 + len(INITIAL_TREE)))

    async def test_a_file_in_place_of_a_standard_directory_counts_as_content(self):
        store = await open_store(self.url, reactor)
        await store.write("/tmp", b"not a directory")
        await store.close()
        with self.assertRaises(StoreNotEmpty):
            await reset_fs(self.url, reactor=reactor)


class SQLiteReset(ResetContract, unittest.TestCase):
    def store_url(self) -> str:
        # a directory that does not exist yet: the first run creates it
        return f"sqlite://{os.path.abspath(self.mktemp())}/new/dir/fs.db"


@pytest.mark.mongo
class MongoReset(ResetContract, unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _mongo(self, mongo_url):
        self._mongo_url = mongo_url  # a database that does not exist yet

    def store_url(self) -> str:
        return self._mongo_url


# --- the command, as a user runs it -------------------------------------------------


def reset_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oneos.cli.reset_fs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **(env or {})),
    )


def assert_plain_failure(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oneos reset-fs: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_command_on_a_fresh_sqlite_store(tmp_path: Path):
    url = f"sqlite://{tmp_path}/does/not/exist/fs.db"
    first = reset_command(url)
    assert first.returncode == 0, first.stderr
    assert "created /bin /data /etc /home /tmp /usr /var" in first.stdout
    second = reset_command(url)
    assert second.returncode == 0 and "already present" in second.stdout


def test_command_refuses_then_forces(tmp_path: Path):
    url = f"sqlite://{tmp_path}/fs.db"
    assert reset_command(url).returncode == 0
    import sqlite3

    with sqlite3.connect(tmp_path / "fs.db") as db:  # a user file, put there behind the store's back
        db.execute(
            "INSERT INTO inodes(parent, name, kind, mode, owner, ctime, mtime) VALUES (1, 'stray', 'dir', 493, 'root', 0, 0)"
        )
    assert_plain_failure(reset_command(url), "not empty", "/stray", "--force")
    forced = reset_command(url, "--force")
    assert forced.returncode == 0 and "wiped" in forced.stdout, forced.stderr


def test_command_uses_the_configured_store_by_default(tmp_path: Path):
    result = reset_command(env={"ONEOS_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert str(tmp_path) in result.stdout


def test_unreachable_store_is_a_plain_error():
    port = free_port()  # nothing listens there
    result = reset_command(f"mongodb://127.0.0.1:{port}/oneos", "--timeout", "1")
    assert_plain_failure(result, "file store unavailable", f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    "url, phrase",
    [("postgres://h/db", "invalid file store URL"), ("sqlite:///dev/null/fs.db", "file store unavailable")],
)
def test_bad_urls_are_plain_errors(url, phrase):
    assert_plain_failure(reset_command(url), phrase)


def test_registered_in_the_oneos_command():
    from oneos.cli.main import COMMANDS

    if "reset-fs" not in COMMANDS:
        pytest.skip("'reset-fs' is not registered in oneos.cli.main.COMMANDS yet")
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "oneos.cli.main", "reset-fs", f"mongodb://127.0.0.1:{port}/x", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "file store unavailable" in result.stderr
