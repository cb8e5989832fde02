#!/usr/bin/env python3
"""I/O devices benchmark: a camera and a random source read from another process, beside local baselines.

Prints, each figure beside a baseline measured in the same run:

1. camera frames: a ``video`` device (ffmpeg's lavfi ``testsrc``, 320x240,
   30 fps, paced with ``-re``; and the same source unthrottled with
   ``realtime=0``) read through its runtime by this script (a client on
   another "machine": RPC through the broker, then the TCP stream), frames a
   second and the time to the first frame, beside this script running the
   very same ffmpeg command line (the driver's own ``argv()``) into a local
   pipe and splitting it with the same :class:`FrameSplitter`;
2. frame latency added by the runtime: the paced camera's ffmpeg runs
   inside a small wrapper (``ffmpeg=`` option) that copies every byte it
   gives the runtime into a FIFO this script reads too, so each frame has
   two arrival times on one clock: straight from ffmpeg's pipe (the local
   baseline) and through the runtime and its TCP stream.  Frames are
   matched by their bytes (every testsrc frame differs); the difference is
   the latency the runtime's path adds (p50/p99/max).  Also the jitter of
   frame arrivals (inter-frame interval p50/p99) on both paths;
3. fan-out: 1, 4 and 16 concurrent readers of the paced camera: per-reader
   frames a second (lowest and median) and the CPU% of the camera's runtime
   (psutil on its pid) and of its ffmpeg over the read, beside the idle
   runtime's CPU% and the local ffmpeg's;
4. a ``random`` device (4 KiB chunks, the default, and 64 KiB chunks) read
   from another process, MB/s, beside reading ``/dev/urandom`` locally in
   chunks of the same size.

Runs a broker and one runtime with the devices (``oneos.testing``); the
readers are in this process (``DevicesClient.read`` + ``transfer.receive``
on a reactor thread).  Every process started here is stopped by its pid on
the way out, errors and Ctrl-C included.  ``--quick`` shrinks every count
(about 70 s); a normal run takes about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from oneos.devices.drivers.video import VideoInput  # noqa: E402
from oneos.devices.mjpeg import FrameSplitter  # noqa: E402
from oneos.devices.options import Options  # noqa: E402
from oneos.testing.brokers import BrokerProcess, start_oneospsd  # noqa: E402
from oneos.testing.runtimes import RuntimeProcess, wait_for  # noqa: E402

FPS = 30
SIZE = "320x240"
SOURCE = f"testsrc=size={SIZE}:rate={FPS}"
CAMERA = {"format": "lavfi", "input": SOURCE}
STEP_TIMEOUT = 120.0
FANOUT = (1, 4, 16)

#: the tap: runs ffmpeg, gives its output to the runtime (stdout) and a copy to a FIFO this script reads
TAP = """#!{python}
import os, signal, subprocess, sys
child = subprocess.Popen([{ffmpeg!r}, *sys.argv[1:]], stdout=subprocess.PIPE)
signal.signal(signal.SIGTERM, lambda *_: (child.terminate(), child.wait(), os._exit(0)))
try:
    tap = os.open({fifo!r}, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO when nobody reads the FIFO: no copy
    os.set_blocking(tap, True)
except OSError:
    tap = -1
while True:
    data = os.read(child.stdout.fileno(), 1 << 16)
    if not data:
        break
    if tap >= 0:
        try:
            os.write(tap, data)
        except OSError:
            tap = -1
    os.write(1, data)
sys.exit(child.wait())
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def digest(frame: bytes) -> bytes:
    return hashlib.blake2b(frame, digest_size=16).digest()


@dataclass
class Frames:
    """Frames as they arrived: (monotonic time, digest) each, from the time the read was asked for."""

    asked: float = 0.0
    arrivals: list[tuple[float, bytes]] = field(default_factory=list)
    splitter: FrameSplitter = field(default_factory=FrameSplitter)

    def feed(self, data: bytes) -> None:
        now = time.monotonic()
        for frame in self.splitter.feed(data):
            self.arrivals.append((now, digest(frame)))

    def fps(self) -> float:
        if len(self.arrivals) < 2:
            return 0.0
        return (len(self.arrivals) - 1) / (self.arrivals[-1][0] - self.arrivals[0][0])

    def overall(self) -> float:
        """Frames a second from asking to the last frame (start-up included; not fooled by batched arrivals)."""
        return len(self.arrivals) / (self.arrivals[-1][0] - self.asked) if self.arrivals else 0.0

    def first(self) -> float:
        return self.arrivals[0][0] - self.asked

    def intervals(self) -> list[float]:
        times = [t for t, _ in self.arrivals]
        return [b - a for a, b in zip(times, times[1:], strict=False)]


class FrameSink:
    """A transfer Sink that splits the stream into frames as it arrives."""

    def __init__(self, frames: Frames) -> None:
        self.frames = frames

    def write(self, data: bytes) -> Any:
        from twisted.internet import defer

        self.frames.feed(data)
        return defer.succeed(None)

    def finish(self) -> Any:
        from twisted.internet import defer

        return defer.succeed({})

    def abort(self) -> None:
        pass


class CountSink:
    """A transfer Sink that counts bytes."""

    def __init__(self) -> None:
        self.bytes = 0
        self.first = 0.0
        self.last = 0.0

    def write(self, data: bytes) -> Any:
        from twisted.internet import defer

        now = time.monotonic()
        if not self.bytes:
            self.first = now
        self.bytes += len(data)
        self.last = now
        return defer.succeed(None)

    def finish(self) -> Any:
        from twisted.internet import defer

        return defer.succeed({})

    def abort(self) -> None:
        pass


class Client:
    """A threaded reactor with a pubsub client and DevicesClient, for blocking calls from the benchmark."""

    def __init__(self, url: str) -> None:
        from oneos.reactor import install_asyncio_reactor

        install_asyncio_reactor()
        from twisted.internet import reactor

        from oneos.devices.client import DevicesClient
        from oneos.pubsub.client import PubSubClient
        from oneos.pubsub.rpc import RPCClient

        self.reactor: Any = reactor
        self.client = PubSubClient(url, reactor, keepalive=30)
        self.rpc = RPCClient(self.client, reactor, default_timeout=30)
        self.devices = DevicesClient(self.rpc, timeout=30)
        threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True).start()
        self.call(self.client.startService)
        self.call(self.client.whenConnected)

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        from twisted.internet import defer, threads

        return threads.blockingCallFromThread(self.reactor, lambda: defer.maybeDeferred(fn, *args, **kw))

    def stop(self) -> None:
        try:
            self.call(self.client.stopService)
        finally:
            self.reactor.callFromThread(self.reactor.stop)

    def read_all(self, runtime: str, name: str, sinks: list[Any], units: int, timeout: float = STEP_TIMEOUT) -> None:
        """Read *units* units of device *name* into each sink, all at once; return when every stream ended."""
        from twisted.internet import defer

        from oneos.transfer import receive

        @defer.inlineCallbacks
        def one(sink: Any) -> Any:
            where = yield self.devices.read(runtime, name, units=units)
            yield receive(self.reactor, where.host, where.port, where.token, sink, **where.options())

        def start() -> defer.Deferred:
            d = defer.gatherResults([one(s) for s in sinks], consumeErrors=True)
            return d.addTimeout(timeout, self.reactor)

        self.call(start)

    def device(self, runtime: str, name: str) -> Any:
        rows = self.call(self.devices.list_devices, runtime)
        return next(d for d in rows if d.name == name)


