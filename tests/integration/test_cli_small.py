"""Small things users ran into (issue 14 item 6), with the real commands against real runtimes.

``kill``/``pause``/``resume`` say the new state and take an id prefix (the
CLI and the shell's built-in); ``pipes`` lists a pipeline that lasted a
moment; ``fs put/get`` into a directory as cp; options after the
arguments; Ctrl-C in ``fs put`` from a slow pipe; ``oneos grid`` ending on
SIGTERM and on a closed output, leaving no process; one log line per SSH
login; a runtime with no configured id keeping it across restarts.  The
pure logic is in tests/unit/test_cli_small_logic.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from oneos.testing.brokers import free_port
from oneos.testing.runtimes import EmbeddedRuntime, oneos, wait_for
from oneos.twistd import twistd_command


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRuntime]:
    """One runtime with its embedded broker, leading the kernel and serving the tree."""
    runtime = EmbeddedRuntime(tmp_path_factory.mktemp("small"))
    try:
        wait_for("the runtime to lead", lambda: "now leads the kernel" in runtime.log(), 90, runtime.log)
        yield runtime
    finally:
        runtime.stop()


def cli(rt: EmbeddedRuntime, *args: str, **kw) -> subprocess.CompletedProcess:
    """``oneos ARGS... --pubsub URL``: the options after the arguments, as users type them."""
    return oneos(*args, "--pubsub", rt.url, env={"ONEOS_HOME": str(rt.home)}, **kw)


def ps_rows(rt: EmbeddedRuntime, *flags: str) -> list[dict]:
    r = cli(rt, "ps", "--json", *flags)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def start_sleeper(rt: EmbeddedRuntime, seconds: str) -> tuple[subprocess.Popen, str]:
    """``oneos run sleep SECONDS`` in the background, and its agent's id once it runs."""
    old = {r["id"] for r in ps_rows(rt, "-a")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "oneos.cli.main", "run", "--pubsub", rt.url, "sleep", seconds],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, ONEOS_HOME=str(rt.home)),
    )
    rows = wait_for(
        f"sleep {seconds} to run",
        lambda: [r for r in ps_rows(rt) if r["args"] == [seconds] and r["id"] not in old],
        logs=rt.log,
    )
    return proc, rows[0]["id"]


def unique_prefix(rt: EmbeddedRuntime, agent_id: str) -> str:
    """The shortest prefix of *agent_id* no other agent's id starts with (at least 3 characters)."""
    others = [r["id"] for r in ps_rows(rt, "-a") if r["id"] != agent_id]
    for n in range(3, len(agent_id)):
        if not any(o.startswith(agent_id[:n]) for o in others):
            return agent_id[:n]
    return agent_id


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_kill_pause_and_resume_say_the_new_state_and_take_a_unique_prefix(rt):
    proc, agent_id = start_sleeper(rt, "301")
    try:
        prefix = unique_prefix(rt, agent_id)
        paused = cli(rt, "pause", prefix)
        assert (paused.returncode, paused.stdout) == (0, f"{agent_id} paused\n"), paused.stderr
        resumed = cli(rt, "resume", prefix)
        assert (resumed.returncode, resumed.stdout) == (0, f"{agent_id} running\n"), resumed.stderr
        killed = cli(rt, "kill", prefix, "--grace", "3")
        assert (killed.returncode, killed.stdout) == (0, f"{agent_id} killed\n"), killed.stderr
        assert proc.wait(timeout=60) != 0, "the program's 'oneos run' ends with it"
        missing = cli(rt, "kill", "zzzz")
        assert (missing.returncode, missing.stdout, missing.stderr) == (
            1,
            "",
            "oneos kill: no agent 'zzzz' in the network\n",
        )
    finally:
        stop(proc)


