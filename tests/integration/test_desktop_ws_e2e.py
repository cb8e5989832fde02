"""The desktop's websocket end to end: a real runtime, raw websocket clients over real sockets.

One embedded runtime (its own broker, SQLite store) serves the desktop on a
free loopback port for the whole module; a user made with ``oneos user add``
logs in at ``POST /api/login`` and the session cookie opens ``/ws``.  The
client here is a few lines of blocking socket code (the HTTP upgrade, masked
frames out, frames in), so the test exercises exactly what a browser sends,
refusals included.  Waiting is always "until a condition holds, or a
deadline".
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oneos.testing.desktop import DesktopSocket, terminal_bytes
from oneos.testing.runtimes import EmbeddedRuntime, free_port, wait_for

PASSWORD = "desk-top-pw-1"


class Desktop:
    """The runtime, the desktop's port, and a logged-in user's cookie."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.runtime = EmbeddedRuntime(
            root,
            "--desktop",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--ssh",
            f"tcp:{free_port()}:interface=127.0.0.1",
        )
        self.origin = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.runtime.log()

    def add_user(self, name: str) -> None:
        r = subprocess.run(
            [sys.executable, "-m", "oneos.cli.main", "user", "add", name, "--password-stdin"],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            env=dict(os.environ, ONEOS_HOME=str(self.runtime.home)),
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr

    def login(self, name: str) -> str:
        """The session cookie ``oneos_session=...`` of a fresh login."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body = json.dumps({"user": name, "password": PASSWORD})
        conn.request(
            "POST", "/api/login", body, {"Origin": self.origin, "Content-Type": "application/json"}
        )  # fmt: skip
        response = conn.getresponse()
        text = response.read()
        assert response.status == 200, (response.status, text)
        cookie = response.getheader("Set-Cookie") or ""
        assert cookie.startswith("oneos_session="), cookie
        conn.close()
        return cookie.split(";", 1)[0]


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desktop]:
    desk = Desktop(tmp_path_factory.mktemp("desktop"))
    try:
        wait_for("the runtime to lead", lambda: "now leads the kernel" in desk.log(), deadline=60, logs=desk.log)
        wait_for("the desktop to listen", lambda: "desktop at http://" in desk.log(), deadline=60, logs=desk.log)
        desk.add_user("ann")
        yield desk
    finally:
        desk.runtime.stop()


@pytest.fixture(scope="module")
def cookie(desktop: Desktop) -> str:
    return desktop.login("ann")


# -- the websocket client (oneos.testing.desktop, which the benchmark uses too) ----------------------------


def Socket(desktop: Desktop, cookie: str | None, origin: str | None = None) -> DesktopSocket:
    """A websocket as a browser opens it: the upgrade with Origin and Cookie (none: no Cookie header)."""
    return DesktopSocket("127.0.0.1", desktop.port, origin or desktop.origin, cookie or "")


@pytest.fixture
def ws(desktop: Desktop, cookie: str) -> Iterator[DesktopSocket]:
    sock = Socket(desktop, cookie)
    assert sock.status == 101, sock.response
    yield sock
    sock.close()


# -- the tests --------------------------------------------------------------------------------------------


def test_no_cookie_is_refused_with_403(desktop):
    sock = Socket(desktop, None)
    assert sock.status == 403, sock.response
    sock.close()
    sock = Socket(desktop, "oneos_session=not-a-session")
    assert sock.status == 403, sock.response
    sock.close()


def test_a_foreign_origin_is_refused_with_403(desktop, cookie):
    for origin in ("http://evil.example", f"http://localhost:{desktop.port + 1}", "null"):
        sock = Socket(desktop, cookie, origin=origin)
        assert sock.status == 403, (origin, sock.response)
        sock.close()


def test_malformed_messages_get_an_error_and_the_connection_stays(ws):
    ws.send_text(b"this is not json")
    answer = ws.answer(None)
    assert answer["ok"] is False and answer["error"]["kind"] == "EINVAL"
    ws.send_text(b'{"id": 3, "op": "no.such.op"}')
    answer = ws.answer(3)
    assert answer["ok"] is False and answer["error"]["kind"] == "EINVAL"
    ws.send_text(b'{"id": 4, "op": "fs.list", "args": {"path": 12}}')
    assert ws.answer(4)["error"]["kind"] == "EINVAL"
    assert ws.ok("session.whoami") == {"user": "ann", "runtime": "solo"}


def test_fs_list_of_the_root(ws):
    names = {entry["name"] for entry in ws.ok("fs.list", path="/")}
    assert {"home", "tmp"} <= names, names
    assert ws.ok("fs.stat", path="/home")["kind"] == "dir"


def test_a_file_saved_and_read_back_and_a_stale_save_refused(ws):
    saved = ws.ok("fs.write", path="/home/ann/note.txt", text="first\n", mtime=None)
    read = ws.ok("fs.read", path="/home/ann/note.txt")
    assert read["text"] == "first\n" and read["mtime"] == saved["mtime"]
    again = ws.ok("fs.write", path="/home/ann/note.txt", text="second\n", mtime=read["mtime"])
    assert again["mtime"] >= read["mtime"]
    if again["mtime"] > read["mtime"]:
        stale = ws.request("fs.write", path="/home/ann/note.txt", text="third\n", mtime=read["mtime"])
        assert stale["error"]["kind"] == "ESTALE", stale


def test_a_terminal_shows_the_listing_of_ls(ws):
    opened = ws.ok("term.open", cols=100, rows=30, resume=None)
    term = opened["term"]
    frames = ws.until("the prompt", lambda fs: terminal_bytes(fs, term).rstrip().endswith(b"$"))
    assert b"OneOS shell" in terminal_bytes(frames, term)
    ws.send_binary(bytes([term]) + b"ls /\r")
    frames = ws.until(
        "the listing", lambda fs: b"tmp" in terminal_bytes(fs, term) and b"home" in terminal_bytes(fs, term)
    )
    assert b"ls /" in terminal_bytes(frames, term)
    assert ws.ok("term.close", term=term) == {}


def test_a_program_run_from_the_desktop_streams_its_output(ws):
    ws.ok("sub.open", channel="agents")
    ws.until("the agents table", lambda fs: any(isinstance(f, dict) and "agents" in f.get("event", {}) for f in fs))
    ws.ok("fs.write", path="/home/ann/hello.py", text="print('hello from the desktop')\n", mtime=None)
    info = ws.ok("proc.run", program="/home/ann/hello.py", args=[], runtime=None, tags=[])
    assert info["user"] == "ann"
    ws.ok("sub.open", channel=f"output:{info['id']}")

    def ended(frames: list[Any]) -> bool:
        return any(isinstance(f, dict) and f.get("event", {}).get("end") for f in frames)

    frames = ws.until("the program's end", ended, timeout=60)
    events = [f["event"] for f in frames if isinstance(f, dict) and f.get("channel") == f"output:{info['id']}"]
    assert "".join(e.get("data", "") for e in events if e.get("stream") == "stdout") == "hello from the desktop\n"
    assert events[-1] == {"end": True, "status": 0}
    # the agents channel saw it too (its statuses come from the broker, not from the scheduler)
    seen = ws.until(
        "the agent's status",
        lambda fs: any(
            isinstance(f, dict) and f.get("channel") == "agents" and f["event"].get("agent", {}).get("id") == info["id"]
            for f in frames + fs
        ),
    )
    assert seen is not None


def test_the_runtimes_channel_shows_this_runtime(ws):
    ws.ok("sub.open", channel="runtimes")
    frames = ws.until(
        "the statuses", lambda fs: any(isinstance(f, dict) and "statuses" in f.get("event", {}) for f in fs)
    )
    (event,) = [f["event"] for f in frames if isinstance(f, dict) and "statuses" in f.get("event", {})]
    assert [s["id"] for s in event["statuses"]] == ["solo"] and event["statuses"][0]["state"] == "alive"


def test_logout_closes_the_websocket(desktop):
    cookie = desktop.login("ann")
    sock = Socket(desktop, cookie)
    assert sock.status == 101
    conn = http.client.HTTPConnection("127.0.0.1", desktop.port, timeout=30)
    conn.request("GET", "/api/session", headers={"Cookie": cookie})
    csrf = json.loads(conn.getresponse().read())["csrf"]
    conn.request("POST", "/api/logout", "", {"Cookie": cookie, "Origin": desktop.origin, "X-OneOS-CSRF": csrf})
    assert conn.getresponse().status == 200
    frames = sock.until("the close", lambda fs: any(isinstance(f, tuple) and f[0] == "close" for f in fs))
    assert ("close", 4001) in frames
    sock.close()
