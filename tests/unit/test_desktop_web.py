"""The desktop's HTTP side without sockets: the real site over a StringTransport, fakes for the tree and the users.

Every request goes through twisted.web's own HTTP/1.1 channel (so body
limits, cookies and headers are what a browser would see); the password
checker is the shell's, over a fake tree holding users.json; file
operations go to an in-memory file system that records who asked.  Time is
a MemoryReactorClock: the refusal delays are advanced, never slept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from twisted.cred import portal as cred_portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web import resource

from oneos.desktop import web
from oneos.desktop.context import DesktopContext
from oneos.desktop.service import DesktopService, desktop_url
from oneos.desktop.sessions import SessionStore, new_login_token, write_token_file
from oneos.fs import errors
from oneos.fs.store import Stat
from oneos.shell.throttle import LoginThrottle
from oneos.shell.users import FailureDelay, PasswordChecker, TreeUsers, hash_password, render_users
from oneos.testing.shell import FakeFS

ORIGIN = "http://127.0.0.1:3000"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class TreeFS(FakeFS):
    """FakeFS with what the desktop and the users' checker use: read_small, mkdir's owner, read_into's on_open."""

    def __init__(self) -> None:
        super().__init__()
        self.owners: dict[str, str] = {}
        self.denied: set[str] = set()

    def read_small(self, path: str) -> defer.Deferred:
        return self.read(path)

    def mkdir(self, path: str, parents: bool = False, exist_ok: bool = False, **kw: Any) -> defer.Deferred:
        if "owner" in kw:
            self.owners[path] = kw["owner"]
        return super().mkdir(path, parents, exist_ok)

    def read_into(self, path, sink, offset=0, length=None, on_open=None):
        if path in self.denied:
            return defer.fail(errors.PermissionDenied(path))
        d = self.read(path, offset, length)

        def opened(data: bytes) -> Any:
            if on_open is not None:
                on_open({"host": "127.0.0.1", "port": 1, "token": "t", "size": len(data)})
            return sink.write(data).addCallback(lambda _: sink.finish())

        return d.addCallback(opened)


@dataclass
class UserFS:
    """A user's view: the same files, every call recorded with the user."""

    tree: TreeFS
    user: str
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def write_from(self, path: str, source: Any, mode: str = "truncate") -> defer.Deferred:
        self.calls.append((self.user, "write", path))
        if path in self.tree.denied or path.startswith("/etc/"):
            return defer.fail(errors.PermissionDenied(path))
        return self.tree.write_from(path, source, mode)

    def read_into(self, path: str, sink: Any, **kw: Any) -> defer.Deferred:
        self.calls.append((self.user, "read", path))
        return self.tree.read_into(path, sink, **kw)


class FakeGrid:
    def __init__(self, tree: TreeFS) -> None:
        self.fs = tree
        self.views: list[UserFS] = []

    def for_user(self, user: str) -> Any:
        view = UserFS(self.tree_of(), user)
        self.views.append(view)
        return type("G", (), {"fs": view})()

    def tree_of(self) -> TreeFS:
        return self.fs


class FakeShell:
    """What the desktop takes from the shell: its portal (the real password checker) and its throttle."""

    def __init__(self, reactor: Any, tree: TreeFS) -> None:
        users = TreeUsers(tree, blocking=lambda f, *a: defer.maybeDeferred(f, *a))
        self.delay = FailureDelay(reactor)
        checker = PasswordChecker(users, self.delay)
        realm = type("Realm", (), {"requestAvatar": lambda *a: None})()
        self.portal = cred_portal.Portal(realm, [checker])
        self.throttle = LoginThrottle(reactor)


