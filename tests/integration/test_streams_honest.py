"""Streams end honestly: a dead producer is an error naming its runtime; a reader that stops ends the writer.

Real broker, real runtimes, the real ``oneos`` command.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from oneos.testing.brokers import start_oneospsd
from oneos.testing.runtimes import RuntimeProcess, live, oneos, statuses, wait_for


@pytest.fixture
def trio(tmp_path):
    broker = start_oneospsd(tmp_path / "broker")
    procs = [RuntimeProcess("rt-1", broker.url, tmp_path)]
    wait_for("rt-1 to lead", lambda: "now leads the kernel" in procs[0].log(), logs=procs[0].log)
    procs.append(RuntimeProcess("rt-victim", broker.url, tmp_path, "--no-kernel"))
    wait_for("the victim to join", lambda: live(statuses(broker.url)).get("rt-victim"))
    yield broker, procs
    for p in procs:
        try:
            p.stop()
        except Exception:
            p.kill()
    broker.stop()


def ps(url: str) -> list[dict]:
    return json.loads(oneos("ps", "--json", "--all", "--pubsub", url).stdout)


def test_a_producer_whose_runtime_dies_fails_the_pipeline_and_names_it(trio):
    broker, (rt1, victim) = trio
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oneos.cli.main",
            "run",
            "--pubsub",
            broker.url,
            "--pipe",
            "yes @rt-victim | wc -c @rt-1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for("the pipe to flow", lambda: any(r["name"] == "wc" and r["state"] == "running" for r in ps(broker.url)))
    victim.kill(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, (out, err)
    assert "rt-victim" in err and ("vanished" in err or "broke" in err), err


def test_a_reader_that_stops_early_ends_the_remote_program(trio):
    broker, _ = trio
    r = subprocess.run(
        f"{sys.executable} -m oneos.cli.main run --pubsub {broker.url} --on rt-1 yes | head -c 100",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout == "y\n" * 50 and "Traceback" not in r.stderr, r.stderr
    wait_for(
        "yes to be stopped", lambda: all(row["state"] != "running" for row in ps(broker.url) if row["name"] == "yes")
    )


def test_programs_do_not_run_as_root_nor_read_the_runtimes_home(trio):
    import os

    broker, (rt1, _) = trio
    r = oneos("run", "--pubsub", broker.url, "--on", "rt-1", "id", "-u")
    assert r.returncode == 0, r.stderr
    if os.geteuid() == 0:
        assert r.stdout.strip() != "0", "a runtime started as root runs programs as an unprivileged account"
        r = oneos("run", "--pubsub", broker.url, "--on", "rt-1", "cat", str(rt1.home / "runtime.json"))
        assert r.returncode != 0 and "Permission denied" in r.stderr, r


# -- pipes at wire speed: the kernel path (os.splice) and the copying one keep the same promises ------------

PATTERN = b"abcdefghijklmnopqrstuvwxyz0123456789\n"
MiB = 2**20
MODES = {"splice": ("sp-1", "sp-2"), "copy": ("cp-1", "cp-2")}


@pytest.fixture(scope="module")
def pair_grid(tmp_path_factory):
    """A broker and two pairs of runtimes: one pair splices pipe bytes, the other (ONEOS_SPLICE=0) copies them."""
    import os

    root = tmp_path_factory.mktemp("pipes")
    broker = start_oneospsd(root / "broker")
    procs: dict[str, RuntimeProcess] = {}
    saved = os.environ.get("ONEOS_SPLICE")
    try:
        for mode, ids in MODES.items():
            os.environ["ONEOS_SPLICE"] = "1" if mode == "splice" else "0"
            for rid in ids:
                if rid == "sp-1":  # the kernel leader first, as the trio above
                    procs[rid] = RuntimeProcess(rid, broker.url, root)
                    wait_for("sp-1 to lead", lambda: "now leads the kernel" in procs["sp-1"].log(), 90, procs[rid].log)
                else:
                    procs[rid] = RuntimeProcess(rid, broker.url, root, "--no-kernel")
        wait_for("all four to join", lambda: len(live(statuses(broker.url))) == 4, 90)
    except BaseException:
        for p in procs.values():
            p.kill()
        broker.stop()
        raise
    finally:
        if saved is None:
            os.environ.pop("ONEOS_SPLICE", None)
        else:
            os.environ["ONEOS_SPLICE"] = saved
    try:
        yield broker, procs
    finally:
        for p in procs.values():
            try:
                p.stop()
            except Exception:
                p.kill()
        broker.stop()


def run_pipe(url: str, pipeline: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oneos.cli.main", "run", "--pubsub", url, "--pipe", pipeline],
        capture_output=True,
        timeout=timeout,
    )


def start_pipe(url: str, pipeline: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "oneos.cli.main", "run", "--pubsub", url, "--pipe", pipeline],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def pipe_rows(url: str) -> list[dict]:
    r = oneos("pipes", "--json", "--pubsub", url)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def agent_ids(url: str) -> set[str]:
    return {row["id"] for row in ps(url)}


def agent_named(url: str, name: str, runtime: str, old: set[str]) -> dict | None:
    """The running agent *name* on *runtime* that is not one of the *old* ones (earlier tests' may still show)."""
    rows = [
        r
        for r in ps(url)
        if r["name"] == name and r["runtime"] == runtime and r["state"] == "running" and r["id"] not in old
    ]
    return rows[-1] if rows else None


@pytest.mark.parametrize(
    ("a", "b"),
    [("sp-1", "sp-2"), ("cp-1", "cp-2"), ("sp-1", "cp-2"), ("cp-1", "sp-2")],
    ids=["splice", "copy", "splice-to-copy", "copy-to-splice"],
)
def test_a_64_mib_pipe_between_two_runtimes_is_byte_exact_and_counted(pair_grid, a, b):
    """Byte-exact either way, and between a runtime that splices and one that copies (an older one, say):
    the wire is the same, so each side picks its own path."""
    import hashlib

    broker, procs = pair_grid
    size = 64 * MiB
    expected = hashlib.sha256((PATTERN * (size // len(PATTERN) + 1))[:size]).hexdigest()
    marks = {rid: len(procs[rid].log()) for rid in (a, b)}
    r = run_pipe(broker.url, f"sh -c 'yes {PATTERN.decode().strip()} | head -c {size}' @{a} | sha256sum @{b}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == expected
    spliced = [rid for rid in (a, b) if "bytes move in the kernel (splice)" in procs[rid].log()[marks[rid] :]]
    assert spliced == [rid for rid in (a, b) if rid.startswith("sp-")], "the kernel path is taken where allowed"
    wait_for(
        "the pipes table to show every byte",
        lambda: any(row["bytes"] == size and row["from"].endswith(f"@{a}") for row in pipe_rows(broker.url)),
    )


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_producer_killed_mid_stream_fails_the_next_stage_and_the_pipeline(pair_grid, mode):
    broker, _ = pair_grid
    a, b = MODES[mode]
    old = agent_ids(broker.url)
    proc = start_pipe(broker.url, f"yes @{a} | wc -c @{b}")
    try:
        producer = wait_for("yes to run", lambda: agent_named(broker.url, "yes", a, old))
        wait_for(
            "bytes to flow",
            lambda: any(row["bytes"] > 0 and row["from"] == f"{producer['id']}@{a}" for row in pipe_rows(broker.url)),
        )
        r = oneos("kill", "--pubsub", broker.url, producer["id"])
        assert r.returncode == 0, r.stderr
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, (out, err)
    text = err.decode()
    assert "its input from yes@" in text and "killed by signal 15" in text and "Traceback" not in text, text


def test_a_reader_that_exits_early_stops_the_writer_as_sigpipe_would(pair_grid):
    broker, procs = pair_grid
    a, b = MODES["splice"]
    r = run_pipe(broker.url, f"yes @{a} | head -c 100 @{b}")
    assert r.returncode == 0 and r.stdout == b"y\n" * 50, r.stderr
    assert b"broke" not in r.stderr, r.stderr  # the reader's own choice: not an error of the reader
    wait_for(
        "yes to be stopped, named as the pipe's writer",
        lambda: [
            row
            for row in ps(broker.url)
            if row["name"] == "yes"
            and row["runtime"] == a
            and row["state"] == "killed"
            and "closed its input" in row.get("reason", "")
        ],
    )


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_reader_that_does_not_read_holds_the_writer_back_without_the_runtimes_growing(pair_grid, mode):
    """Back-pressure end to end: the bytes in flight stay within the pipes' and sockets' buffers.

    The reader waits for a gate file before it reads anything (a paused
    program, to the pipe); the writer would send 1 GiB.
    """
    import os
    import secrets

    import psutil

    broker, procs = pair_grid
    a, b = MODES[mode]
    size = 1024 * MiB
    gate = f"/tmp/oneos-gate-{secrets.token_hex(6)}"  # programs run as nobody: a path anyone can look at
    reader = f"sh -c 'while [ ! -e {gate} ]; do sleep 0.1; done; exec wc -c'"
    rss = {rid: psutil.Process(procs[rid].process.pid) for rid in (a, b)}
    before = {rid: p.memory_info().rss for rid, p in rss.items()}
    old = agent_ids(broker.url)
    proc = start_pipe(broker.url, f"head -c {size} /dev/zero @{a} | {reader} @{b}")
    try:
        writer = wait_for("head to run", lambda: agent_named(broker.url, "head", a, old))
        seen: list[int] = []

        def stalled() -> bool:
            rows = [row["bytes"] for row in pipe_rows(broker.url) if row["from"] == f"{writer['id']}@{a}"]
            seen.append(rows[0] if rows else 0)
            return seen[-1] > 0 and len(seen) >= 4 and len(set(seen[-4:])) == 1

        wait_for("the flow to stop at the reader", stalled, 90)
        assert seen[-1] < 64 * MiB, seen  # held back by the reader: only buffers' worth left the writer
        grown = {rid: (p.memory_info().rss - before[rid]) / MiB for rid, p in rss.items()}
        assert all(g < 64 for g in grown.values()), grown
        with open(gate, "w"):
            pass
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if os.path.exists(gate):
            os.unlink(gate)
    assert proc.returncode == 0 and out.strip() == str(size).encode(), (out, err)