def test_the_shells_kill_says_killed_for_a_prefix(rt):
    proc, agent_id = start_sleeper(rt, "302")
    try:
        prefix = unique_prefix(rt, agent_id)
        r = oneos("--no-reuse", "-c", f"kill {prefix}", env={"ONEOS_HOME": str(rt.home)})
        assert (r.returncode, r.stdout) == (0, f"{agent_id} killed\n"), r.stderr
        assert [row["state"] for row in ps_rows(rt, "-a") if row["id"] == agent_id] == ["killed"]
    finally:
        stop(proc)


def test_a_pipe_that_lasted_a_moment_is_listed_with_its_bytes(rt):
    old = {r["id"] for r in ps_rows(rt, "-a")}
    r = cli(rt, "run", "--pipe", "echo hello | cat")
    assert (r.returncode, r.stdout) == (0, "hello\n"), r.stderr
    [echo] = [row for row in ps_rows(rt, "-a") if row["name"] == "echo" and row["id"] not in old]
    [cat] = [row for row in ps_rows(rt, "-a") if row["name"] == "cat" and row["id"] not in old]

    def listed():
        pipes = cli(rt, "pipes", "--json")
        assert pipes.returncode == 0, pipes.stderr
        return [p for p in json.loads(pipes.stdout) if p["from"] == f"{echo['id']}@solo" and p["bytes"] == 6]

    [row] = wait_for("the finished pipe with its 6 bytes", listed, logs=rt.log)
    assert (row["to"], row["state"]) == (f"{cat['id']}@solo", "exited")
    table = cli(rt, "pipes")
    assert f"{echo['id']}@solo" in table.stdout


def test_fs_put_and_get_copy_into_a_directory_as_cp_does(rt, tmp_path):
    (tmp_path / "notes.txt").write_bytes(b"one\n")
    assert cli(rt, "fs", "mkdir", "-p", "/tmp/into").returncode == 0
    slash = cli(rt, "fs", "put", str(tmp_path / "notes.txt"), "/tmp/")
    assert (slash.returncode, slash.stdout) == (0, "/tmp/notes.txt: 4 bytes\n"), slash.stderr
    bare = cli(rt, "fs", "put", str(tmp_path / "notes.txt"), "/tmp/into")
    assert (bare.returncode, bare.stdout) == (0, "/tmp/into/notes.txt: 4 bytes\n"), bare.stderr
    listing = cli(rt, "fs", "ls", "/tmp/into", "-l")
    assert listing.returncode == 0 and listing.stdout.rstrip().endswith(" notes.txt"), listing.stderr
    (tmp_path / "back").mkdir()
    got = cli(rt, "fs", "get", "/tmp/into/notes.txt", str(tmp_path / "back"))
    assert got.returncode == 0 and (tmp_path / "back" / "notes.txt").read_bytes() == b"one\n", got.stderr
    no_dir = cli(rt, "fs", "get", "/tmp/into/notes.txt", str(tmp_path / "nowhere") + "/")
    assert (no_dir.returncode, no_dir.stderr) == (
        1,
        f"oneos fs get: {tmp_path / 'nowhere'}/: no such local directory\n",
    )


def test_fs_cat_into_a_reader_that_stops_early_ends_quietly_with_sigpipes_status(rt, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(4 * 1024 * 1024))  # more than any pipe and socket buffers hold
    assert cli(rt, "fs", "put", str(big), "/tmp/big.bin").returncode == 0
    cat = subprocess.Popen(
        [sys.executable, "-m", "oneos.cli.main", "fs", "cat", "/tmp/big.bin", "--pubsub", rt.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, ONEOS_HOME=str(rt.home)),
    )
    try:
        assert cat.stdout is not None and len(cat.stdout.read(10)) == 10
        cat.stdout.close()  # as `| head -c 10` does once it has its bytes
        _, err = cat.communicate(timeout=60)
        assert (cat.returncode, err) == (141, b""), "as cat on SIGPIPE: no message, 128 + 13"
    finally:
        stop(cat)