class Box:
    """A desktop site over fakes, and a way to send it raw HTTP."""

    def __init__(self, tmp_path: Path, *, max_upload: int = 1024 * 1024, web_dir: Path | None = None) -> None:
        self.reactor = MemoryReactorClock()
        self.tree = TreeFS()
        # a cheap scrypt cost: the checker reads it from the hash
        users = {"ann": {"password": hash_password("secret", n=2**4)}}
        self.tree.files.update({"/etc": None, "/etc/oneos": None, "/etc/oneos/users.json": render_users(users)})
        self.grid = FakeGrid(self.tree)
        self.shell = FakeShell(self.reactor, self.tree)
        self.ctx = DesktopContext(
            reactor=self.reactor,
            runtime_id="rt-1",
            home=tmp_path / "home",
            sessions=SessionStore(self.reactor.seconds),
            shell=self.shell,
            grid=self.grid,
            membership=None,
            max_upload=max_upload,
        )
        (tmp_path / "home").mkdir(exist_ok=True)
        self.ws = StubResource()
        self.site = web.build_site(self.ctx, web_dir or tmp_path / "no-web", ws=self.ws)

    def send(self, raw: bytes, peer: str = "127.0.0.1") -> Response:
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 3000), peerAddress=IPv4Address("TCP", peer, 50000)
        )
        channel = self.site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        channel.dataReceived(raw)
        response = Response(transport, channel)
        http = response.http
        for _ in range(10_000):  # a pull producer (a static file) is read as a socket would ask, without a cooperator
            producer = http._requestProducer
            if producer is None or http._requestProducerStreaming:
                break
            producer._producer.resumeProducing()
        return response

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        peer: str = "127.0.0.1",
        chunked: bool = False,
    ) -> Response:
        head = {"Host": "127.0.0.1:3000", **(headers or {})}
        if chunked:
            head["Transfer-Encoding"] = "chunked"
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in _pieces(body, 64 * 1024)) + b"0\r\n\r\n"
        else:
            if body or method == "POST":
                head["Content-Length"] = str(len(body))
            payload = body
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items()), "", ""]
        return self.send("\r\n".join(lines).encode() + payload, peer)

    def login(self, user: str = "ann", password: str = "secret") -> tuple[str, str]:
        r = self.request(
            "POST", "/api/login", json.dumps({"user": user, "password": password}).encode(), {"Origin": ORIGIN}
        )
        assert r.status == 200, r.body
        return r.cookie("oneos_session"), r.json()["csrf"]

    def post(self, path: str, body: bytes = b"", cookie: str = "", csrf: str = "", **kw: Any) -> Response:
        headers = {"Origin": ORIGIN, "Cookie": f"oneos_session={cookie}", "X-OneOS-CSRF": csrf}
        headers.update(kw.pop("headers", {}))
        return self.request("POST", path, body, {k: v for k, v in headers.items() if v is not None}, **kw)

    def get(self, path: str, cookie: str = "", **kw: Any) -> Response:
        return self.request("GET", path, headers={"Cookie": f"oneos_session={cookie}"} if cookie else {}, **kw)


def _pieces(data: bytes, n: int) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)] or []


