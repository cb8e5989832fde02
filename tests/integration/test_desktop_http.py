"""The desktop's HTTP side end to end: a real runtime (its own broker, SQLite store), real HTTP, the real CLI.

One embedded runtime serves the desktop on a free loopback port for the
whole module, with a small upload limit (``desktop.max_upload_mb`` = 6) so
the over-limit upload is quick.  Users come from ``oneos user add``; file
contents are compared with what ``oneos fs cat`` reads; the one-time login
comes from ``oneos desktop``.  Waiting is "until a condition holds, or a
deadline", never a sleep.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from oneos.security import tls
from oneos.testing.runtimes import free_port, oneos, wait_for
from oneos.twistd import twistd_command

PASSWORD = "s3cret-pw"
MAX_UPLOAD_MB = 6


class DesktopRuntime:
    def __init__(self, root: Path, desktop: str = "tcp:0:interface=127.0.0.1") -> None:
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.url = f"mqtt://127.0.0.1:{free_port()}"
        (self.home / "config.json").write_text(
            json.dumps(
                {
                    "listen": {"ssh": "tcp:0:interface=127.0.0.1", "desktop": desktop},
                    "desktop": {"max_upload_mb": MAX_UPLOAD_MB},
                }
            )
        )
        self.log_path = root / "runtime.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, ONEOS_HOME=str(self.home), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            twistd_command("oneosd", "--id", "solo", "--pubsub", self.url),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )
        self.desktop = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def runtime_file(self) -> dict[str, Any]:
        try:
            return json.loads((self.home / "runtime.json").read_text())
        except (OSError, ValueError):
            return {}

    def oneos(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        """``oneos`` as this runtime's owner (bytes out, for ``fs cat``); ``--pubsub`` goes after the command."""
        argv = [*args[:2], "--pubsub", self.url, *args[2:]] if args[0] == "user" else list(args)
        if args[0] == "fs":
            argv = ["fs", "--pubsub", self.url, *args[1:]]
        return subprocess.run(
            [sys.executable, "-m", "oneos.cli.main", *argv],
            input=input.encode() if input is not None else None,
            capture_output=True,
            env=dict(os.environ, ONEOS_HOME=str(self.home)),
            timeout=60,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self._log.close()


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    runtime = DesktopRuntime(tmp_path_factory.mktemp("desktop"))
    try:
        wait_for(
            "the desktop to be in runtime.json",
            lambda: runtime.runtime_file().get("desktop"),
            deadline=60,
            logs=runtime.log,
        )
        runtime.desktop = runtime.runtime_file()["desktop"]
        added = runtime.oneos("user", "add", "ann", "--password-stdin", input=PASSWORD + "\n")
        assert added.returncode == 0, added.stderr
        yield runtime
    finally:
        runtime.stop()


class Browser:
    """What a page does: same-origin requests with its cookie and CSRF token."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "", parts.port or 80
        self.origin = f"http://{parts.netloc}"
        self.cookie = ""
        self.csrf = ""

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, list[str]], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            head = {"Origin": self.origin} if method == "POST" else {}
            if self.cookie:
                head["Cookie"] = f"oneos_session={self.cookie}"
            if self.csrf and method == "POST":
                head["X-OneOS-CSRF"] = self.csrf
            head.update(headers or {})
            conn.request(method, path, body=body, headers={k: v for k, v in head.items() if v is not None})
            response = conn.getresponse()
            data = response.read()
            found: dict[str, list[str]] = {}
            for name, value in response.getheaders():
                found.setdefault(name.lower(), []).append(value)
            return response.status, found, data
        finally:
            conn.close()

    def login(self, user: str = "ann", password: str = PASSWORD) -> tuple[int, dict[str, list[str]], Any]:
        status, headers, data = self.request(
            "POST", "/api/login", json.dumps({"user": user, "password": password}).encode()
        )
        body = json.loads(data)
        if status == 200:
            self.cookie = _cookie(headers)
            self.csrf = body["csrf"]
        return status, headers, body


def _cookie(headers: dict[str, list[str]]) -> str:
    for value in headers.get("set-cookie", []):
        if value.startswith("oneos_session="):
            return value.split(";", 1)[0].split("=", 1)[1]
    raise AssertionError(f"no session cookie in {headers}")


def _ok_upload(b: Browser, path: str, data: bytes) -> dict[str, Any]:
    status, _, body = b.request("POST", "/api/upload?path=" + quote(path), data)
    assert status == 200, body
    return json.loads(body)


def test_the_desktop_is_announced(rt):
    assert rt.desktop.startswith("http://127.0.0.1:") and rt.desktop.endswith("/")
    assert f"desktop at {rt.desktop}" in rt.log()
    status = json.loads(oneos("status", "--json", "--pubsub", rt.url, env={"ONEOS_HOME": str(rt.home)}).stdout)
    assert status[0]["desktop"] == rt.desktop


def test_a_wrong_password_is_refused_generically(rt):
    b = Browser(rt.desktop)
    wrong = b.login("ann", "not-it")
    nobody = b.login("nobody-here", PASSWORD)
    assert wrong[0] == nobody[0] == 401
    assert wrong[2] == nobody[2] == {"error": "login refused", "kind": "ELOGIN"}
    assert "set-cookie" not in wrong[1] and not b.cookie


def test_login_cookie_and_headers(rt):
    b = Browser(rt.desktop)
    status, headers, body = b.login()
    assert status == 200 and body["user"] == "ann" and body["runtime"] == "solo"
    (cookie,) = headers["set-cookie"]
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert attributes == {"path=/", "httponly", "samesite=strict"}, cookie
    for path in ("/", "/api/session", "/no-such-file"):
        _, answer_headers, _ = b.request("GET", path)
        assert answer_headers["content-security-policy"] == [
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        ]
        assert answer_headers["x-content-type-options"] == ["nosniff"]
        assert answer_headers["referrer-policy"] == ["no-referrer"]
        assert answer_headers["x-frame-options"] == ["DENY"]
    assert b.request("GET", "/api/session")[1]["cache-control"] == ["no-store"]
    status, _, data = b.request("GET", "/api/session")
    assert status == 200 and json.loads(data) == body


def test_posts_need_the_origin_and_the_csrf_token(rt):
    b = Browser(rt.desktop)
    b.login()
    path = "/api/upload?path=/home/ann/csrf.txt"
    status, _, data = b.request("POST", path, b"x", {"X-OneOS-CSRF": None})
    assert status == 403 and json.loads(data)["kind"] == "ECSRF"
    status, _, data = b.request("POST", path, b"x", {"X-OneOS-CSRF": "guessed"})
    assert status == 403 and json.loads(data)["kind"] == "ECSRF"
    status, _, data = b.request("POST", path, b"x", {"Origin": "http://evil.example"})
    assert status == 403 and json.loads(data)["kind"] == "EORIGIN"
    status, _, data = b.request("POST", path, b"x", {"Origin": None})
    assert status == 403 and json.loads(data)["kind"] == "EORIGIN"
    assert rt.oneos("fs", "cat", "/home/ann/csrf.txt").returncode != 0


def test_logout_revokes_at_once(rt):
    b = Browser(rt.desktop)
    b.login()
    assert b.request("GET", "/api/session")[0] == 200
    status, headers, data = b.request("POST", "/api/logout", b"")
    assert status == 200 and json.loads(data) == {}
    assert "max-age=0" in headers["set-cookie"][0].lower()
    status, _, data = b.request("GET", "/api/session")
    assert status == 401 and json.loads(data)["kind"] == "ENOSESSION"
    status, _, _ = b.request("POST", "/api/upload?path=/home/ann/after-logout", b"x")
    assert status == 401


def test_a_5_mb_upload_is_what_oneos_fs_cat_reads_and_download_gives_back(rt):
    b = Browser(rt.desktop)
    b.login()
    data = os.urandom(5 * 1000 * 1000)
    assert _ok_upload(b, "/home/ann/big é.bin", data) == {"path": "/home/ann/big é.bin", "size": len(data)}
    cat = rt.oneos("fs", "cat", "/home/ann/big é.bin")
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == data
    status, headers, got = b.request("GET", "/api/download?path=" + quote("/home/ann/big é.bin"))
    assert status == 200 and got == data
    assert headers["content-length"] == [str(len(data))]
    assert headers["content-disposition"] == ["attachment; filename=\"big _.bin\"; filename*=UTF-8''big%20%C3%A9.bin"]


def test_download_of_a_file_put_with_the_cli(rt, tmp_path):
    b = Browser(rt.desktop)
    b.login()
    local = tmp_path / "put.bin"
    local.write_bytes(os.urandom(300_000))
    put = rt.oneos("fs", "put", str(local), "/tmp/put.bin")
    assert put.returncode == 0, put.stderr
    status, _, got = b.request("GET", "/api/download?path=/tmp/put.bin")
    assert status == 200 and got == local.read_bytes()
    status, _, data = b.request("GET", "/api/download?path=/tmp/none.bin")
    assert status == 404 and json.loads(data)["kind"] == "ENOENT"


def test_an_upload_over_the_limit_is_413_and_leaves_no_file(rt):
    b = Browser(rt.desktop)
    b.login()
    status, _, data = b.request("POST", "/api/upload?path=/home/ann/too-big", b"z" * (MAX_UPLOAD_MB * 1024 * 1024 + 1))
    assert status == 413 and json.loads(data)["kind"] == "EFBIG"
    cat = rt.oneos("fs", "cat", "/home/ann/too-big")
    assert cat.returncode != 0 and b"no such file" in cat.stderr
    # the same refusal when the size is only known as the body arrives (chunked)
    conn = http.client.HTTPConnection(b.host, b.port, timeout=60)
    try:
        piece = b"z" * (1024 * 1024)
        conn.request(
            "POST",
            "/api/upload?path=/home/ann/too-big",
            body=iter([piece] * (MAX_UPLOAD_MB + 1)),
            headers={"Origin": b.origin, "Cookie": f"oneos_session={b.cookie}", "X-OneOS-CSRF": b.csrf},
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert response.status == 413 and json.loads(response.read())["kind"] == "EFBIG"
    finally:
        conn.close()
    assert rt.oneos("fs", "cat", "/home/ann/too-big").returncode != 0


def test_path_traversal_is_refused(rt):
    b = Browser(rt.desktop)
    b.login()
    for path, status, kind in (
        ("/../../etc/passwd", 400, "EINVAL"),
        ("/home/ann/../../../x", 400, "EINVAL"),
        ("/home/ann/a\x00b", 400, "EINVAL"),
        ("/etc/oneos/users.json", 403, "EACCES"),
    ):
        got, _, data = b.request("POST", "/api/upload?path=" + quote(path), b"x")
        assert (got, json.loads(data)["kind"]) == (status, kind), (path, data)
    got, _, data = b.request("GET", "/api/download?path=" + quote("/etc/oneos/users.json"))
    assert got == 403 and json.loads(data)["kind"] == "EACCES"
    got, _, data = b.request("GET", "/api/download?path=" + quote("/../etc/passwd"))
    assert got == 400


def test_oneos_desktop_url_logs_in_once(rt):
    r = rt.oneos("desktop", "--user", "ann")
    assert r.returncode == 0, r.stderr
    url = r.stdout.decode().strip()
    assert url.startswith(rt.desktop + "login?token=")
    (token_file,) = (rt.home / "desktop-tokens").iterdir()
    assert token_file.stat().st_mode & 0o777 == 0o600
    b = Browser(rt.desktop)
    target = url[len(rt.desktop) - 1 :]
    status, headers, _ = b.request("GET", target)
    assert status == 303 and headers["location"] == ["/"]
    b.cookie = _cookie(headers)
    status, _, data = b.request("GET", "/api/session")
    assert status == 200 and json.loads(data)["user"] == "ann"
    again = Browser(rt.desktop)
    status, headers, _ = again.request("GET", target)
    assert status == 403 and "set-cookie" not in headers
    assert not list((rt.home / "desktop-tokens").iterdir())


def test_oneos_desktop_without_a_runtime_says_so(tmp_path):
    r = oneos("desktop", env={"ONEOS_HOME": str(tmp_path)})
    assert r.returncode == 1 and "no runtime is running" in r.stderr and "Traceback" not in r.stderr


def test_an_ssl_endpoint_serves_https_and_secure_cookies(tmp_path):
    # a certificate of a network CA, made apart from the runtime's home (whose tls/ would turn on TLS streams)
    certs = tmp_path / "certs"
    tls.create_ca(certs)
    cert, key = tls.issue_own(certs, [])
    runtime = DesktopRuntime(tmp_path / "rt", desktop=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    try:
        url = wait_for("the desktop", lambda: runtime.runtime_file().get("desktop"), deadline=60, logs=runtime.log)
        assert url.startswith("https://127.0.0.1:")
        added = runtime.oneos("user", "add", "ann", "--password-stdin", input=PASSWORD + "\n")
        assert added.returncode == 0, added.stderr
        parts = urlsplit(url)
        context = ssl.create_default_context(cafile=str(tls.ca_path(certs)))
        conn = http.client.HTTPSConnection("127.0.0.1", parts.port, context=context, timeout=60)
        conn.request(
            "POST",
            "/api/login",
            body=json.dumps({"user": "ann", "password": PASSWORD}).encode(),
            headers={"Origin": f"https://{parts.netloc}"},
        )
        response = conn.getresponse()
        assert response.status == 200, response.read()
        cookie = response.getheader("set-cookie") or ""
        assert "secure" in {a.strip().lower() for a in cookie.split(";")}, cookie
        conn.close()
    finally:
        runtime.stop()


def test_a_taken_port_is_one_error_line_and_the_runtime_goes_on(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        runtime = DesktopRuntime(tmp_path / "rt", desktop=f"tcp:{port}:interface=127.0.0.1")
        try:
            info = wait_for("runtime.json", runtime.runtime_file, deadline=60, logs=runtime.log)
            assert info["desktop"] == "" and info["ssh"]
            errors = [line for line in runtime.log().splitlines() if "desktop cannot listen" in line]
            assert len(errors) == 1 and f"tcp:{port}:interface=127.0.0.1" in errors[0], runtime.log()
            assert "Traceback" not in runtime.log()
            r = runtime.oneos("desktop")
            assert r.returncode == 1 and b"serves no desktop" in r.stderr
            assert runtime.oneos("fs", "ls", "/").returncode == 0, "the runtime runs on without its desktop"
        finally:
            runtime.stop()
