"""Programs use devices on a real 3-runtime grid: ``oneos_device`` in a program, and ``prog < /dev/..`` / ``prog > /dev/..``.

rt-1 has GPIO mock pins (an output wired to an input), a dump sink and a
command output that appends to a file; rt-2 has a random source, an ffmpeg
lavfi camera, a command that prints 5 lines and a camera that cannot start;
both have a random ``twin``.  rt-3 has none: the ``oneos`` commands run with
its home, as on a third machine, and ``oneos -c`` logs into its shell.  The
programs run under Debian's ``/usr/bin/python3`` as ``nobody`` (the
runtimes run as root), not the test's interpreter: the module they import
is the stdlib-only one each runtime puts on their PYTHONPATH.  Every wait is
"until a condition holds, or a deadline"; every process is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from oneos.devices.mjpeg import FrameSplitter, is_jpeg
from oneos.testing.brokers import start_oneospsd
from oneos.testing.runtimes import RuntimeProcess, leaders, live, statuses, wait_for

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")
pytestmark = [
    pytest.mark.skipif(
        shutil.which("ssh") is None or shutil.which("ssh-keygen") is None, reason="oneos -c needs the OpenSSH client"
    ),
    pytest.mark.skipif(
        __import__("importlib").util.find_spec("gpiozero") is None, reason="gpiozero is not installed (the test extra)"
    ),
]
CAMERA = "format=lavfi,input=testsrc=size=160x120:rate=25,quality=8"

#: a program that reads N bytes (or units) of a device with oneos_device and writes them to its stdout
READER = """
import sys, oneos_device
path, size, units = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
got = bytearray()
with oneos_device.open(path, units=units) as dev:
    while size == 0 or len(got) < size:
        chunk = dev.read(65536)
        if not chunk:
            break
        got += chunk
sys.stdout.buffer.write(bytes(got[:size] if size else got))
"""

#: a program that tries each (path, mode, bytes) and prints what happened, one JSON line each
TRIER = """
import json, sys, oneos_device
for path, mode, data in json.loads(sys.argv[1]):
    try:
        if mode == "w":
            with oneos_device.open(path, "w") as dev:
                dev.write(data.encode())
            print(json.dumps({"path": path, "ok": dev.status}))
        else:
            with oneos_device.open(path, units=1) as dev:
                print(json.dumps({"path": path, "ok": dev.read().decode(), "at": dev.address}))
    except OSError as e:
        print(json.dumps({"path": path, "errno": e.errno, "error": str(e), "type": type(e).__name__}))
    sys.stdout.flush()
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("devices-program")
    broker = start_oneospsd(root / "broker")
    out = root / "out"
    out.mkdir()
    out.chmod(0o777)
    procs = {
        "rt-1": RuntimeProcess(
            "rt-1",
            broker.url,
            root,
            *("--device", "led:out:gpio:pin=17,mock=1,mock_wire=27"),
            *("--device", "button:in:gpio:pin=27,mock=1"),
            *("--device", f"sink:out:dump:file={out / 'sink.bin'}"),
            *("--device", f"log:out:command:cmd=sh -c 'cat >> {out / 'log.txt'}'"),
            *("--device", "twin:in:random"),
        ),
        "rt-2": RuntimeProcess(
            "rt-2",
            broker.url,
            root,
            *("--device", "rnd:in:random"),
            *("--device", f"cam0:in:video:{CAMERA}"),
            *("--device", "count:in:command:cmd=seq 1 5,unit=line"),
            *("--device", "nocam:in:video:ffmpeg=/nonexistent/ffmpeg,format=lavfi,input=testsrc"),
            *("--device", "twin:in:random"),
        ),
        "rt-3": RuntimeProcess("rt-3", broker.url, root),
    }
    logs = lambda: "\n".join(f"== {p.id}\n{p.log()[-4000:]}" for p in procs.values())  # noqa: E731
    g = type("Grid", (), {"url": broker.url, "procs": procs, "logs": staticmethod(logs), "root": root, "out": out})
    try:
        wait_for(
            "3 live runtimes, a leader, and rt-3's shell",
            lambda: (
                (v := statuses(broker.url))
                and len(live(v)) == 3
                and len(leaders(v)) == 1
                and (procs["rt-3"].home / "runtime.json").exists()
                and json.loads((procs["rt-3"].home / "runtime.json").read_text()).get("ssh")
            ),
            deadline=60,
            logs=logs,
        )
        for name, text in (("reader.py", READER), ("trier.py", TRIER)):
            (root / name).write_text(text)
            put = oneos(g, "fs", "put", str(root / name), f"/tmp/{name}")
            assert put.returncode == 0, put.stderr
        wait_for("the shell", lambda: sh(g, "echo ready").stdout == "ready\n", deadline=60, logs=logs)
        yield g
    finally:
        for p in procs.values():
            p.stop()
        broker.stop()


def env_of(grid) -> dict[str, str]:
    """The environment of ``oneos`` on rt-3's machine (its home)."""
    return dict(os.environ, ONEOS_HOME=str(grid.procs["rt-3"].home))


