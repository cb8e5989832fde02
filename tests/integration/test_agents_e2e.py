"""Agents, scheduler and pipes on a real 3-runtime grid (real processes, real TCP)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time

import psutil
import pytest

from oneos.testing.brokers import start_oneospsd
from oneos.testing.runtimes import RuntimeProcess, leaders, live, statuses, wait_for

# A deterministic byte stream: N MiB of sha256-chained blocks.
GEN = (
    "import hashlib, sys\n"
    "n = int(sys.argv[1]); h = b'oneos'; out = sys.stdout.buffer\n"
    "for i in range(n * 32768 // 1024):\n"
    "    h = hashlib.sha256(h).digest(); out.write(h * 32)\n"
)


def expected_sha(mib: int) -> str:
    digest, h = hashlib.sha256(), b"oneos"
    for _ in range(mib * 32768 // 1024):
        h = hashlib.sha256(h).digest()
        digest.update(h * 32)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("agents-grid")
    broker = start_oneospsd(root / "broker")
    procs = {f"rt-{i}": RuntimeProcess(f"rt-{i}", broker.url, root) for i in (1, 2, 3)}
    logs = lambda: "\n".join(f"== {p.id}\n{p.log()[-2000:]}" for p in procs.values())  # noqa: E731
    wait_for(
        "3 live runtimes and a leader",
        lambda: (v := statuses(broker.url)) and len(live(v)) == 3 and len(leaders(v)) == 1,
        deadline=60,
        logs=logs,
    )
    grid = type("Grid", (), {"url": broker.url, "procs": procs, "logs": staticmethod(logs), "root": root})
    yield grid
    for p in procs.values():
        p.stop()
    broker.stop()


def run(grid, *args, input=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "oneos.cli.main", *args[:1], "--pubsub", grid.url, *args[1:]],
        capture_output=True,
        input=input,
        timeout=timeout,
    )


def test_remote_run_output_and_exit_code(grid):
    r = run(grid, "run", "--on", "rt-2", "sh", "-c", "echo out on $ONEOS_RUNTIME; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out on rt-2\n", b"err\n")


def test_stdin_is_forwarded(grid):
    r = run(
        grid,
        "run",
        "--on",
        "rt-3",
        "python3",
        "-c",
        "import sys; print(sys.stdin.read().upper(), end='')",
        input=b"hello\n",
    )
    assert (r.returncode, r.stdout) == (0, b"HELLO\n")


def test_three_stage_pipeline_across_runtimes_is_byte_exact(grid, public_dir):
    gen = public_dir / "gen.py"
    gen.write_text(GEN)
    r = run(grid, "run", "--pipe", f"python3 {gen} 100 @rt-1 | cat @rt-2 | sha256sum @rt-3", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].decode() == expected_sha(100)


def test_program_from_the_oneos_file_system_and_file_redirection(grid, tmp_path):
    script = tmp_path / "count.py"
    script.write_text("import sys\nlines = sys.stdin.read().split()\nprint(len(lines), sum(map(int, lines)))\n")
    assert run(grid, "fs", "put", str(script), "/bin/count.py").returncode == 0
    made = run(grid, "run", "--on", "rt-2", "--stdout-file", "/tmp/numbers.txt", "seq", "1", "100")
    assert made.returncode == 0, made.stderr
    counted = run(grid, "run", "--on", "rt-3", "--stdin-file", "/tmp/numbers.txt", "/bin/count.py")
    assert (counted.returncode, counted.stdout) == (0, b"100 5050\n"), counted.stderr
    missing = run(grid, "run", "--stdin-file", "/tmp/no-such-input", "cat")
    assert missing.returncode == 1 and b"no such file or directory" in missing.stderr


def test_pipes_are_listed_with_their_bytes(grid):
    proc = subprocess.Popen(
        [sys.executable, "-m", "oneos.cli.main", "run", "--pubsub", grid.url, "--pipe", "yes @rt-1 | sleep 300 @rt-2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rows = wait_for(
            "the pipe to be listed with bytes",
            lambda: [
                p for p in json.loads(run(grid, "pipes", "--json").stdout) if p["bytes"] > 0 and p["state"] == "running"
            ],
        )
        assert rows[0]["from"].endswith("@rt-1") and rows[0]["to"].endswith("@rt-2")
    finally:
        for r in json.loads(run(grid, "ps", "--json").stdout):
            if r["name"] in ("yes", "sleep"):
                run(grid, "kill", r["id"])
        proc.wait(timeout=60)


def test_slow_reader_bounds_memory(grid, public_dir):
    slow = public_dir / "slow.py"
    slow.write_text(
        "import sys, time\nn = 0\nwhile True:\n    b = sys.stdin.buffer.read(65536)\n    if not b: break\n"
        "    n += len(b); time.sleep(0.002)\nprint(n)\n"
    )
    writer_rt = psutil.Process(grid.procs["rt-1"].process.pid)
    reader_rt = psutil.Process(grid.procs["rt-2"].process.pid)
    before = max(writer_rt.memory_info().rss, reader_rt.memory_info().rss)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oneos.cli.main",
            "run",
            "--pubsub",
            grid.url,
            "--pipe",
            f"head -c 150000000 /dev/zero @rt-1 | python3 {slow} @rt-2",
        ],
        stdout=subprocess.PIPE,
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, writer_rt.memory_info().rss, reader_rt.memory_info().rss)
        time.sleep(0.1)  # sampling interval of the memory probe
    assert proc.returncode == 0 and proc.stdout.read().strip() == b"150000000"
    # 150 MB flowed through; the runtimes grew by far less than that
    assert peak - before < 40 * 2**20


def test_ps_kill_pause_resume(grid):
    started = run(grid, "run", "--on", "rt-3", "-d", "sleep", "300")
    agent_id = started.stdout.split()[0].decode()
    rows = {r["id"]: r for r in json.loads(run(grid, "ps", "--json").stdout)}
    assert rows[agent_id]["runtime"] == "rt-3" and rows[agent_id]["state"] == "running"
    assert b"paused" in run(grid, "pause", agent_id).stdout
    assert b"running" in run(grid, "resume", agent_id).stdout
    assert run(grid, "kill", agent_id).returncode == 0
    wait_for(
        "the agent to be killed",
        lambda: (
            {r["id"]: r for r in json.loads(run(grid, "ps", "--json", "--all").stdout)}[agent_id]["state"] == "killed"
        ),
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (("run", "no-such-program-xyz"), b"command not found"),
        (("run", "/dev/null"), b"not executable"),
        (("run", "--tag", "no-such-tag", "true"), b"lacks tag no-such-tag"),
        (("run", "--on", "rt-9", "true"), b"not the requested runtime rt-9"),
        (("kill", "deadbeef"), b"no agent 'deadbeef'"),
        (("run", "--pipe", "ls @rt-1 |"), b"has no program"),
    ],
)
def test_bad_input_is_a_plain_error(grid, args, message):
    r = run(grid, *args)
    assert r.returncode != 0
    assert message in r.stderr and b"Traceback" not in r.stderr


def test_reader_that_never_reads_can_be_killed(grid):
    proc = subprocess.Popen(
        [sys.executable, "-m", "oneos.cli.main", "run", "--pubsub", grid.url, "--pipe", "yes @rt-1 | sleep 300 @rt-2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for(
        "both stages running",
        lambda: {r["name"] for r in json.loads(run(grid, "ps", "--json").stdout)} >= {"yes", "sleep"},
    )
    rows = json.loads(run(grid, "ps", "--json").stdout)
    sleeper = next(r for r in rows if r["name"] == "sleep")
    yes = next(r for r in rows if r["name"] == "yes")
    assert yes["memory_mb"] < 50  # the writer is held back, not buffering
    run(grid, "kill", sleeper["id"])
    code = proc.wait(timeout=60)
    assert code == 128 + signal.SIGTERM
    wait_for(
        "the writer to be stopped too",
        lambda: (
            {r["id"]: r for r in json.loads(run(grid, "ps", "--json", "--all").stdout)}[yes["id"]]["state"] != "running"
        ),
    )


def test_runtime_dying_mid_pipe_ends_with_an_error(grid):
    victim = RuntimeProcess("rt-victim", grid.url, grid.root, "--no-kernel")
    wait_for("the victim to join", lambda: live(statuses(grid.url)).get("rt-victim"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "oneos.cli.main", "run", "--pubsub", grid.url, "--pipe", "yes @rt-1 | cat @rt-victim"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for("the pipe to flow", lambda: any(r["name"] == "cat" for r in json.loads(run(grid, "ps", "--json").stdout)))
    victim.kill(signal.SIGKILL)
    code = proc.wait(timeout=60)
    assert code != 0
    wait_for(
        "the writer stage to be stopped",
        lambda: all(
            r["state"] != "running" for r in json.loads(run(grid, "ps", "--json").stdout) if r["name"] == "yes"
        ),
    )


def test_restart_on_failure_after_runtime_sigkill(grid):
    victim = RuntimeProcess("rt-doomed", grid.url, grid.root, "--no-kernel")
    wait_for("the doomed runtime to join", lambda: live(statuses(grid.url)).get("rt-doomed"))
    started = run(grid, "run", "--on", "rt-doomed", "--restart", "on-failure", "sleep", "300")
    agent_id = started.stdout.split()[0].decode()
    victim.kill(signal.SIGKILL)

    def restarted():
        rows = json.loads(run(grid, "ps", "--json", "--all").stdout)
        old = next((r for r in rows if r["id"] == agent_id), None)
        new = [
            r
            for r in rows
            if r["name"] == "sleep" and r["state"] == "running" and r["runtime"] != "rt-doomed" and r["id"] != agent_id
        ]
        return old is not None and old["state"] == "lost" and new

    new = wait_for(
        "the agent to be restarted elsewhere (after the disconnect grace)", restarted, deadline=60, logs=grid.logs
    )
    for r in new:
        run(grid, "kill", r["id"])