class StubResource(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ws stub"


class Response:
    """What the server wrote, parsed (one response per connection here)."""

    def __init__(self, transport: StringTransport, channel: Any) -> None:
        self.transport = transport
        self.channel = channel

    @property
    def http(self) -> Any:
        """The HTTP/1.1 channel under twisted.web's protocol-negotiating wrapper."""
        return getattr(self.channel, "_channel", self.channel)

    @property
    def raw(self) -> bytes:
        return self.transport.value()

    @property
    def complete(self) -> bool:
        head, sep, body = self.raw.partition(b"\r\n\r\n")
        if not sep:
            return False
        headers = self._headers(head)
        if "content-length" in headers:
            return len(body) >= int(headers["content-length"][0])
        if headers.get("transfer-encoding") == ["chunked"]:
            return body.endswith(b"0\r\n\r\n")
        return self.transport.disconnecting

    @staticmethod
    def _headers(head: bytes) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            out.setdefault(name.strip().lower(), []).append(value.strip())
        return out

    @property
    def status(self) -> int:
        assert self.raw, "no answer yet"
        return int(self.raw.split(b" ", 2)[1])

    @property
    def headers(self) -> dict[str, list[str]]:
        return self._headers(self.raw.partition(b"\r\n\r\n")[0])

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def body(self) -> bytes:
        body = self.raw.partition(b"\r\n\r\n")[2]
        if self.header("transfer-encoding") != "chunked":
            return body
        out = b""
        while body:
            size_line, _, body = body.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out += body[:size]
            body = body[size + 2 :]
        return out

    def json(self) -> Any:
        return json.loads(self.body)

    def cookie(self, name: str) -> str:
        for value in self.headers.get("set-cookie", []):
            if value.startswith(name + "="):
                return value.split(";", 1)[0].split("=", 1)[1]
        raise AssertionError(f"no {name} cookie in {self.headers}")

    def set_cookie(self) -> str:
        return self.headers["set-cookie"][0]


@pytest.fixture
def box(tmp_path):
    return Box(tmp_path)


@pytest.fixture
def no_ws(monkeypatch):
    """The service builds its site with a stand-in for /ws (the websocket side is tested on its own)."""
    monkeypatch.setattr(web, "websocket_resource", lambda ctx: StubResource())


def assert_error(r: Response, status: int, kind: str) -> dict[str, Any]:
    assert r.status == status, r.raw
    assert r.header("content-type") == "application/json; charset=utf-8"
    body = r.json()
    assert body["kind"] == kind and isinstance(body["error"], str), body
    return body


# -- headers, static files, the websocket slot --------------------------------------------------------


def test_security_headers_on_every_answer_and_no_store_on_the_api(tmp_path):
    web_dir = tmp_path / "web"
    (web_dir / "app").mkdir(parents=True)
    (web_dir / "index.html").write_text("<!doctype html><title>OneOS</title>")
    (web_dir / "app" / "main.js").write_text("export {}")
    box = Box(tmp_path, web_dir=web_dir)
    answers = {
        "/": box.get("/"),
        "/app/main.js": box.get("/app/main.js"),
        "/app/": box.get("/app/"),
        "/missing.css": box.get("/missing.css"),
        "/api/session": box.get("/api/session"),
        "/api/nothing": box.get("/api/nothing"),
        "/login": box.get("/login?token=x"),
        "/ws": box.get("/ws"),
    }
    for path, r in answers.items():
        for name, value in HEADERS.items():
            assert r.header(name) == value, (path, name, r.raw[:300])
        no_store = path.startswith(("/api/", "/login", "/ws"))
        assert (r.header("cache-control") == "no-store") == no_store, path
    assert answers["/"].status == 200 and b"<title>OneOS" in answers["/"].body
    assert answers["/app/main.js"].status == 200 and answers["/app/main.js"].header("content-type") == "text/javascript"
    assert answers["/app/"].status == 404, "directories are not listed"
    assert answers["/missing.css"].status == 404
    assert_error(answers["/api/nothing"], 404, "ENOENT")
    assert answers["/ws"].body == b"ws stub"


def test_without_web_dir_the_page_says_so(box):
    r = box.get("/")
    assert r.status == 503 and b"page is missing" in r.body and r.header("x-frame-options") == "DENY"


def test_ws_answers_503_until_its_module_exists(monkeypatch, tmp_path):
    def missing(name: str) -> Any:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(web.importlib, "import_module", missing)
    box = Box(tmp_path)
    box.site = web.build_site(box.ctx, tmp_path / "no-web")
    r = box.get("/ws")
    assert r.status == 503 and r.header("content-security-policy") == HEADERS["Content-Security-Policy"]


def test_ws_is_the_modules_resource(monkeypatch, tmp_path):
    built = []

    class Module:
        @staticmethod
        def websocket_resource(ctx: Any) -> resource.Resource:
            built.append(ctx)
            return StubResource()

    monkeypatch.setattr(web.importlib, "import_module", lambda name: Module)
    box = Box(tmp_path)
    box.site = web.build_site(box.ctx, tmp_path / "no-web")
    assert box.get("/ws").body == b"ws stub" and built == [box.ctx]


def test_on_loopback_only_loopback_host_names_are_answered(box):
    box.site.loopback_only = True
    for host in ("localhost:3000", "127.0.0.1:3000", "[::1]:3000", "LOCALHOST"):
        assert box.request("GET", "/api/session", headers={"Host": host}).status == 401, host
    r = box.request("GET", "/api/session", headers={"Host": "rebound.example:3000"})
    assert r.status == 403 and r.header("x-frame-options") == "DENY"
    box.site.loopback_only = False
    assert box.request("GET", "/api/session", headers={"Host": "rebound.example:3000"}).status == 401


# -- login, session, logout ---------------------------------------------------------------------------


def test_no_session_is_401(box):
    assert_error(box.get("/api/session"), 401, "ENOSESSION")
    assert_error(box.get("/api/session", cookie="made-up"), 401, "ENOSESSION")


def test_login_sets_a_strict_httponly_cookie_and_answers_the_session(box):
    r = box.request("POST", "/api/login", b'{"user": "ann", "password": "secret"}', {"Origin": ORIGIN})
    assert r.status == 200
    body = r.json()
    assert body["user"] == "ann" and body["runtime"] == "rt-1" and len(body["csrf"]) >= 32
    assert body["max_upload"] == 1024 * 1024
    cookie = r.set_cookie()
    attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert attributes == {"path=/", "httponly", "samesite=strict"}, cookie
    assert r.header("cache-control") == "no-store"
    session = box.get("/api/session", cookie=r.cookie("oneos_session"))
    assert session.status == 200 and session.json() == body
    assert box.tree.owners["/home/ann"] == "ann", "the home is made as the shell makes it"


def test_under_tls_the_cookie_is_secure(box):
    box.ctx.tls = True
    r = box.request(
        "POST", "/api/login", b'{"user": "ann", "password": "secret"}', {"Origin": "https://127.0.0.1:3000"}
    )
    # the page's origin is https only when the connection is; a StringTransport is plain, so the Origin is refused
    assert_error(r, 403, "EORIGIN")
    r = box.request("POST", "/api/login", b'{"user": "ann", "password": "secret"}', {"Origin": ORIGIN})
    assert "secure" in {a.strip().lower() for a in r.set_cookie().split(";")}


@pytest.mark.parametrize("user,password", [("ann", "wrong"), ("nobody", "secret"), ("", ""), ("ann" * 40, "x")])
def test_a_refused_login_is_slow_and_says_nothing_more(box, user, password):
    r = box.request("POST", "/api/login", json.dumps({"user": user, "password": password}).encode(), {"Origin": ORIGIN})
    assert r.raw == b"", "nothing is answered before the delay"
    box.reactor.advance(0.5)  # the checker's per-user delay
    assert r.raw == b""
    box.reactor.advance(0.5)  # the throttle's per-address delay
    body = assert_error(r, 401, "ELOGIN")
    assert body["error"] == "login refused"
    assert "set-cookie" not in r.headers


def test_failures_from_one_address_wait_longer_and_parallel_guesses_are_capped(box):
    bad = json.dumps({"user": "ann", "password": "wrong"}).encode()
    pending = [box.request("POST", "/api/login", bad, {"Origin": ORIGIN}) for _ in range(5)]
    assert_error(pending[4], 429, "EAGAIN")  # four at once from one address (the shell's per-source limit)
    for _ in range(20):
        box.reactor.advance(1)
    assert all(r.status == 401 for r in pending[:4])
    other = box.request("POST", "/api/login", bad, {"Origin": ORIGIN}, peer="10.0.0.9")
    for _ in range(20):
        box.reactor.advance(1)
    assert other.status == 401


@pytest.mark.parametrize("origin", [None, "http://evil.example", "http://127.0.0.1:3001", "null"])
def test_login_needs_the_pages_origin(box, origin):
    headers = {"Origin": origin} if origin else {}
    r = box.request("POST", "/api/login", b'{"user": "ann", "password": "secret"}', headers)
    assert_error(r, 403, "EORIGIN")


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"user": "ann"}', b'{"user": 1, "password": "x"}', b"\xff"])
def test_a_malformed_login_is_400(box, body):
    assert_error(box.request("POST", "/api/login", body, {"Origin": ORIGIN}), 400, "EINVAL")


