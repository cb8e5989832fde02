"""The file-system service end to end: real runtime, real transfers, the real CLI."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys

from oneos.testing.runtimes import wait_for


def sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_file(path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            f.write(block[i % 7 :] + block[: i % 7])
        f.write(os.urandom(size % len(block)))


def ok(result) -> str:
    assert result.returncode == 0, f"rc={result.returncode}\nstdout={result.stdout}\nstderr={result.stderr}"
    return result.stdout


def test_put_get_200_mib_byte_identical(embedded_runtime, tmp_path):
    rt = embedded_runtime()
    src, back = tmp_path / "big.bin", tmp_path / "back.bin"
    make_file(src, 200 * 2**20 + 12345)
    ok(rt.oneos("fs", "mkdir", "-p", "/home/data", timeout=120))
    assert "209727545 bytes" in ok(rt.oneos("fs", "put", str(src), "/home/data/big.bin", timeout=300))
    ok(rt.oneos("fs", "get", "/home/data/big.bin", str(back), timeout=300))
    assert sha(src) == sha(back)
    assert "big.bin" in ok(rt.oneos("fs", "ls", "-l", "/home/data"))


def test_killed_uploader_leaves_the_old_file(embedded_runtime, tmp_path):
    rt = embedded_runtime()
    old = tmp_path / "old.txt"
    old.write_text("old content\n")
    ok(rt.oneos("fs", "put", str(old), "/precious.txt"))
    big = tmp_path / "big.bin"
    make_file(big, 150 * 2**20)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oneos.cli.main",
            "fs",
            "--pubsub",
            rt.url,
            "--progress",
            "put",
            str(big),
            "/precious.txt",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=dict(os.environ, ONEOS_HOME=str(rt.home)),
    )
    seen = b""
    while not re.search(rb"\b[1-9]\d\.\d%", seen):  # kill once 10-99% went over the wire
        chunk = proc.stderr.read1(256)
        assert chunk, f"uploader ended before it showed progress: {seen!r}"
        seen += chunk
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for("the service to drop the broken upload", lambda: "abandoned: the sender vanished" in rt.log(), logs=rt.log)
    assert ok(rt.oneos("fs", "cat", "/precious.txt")) == "old content\n"


def test_errors_are_plain_lines(embedded_runtime, tmp_path):
    rt = embedded_runtime()
    cases = [
        (("fs", "cat", "/no/such/file"), "no such file or directory"),
        (("fs", "cat", "/"), "is a directory"),
        (("fs", "rm", "/"), "/"),
        (("fs", "ls", "/bad\x01name"), ""),
    ]
    for args, expected in cases:
        result = rt.oneos(*args)
        assert result.returncode == 1, args
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
    local = tmp_path / "x.txt"
    local.write_text("x")
    ok(rt.oneos("fs", "mkdir", "/dir"))
    result = rt.oneos("fs", "put", str(local), "/dir")  # into the directory, as cp
    assert result.returncode == 0 and result.stdout == "/dir/x.txt: 1 bytes\n", result.stderr


def test_unreachable_store_is_reported_and_recovered(embedded_runtime, tmp_path):
    blocker = tmp_path / "store-dir"
    blocker.write_text("a file where the store's directory should be")
    rt = embedded_runtime("--store", f"sqlite:///{blocker}/fs.sqlite3")
    wait_for("the store failure to be logged", lambda: "file store unreachable" in rt.log(), logs=rt.log)
    result = rt.oneos("fs", "ls", "/")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        "sqlite" in result.stderr and "unavailable" in result.stderr.lower() or "unreachable" in result.stderr.lower()
    )
    assert rt.process.poll() is None
    blocker.unlink()
    wait_for("the store to come back", lambda: rt.oneos("fs", "ls", "/").returncode == 0, logs=rt.log)