def oneos(grid, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "oneos.cli.main", args[0], "--pubsub", grid.url, *args[1:]]
    return subprocess.run(argv, capture_output=True, timeout=timeout, env=env_of(grid))


def sh(grid, line: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """``oneos -c LINE`` on rt-3's machine (its runtime's shell, its owner's key)."""
    argv = [sys.executable, "-m", "oneos.cli.main", "-c", line]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env_of(grid))


def tree_file(grid, path: str) -> bytes:
    got = oneos(grid, "fs", "cat", path)
    assert got.returncode == 0, got.stderr
    return got.stdout


def tried(grid, runtime: str, *attempts: tuple[str, str, str]) -> dict[str, dict]:
    """Run the trier program on *runtime*; what each attempt gave, by path."""
    line = f"python3 /tmp/trier.py '{json.dumps(list(attempts))}' @{runtime}"
    r = sh(grid, line)
    assert r.returncode == 0, (r.stderr, grid.logs())
    return {row["path"]: row for row in map(json.loads, r.stdout.splitlines())}


# -- the program API -------------------------------------------------------------------------------------
def test_a_program_reads_a_device_of_another_runtime_into_the_tree(grid):
    r = sh(grid, "python3 /tmp/reader.py /dev/rt-2/rnd 100000 0 @rt-1 > /tmp/rnd.bin")
    assert r.returncode == 0, (r.stderr, grid.logs())
    data = tree_file(grid, "/tmp/rnd.bin")
    assert len(data) == 100000 and len(set(data)) > 200  # random bytes, all of them


@needs_ffmpeg
def test_a_program_reads_whole_camera_frames_by_the_devices_bare_name(grid):
    r = sh(grid, "python3 /tmp/reader.py cam0 0 3 @rt-1 > /tmp/frames.mjpeg")  # 'cam0': wherever it is (rt-2)
    assert r.returncode == 0, (r.stderr, grid.logs())
    splitter = FrameSplitter()
    frames = splitter.feed(tree_file(grid, "/tmp/frames.mjpeg"))
    assert len(frames) == 3 and splitter.pending == 0 and all(is_jpeg(f) for f in frames)


def test_a_program_writes_output_devices_and_is_told_their_answer(grid):
    results = tried(
        grid,
        "rt-2",
        ("/dev/rt-1/sink", "w", "from a program\n"),
        ("rt-1/led", "w", "1\n"),
        ("button", "r", ""),
        ("/dev/rt-1/log", "w", "a line for the log\n"),
    )
    assert results["/dev/rt-1/sink"]["ok"] == {"bytes": 15, "device": "sink"}, results
    assert results["rt-1/led"]["ok"]["device"] == "led"
    assert results["button"] == {"path": "button", "ok": "1\n", "at": "rt-1/button"}  # the wired pin
    assert results["/dev/rt-1/log"]["ok"]["device"] == "log"
    assert wait_for("the sink's file", lambda: (grid.out / "sink.bin").read_bytes() == b"from a program\n")
    assert (grid.out / "log.txt").read_text() == "a line for the log\n"
    refused = tried(grid, "rt-2", ("/dev/rt-1/led", "w", "on\n"))["/dev/rt-1/led"]
    assert refused["type"] == "OSError" and refused["errno"] == 22, refused  # EINVAL, raised at close
    assert "GPIO pin 17 takes lines of 0 or 1, not 'on'" in refused["error"]


def test_errors_reach_the_program_as_oserrors_with_their_errno(grid):
    results = tried(
        grid,
        "rt-1",
        ("/dev/rt-2/nothing", "r", ""),
        ("nothing", "r", ""),
        ("twin", "r", ""),
        ("/dev/rt-9/rnd", "r", ""),
        ("/dev/rt-1/led", "r", ""),
        ("/dev/rt-2/rnd", "w", "x"),
        ("/dev/rt-2/nocam", "r", ""),
    )
    assert results["/dev/rt-2/nothing"]["type"] == "FileNotFoundError"
    assert "no device 'nothing' on runtime rt-2" in results["/dev/rt-2/nothing"]["error"]
    assert results["nothing"]["type"] == "FileNotFoundError"
    assert results["twin"]["errno"] == 76 and "on several runtimes (rt-1, rt-2)" in results["twin"]["error"]
    assert results["/dev/rt-9/rnd"]["type"] == "FileNotFoundError"
    assert (
        results["/dev/rt-1/led"]["type"] == "PermissionError" and "output device" in results["/dev/rt-1/led"]["error"]
    )
    assert results["/dev/rt-2/rnd"]["type"] == "PermissionError"
    assert (
        results["/dev/rt-2/nocam"]["errno"] == 19
        and "ffmpeg /nonexistent/ffmpeg not found" in results["/dev/rt-2/nocam"]["error"]
    )