def test_a_login_body_is_bounded(box):
    big = b'{"user": "ann", "password": "' + b"x" * (web.MAX_SMALL_BODY + 10) + b'"}'
    assert_error(box.request("POST", "/api/login", big, {"Origin": ORIGIN}), 413, "EFBIG")
    assert_error(box.request("POST", "/api/login", big, {"Origin": ORIGIN}, chunked=True), 413, "EFBIG")


def test_methods_other_than_the_routes_are_405(box):
    assert_error(box.request("GET", "/api/login"), 405, "EINVAL")
    assert_error(box.request("POST", "/api/session", headers={"Origin": ORIGIN}), 405, "EINVAL")


def test_logout_needs_csrf_then_revokes_at_once(box):
    cookie, csrf = box.login()
    session = box.ctx.sessions.get(cookie)
    closed = []
    session.on_end.append(lambda: closed.append(True))
    assert_error(box.post("/api/logout", cookie=cookie, csrf=""), 403, "ECSRF")
    assert_error(box.post("/api/logout", cookie=cookie, csrf=csrf, headers={"Origin": "http://evil"}), 403, "EORIGIN")
    assert box.get("/api/session", cookie=cookie).status == 200
    r = box.post("/api/logout", cookie=cookie, csrf=csrf)
    assert r.status == 200 and r.json() == {} and closed == [True]
    assert "max-age=0" in r.set_cookie().lower() and r.cookie("oneos_session") == ""
    assert_error(box.get("/api/session", cookie=cookie), 401, "ENOSESSION")
    # logging out without a session is harmless
    assert box.post("/api/logout", cookie="", csrf=None).status == 200


