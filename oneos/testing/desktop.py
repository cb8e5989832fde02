"""A blocking client of the web desktop (docs/desktop.md) for tests and benchmarks: HTTP and the websocket.

:class:`DesktopClient` does what the page does over HTTP: same-origin
requests with the session cookie and the CSRF token, the login, and
uploads and downloads streamed from and to files (bounded memory, so a
benchmark can move large files).  :class:`DesktopSocket` is the page's
websocket as a few lines of socket code: the upgrade with ``Origin`` and
``Cookie``, masked frames out, frames in, requests matched to their
replies by ``id``.  Nothing here sleeps: every wait is on a socket, with
a deadline.

Frames come back as the test suite's client returns them: a ``dict`` for
a text frame (JSON), ``(N, bytes)`` for a terminal's binary frame, and
``("close", code)`` for a close frame.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

#: Bytes per read/write when a body is streamed.
BLOCK = 1024 * 1024


class DesktopClientError(Exception):
    """The desktop answered something else than expected (the status and body are in the message)."""


@dataclass
class Answer:
    """An HTTP answer: status, headers (lower-case names, every value) and body."""

    status: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def _headers(response: http.client.HTTPResponse) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in response.getheaders():
        found.setdefault(name.lower(), []).append(value)
    return found


class DesktopClient:
    """What a page does over HTTP, given the desktop's URL (``http://127.0.0.1:PORT/``)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// desktops are supported here, not {url!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.origin = f"http://{parts.netloc}"
        self.timeout = timeout
        self.session = ""  # the oneos_session cookie's value
        self.csrf = ""
        self.info: dict[str, Any] = {}

    @property
    def cookie(self) -> str:
        """The ``Cookie`` header's value (empty before a login)."""
        return f"oneos_session={self.session}" if self.session else ""

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout, blocksize=BLOCK)

    def _head(self, method: str, headers: dict[str, str] | None) -> dict[str, str]:
        head: dict[str, str] = {}
        if method == "POST":
            head["Origin"] = self.origin
            if self.csrf:
                head["X-OneOS-CSRF"] = self.csrf
        if self.session:
            head["Cookie"] = self.cookie
        head.update(headers or {})
        return head

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=self._head(method, headers))
            response = conn.getresponse()
            return Answer(response.status, _headers(response), response.read())
        finally:
            conn.close()

    def login(self, user: str, password: str) -> dict[str, Any]:
        """``POST /api/login``; keeps the session cookie and CSRF token; the answer's body."""
        answer = self.request(
            "POST",
            "/api/login",
            json.dumps({"user": user, "password": password}).encode(),
            {"Content-Type": "application/json"},
        )
        if answer.status != 200:
            raise DesktopClientError(f"login as {user} refused: {answer.status} {answer.body[:300]!r}")
        for value in answer.headers.get("set-cookie", []):
            if value.startswith("oneos_session="):
                self.session = value.split(";", 1)[0].split("=", 1)[1]
        if not self.session:
            raise DesktopClientError("the login answer set no oneos_session cookie")
        self.info = answer.json()
        self.csrf = self.info["csrf"]
        return self.info

    def upload(self, path: str, source: BinaryIO, size: int) -> dict[str, Any]:
        """``POST /api/upload?path=PATH`` with *size* bytes read from *source* as they are sent."""
        conn = self.connection()
        try:
            head = self._head("POST", {"Content-Length": str(size), "Content-Type": "application/octet-stream"})
            conn.request("POST", f"/api/upload?path={quote(path, safe='')}", body=source, headers=head)
            response = conn.getresponse()
            answer = Answer(response.status, _headers(response), response.read())
        finally:
            conn.close()
        if answer.status != 200:
            raise DesktopClientError(f"upload of {path} refused: {answer.status} {answer.body[:300]!r}")
        result: dict[str, Any] = answer.json()
        return result

    def download(self, path: str, sink: BinaryIO) -> int:
        """``GET /api/download?path=PATH`` written into *sink* as it arrives; the bytes received."""
        conn = self.connection()
        try:
            conn.request("GET", f"/api/download?path={quote(path, safe='')}", headers=self._head("GET", None))
            response = conn.getresponse()
            if response.status != 200:
                raise DesktopClientError(f"download of {path} refused: {response.status} {response.read()[:300]!r}")
            expected = response.getheader("Content-Length")
            total = 0
            while True:
                piece = response.read(BLOCK)
                if not piece:
                    break
                sink.write(piece)
                total += len(piece)
        finally:
            conn.close()
        if expected is not None and int(expected) != total:
            raise DesktopClientError(f"download of {path}: {total} bytes of {expected}")
        return total

    def websocket(self, origin: str | None = None, timeout: float = 30.0) -> DesktopSocket:
        """A websocket on ``/ws`` with this client's cookie (check ``status``: 101 when accepted)."""
        return DesktopSocket(self.host, self.port, origin or self.origin, self.cookie, timeout)


