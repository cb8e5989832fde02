"""I/O devices on a real 3-runtime grid (real processes, real TCP streams, Debian's ffmpeg).

rt-1 has GPIO pins (gpiozero's MockFactory: an output wired to an input)
and a dump sink; rt-2 has a random source, an ffmpeg lavfi test camera,
command devices, a camera that fails mid-stream and devices that cannot
work; rt-3 has none, and the ``oneos`` commands run with its home, as on a
third machine.  Every wait is "until a condition holds, or a deadline";
every process is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from oneos.devices.mjpeg import FrameSplitter, is_jpeg
from oneos.testing.brokers import start_oneospsd
from oneos.testing.cli import run_oneos
from oneos.testing.runtimes import RuntimeProcess, live, statuses, wait_for

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")
needs_gpiozero = pytest.mark.skipif(
    __import__("importlib").util.find_spec("gpiozero") is None, reason="gpiozero is not installed (the test extra)"
)
#: the test camera's frame rate
FPS = 25
CAMERA = f"format=lavfi,input=testsrc=size=160x120:rate={FPS},quality=8"
#: a camera with large frames (about 60 kB: a fractal compresses badly), so the socket buffers on a slow
#: reader's way fill within seconds
BIG_CAMERA = f"format=lavfi,input=mandelbrot=size=480x360:rate={FPS},quality=2"


def fake_ffmpeg(path: Path) -> Path:
    """An ffmpeg that sends about 30 kB of real MJPEG (a frame cut off at the end), then fails like a camera pulled out."""
    path.write_text(
        "#!/bin/sh\n"
        f'{FFMPEG or "ffmpeg"} "$@" | head -c 30000\n'
        'echo "[video4linux2,v4l2 @ 0x5] ioctl(VIDIOC_DQBUF): No such device" >&2\n'
        'echo "/dev/video0: No such device" >&2\n'
        "exit 1\n"
    )
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("devices-grid")
    broker = start_oneospsd(root / "broker")
    (root / "out").mkdir()
    flaky = fake_ffmpeg(root / "fake-ffmpeg.sh")
    procs = {
        "rt-1": RuntimeProcess(
            "rt-1",
            broker.url,
            root,
            *("--device", "led:out:gpio:pin=17,mock=1,mock_wire=27"),
            *("--device", "button:in:gpio:pin=27,mock=1"),
            *("--device", f"sink:out:dump:file={root / 'out' / 'sink.bin'}"),
        ),
        "rt-2": RuntimeProcess(
            "rt-2",
            broker.url,
            root,
            *("--device", "rnd:in:random"),
            *("--device", f"cam0:in:video:{CAMERA}"),
            *("--device", f"big:in:video:{BIG_CAMERA}"),
            *("--device", "count:in:command:cmd=seq 1 5,unit=line"),
            *("--device", f"log:out:command:cmd=sh -c 'cat >> {root / 'out' / 'log.txt'}'"),
            *("--device", f"flaky:in:video:ffmpeg={flaky},{CAMERA}"),
            *("--device", "nocam:in:video:ffmpeg=/nonexistent/ffmpeg,format=lavfi,input=testsrc"),
            *("--device", "badopt:in:random:rate=fast"),
            *("--device", "wrongway:out:random"),
        ),
        "rt-3": RuntimeProcess("rt-3", broker.url, root),
    }
    logs = lambda: "\n".join(f"== {p.id}\n{p.log()[-3000:]}" for p in procs.values())  # noqa: E731
    wait_for("3 live runtimes", lambda: len(live(statuses(broker.url))) == 3, deadline=60, logs=logs)
    grid = type("Grid", (), {"url": broker.url, "procs": procs, "logs": staticmethod(logs), "root": root})
    yield grid
    for p in procs.values():
        p.stop()
    broker.stop()


def oneos_argv(grid, *args: str) -> list[str]:
    return [sys.executable, "-m", "oneos.cli.main", args[0], *args[1:], "--pubsub", grid.url]


def env_of(grid) -> dict[str, str]:
    """The environment of ``oneos`` on rt-3's machine (its home)."""
    return dict(os.environ, ONEOS_HOME=str(grid.procs["rt-3"].home))