def test_a_new_login_replaces_the_browsers_old_session(box):
    old, _ = box.login()
    r = box.request(
        "POST",
        "/api/login",
        b'{"user": "ann", "password": "secret"}',
        {"Origin": ORIGIN, "Cookie": f"oneos_session={old}"},
    )
    assert r.status == 200 and r.cookie("oneos_session") != old
    assert box.ctx.sessions.get(old) is None


def test_sessions_expire_on_the_clock(box):
    cookie, _ = box.login()
    box.reactor.advance(30 * 60)
    assert_error(box.get("/api/session", cookie=cookie), 401, "ENOSESSION")


# -- upload ---------------------------------------------------------------------------------------------


def test_upload_writes_the_body_as_the_user(box):
    cookie, csrf = box.login()
    data = bytes(range(256)) * 2000
    r = box.post("/api/upload?path=/home/ann/f%20%C3%A9.bin", data, cookie, csrf)
    assert r.status == 200, r.raw
    assert r.json() == {"path": "/home/ann/f é.bin", "size": len(data)}
    assert box.tree.files["/home/ann/f é.bin"] == data
    assert ("ann", "write", "/home/ann/f é.bin") in box.grid.views[-1].calls


def test_upload_chunked_and_relative_paths_start_at_home(box):
    cookie, csrf = box.login()
    r = box.post("/api/upload?path=notes.txt", b"hello " * 50000, cookie, csrf, chunked=True)
    assert r.status == 200 and r.json()["path"] == "/home/ann/notes.txt"
    assert box.tree.files["/home/ann/notes.txt"] == b"hello " * 50000