def local_frames(argv: list[str], count: int) -> tuple[Frames, float]:
    """Run *argv* (ffmpeg writing MJPEG to its stdout) until *count* frames arrived; (frames, ffmpeg's CPU%)."""
    frames = Frames(asked=time.monotonic())
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        ps = psutil.Process(process.pid)
        assert process.stdout is not None
        fd = process.stdout.fileno()
        deadline = frames.asked + STEP_TIMEOUT
        while len(frames.arrivals) < count and time.monotonic() < deadline:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            frames.feed(data)
        times = ps.cpu_times()
        cpu = 100 * (times.user + times.system) / (time.monotonic() - frames.asked)
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
    del frames.arrivals[count:]
    return frames, cpu


class TapReader:
    """Reads the tap FIFO in a thread: the frames as ffmpeg wrote them, with their arrival times."""

    def __init__(self, fifo: Path) -> None:
        self.frames = Frames(asked=time.monotonic())
        # opened non-blocking, so it exists before the wrapper's open; reads block after that
        self.fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    continue
                return
            if not data:
                if self.frames.arrivals:  # the writer left
                    return
                time.sleep(0.01)  # no writer yet
                continue
            self.frames.feed(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self.fd)


def cpu_seconds(pid: int, children: bool = False) -> float:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)] if children else [p]
        total = 0.0
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def ffmpeg_cpu(runtime_pid: int) -> float:
    """CPU seconds of the runtime's live descendants (its ffmpeg)."""
    try:
        kids = psutil.Process(runtime_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for k in kids:
        try:
            t = k.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def bench_camera(c: Client, rt: str, frames: int, fast_frames: int) -> dict[str, Any]:
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    results: dict[str, Any] = {}
    for label, name, opts, count in (
        (f"paced {SIZE} @ {FPS} fps", "cam", dict(CAMERA), frames),
        (f"unthrottled {SIZE}", "camfast", dict(CAMERA, realtime="0"), fast_frames),
    ):
        remote = Frames(asked=time.monotonic())
        before = c.device(rt, name)
        c.read_all(rt, name, [FrameSink(remote)], count)
        after = c.device(rt, name)
        argv = VideoInput(None, Options(dict(opts, ffmpeg=ffmpeg))).argv()
        local, cpu = local_frames(argv, count)
        results[name] = (label, remote, local, after.units - before.units, after.dropped - before.dropped, cpu)
    return results


def bench_latency(c: Client, rt: str, fifo: Path, frames: int) -> tuple[list[float], Frames, Frames]:
    tap = TapReader(fifo)
    remote = Frames(asked=time.monotonic())
    try:
        c.read_all(rt, "camtap", [FrameSink(remote)], frames)
    finally:
        time.sleep(0.2)
        tap.close()
    at_tap: dict[bytes, float] = {}
    for t, d in tap.frames.arrivals:
        at_tap.setdefault(d, t)
    latency = [t - at_tap[d] for t, d in remote.arrivals if d in at_tap]
    return latency, remote, tap.frames


def bench_fanout(c: Client, rt: str, pid: int, seconds: float) -> list[tuple[int, list[float], float, float]]:
    rows = []
    count = int(FPS * seconds)
    for n in FANOUT:
        groups = [Frames(asked=time.monotonic()) for _ in range(n)]
        cpu0, ff0, t0 = cpu_seconds(pid), ffmpeg_cpu(pid), time.monotonic()
        c.read_all(rt, "cam", [FrameSink(f) for f in groups], count)
        cpu1, ff1, t1 = cpu_seconds(pid), ffmpeg_cpu(pid), time.monotonic()
        # ffmpeg may have started in this round (its earlier CPU is then 0) or be the lingering one
        rows.append(
            (n, [f.fps() for f in groups], 100 * (cpu1 - cpu0) / (t1 - t0), 100 * max(0.0, ff1 - ff0) / (t1 - t0))
        )
    return rows


def bench_random(c: Client, rt: str, name: str, chunk: int, size: int) -> tuple[float, float]:
    sink = CountSink()
    t0 = time.monotonic()
    c.read_all(rt, name, [sink], size // chunk)
    remote = sink.bytes / (sink.last - t0) / 1e6
    assert sink.bytes == size, (sink.bytes, size)
    got = 0
    t0 = time.monotonic()
    fd = os.open("/dev/urandom", os.O_RDONLY)
    try:
        while got < size:
            got += len(os.read(fd, chunk))
    finally:
        os.close(fd)
    return remote, got / (time.monotonic() - t0) / 1e6


def ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of paced camera per measurement")
    parser.add_argument("--fast-frames", type=int, default=1500, help="frames of the unthrottled camera")
    parser.add_argument("--random-mib", type=int, default=256, help="MiB read from each random device")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.fast_frames, args.random_mib = 3.0, 300, 32
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is not installed (apt-get install ffmpeg)")
    root = Path(tempfile.mkdtemp(prefix="oneos-bench-devices-"))
    fifo = root / "tap.fifo"
    os.mkfifo(fifo)
    wrapper = root / "ffmpeg-tap"
    wrapper.write_text(TAP.format(python=sys.executable, ffmpeg=shutil.which("ffmpeg"), fifo=str(fifo)))
    wrapper.chmod(0o755)

    def spec(name: str, opts: dict[str, str]) -> str:
        return f"{name}:in:video:" + ",".join(f"{k}={v}" for k, v in opts.items())

    broker: BrokerProcess | None = None
    rt: RuntimeProcess | None = None
    client: Client | None = None
    try:
        broker = start_oneospsd(root / "broker")
        rt = RuntimeProcess(
            "rt-1",
            broker.url,
            root,
            *("--device", spec("cam", CAMERA)),
            *("--device", spec("camfast", dict(CAMERA, realtime="0"))),
            *("--device", spec("camtap", dict(CAMERA, ffmpeg=str(wrapper)))),
            *("--device", "rnd:in:random"),
            *("--device", "rnd64:in:random:size=65536"),
        )
        client = Client(broker.url)
        c = client

        def ready() -> bool:
            try:
                return all(d.state == "ok" for d in c.call(c.devices.list_devices, "rt-1"))
            except Exception:
                return False

        wait_for("rt-1 to serve its devices", ready, deadline=60, logs=lambda: rt.log()[-3000:] if rt else "")
        pid = rt.process.pid
        frames = int(FPS * args.seconds)
        print(
            f"machine: {os.cpu_count()} cores; broker + 1 runtime with the devices on loopback; readers in this process"
        )
        print(
            f"camera: ffmpeg lavfi {SOURCE}, MJPEG -q:v 5; local baseline = the driver's ffmpeg argv into a pipe here"
        )
        print()

        print(f"1. camera frames ({frames} paced frames)")
        print("   fps: first to last frame (and from asking to the last frame, start-up included)")
        print(
            f"{'':<26}{'remote fps':>18}{'local fps':>18}{'1st frame ms':>14}{'local 1st ms':>14}{'dropped/made':>14}"
        )
        for label, remote, local, produced, dropped, _ in bench_camera(c, "rt-1", frames, args.fast_frames).values():
            print(
                f"{label:<26}{f'{remote.fps():.1f} ({remote.overall():.1f})':>18}"
                f"{f'{local.fps():.1f} ({local.overall():.1f})':>18}{ms(remote.first()):>14}"
                f"{ms(local.first()):>14}{f'{dropped}/{produced}':>14}"
            )
        print()

        latency, remote, tap = bench_latency(c, "rt-1", fifo, frames)
        print(f"2. latency the runtime adds per frame (paced camera, {len(latency)} frames matched of {frames})")
        if latency:
            print(
                f"   ffmpeg pipe -> runtime -> TCP -> here, beyond ffmpeg pipe -> here (ms): p50 {ms(pct(latency, 50))}"
                f"  p99 {ms(pct(latency, 99))}  max {ms(max(latency))}"
            )
        ri, ti = remote.intervals(), tap.intervals()
        if ri and ti:
            print(
                f"   inter-frame interval (ms, ideal {1e3 / FPS:.1f}): "
                f"remote p50 {ms(pct(ri, 50))} p99 {ms(pct(ri, 99))}"
                f" | at ffmpeg's pipe p50 {ms(pct(ti, 50))} p99 {ms(pct(ti, 99))}"
            )
        print()

        wait_for("the camera to stop after its linger", lambda: not psutil.Process(pid).children(), deadline=30)
        time.sleep(1.0)
        idle0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(2.0)
        idle = 100 * (cpu_seconds(pid) - idle0) / (time.monotonic() - t0)
        local = local_frames(VideoInput(None, Options(dict(CAMERA))).argv(), frames)[1]
        print(f"3. fan-out of the paced camera ({frames} frames per reader)")
        print(f"   baselines: idle runtime CPU {idle:.1f}% | local ffmpeg (same argv) CPU {local:.1f}%")
        print(f"{'readers':>10}{'min fps':>10}{'median fps':>12}{'runtime CPU%':>14}{'ffmpeg CPU%':>13}")
        for n, rates, cpu, ff in bench_fanout(c, "rt-1", pid, args.seconds):
            print(f"{n:>10}{min(rates):>10.1f}{statistics.median(rates):>12.1f}{cpu:>14.1f}{ff:>13.1f}")
        print()

        size = args.random_mib * 2**20
        print(f"4. random device throughput, {args.random_mib} MiB each (MB/s)")
        for name, chunk in (("rnd", 4096), ("rnd64", 65536)):
            remote_rate, local_rate = bench_random(c, "rt-1", name, chunk, size)
            print(
                f"   {chunk // 1024:>3} KiB chunks: device -> here {remote_rate:8.1f}"
                f" | /dev/urandom here {local_rate:8.1f}"
            )
    finally:
        if client is not None:
            try:
                client.stop()
            except Exception:
                pass
        if rt is not None:
            rt.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