def oneos(grid, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(oneos_argv(grid, *args), capture_output=True, input=input, timeout=timeout, env=env_of(grid))


def devices(grid, *extra: str) -> dict[str, dict]:
    result = oneos(grid, "devices", "--json", *extra)
    assert result.returncode == 0, result.stderr
    return {f"{d['runtime']}/{d['name']}": d for d in json.loads(result.stdout)}


def test_oneos_devices_lists_every_device_with_its_state_and_failed_ones_say_why(grid):
    found = devices(grid)
    assert set(found) == {
        "rt-1/led",
        "rt-1/button",
        "rt-1/sink",
        "rt-2/rnd",
        "rt-2/cam0",
        "rt-2/big",
        "rt-2/count",
        "rt-2/log",
        "rt-2/flaky",
        "rt-2/nocam",
        "rt-2/badopt",
        "rt-2/wrongway",
    }
    assert set(found["rt-1/led"]) == {"runtime", "name", "direction", "driver", "state", "reason", "owner", "mode"}
    assert (found["rt-1/led"]["direction"], found["rt-1/led"]["driver"]) == ("out", "gpio")
    for name in ("rt-2/rnd", "rt-2/count", "rt-2/log", "rt-1/sink"):
        assert (found[name]["state"], found[name]["reason"]) == ("ok", ""), found[name]
    assert "ffmpeg /nonexistent/ffmpeg not found" in found["rt-2/nocam"]["reason"]
    assert found["rt-2/nocam"]["state"] == "failed"
    assert found["rt-2/badopt"]["reason"] == "option rate=fast: expected a number"
    assert "has no 'out' side" in found["rt-2/wrongway"]["reason"]
    # the runtime with failed devices runs on and serves the others
    assert statuses(grid.url)["rt-2"]["state"] == "alive"
    assert [d for d in statuses(grid.url)["rt-2"]["devices"] if d["name"] == "rnd"][0]["state"] == "ok"
    table = oneos(grid, "devices").stdout.decode()
    header = ["RUNTIME", "NAME", "DIRECTION", "DRIVER", "OWNER", "MODE", "STATE", "REASON"]
    assert table.splitlines()[0].split() == header
    # the table is read without Twisted (oneos/cli/statusreader.py), as 'oneos status' reads it
    probe = run_oneos(grid.procs["rt-3"].home, "devices", "--pubsub", grid.url)
    assert (probe.code, probe.out, probe.twisted) == (0, table, False), probe.err
    assert "ffmpeg /nonexistent/ffmpeg not found" in table
    failed = sum(1 for key, d in found.items() if key.startswith("rt-2/") and d["state"] == "failed")
    status = oneos(grid, "status").stdout.decode()
    assert "DEVICES" in status and f"9 ({failed} failed)" in status
    result = oneos(grid, "devices", "cat", "rt-2/nocam")
    assert (
        result.returncode == 1 and b"device nocam on rt-2 failed: ffmpeg /nonexistent/ffmpeg not found" in result.stderr
    )


def test_random_bytes_from_another_runtime_through_head(grid):
    argv = " ".join(f"'{a}'" for a in oneos_argv(grid, "devices", "cat", "rt-2/rnd"))
    result = subprocess.run(
        f"{argv} | head -c 64 | wc -c", shell=True, capture_output=True, timeout=60, env=env_of(grid)
    )
    assert result.stdout.strip() == b"64", result.stderr
    counted = oneos(grid, "devices", "cat", "rt-2/rnd", "--bytes", "64")
    assert counted.returncode == 0 and len(counted.stdout) == 64, counted.stderr


def test_wrong_direction_and_unknown_devices_are_refused(grid):
    refused = oneos(grid, "devices", "write", "rt-2/rnd", input=b"x")
    assert refused.returncode == 1
    assert b"device rnd on rt-2 is an input device: it can be read, not written" in refused.stderr
    refused = oneos(grid, "devices", "cat", "rt-1/led")
    assert refused.returncode == 1 and b"is an output device" in refused.stderr
    missing = oneos(grid, "devices", "cat", "/dev/rt-2/nothing")
    assert missing.returncode == 1 and b"no device 'nothing' on runtime rt-2" in missing.stderr


@needs_ffmpeg
def test_a_camera_read_from_another_runtime_gives_jpeg_frames(grid):
    result = oneos(grid, "devices", "cat", "rt-2/cam0", "--frames", "5")
    assert result.returncode == 0, result.stderr
    splitter = FrameSplitter()
    frames = splitter.feed(result.stdout)
    assert len(frames) == 5 and splitter.pending == 0 and all(is_jpeg(f) for f in frames)
    for frame in frames[:2]:  # each one decodes as a 160x120 JPEG
        probe = subprocess.run(
            [FFMPEG, "-v", "error", "-f", "mjpeg", "-i", "pipe:0", "-f", "rawvideo", "-pix_fmt", "gray", "pipe:1"],
            input=frame,
            capture_output=True,
            timeout=30,
        )
        assert probe.returncode == 0 and probe.stderr == b"" and len(probe.stdout) == 160 * 120, probe.stderr


@needs_gpiozero
def test_a_gpio_pin_written_is_read_back(grid):
    for value in (b"1", b"0", b"1"):
        written = oneos(grid, "devices", "write", "rt-1/led", input=value + b"\n")
        assert written.returncode == 0, written.stderr
        read = oneos(grid, "devices", "cat", "rt-1/button", "--lines", "1")
        assert (read.returncode, read.stdout) == (0, value + b"\n"), read.stderr
    detail = devices(grid, "--detail")
    assert detail["rt-1/led"]["value"] == "1" and detail["rt-1/button"]["value"] == "1"
    bad = oneos(grid, "devices", "write", "rt-1/led", input=b"on\n")
    assert bad.returncode == 1 and b"GPIO pin 17 takes lines of 0 or 1, not 'on'" in bad.stderr


def test_a_gpio_reader_sees_changes_as_they_happen(grid):
    reader = Reading(grid, "devices", "cat", "rt-1/button")
    try:
        first = oneos(grid, "devices", "write", "rt-1/led", input=b"0\n")
        assert first.returncode == 0
        wait_for("the reader to see the current value and the change", lambda: b"0\n" in reader.data[-2:], deadline=30)
        assert oneos(grid, "devices", "write", "rt-1/led", input=b"1\n0\n1\n").returncode == 0
        wait_for("three changes", lambda: reader.data.endswith(b"1\n0\n1\n"), deadline=30)
    finally:
        reader.stop()


def test_command_devices_in_and_out(grid):
    counted = oneos(grid, "devices", "cat", "rt-2/count")
    assert (counted.returncode, counted.stdout) == (0, b"1\n2\n3\n4\n5\n"), counted.stderr
    again = oneos(grid, "devices", "cat", "rt-2/count", "--lines", "2")
    assert (again.returncode, again.stdout) == (0, b"1\n2\n")
    for line in (b"first\n", b"second\n"):
        written = oneos(grid, "devices", "write", "rt-2/log", input=line)
        assert written.returncode == 0, written.stderr
    assert (grid.root / "out" / "log.txt").read_bytes() == b"first\nsecond\n"  # each writer's end ran the command
    assert oneos(grid, "devices", "write", "rt-1/sink", input=b"z" * 100_000).returncode == 0
    assert (grid.root / "out" / "sink.bin").read_bytes() == b"z" * 100_000
    assert devices(grid, "--detail")["rt-1/sink"]["bytes"] == 100_000


@needs_ffmpeg
def test_a_camera_that_goes_away_mid_stream_ends_its_reader_with_the_reason(grid):
    result = oneos(grid, "devices", "cat", "rt-2/flaky")
    assert result.returncode == 1
    assert (
        b"rt-2/flaky: device flaky on rt-2 failed: ffmpeg reading testsrc=size=160x120:rate=25 exited with status 1: "
        b"/dev/video0: No such device" in result.stderr
    ), result.stderr
    splitter = FrameSplitter()
    frames = splitter.feed(result.stdout)
    assert frames and splitter.pending == 0 and all(is_jpeg(f) for f in frames)  # whole frames only
    assert len(result.stdout) < 30000  # the frame ffmpeg was cut off in never arrives
    flaky = devices(grid)["rt-2/flaky"]
    assert flaky["state"] == "failed" and "No such device" in flaky["reason"]


class Reading:
    """A ``oneos`` command whose standard output a thread reads, *pace* bytes per read, *delay* between reads."""

    def __init__(self, grid, *args: str, pace: int = 65536, delay: float = 0.0) -> None:
        self.process = subprocess.Popen(
            oneos_argv(grid, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_of(grid)
        )
        self.data = b""
        self.times: list[tuple[float, int]] = []
        self.frames = 0
        self._splitter = FrameSplitter()
        self._pace, self._delay = pace, delay
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        out = self.process.stdout
        while not self._stop.is_set():
            chunk = out.read1(self._pace) if self._pace else b""
            if not chunk:
                return
            self.data += chunk
            self.frames += len(self._splitter.feed(chunk))
            self.times.append((time.monotonic(), self.frames))
            if self._delay:
                self._stop.wait(self._delay)

    def rate(self) -> float:
        """Frames a second between the first and the last frame read."""
        with_frames = [(t, n) for t, n in self.times if n]
        (t0, n0), (t1, n1) = with_frames[0], with_frames[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def wait(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout=timeout)
        self._thread.join(timeout=timeout)
        return code

    def stop(self) -> None:
        self._stop.set()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self._thread.join(timeout=30)  # it ends at the end of the output, or at once when pausing
        if self.process.poll() is None:
            # blocked writing into our full pipe, it cannot act on the signal: closing our end makes its
            # write fail (EPIPE), as a reader like `head` leaving would
            self.process.stdout.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@needs_ffmpeg
def test_fan_out_a_slow_reader_drops_frames_and_the_others_keep_their_rate(grid):
    # the slow reader takes 4 kB every half second, far less than the camera's ~1.5 MB a second
    slow = Reading(grid, "devices", "cat", "rt-2/big", pace=4096, delay=0.5)
    fast: list[Reading] = []
    try:
        wait_for(
            "frames dropped for the slow reader (once the buffers on its way are full)",
            lambda: devices(grid, "--detail")["rt-2/big"]["dropped"] > 0,
            deadline=120,
        )
        dropped = devices(grid, "--detail")["rt-2/big"]["dropped"]
        fast = [Reading(grid, "devices", "cat", "rt-2/big", "--frames", str(3 * FPS)) for _ in range(2)]
        for reader in fast:
            assert reader.wait(timeout=120) == 0, reader.process.stderr.read()
        assert all(reader.frames == 3 * FPS for reader in fast)
        rates = [reader.rate() for reader in fast]
        assert all(rate > FPS / 2 for rate in rates), rates  # they keep the camera's pace beside the slow one
        big = devices(grid, "--detail")["rt-2/big"]
        assert big["dropped"] > dropped and slow.process.poll() is None, big  # the slow one is still there, dropping
    finally:
        slow.stop()
        for reader in fast:
            reader.stop()
    got = FrameSplitter().feed(slow.data)
    assert got and all(is_jpeg(f) for f in got)  # what the slow reader got is whole frames


def test_the_devices_runtime_killed_mid_read_ends_the_reader_with_a_clear_error(grid):
    rt = RuntimeProcess("rt-4", grid.url, grid.root, "--device", "rnd:in:random:rate=200000")
    try:
        wait_for("rt-4 to serve rnd", lambda: "rt-4/rnd" in devices(grid), deadline=60, logs=lambda: rt.log()[-3000:])
        reader = Reading(grid, "devices", "cat", "rt-4/rnd")
        try:
            wait_for("bytes from rt-4", lambda: len(reader.data) > 100_000, deadline=60)
            rt.kill(signal.SIGKILL)
            assert reader.wait(timeout=60) == 1
            error = reader.process.stderr.read().decode()
            assert "oneos devices: rt-4/rnd: the sender vanished before the end of the stream" in error, error
            assert "did runtime rt-4 stop?" in error
        finally:
            reader.stop()
        wait_for("rt-4's devices to disappear", lambda: "rt-4/rnd" not in devices(grid), deadline=30)
    finally:
        rt.kill(signal.SIGKILL)
        rt.stop()


@needs_ffmpeg
def test_ffmpeg_runs_only_while_the_camera_is_read(grid):
    import psutil

    runtime = psutil.Process(grid.procs["rt-2"].process.pid)

    def cameras() -> list[psutil.Process]:
        return [p for p in runtime.children(recursive=True) if p.name() == "ffmpeg"]

    wait_for("no ffmpeg while nobody reads (after the linger)", lambda: not cameras(), deadline=30)
    reader = Reading(grid, "devices", "cat", "rt-2/cam0")
    try:
        wait_for("frames", lambda: reader.frames > 2, deadline=60)
        assert len(cameras()) == 1  # one ffmpeg, however many readers
    finally:
        reader.stop()
    wait_for("ffmpeg stopped after the last reader left", lambda: not cameras(), deadline=30)