def test_upload_refusals_store_nothing(box):
    cookie, csrf = box.login()
    before = dict(box.tree.files)
    data = b"x" * 1000
    cases = [
        (box.post("/api/upload?path=/home/ann/a", data, "", csrf), 401, "ENOSESSION"),
        (box.post("/api/upload?path=/home/ann/a", data, cookie, ""), 403, "ECSRF"),
        (box.post("/api/upload?path=/home/ann/a", data, cookie, csrf, headers={"Origin": "http://x"}), 403, "EORIGIN"),
        (box.post("/api/upload?path=/../../etc/passwd", data, cookie, csrf), 400, "EINVAL"),
        (box.post("/api/upload?path=/home/ann/a%00b", data, cookie, csrf), 400, "EINVAL"),
        (box.post("/api/upload?path=/home/ann/a%0Ab", data, cookie, csrf), 400, "EINVAL"),
        (box.post("/api/upload?path=/home/ann/%FF", data, cookie, csrf), 400, "EINVAL"),
        (box.post("/api/upload?path=/", data, cookie, csrf), 400, "EINVAL"),
        (box.post("/api/upload", data, cookie, csrf), 400, "EINVAL"),
        (box.post("/api/upload?path=/a&path=/b", data, cookie, csrf), 400, "EINVAL"),
        (box.post("/api/upload?path=/etc/oneos/users.json", data, cookie, csrf), 403, "EACCES"),
        (box.post("/api/upload?path=/nowhere/a", data, cookie, csrf), 404, "ENOENT"),
    ]
    for r, status, kind in cases:
        assert_error(r, status, kind)
    assert box.tree.files == before


def test_an_upload_over_the_limit_is_413_before_it_is_stored(tmp_path):
    box = Box(tmp_path, max_upload=100_000)
    cookie, csrf = box.login()
    r = box.post("/api/upload?path=/home/ann/big", b"x" * 100_001, cookie, csrf)
    assert_error(r, 413, "EFBIG")
    r = box.post("/api/upload?path=/home/ann/big", b"x" * 300_000, cookie, csrf, chunked=True)
    assert_error(r, 413, "EFBIG")
    assert "/home/ann/big" not in box.tree.files
    ok = box.post("/api/upload?path=/home/ann/big", b"x" * 100_000, cookie, csrf)
    assert ok.status == 200 and len(box.tree.files["/home/ann/big"]) == 100_000