def test_ctrl_c_while_connecting_is_status_130_not_an_empty_answer(tmp_path):
    # a broker that accepts the connection and never answers: 'oneos status' waits for its CONNACK
    with socket.create_server(("127.0.0.1", 0)) as silent:
        status = subprocess.Popen(
            [sys.executable, "-m", "oneos.cli.main", "status", "--timeout", "60"]
            + ["--pubsub", f"mqtt://127.0.0.1:{silent.getsockname()[1]}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, ONEOS_HOME=str(tmp_path)),
            preexec_fn=_as_in_a_terminal,
        )
        try:
            silent.settimeout(60)
            connection, _ = silent.accept()  # it is connecting now
            status.send_signal(signal.SIGINT)
            out, err = status.communicate(timeout=30)
            connection.close()
            assert (status.returncode, out, err) == (130, b"", b"oneos status: interrupted\n")
        finally:
            stop(status)


def test_ctrl_c_in_oneos_run_stops_the_program_as_a_shell_stops_its_foreground_job(rt):
    old = {r["id"] for r in ps_rows(rt, "-a")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "oneos.cli.main", "run", "--pubsub", rt.url, "sleep", "302"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, ONEOS_HOME=str(rt.home)),
        preexec_fn=_as_in_a_terminal,
    )
    try:
        rows = wait_for(
            "sleep 302 to run",
            lambda: [r for r in ps_rows(rt) if r["args"] == ["302"] and r["id"] not in old],
            logs=rt.log,
        )
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out, err) == (130, b"", b"oneos run: interrupted\n")
        agent = rows[0]["id"]
        ended = wait_for(
            "the program to be stopped",
            lambda: [r for r in ps_rows(rt, "-a") if r["id"] == agent and r["state"] != "running"],
            logs=rt.log,
        )
        assert ended[0]["state"] == "killed", ended
    finally:
        stop(proc)


def test_options_after_the_arguments(rt):
    status = cli(rt, "status", "--json")
    assert status.returncode == 0 and [s["id"] for s in json.loads(status.stdout)] == ["solo"], status.stderr
    ps = oneos("ps", "-a", "--json", "--pubsub", rt.url, env={"ONEOS_HOME": str(rt.home)})
    assert ps.returncode == 0 and isinstance(json.loads(ps.stdout), list), ps.stderr


SLOW = (
    "import sys, time\n"
    "out = sys.stdout.buffer\n"
    "for n in range(10_000):\n"
    "    out.write(b'x' * 65536); out.flush()\n"
    "    open(sys.argv[1], 'w').write(str(n + 1))\n"
    "    time.sleep(0.05)\n"
)


