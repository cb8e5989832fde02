"""Devices and the desktop across machines: three network namespaces, real processes, real kernel networking.

h1 (A) runs the broker and rt-a (the kernel, the store, the web desktop on
its own address); h2 (B) runs rt-b with the devices: a random source, a
paced random source for long reads, and an ffmpeg lavfi test camera; h3 (C)
runs no runtime, only the ``oneos`` command and the test's own HTTP and
websocket clients (opened inside h3 with :meth:`Host.entered`), like a
laptop on the same network.  Faults are real, in the middle of a read:
B's NIC taken down (``ip link set eth0 down``), and an iptables rule on C
dropping B's packets while B stays up for everyone else.  Every wait is "until a
condition holds, or a deadline"; every process is stopped by its pid and the
namespaces are deleted, even when a test fails.  Skipped with the reason
when namespaces cannot be made (not root, no iproute2, a container that
forbids them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from oneos.devices.mjpeg import FrameSplitter, is_jpeg
from oneos.testing.desktop import DesktopClient
from oneos.testing.hosts import BROKER_PORT, HostProcess, oneos_in, start_broker_in, start_runtime_in, statuses_in
from oneos.testing.netns import Host, Network, available, wait_port
from oneos.testing.runtimes import live, wait_for

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")
#: the test camera: 160x120 lavfi test pattern at 25 frames a second
CAMERA = "format=lavfi,input=testsrc=size=160x120:rate=25,quality=8"
#: a paced source for the long read the link cut interrupts (bytes a second)
SLOW_RATE = 100_000
DEVICES = {"rnd", "slow", "cam0"}
#: the desktop's port with ``listen.desktop = auto`` off loopback
DESKTOP_PORT = 3000
#: how long the reader on C may take to give up once B is unreachable
CUT_DEADLINE = 30.0


@dataclass
class Machines:
    """The three hosts, the broker and the two runtimes, and where the ``oneos`` command on C keeps its home."""

    net: Network
    a: Host
    b: Host
    c: Host
    url: str
    root: Path
    broker: HostProcess
    runtimes: dict[str, HostProcess]

    @property
    def cli_home(self) -> Path:
        return self.root / "cli"

    def logs(self) -> str:
        parts = [f"== broker\n{self.broker.log()[-2000:]}"]
        parts += [f"== {rid} (running={p.running()})\n{p.log()[-3000:]}" for rid, p in self.runtimes.items()]
        return "\n".join(parts)

    def view(self) -> dict[str, dict[str, Any]]:
        """Every runtime's status as ``oneos status --json`` on C shows it."""
        return statuses_in(self.c, self.url, home=self.cli_home)

    def oneos_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "oneos.cli.main", *args, "--pubsub", self.url]

    def env(self) -> dict[str, str]:
        return dict(os.environ, ONEOS_HOME=str(self.cli_home))

    def read_on_c(self, out: Path, *args: str, timeout: float = 60) -> tuple[int, str]:
        """``oneos devices cat ARGS > OUT`` on C: its status and standard error (the bytes are binary)."""
        with open(out, "wb") as stdout:
            proc = self.c.popen(
                self.oneos_argv("devices", "cat", *args), env=self.env(), stdout=stdout, stderr=subprocess.PIPE
            )
        try:
            _, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return proc.returncode, err.decode(errors="replace")