def test_a_refused_upload_body_is_dropped_as_it_arrives(box):
    # headers first: the request is judged (no session) before any byte of the body is kept
    r = box.send(
        b"POST /api/upload?path=/home/ann/a HTTP/1.1\r\nHost: 127.0.0.1:3000\r\nOrigin: " + ORIGIN.encode() + b"\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    request = r.http.requests[-1]
    assert isinstance(request.content, web._Discarded) and request.refusal.status == 401
    r.channel.dataReceived(b"y" * 1_000_000)
    assert_error(r, 401, "ENOSESSION")


# -- download -------------------------------------------------------------------------------------------


def test_download_streams_the_file_as_an_attachment(box):
    cookie, _ = box.login()
    data = b"\x00\x01" * 100_000
    box.tree.files['/home/ann/r\u00e9sum\u00e9 "v2".pdf'] = data
    r = box.get("/api/download?path=/home/ann/r%C3%A9sum%C3%A9%20%22v2%22.pdf", cookie)
    assert r.status == 200 and r.body == data
    assert r.header("content-type") == "application/octet-stream"
    assert r.header("content-length") == str(len(data))
    assert r.header("content-disposition") == (
        "attachment; filename=\"r_sum_ _v2_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22v2%22.pdf"
    )
    assert r.header("x-content-type-options") == "nosniff" and r.header("cache-control") == "no-store"
    assert ("ann", "read", '/home/ann/résumé "v2".pdf') in box.grid.views[-1].calls


def test_download_errors(box):
    cookie, _ = box.login()
    box.tree.files["/home/ann/secret"] = b"s"
    box.tree.denied.add("/home/ann/secret")
    assert_error(box.get("/api/download?path=/home/ann/secret"), 401, "ENOSESSION")
    assert_error(box.get("/api/download?path=/home/ann/none", cookie), 404, "ENOENT")
    assert_error(box.get("/api/download?path=/home/ann/secret", cookie), 403, "EACCES")
    assert_error(box.get("/api/download?path=/../x", cookie), 400, "EINVAL")


def test_download_waits_while_the_browser_is_slow(box):
    cookie, _ = box.login()
    sinks = []

    class SlowFS:
        def read_into(self, path, sink, on_open=None, **kw):
            on_open({"size": 6})
            sinks.append(sink)
            return defer.Deferred()

    box.grid.for_user = lambda user: type("G", (), {"fs": SlowFS()})()
    r = box.get("/api/download?path=/home/ann/f", cookie)
    (sink,) = sinks
    assert sink.write(b"abc").called
    r.http.pauseProducing()  # the connection's buffer is full
    waiting = sink.write(b"def")
    assert not waiting.called
    r.http.resumeProducing()
    assert waiting.called
    sink.finish()


def test_a_browser_that_leaves_stops_the_download(box):
    cookie, _ = box.login()
    sinks = []

    class SlowFS:
        def read_into(self, path, sink, on_open=None, **kw):
            on_open({"size": 10})
            sinks.append(sink)
            return defer.Deferred()

    box.grid.for_user = lambda user: type("G", (), {"fs": SlowFS()})()
    r = box.get("/api/download?path=/home/ann/f", cookie)
    (sink,) = sinks
    sink.write(b"abc")
    r.http.pauseProducing()
    waiting = sink.write(b"def")
    r.channel.connectionLost(ConnectionError("gone"))
    failures = []
    waiting.addErrback(failures.append)
    assert failures and failures[0].value.kind == "EPIPE"
    late = []
    sink.write(b"more").addErrback(late.append)  # a failed Deferred at once: the stream ends
    assert late and late[0].value.kind == "EPIPE"


# -- one-time login -------------------------------------------------------------------------------------


def test_a_one_time_link_logs_in_once(box, monkeypatch):
    token = new_login_token("ann", now=1000.0)
    write_token_file(box.ctx.home, token)
    route = box.site.resource.routes[b"login"]
    monkeypatch.setattr(route, "wall", lambda: 1001.0)
    r = box.get(f"/login?token={token.token}")
    assert r.status == 303 and r.header("location") == "/"
    cookie = r.cookie("oneos_session")
    assert {a.strip().lower() for a in r.set_cookie().split(";")[1:]} == {"path=/", "httponly", "samesite=strict"}
    assert box.get("/api/session", cookie=cookie).json()["user"] == "ann"
    again = box.get(f"/login?token={token.token}")
    assert again.status == 403 and "set-cookie" not in again.headers and b"not valid" in again.body


def test_an_expired_or_bogus_link_is_refused(box, monkeypatch):
    token = new_login_token("ann", now=1000.0)
    write_token_file(box.ctx.home, token)
    route = box.site.resource.routes[b"login"]
    monkeypatch.setattr(route, "wall", lambda: 1000.0 + 121)
    assert box.get(f"/login?token={token.token}").status == 403
    assert box.get("/login").status == 403
    assert box.get("/login?token=%00%FF").status == 403
    assert not list((box.ctx.home / "desktop-tokens").iterdir())


def test_a_link_for_an_invalid_user_name_is_refused(box, monkeypatch):
    token = new_login_token("../../etc", now=1000.0)
    write_token_file(box.ctx.home, token)
    monkeypatch.setattr(box.site.resource.routes[b"login"], "wall", lambda: 1001.0)
    assert box.get(f"/login?token={token.token}").status == 403


# -- pieces ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error,status,kind",
    [
        (errors.NotFound("/a"), 404, "ENOENT"),
        (errors.PermissionDenied("/a"), 403, "EACCES"),
        (errors.OperationNotPermitted("/"), 403, "EPERM"),
        (errors.IsADirectory("/a"), 400, "EISDIR"),
        (errors.InvalidPath("/a"), 400, "EINVAL"),
        (errors.FileChanged("/a"), 409, "ESTALE"),
        (errors.FileSystemUnavailable("store host rt-a is down"), 503, "EIO"),
        (errors.from_wire("ENOSPC", "full"), 507, "ENOSPC"),
        (RuntimeError("bug"), 500, "EIO"),
    ],
)
def test_http_error(error, status, kind):
    refused = web.http_error(error)
    assert (refused.status, refused.kind) == (status, kind)