def _as_in_a_terminal() -> None:
    """SIGINT as a foreground command in a terminal has it: a test run started in the background
    (``cmd &`` in a script, nohup) hands its children SIGINT ignored, and a command rightly keeps that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_in_fs_put_from_a_slow_pipe_is_status_130_one_line_and_no_file(rt, tmp_path):
    counter = tmp_path / "written"
    producer = subprocess.Popen([sys.executable, "-c", SLOW, str(counter)], stdout=subprocess.PIPE)
    assert producer.stdout is not None
    put = subprocess.Popen(
        [sys.executable, "-m", "oneos.cli.main", "fs", "put", "-", "/tmp/slow.bin", "--pubsub", rt.url],
        stdin=producer.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, ONEOS_HOME=str(rt.home)),
        preexec_fn=_as_in_a_terminal,
    )
    producer.stdout.close()
    try:
        # more written than a pipe holds: the put is reading, mid-transfer
        wait_for("the put to be under way", lambda: counter.exists() and int(counter.read_text() or 0) > 8)
        put.send_signal(signal.SIGINT)
        out, err = put.communicate(timeout=30)
        assert (put.returncode, out, err) == (130, b"", b"oneos fs put: interrupted\n")
    finally:
        stop(put)
        stop(producer)
    listing = cli(rt, "fs", "ls", "/tmp")
    assert listing.returncode == 0 and "slow.bin" not in listing.stdout, "an interrupted put leaves no file"


# -- oneos grid ------------------------------------------------------------------------------------


def grid_argv(directory: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "oneos.cli.main",
        "grid",
        "--runtimes",
        "1",
        "--dir",
        str(directory),
        "--port",
        str(port),
        "--ssh-port",
        "0",
        "--desktop-port",
        "0",
    ]


def processes_in(directory: Path) -> list[psutil.Process]:
    """Processes working in *directory* (the grid starts its broker and runtimes there)."""
    found = []
    for p in psutil.process_iter(["cwd"]):
        try:
            if p.info["cwd"] and Path(p.info["cwd"]).resolve() == directory.resolve():
                found.append(p)
        except (psutil.Error, OSError):
            pass
    return found


def test_grid_into_a_closed_pipe_returns_and_leaves_no_process(tmp_path):
    directory = tmp_path / "grid"
    env = dict(os.environ, ONEOS_HOME=str(tmp_path / "me"))
    command = " ".join(grid_argv(directory, free_port())) + " | head -1"
    started = time.monotonic()
    r = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=90, env=env)
    assert r.returncode == 0 and r.stdout.startswith("grid | starting a broker"), r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert time.monotonic() - started < 60
    assert not processes_in(directory), "every process of the grid stopped"


def test_grid_stops_its_children_on_sigterm(tmp_path):
    directory = tmp_path / "grid"
    log = open(tmp_path / "grid.log", "wb")
    grid = subprocess.Popen(
        grid_argv(directory, free_port()),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, ONEOS_HOME=str(tmp_path / "me")),
    )
    children: list[psutil.Process] = []
    try:
        logs = lambda: (tmp_path / "grid.log").read_text(errors="replace")  # noqa: E731
        wait_for("the runtime to join", lambda: "joined the network" in logs(), 90, logs)
        children = psutil.Process(grid.pid).children()
        assert len(children) == 2, "a broker and a runtime"
        grid.send_signal(signal.SIGTERM)
        assert grid.wait(timeout=60) == 0
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"still running after the grid ended: {alive}"
        assert "grid | rt-1 exited" in logs() and "grid | psd exited" in logs()
    finally:
        if grid.poll() is None:
            grid.kill()
            grid.wait()
        for child in children:
            if child.is_running():
                child.kill()
        log.close()


# -- the runtime's log, its id -------------------------------------------------------------------------


def test_one_ssh_login_is_one_log_line_and_a_logout_is_no_error(rt):
    mark = len(rt.log())
    env = {"ONEOS_HOME": str(rt.home)}
    for _ in range(2):
        r = oneos("--no-reuse", "-c", "echo hi", env=env)
        assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    wait_for("both logins in the log", lambda: rt.log()[mark:].count(" logged in from ") == 2, logs=rt.log)
    new = rt.log()[mark:].splitlines()
    ssh_lines = [line for line in new if "conch" in line or "oneos.shell.ssh" in line]
    assert len(ssh_lines) == 2 and all("ssh: root logged in from 127.0.0.1 (publickey)" in x for x in ssh_lines), new
    assert not [line for line in new if "#error" in line or "#critical" in line], new


def test_a_runtime_without_an_id_keeps_its_generated_one_across_restarts(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = dict(os.environ, ONEOS_HOME=str(home), PYTHONUNBUFFERED="1")

    def start(n: int) -> tuple[subprocess.Popen, str]:
        log_path = tmp_path / f"run{n}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                twistd_command("oneosd", "--pubsub", f"mqtt://127.0.0.1:{port}", "--ssh", "", "--desktop", ""),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=home,
            )
        text = lambda: log_path.read_text(errors="replace")  # noqa: E731
        wait_for("the runtime to join", lambda: "joined the network" in text(), 90, text)
        return proc, text()

    ids = []
    for n in (1, 2):
        proc, text = start(n)
        try:
            header = [line for line in text.splitlines() if "OneOS runtime " in line][0]
            ids.append(header.split("OneOS runtime ", 1)[1].split()[0])
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert ids[0] == ids[1] == (home / "runtime_id").read_text().strip()