def test_a_program_not_run_by_oneos_is_told_there_is_no_gateway(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONEOS_")}
    from oneos.devices.gateway import PROGRAM_DIR

    env["PYTHONPATH"] = str(PROGRAM_DIR)
    r = subprocess.run(
        [
            "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
            "-c",
            TRIER,
            '[["rnd", "r", ""]]',
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    row = json.loads(r.stdout)
    assert row["errno"] == 19 and "ONEOS_DEVICES" in row["error"], r.stderr


# -- the shell's redirections ----------------------------------------------------------------------------------
def test_a_device_into_a_programs_stdin(grid):
    r = sh(grid, "sh -c 'head -c 5000 | wc -c' @rt-1 < /dev/rt-2/rnd")
    assert (r.returncode, r.stdout.strip()) == (0, "5000"), r.stderr
    r = sh(grid, "wc -l @rt-1 < /dev/rt-2/count")  # a device that ends: the program's input ends
    assert (r.returncode, r.stdout.strip()) == (0, "5"), r.stderr


def test_a_programs_stdout_into_a_device(grid):
    for value in ("1", "0", "1"):
        r = sh(grid, f"echo {value} @rt-2 > /dev/rt-1/led")
        assert r.returncode == 0, r.stderr
        read = f"{value}\n"
        assert wait_for(f"the pin to read {value}", lambda v=read: sh(grid, "head -n 1 /dev/rt-1/button").stdout == v)
    r = sh(grid, "printf 'two\\nlines\\n' @rt-2 >> /dev/rt-1/sink")
    assert r.returncode == 0, r.stderr
    assert wait_for("the sink's file", lambda: (grid.out / "sink.bin").read_bytes().endswith(b"two\nlines\n"))


@pytest.mark.parametrize(
    "line, expected",
    [
        ("cat @rt-1 < /dev/rt-2/nope", "/dev/rt-2/nope: no such device"),
        ("cat @rt-1 < /dev/rt-1/led", "/dev/rt-1/led: permission denied"),
        ("echo 1 @rt-1 > /dev/rt-2/rnd", "/dev/rt-2/rnd: permission denied"),
        ("cat @rt-1 < /dev/rt-2/nocam", "ffmpeg /nonexistent/ffmpeg not found"),
        ("echo on @rt-2 > /dev/rt-1/led", "GPIO pin 17 takes lines of 0 or 1, not 'on'"),
    ],
)
def test_a_redirection_that_fails_is_one_line_and_a_failure(grid, line, expected):
    r = sh(grid, line)
    assert r.returncode != 0, (line, r.stdout, r.stderr)
    assert expected in r.stderr and len(r.stderr.strip().splitlines()) == 1, (line, r.stderr)


def test_dev_in_the_root_listing_and_cd_into_it(grid):
    assert "dev/" in sh(grid, "ls /").stdout.split()
    r = sh(grid, "cd /dev; pwd; ls; cd rt-2; pwd; ls")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["/dev", "rt-1/", "rt-2/", "/dev/rt-2", "cam0", "count", "nocam", "rnd", "twin"]
    r = sh(grid, "cd /dev/rt-2 && head -c 10 rnd | wc -c")
    assert r.stdout.strip() == "10", r.stderr
    for line, expected in (("cd /dev/rt-3", "no such file or directory"), ("cd /dev/rt-2/rnd", "not a directory")):
        r = sh(grid, line)
        assert r.returncode == 1 and expected in r.stderr, (line, r.stderr)


def test_a_device_runtime_that_dies_ends_both_kinds_of_reader_with_an_error(grid):
    """rt-4 serves a random device to a program's stdin and to a program's oneos_device; SIGKILL it mid-stream."""
    rt4 = RuntimeProcess("rt-4", grid.url, grid.root, "--device", "rnd:in:random:rate=200000")
    results: dict[str, subprocess.CompletedProcess] = {}
    try:
        wait_for("rt-4", lambda: "rt-4" in live(statuses(grid.url)), deadline=60, logs=rt4.log)
        lines = {
            "stdin": "sh -c 'cat > /dev/null' @rt-1 < /dev/rt-4/rnd",
            "module": "python3 /tmp/reader.py /dev/rt-4/rnd 0 0 @rt-1 > /tmp/dies.bin",
        }
        threads = [
            threading.Thread(target=lambda k=k, line=line: results.__setitem__(k, sh(grid, line)), daemon=True)
            for k, line in lines.items()
        ]
        for t in threads:
            t.start()
        wait_for(
            "both readers streaming from rt-4",
            lambda: (d := rt4_rnd(grid)) is not None and d["readers"] == 2 and d["bytes"] > 100000,
            deadline=60,
            logs=grid.logs,
        )
        rt4.kill()
        started = time.monotonic()
        for t in threads:
            t.join(timeout=60)
        assert time.monotonic() - started < 30
    finally:
        rt4.stop()
    stdin, module = results["stdin"], results["module"]
    assert stdin.returncode != 0 and "its input from rnd@rt-4 broke" in stdin.stderr, stdin.stderr
    assert module.returncode != 0, module.stderr
    # the program's read raised (EPIPE: its traceback is on the terminal), it did not see a clean end
    assert "BrokenPipeError: [Errno 32] /dev/rt-4/rnd: the sender vanished" in module.stderr, module.stderr


def rt4_rnd(grid) -> dict | None:
    r = oneos(grid, "devices", "--detail", "--json")
    return next((d for d in json.loads(r.stdout or "[]") if d["runtime"] == "rt-4" and d["name"] == "rnd"), None)