def test_rpc_timeouts_are_503():
    from oneos.errors import RPCTimeout

    assert web.http_error(RPCTimeout("fs", "stat", 10)).status == 503


@pytest.mark.parametrize(
    "name,expected",
    [
        ("a.txt", "attachment; filename=\"a.txt\"; filename*=UTF-8''a.txt"),
        ('x"; evil=1', "attachment; filename=\"x__ evil_1\"; filename*=UTF-8''x%22%3B%20evil%3D1"),
        ("\u65e5\u672c", "attachment; filename=\"__\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC"),
    ],
)
def test_attachment_names_are_safe(name, expected):
    assert web.attachment(name).decode() == expected


# -- the service ----------------------------------------------------------------------------------------


def test_the_service_listens_and_logs_its_url(box, tmp_path, no_ws):
    service = DesktopService(box.ctx, "tcp:3000:interface=127.0.0.1", web_dir=tmp_path / "no-web")
    assert box.reactor.tcpServers == [], "the constructor opens nothing"
    service.startService()
    assert service.opened.called and service.url == "http://127.0.0.1:3000/"
    assert box.reactor.tcpServers[0][0] == 3000
    session = box.ctx.sessions.create("ann")
    service.stopService()
    assert box.ctx.sessions.get(session.id) is None, "stopping logs every browser out"
    assert service.url == ""


def test_a_port_in_use_is_one_error_and_the_service_goes_on(box, tmp_path, no_ws):
    def taken(*a: Any, **kw: Any) -> Any:
        raise CannotListenError("127.0.0.1", 3000, OSError(98, "Address already in use"))

    box.reactor.listenTCP = taken
    service = DesktopService(box.ctx, "tcp:3000:interface=127.0.0.1", web_dir=tmp_path / "no-web")
    service.startService()
    assert service.opened.called and service.url == "" and service.running


def test_off_when_the_endpoint_is_empty(box):
    service = DesktopService(box.ctx, "")
    service.startService()
    assert service.opened.called and service.site is None and service.url == ""


def test_ssl_endpoints_make_cookies_secure(box, tmp_path, no_ws):
    service = DesktopService(box.ctx, "ssl:3443:privateKey=/nonexistent.pem", web_dir=tmp_path / "no-web")
    service.startService()  # the key is missing: logged, and the desktop stays off
    assert box.ctx.tls is True and service.url == ""


def test_desktop_url():
    assert desktop_url("127.0.0.1", 3000, False) == "http://127.0.0.1:3000/"
    assert desktop_url("0.0.0.0", 3000, True, "10.0.0.5") == "https://10.0.0.5:3000/"
    assert desktop_url("::1", 3000, False) == "http://[::1]:3000/"


def test_stat_is_what_upload_answers_with():
    # the upload's answer comes from the file system's Stat: path and size
    st = Stat("/a", "file", 3, 0o644, "ann", 0.0, 0.0)
    assert (st.path, st.size) == ("/a", 3)