def devices_ready(view: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """*view* once rt-a leads and serves its desktop and rt-b is alive with every device ok."""
    alive = live(view)
    if not {"rt-a", "rt-b"} <= set(alive) or not alive["rt-a"]["leader"] or not alive["rt-a"].get("desktop"):
        return None
    states = {d["name"]: d["state"] for d in alive["rt-b"].get("devices", [])}
    return view if states == dict.fromkeys(DEVICES, "ok") else None


def readers_of(m: Machines, name: str) -> int | None:
    """How many readers rt-b's device *name* has (``oneos devices --detail`` on C); None while rt-b is not back."""
    if not devices_ready(m.view()):
        return None
    listed = oneos_in(m.c, "devices", "--detail", "--json", "--pubsub", m.url, home=m.cli_home)
    if listed.returncode != 0:
        return None
    found = [d for d in json.loads(listed.stdout) if (d["runtime"], d["name"]) == ("rt-b", name)]
    return int(found[0]["readers"]) if found and "readers" in found[0] else None


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    reason = available()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("multihost-devices")
    with Network(hosts=3) as net:  # closing kills every process left in the namespaces, then deletes them
        a, b, c = net.hosts
        broker = start_broker_in(a, root / "broker")
        url = f"mqtt://{a.addr}:{BROKER_PORT}"
        wait_port(c, a.addr, BROKER_PORT, process=broker.process)
        homes = root / "homes"
        runtimes = {
            "rt-a": start_runtime_in(a, "rt-a", url, homes),
            "rt-b": start_runtime_in(
                b,
                "rt-b",
                url,
                homes,
                "--no-kernel",  # the leader, the store and the desktop stay on A whatever happens to B
                *("--device", "rnd:in:random"),
                *("--device", f"slow:in:random:rate={SLOW_RATE}"),
                *("--device", f"cam0:in:video:{CAMERA}"),
            ),
        }
        m = Machines(net, a, b, c, url, root, broker, runtimes)
        try:
            m.cli_home.mkdir()
            wait_for("rt-a leading with a desktop, rt-b with its devices", lambda: devices_ready(m.view()), 60, m.logs)
            yield m
        finally:
            for proc in [*runtimes.values(), broker]:
                if proc.running():
                    proc.process.terminate()
            for proc in [*runtimes.values(), broker]:
                try:
                    proc.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.process.kill()
                    proc.process.wait()


def test_a_device_on_b_read_from_c_gives_the_exact_bytes(machines: Machines, tmp_path: Path) -> None:
    m = machines
    view = m.view()
    # rt-b streams on its own host's address, the one C dials
    assert view["rt-b"]["stream"].startswith(m.b.addr + ":"), view["rt-b"]
    status, err = m.read_on_c(tmp_path / "counted", "rt-b/rnd", "--bytes", "100000")
    assert (status, (tmp_path / "counted").stat().st_size) == (0, 100_000), err
    status, err = m.read_on_c(tmp_path / "units", "rt-b/rnd", "--units", "3")
    assert (status, (tmp_path / "units").stat().st_size) == (0, 3 * 4096), err  # three whole 4 KiB chunks
    # a reader that stops early (head) on C: exactly what it asked for
    cat = " ".join(f"'{arg}'" for arg in m.oneos_argv("devices", "cat", "rt-b/rnd"))
    piped = m.c.run(["sh", "-c", f"{cat} | head -c 65536 | wc -c"], env=m.env(), timeout=60)
    assert piped.stdout.strip() == "65536", piped.stderr


@needs_ffmpeg
def test_camera_frames_from_b_decode_as_jpeg_on_c(machines: Machines, tmp_path: Path) -> None:
    m = machines
    frames_file = tmp_path / "frames.mjpeg"
    status, err = m.read_on_c(frames_file, "rt-b/cam0", "--frames", "5")
    assert status == 0, err
    splitter = FrameSplitter()
    frames = splitter.feed(frames_file.read_bytes())
    assert len(frames) == 5 and splitter.pending == 0 and all(is_jpeg(f) for f in frames)
    # ffmpeg on C decodes every one as a 160x120 picture
    raw = tmp_path / "frames.gray"
    decoded = m.c.run(
        [FFMPEG or "ffmpeg", "-v", "error", "-f", "mjpeg", "-i", str(frames_file)]
        + ["-f", "rawvideo", "-pix_fmt", "gray", "-y", str(raw)],
        timeout=60,
    )
    assert (decoded.returncode, decoded.stderr) == (0, ""), decoded.stderr
    assert raw.stat().st_size == 5 * 160 * 120


def test_the_desktop_on_a_is_used_from_c(machines: Machines) -> None:
    m = machines
    desktop = m.view()["rt-a"]["desktop"]
    assert urlsplit(desktop).netloc == f"{m.a.addr}:{DESKTOP_PORT}", desktop  # auto: A's own address, off loopback
    # `oneos desktop` on A (rt-a's home) prints a one-time login URL for A's desktop
    made = oneos_in(m.a, "desktop", "--user", "ann", home=m.root / "homes" / "rt-a")
    assert made.returncode == 0, made.stderr
    login = made.stdout.strip()
    assert login.startswith(f"http://{m.a.addr}:{DESKTOP_PORT}/login?token="), login
    path = login[len(f"http://{m.a.addr}:{DESKTOP_PORT}") :]

    client = DesktopClient(desktop)
    with m.c.entered():  # every connection below is made from C
        page = client.request("GET", "/")
        foreign = client.request("GET", "/", headers={"Host": "oneos.example"})
        logged_in = client.request("GET", path)
        again = client.request("GET", path)
        cookie = [v for v in logged_in.headers.get("set-cookie", []) if v.startswith("oneos_session=")]
        assert cookie, logged_in.headers
        client.session = cookie[0].split(";", 1)[0].split("=", 1)[1]
        session = client.request("GET", "/api/session")
        ws = client.websocket()
    try:
        assert page.status == 200 and b"<html" in page.body.lower(), page.status
        # docs/desktop.md, "Host": off loopback any Host is answered (the DNS-rebinding check is loopback's)
        assert foreign.status == 200, foreign.status
        assert (logged_in.status, logged_in.header("location")) == (303, "/"), logged_in.body[:300]
        assert again.status == 403  # the link works once
        assert session.status == 200 and session.json()["user"] == "ann", session.body
        assert session.json()["runtime"] == "rt-a"
        assert ws.status == 101, ws.response
        statuses = {s["id"]: s for s in ws.ok("runtimes.list")}
        assert statuses["rt-b"]["state"] == "alive", statuses["rt-b"]
        assert {d["name"]: d["state"] for d in statuses["rt-b"]["devices"]} == dict.fromkeys(DEVICES, "ok")
        assert statuses["rt-b"]["address"] == m.b.addr
    finally:
        ws.close()


#: what ``oneos devices cat`` on C says when B falls silent mid-stream
VANISHED = "oneos devices: rt-b/slow: the sender vanished before the end of the stream (did runtime rt-b stop?)"


def long_read_through(
    m: Machines, tmp_path: Path, fault: str, cut: Callable[[], None], heal: Callable[[], None]
) -> str:
    """Read rt-b/slow on C, *cut* the path mid-stream, and return the reader's error once it ends; *heal* always.

    Fails if the reader still runs :data:`CUT_DEADLINE` seconds after the cut (a hang) or ends with
    status 0 (a short read passed off as the whole stream).
    """
    out, err = tmp_path / "long.out", tmp_path / "long.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        reader = m.c.popen(m.oneos_argv("devices", "cat", "rt-b/slow"), env=m.env(), stdout=stdout, stderr=stderr)
    try:
        wait_for("50 kB from rt-b/slow on C", lambda: out.stat().st_size > 50_000 or reader.poll() is not None, 30)
        assert reader.poll() is None, err.read_text()
        cut()
        start = time.monotonic()
        try:
            status = reader.wait(timeout=CUT_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the reader on C still runs {CUT_DEADLINE:g}s after {fault} "
                f"({out.stat().st_size} bytes so far): it hangs instead of failing"
            )
        took = time.monotonic() - start
        message = err.read_text().strip()
        assert status != 0, f"status 0 after {out.stat().st_size} bytes: a silent short read ({message!r})"
        print(f"the reader on C ended {took:.1f}s after {fault}, status {status}: {message}")
        return message
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
        heal()


def test_b_unplugged_mid_read_ends_the_reader_on_c_with_an_error(machines: Machines, tmp_path: Path) -> None:
    m = machines
    message = long_read_through(m, tmp_path, "B's link went down", m.b.link_down, m.b.link_up)
    assert message == VANISHED
    # the link back: rt-b reconnects and its device serves a new reader on C at once
    wait_for("rt-b alive again with its devices, seen from C", lambda: devices_ready(m.view()), 60, m.logs)
    status, err = m.read_on_c(tmp_path / "after", "rt-b/slow", "--bytes", "10000")
    assert (status, (tmp_path / "after").stat().st_size) == (0, 10_000), err
    # and B drops its own end of the cut-off stream: its next retransmission meets C's reset
    wait_for("no reader left on rt-b/slow", lambda: readers_of(m, "slow") == 0, 60, m.logs)


def test_a_partition_between_b_and_c_ends_the_reader_while_b_stays_up(machines: Machines, tmp_path: Path) -> None:
    reason = available(iptables=True)
    if reason is not None:
        pytest.skip(reason)
    m = machines
    # C drops everything from B: B stays connected to the broker (alive for everyone), only the stream is cut
    message = long_read_through(
        m, tmp_path, "C began dropping B's packets", lambda: m.c.drop_from(m.b), lambda: m.c.undrop(m.b)
    )
    assert message == VANISHED
    assert m.view()["rt-b"]["state"] == "alive"
    status, err = m.read_on_c(tmp_path / "after", "rt-b/slow", "--bytes", "10000")
    assert (status, (tmp_path / "after").stat().st_size) == (0, 10_000), err
    # C's keepalive gave up with a reset, which reaches B at once: B's end of the stream is gone too
    wait_for("no reader left on rt-b/slow", lambda: readers_of(m, "slow") == 0, 30, m.logs)