# -- the websocket -------------------------------------------------------------------------------------


def _masked(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + _masked(payload, key)


class DesktopSocket:
    """The page's websocket: JSON requests matched to replies, channel events and terminal bytes."""

    def __init__(self, host: str, port: int, origin: str, cookie: str, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [
            "GET /ws HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version: 13",
            f"Origin: {origin}",
        ]
        if cookie:
            lines.append(f"Cookie: {cookie}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            piece = self.sock.recv(65536)
            if not piece:
                break
            data += piece
        head, _, self.buffer = data.partition(b"\r\n\r\n")
        self.response = head.decode("latin-1")
        self.status = int(self.response.split(" ")[1]) if self.response else 0
        self.next_id = 0
        #: frames received while waiting for something else, oldest first
        self.pending: list[Any] = []

    def close(self) -> None:
        try:
            self.sock.sendall(frame(8, struct.pack("!H", 1000)))
        except OSError:
            pass
        self.sock.close()

    def send_text(self, payload: bytes) -> None:
        self.sock.sendall(frame(1, payload))

    def send_binary(self, payload: bytes) -> None:
        self.sock.sendall(frame(2, payload))

    def send_keys(self, term: int, data: bytes) -> None:
        """What the user types into terminal *term*."""
        self.send_binary(bytes([term]) + data)

    def _fill(self, need: int, deadline: float) -> None:
        while len(self.buffer) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the desktop in time")
            self.sock.settimeout(left)
            piece = self.sock.recv(1 << 20)
            if not piece:
                raise ConnectionError("the desktop closed the connection")
            self.buffer += piece

    def receive(self, timeout: float = 30.0) -> Any:
        """The next frame (see the module's docstring); pings are answered on the way; TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            self._fill(2, deadline)
            opcode, n, pos = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if n == 126:
                self._fill(4, deadline)
                n, pos = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif n == 127:
                self._fill(10, deadline)
                n, pos = struct.unpack("!Q", self.buffer[2:10])[0], 10
            self._fill(pos + n, deadline)
            payload, self.buffer = self.buffer[pos : pos + n], self.buffer[pos + n :]
            if opcode == 1:
                return json.loads(payload)
            if opcode == 2:
                return payload[0], payload[1:]
            if opcode == 8:
                return "close", struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            if opcode == 9:
                self.sock.sendall(frame(10, payload))

    def send_request(self, op: str, **args: Any) -> int:
        """Send a request without waiting; its id."""
        self.next_id += 1
        self.send_text(json.dumps({"id": self.next_id, "op": op, "args": args}).encode())
        return self.next_id

    def answer(self, request_id: int | None, timeout: float = 30.0) -> dict[str, Any]:
        """The reply to *request_id*; other frames meanwhile go to :attr:`pending`."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.receive(max(0.0, deadline - time.monotonic()))
            if isinstance(got, dict) and "ok" in got and got.get("id") == request_id:
                return got
            self.pending.append(got)

    def request(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        return self.answer(self.send_request(op, **args), timeout)

    def ok(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        """The result of *op*; :class:`DesktopClientError` if it failed."""
        reply = self.request(op, timeout, **args)
        if not reply.get("ok"):
            raise DesktopClientError(f"{op} failed: {reply.get('error')}")
        return reply["result"]

    def until(self, what: str, condition: Callable[[list[Any]], bool], timeout: float = 30.0) -> list[Any]:
        """Frames (the pending ones first) until *condition(frames)* holds; TimeoutError naming *what*."""
        deadline = time.monotonic() + timeout
        frames, self.pending = self.pending, []
        while not condition(frames):
            left = deadline - time.monotonic()
            if left <= 0:
                self.pending = frames
                raise TimeoutError(f"timed out waiting for {what}; last frames: {frames[-5:]!r}"[:2000])
            try:
                frames.append(self.receive(left))
            except TimeoutError:
                pass
        return frames


def terminal_bytes(frames: list[Any], term: int) -> bytes:
    """What terminal *term* wrote in *frames*."""
    return b"".join(f[1] for f in frames if isinstance(f, tuple) and f[0] == term)
