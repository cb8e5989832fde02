"""The desktop's HTTP side: the page's static files, login and logout, one-time logins, upload and download.

docs/desktop.md fixes the routes, their answers and the security rules;
this module builds them as one twisted.web :class:`DesktopSite` over a
:class:`~oneos.desktop.context.DesktopContext` (the service in
:mod:`oneos.desktop.service` listens with it; tests drive it over a
``StringTransport``).  The rules that hold for every request live in
:class:`DesktopRequest`:

* every answer carries the security headers (:data:`SECURITY_HEADERS`), and
  the ones under ``/api/``, ``/login`` and ``/ws`` ``Cache-Control: no-store``;
* while the desktop listens on loopback, a request whose ``Host`` is not a
  loopback name is refused (a web page on another site cannot reach this
  desktop through DNS rebinding);
* a request body is bounded before it is stored: 64 KiB for the JSON
  routes, ``desktop.max_upload`` for an upload, whose login, ``Origin`` and
  CSRF token are checked as soon as its headers arrive so that nobody else
  can make the runtime store a body at all.  twisted.web keeps a body in a
  temporary file (in memory under 100 kB) until it is complete; the upload
  then streams that file into the tree, so memory stays bounded.

The API's answers are JSON; an error is ``{"error": MESSAGE, "kind": KIND}``
with the status :func:`http_error` gives for OneOS's typed errors.
Passwords are checked by the shell's password checker (the same users, the
same slow generic refusal) and each client address is slowed by the shell's
:class:`~oneos.shell.throttle.LoginThrottle` as SSH logins are.

The websocket side (:mod:`oneos.desktop.ws`) can use :func:`session_of`,
:func:`origin_allowed` and :func:`http_error` to apply the same rules.
"""

from __future__ import annotations

import html
import importlib
import json
import time
import warnings
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.cred import portal as cred_portal
from twisted.internet import defer, interfaces, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from zope.interface import Interface, implementer

from oneos.config import is_loopback
from oneos.desktop.context import DesktopContext
from oneos.desktop.sessions import COOKIE, BadToken, WebSession, sweep_token_files, take_token_file
from oneos.errors import KernelUnavailable, OneOSError, PubSubUnavailable, RPCTimeout, describe
from oneos.fs import errors as fs_errors
from oneos.fs import paths
from oneos.shell.service import HOME_PERM
from oneos.shell.users import UserError, validate_user_name
from oneos.transfer import TransferError

log = Logger()

CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
#: Headers on every answer (docs/desktop.md, "Security").
SECURITY_HEADERS = {
    b"Content-Security-Policy": CSP.encode(),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"X-Frame-Options": b"DENY",
}
#: Paths whose answers must never be cached (they carry sessions, tokens, the user's files).
NO_STORE = (b"/api/", b"/login", b"/ws")
#: The header a logged-in page sends its CSRF token in.
CSRF_HEADER = b"X-OneOS-CSRF"
#: Largest body of a request that is not an upload (a login's JSON).
MAX_SMALL_BODY = 64 * 1024
#: Bytes of an uploaded body read per piece when it is streamed into the tree.
UPLOAD_CHUNK = 256 * 1024
#: Seconds an HTTP connection may sit idle (no request, nothing to send) before it is closed.
IDLE_TIMEOUT = 60
UPLOAD_PATH = b"/api/upload"
JSON_TYPE = b"application/json; charset=utf-8"


class Refused(OneOSError):
    """A request the desktop answers with an error: the HTTP status, a kind and a message for the page."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


#: POSIX kinds of the file system and the HTTP status each answers with.
_FS_STATUS = {
    "ENOENT": 404,
    "EACCES": 403,
    "EPERM": 403,
    "EIO": 503,
    "ENOSPC": 507,
    "ESTALE": 409,
}


def http_error(error: BaseException) -> Refused:
    """The answer for *error*: OneOS's typed errors keep their kind (the file system's POSIX ones) and get a status.

    404 no such file, 403 permission, 400 a bad path or argument (EINVAL,
    EISDIR, ENOTDIR, EEXIST ...), 409 a file that changed under a read,
    503 when the file system or the kernel cannot be reached (kind EIO),
    507 a full store; anything else is a 500 with kind EIO.
    """
    if isinstance(error, Refused):
        return error
    if isinstance(error, fs_errors.FSError):
        return Refused(_FS_STATUS.get(error.code, 400), error.code, str(error))
    if isinstance(error, (RPCTimeout, KernelUnavailable, PubSubUnavailable)):
        return Refused(503, "EIO", describe(error))
    if isinstance(error, TransferError):
        return Refused(503, "EIO", describe(error))
    return Refused(500, "EIO", describe(error))


# -- the rules every request follows ----------------------------------------------------------------


def page_origin(request: Any) -> str:
    """The origin the page was served from, as a browser names it in ``Origin`` (scheme and Host)."""
    host = (request.getHeader(b"host") or b"").decode("latin-1").strip().lower()
    return ("https" if request.isSecure() else "http") + "://" + host


def origin_allowed(request: Any) -> bool:
    """Whether the request's ``Origin`` is the page's own (a browser sends it with every POST and websocket)."""
    origin = request.getHeader(b"origin")
    if not origin or not request.getHeader(b"host"):
        return False
    return bool(origin.decode("latin-1").strip().lower() == page_origin(request))


def session_id(request: Any) -> str | None:
    raw = request.received_cookies.get(COOKIE.encode())
    try:
        return raw.decode("ascii") if raw else None
    except UnicodeDecodeError:
        return None


def session_of(ctx: DesktopContext, request: Any, touch: bool = True) -> WebSession | None:
    """The live session the request's cookie names, or None; *touch*: the browser is active."""
    return ctx.sessions.get(session_id(request), touch=touch)


def check_origin(request: Any) -> None:
    if not origin_allowed(request):
        raise Refused(403, "EORIGIN", "refused: the request does not come from this desktop's page (Origin)")


def require_session(ctx: DesktopContext, request: Any, touch: bool = True) -> WebSession:
    session = session_of(ctx, request, touch)
    if session is None:
        raise Refused(401, "ENOSESSION", "not logged in (or the session ended)")
    return session


def check_csrf(ctx: DesktopContext, session: WebSession, request: Any) -> None:
    presented = request.getHeader(CSRF_HEADER)
    if not ctx.sessions.check_csrf(session, presented.decode("latin-1") if presented else None):
        raise Refused(403, "ECSRF", f"refused: missing or wrong {CSRF_HEADER.decode()} header")


def check_post(ctx: DesktopContext, request: Any, touch: bool = True) -> WebSession:
    """A state-changing request of a logged-in page: its Origin, its session, its CSRF token."""
    check_origin(request)
    session = require_session(ctx, request, touch)
    check_csrf(ctx, session, request)
    return session


def tree_path(raw: bytes | None, user: str) -> str:
    """The tree path a ``path`` query argument names, normalised (relative paths start at the user's home).

    Refused (400, EINVAL): missing, not UTF-8, control characters, ``..``
    above ``/`` and the other invalid paths :mod:`oneos.fs.paths` knows, ``/``.
    """
    if raw is None:
        raise Refused(400, "EINVAL", "missing the path argument")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "EINVAL", "the path is not valid UTF-8") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise Refused(400, "EINVAL", f"{fs_errors.show_path(text)}: control characters are not allowed in a path")
    try:
        path = paths.normalise(text, paths.join("/home", user))
    except fs_errors.FSError as e:
        raise Refused(400, e.code, str(e)) from None
    if path == paths.ROOT:
        raise Refused(400, "EINVAL", "/: not a file")
    return path


def attachment(name: str) -> bytes:
    """A ``Content-Disposition: attachment`` value for *name*: an ASCII fallback and the exact UTF-8 name."""
    fallback = "".join(c if c.isascii() and (c.isalnum() or c in "._- ") else "_" for c in name).strip() or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}".encode("ascii")


def _single(request: Any, name: bytes) -> bytes | None:
    values = request.args.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise Refused(400, "EINVAL", f"the {name.decode()} argument is given more than once")
    return bytes(values[0])


# -- request bodies, bounded as they arrive ---------------------------------------------------------


class _Discarded:
    """Where a refused body goes: nowhere (it is read so the answer can follow, and dropped)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def tell(self) -> int:
        return 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _BoundedBody:
    """A request's body, stored (twisted.web's temporary file) up to *limit* bytes; past it, dropped and refused."""

    def __init__(self, stored: BinaryIO, limit: int, on_over: Callable[[], None]) -> None:
        self.stored: BinaryIO | _Discarded = stored
        self.limit = limit
        self.size = 0
        self.on_over = on_over

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit and not isinstance(self.stored, _Discarded):
            self.stored.close()  # give the space back now, not when the body ends
            self.stored = _Discarded()
            self.on_over()
        self.stored.write(data)

    def tell(self) -> int:
        return self.stored.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.stored.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        return self.stored.read(size)

    def close(self) -> None:
        self.stored.close()


class DesktopRequest(server.Request):
    """A request to the desktop: the security headers, the Host rule, bodies bounded as they arrive."""

    site: DesktopSite
    #: the body: twisted.web's temporary file behind a bound, or nothing for a refused body
    content: Any
    #: set while the body arrives when the request is already refused (too large, not logged in ...)
    refusal: Refused | None = None

    def __init__(self, channel: Any, *args: Any, **kw: Any) -> None:
        super().__init__(channel, *args, parsePOSTFormSubmission=False, **kw)

    def gotLength(self, length: int | None) -> None:
        site = self.desktop_site
        # the request line, which the HTTP/1.1 channel keeps until the body is complete, says what the body is for
        method, target = getattr(self.channel, "_command", None), getattr(self.channel, "_path", None)
        if not isinstance(method, bytes) or not isinstance(target, bytes):
            # not known before the body (another channel than HTTP/1.1): bound it by the larger limit and
            # leave every other check to the route
            self.content = _BoundedBody(http._getContentFile(length), site.ctx.max_upload, self._over_upload)
            return
        upload = method == b"POST" and target.split(b"?", 1)[0] == UPLOAD_PATH
        limit = site.ctx.max_upload if upload else MAX_SMALL_BODY
        if upload:
            try:
                check_post(site.ctx, self, touch=False)
            except Refused as e:
                self._refuse_body(e)
                return
        if length is not None and length > limit:
            self._refuse_body(_too_large(limit, upload))
            return
        self.content = _BoundedBody(http._getContentFile(length), limit, lambda: self._over(limit, upload))

    def _refuse_body(self, refusal: Refused) -> None:
        self.refusal = refusal
        self.content = _Discarded()

    def _over(self, limit: int, upload: bool) -> None:
        self.refusal = _too_large(limit, upload)

    def _over_upload(self) -> None:
        self._over(self.desktop_site.ctx.max_upload, True)

    @property
    def desktop_site(self) -> DesktopSite:
        """The site, known from the channel before :meth:`process` sets ``site``."""
        channel: Any = self.channel
        return channel.site

    def process(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        path = self.path if isinstance(self.path, bytes) else b""
        if path.startswith(NO_STORE) or path == b"/api":
            self.setHeader(b"Cache-Control", b"no-store")
        site = self.desktop_site
        if site.loopback_only and not is_loopback_name(self.getRequestHostname().decode("latin-1")):
            self.site = site
            self.setResponseCode(403)
            self.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            self.write(b"This desktop answers only to localhost, 127.0.0.1 or [::1] (it listens on loopback).\n")
            self.finish()
            return
        super().process()


def _too_large(limit: int, upload: bool) -> Refused:
    what = "upload" if upload else "request body"
    return Refused(413, "EFBIG", f"the {what} is larger than the desktop accepts ({_size(limit)})")


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 and n % (1024 * 1024) == 0 else f"{n} bytes"


def is_loopback_name(host: str) -> bool:
    return host.lower() == "localhost" or is_loopback(host.strip("[]"))


# -- answering ----------------------------------------------------------------------------------------


def _alive(request: Any) -> bool:
    return not request.finished and not getattr(request, "_disconnected", False)


def send_json(request: Any, status: int, body: Any) -> None:
    """Answer *request* with *body* as JSON (nothing if the browser went away)."""
    if not _alive(request):
        return
    data = json.dumps(body).encode()
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Content-Length", str(len(data)).encode())
    request.write(data)
    request.finish()


def send_error(request: Any, error: BaseException) -> None:
    refused = http_error(error)
    send_json(request, refused.status, {"error": str(refused), "kind": refused.kind})


def _answer(request: Any, work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run *work* (an async route) and answer with what it returns, ``(status, body)``, or its error as JSON."""

    def done(result: Any) -> None:
        if result is not None:
            send_json(request, *result)

    def failed(f: Failure) -> None:
        if not isinstance(f.value, OneOSError):
            log.failure("desktop: {method} {path} failed", f, method=request.method, path=request.path)
        send_error(request, f.value)

    defer.ensureDeferred(work()).addCallbacks(done, failed)
    return server.NOT_DONE_YET


def _set_session_cookie(ctx: DesktopContext, request: Any, session: WebSession | None) -> None:
    secure = bool(ctx.tls or request.isSecure())
    if session is None:
        request.addCookie(COOKIE, "", path="/", max_age="0", httpOnly=True, sameSite="strict", secure=secure or None)
    else:
        request.addCookie(COOKIE, session.id, path="/", httpOnly=True, sameSite="strict", secure=secure or None)


def session_body(ctx: DesktopContext, session: WebSession) -> dict[str, Any]:
    """What ``GET /api/session`` and a login answer: who, the CSRF token, this runtime, the upload limit."""
    return {"user": session.user, "csrf": session.csrf, "runtime": ctx.runtime_id, "max_upload": ctx.max_upload}


async def make_home(ctx: DesktopContext, user: str) -> None:
    """The user's home (/home/USER, the user's, mode 0700) on login, as the shell makes it; a failure is only logged."""
    home = paths.join("/home", user)
    try:
        await ctx.grid.fs.mkdir(home, parents=True, exist_ok=True, owner=user, perm=HOME_PERM)
    except Exception as e:
        log.warn("desktop: cannot make {home}: {error}", home=home, error=describe(e))


class IDesktopUser(Interface):
    """What a desktop login asks the portal for: the user's name (the session is made here)."""


@implementer(cred_portal.IRealm)
class DesktopRealm:
    def requestAvatar(self, avatar_id: Any, mind: object, *interfaces: Any) -> tuple[Any, str, Callable[[], None]]:
        if IDesktopUser not in interfaces:
            raise NotImplementedError("the desktop's realm gives desktop users only")
        name = avatar_id.decode("utf-8") if isinstance(avatar_id, bytes) else str(avatar_id)
        return IDesktopUser, name, lambda: None


class _Route(resource.Resource):
    """One API route; methods it lacks answer 405 as JSON."""

    isLeaf = True

    def __init__(self, ctx: DesktopContext) -> None:
        super().__init__()
        self.ctx = ctx

    def render(self, request: Any) -> Any:
        handler = getattr(self, "render_" + request.method.decode("ascii", "replace"), None)
        if handler is None:
            send_json(
                request, 405, {"error": f"{request.method.decode('latin-1')} is not allowed here", "kind": "EINVAL"}
            )
            return server.NOT_DONE_YET
        return handler(request)


class SessionRoute(_Route):
    """``GET /api/session``: who is logged in here."""

    def render_GET(self, request: Any) -> Any:
        session = session_of(self.ctx, request)
        if session is None:
            send_error(request, Refused(401, "ENOSESSION", "not logged in"))
        else:
            send_json(request, 200, session_body(self.ctx, session))
        return server.NOT_DONE_YET


class LoginRoute(_Route):
    """``POST /api/login`` ``{"user", "password"}``: through the shell's password checker, slowed per address."""

    def __init__(self, ctx: DesktopContext) -> None:
        super().__init__(ctx)
        self._portal: cred_portal.Portal | None = None

    @property
    def portal(self) -> cred_portal.Portal:
        """The shell's password checker (the users in the tree, its delays) behind a realm that gives names."""
        if self._portal is None:
            checker = self.ctx.shell.portal.checkers[credentials.IUsernamePassword]
            self._portal = cred_portal.Portal(DesktopRealm(), [checker])
        return self._portal

    def render_POST(self, request: Any) -> Any:
        return _answer(request, lambda: self._login(request))

    async def _login(self, request: Any) -> tuple[int, Any]:
        if request.refusal is not None:
            raise request.refusal
        check_origin(request)
        user, password = _credentials(request)
        source = request.getClientAddress()
        source = str(getattr(source, "host", source))
        throttle = self.ctx.shell.throttle
        if not throttle.opened(source):
            raise Refused(429, "EAGAIN", "too many logins in progress from this address; try again in a moment")
        try:
            try:
                _, name, _ = await self.portal.login(
                    credentials.UsernamePassword(user.encode(), password.encode()), None, IDesktopUser
                )
            except cred_error.UnauthorizedLogin:
                await task.deferLater(self.ctx.reactor, throttle.failed(source), lambda: None)
                log.info("desktop: login refused for {user!r} from {source}", user=user[:64], source=source)
                raise Refused(401, "ELOGIN", "login refused") from None
            throttle.succeeded(source)
        finally:
            throttle.settled(source)
        await make_home(self.ctx, str(name))
        self.ctx.sessions.revoke(session_id(request))  # a new login never keeps an id the browser had before
        session = self.ctx.sessions.create(str(name))
        _set_session_cookie(self.ctx, request, session)
        log.info("desktop: {user} logged in from {source}", user=session.user, source=source)
        return 200, session_body(self.ctx, session)


def _credentials(request: Any) -> tuple[str, str]:
    try:
        body = json.loads(request.content.read(MAX_SMALL_BODY + 1) or b"null")
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "EINVAL", "the body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("user"), str) or not isinstance(body.get("password"), str):
        raise Refused(400, "EINVAL", 'expected a JSON object {"user": NAME, "password": PASSWORD}')
    try:
        body["user"].encode(), body["password"].encode()
    except UnicodeEncodeError:  # JSON may carry lone surrogates
        raise Refused(400, "EINVAL", "the user or password is not valid Unicode") from None
    return body["user"], body["password"]


class LogoutRoute(_Route):
    """``POST /api/logout``: the session ends now (its websockets close), the cookie is cleared."""

    def render_POST(self, request: Any) -> Any:
        try:
            if request.refusal is not None:
                raise request.refusal
            check_origin(request)
            session = session_of(self.ctx, request, touch=False)
            if session is not None:
                check_csrf(self.ctx, session, request)
                self.ctx.sessions.revoke(session.id)
                log.info("desktop: {user} logged out", user=session.user)
        except Refused as e:
            send_error(request, e)
            return server.NOT_DONE_YET
        _set_session_cookie(self.ctx, request, None)
        send_json(request, 200, {})
        return server.NOT_DONE_YET


class UploadRoute(_Route):
    """``POST /api/upload?path=P``: the body becomes the file P, written as the user (visible once complete)."""

    def render_POST(self, request: Any) -> Any:
        return _answer(request, lambda: self._upload(request))

    async def _upload(self, request: Any) -> tuple[int, Any]:
        try:
            if request.refusal is not None:
                raise request.refusal
            session = check_post(self.ctx, request)
            path = tree_path(_single(request, b"path"), session.user)
            fs = self.ctx.grid.for_user(session.user).fs
            request.content.seek(0)
            st = await fs.write_from(path, _BodySource(request.content))
        finally:
            request.content.close()  # the temporary copy goes at once, not with the request object
        log.info("desktop: {user} uploaded {path} ({size} bytes)", user=session.user, path=path, size=st.size)
        return 200, {"path": st.path, "size": st.size}


class _BodySource:
    """A stored request body as a transfer Source, a piece at a time."""

    def __init__(self, body: Any, chunk: int = UPLOAD_CHUNK) -> None:
        self.body = body
        self.chunk = chunk

    def next(self) -> defer.Deferred:
        return defer.succeed(self.body.read(self.chunk))


class DownloadRoute(_Route):
    """``GET /api/download?path=P``: the file's bytes, streamed as the network gives them and the browser takes them."""

    def render_GET(self, request: Any) -> Any:
        return _answer(request, lambda: self._download(request))

    async def _download(self, request: Any) -> None:
        session = require_session(self.ctx, request)
        path = tree_path(_single(request, b"path"), session.user)
        fs = self.ctx.grid.for_user(session.user).fs
        sink = _ResponseSink(request)

        def opened(where: dict[str, Any]) -> None:
            request.setHeader(b"Content-Type", b"application/octet-stream")
            request.setHeader(b"Content-Disposition", attachment(paths.basename(path)))
            if isinstance(where.get("size"), int):
                request.setHeader(b"Content-Length", str(where["size"]).encode())

        try:
            await fs.read_into(path, sink, on_open=opened)
        except Exception as e:
            sink.abort()
            if not _alive(request):
                return None
            if request.startedWriting:
                # part of the file is out: end the connection so the browser sees an incomplete download
                log.warn("desktop: download of {path} broke: {error}", path=path, error=describe(e))
                _abort(request)
                return None
            for name in (b"Content-Disposition", b"Content-Length", b"Content-Type"):
                request.responseHeaders.removeHeader(name)
            raise
        if _alive(request):
            request.finish()
        return None


def _abort(request: Any) -> None:
    transport = getattr(request.channel, "transport", None)
    if transport is not None:
        getattr(transport, "abortConnection", transport.loseConnection)()


@implementer(interfaces.IPushProducer)
class _ResponseSink:
    """A transfer Sink writing into an HTTP response; a write waits while the browser's connection is full."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.size = 0
        self.paused = False
        self.gone = False
        self._waiting: defer.Deferred | None = None
        self._registered = False
        request.notifyFinish().addErrback(lambda _: self.stopProducing())

    def write(self, data: bytes) -> defer.Deferred:
        if self.gone:
            return defer.fail(TransferError("the browser went away", "EPIPE"))
        if not self._registered:
            self.request.registerProducer(self, True)
            self._registered = True
        self.size += len(data)
        self.request.write(data)
        if not self.paused:
            return defer.succeed(None)
        self._waiting = defer.Deferred()
        return self._waiting

    def finish(self) -> defer.Deferred:
        self._unregister()
        return defer.succeed({"size": self.size})

    def abort(self) -> None:
        self._unregister()

    def _unregister(self) -> None:
        if self._registered and _alive(self.request):
            self.request.unregisterProducer()
        self._registered = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        self.gone = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(TransferError("the browser went away", "EPIPE"))


class TokenLoginRoute(resource.Resource):
    """``GET /login?token=T``: the one-time login ``oneos desktop`` printed; 303 to ``/`` with a session, or a 403 page."""

    isLeaf = True

    def __init__(self, ctx: DesktopContext, wall: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.ctx = ctx
        #: the wall clock: the token's expiry was written by another process
        self.wall = wall

    def render_GET(self, request: Any) -> Any:
        now = self.wall()
        raw = (request.args.get(b"token") or [b""])[0]
        try:
            token = take_token_file(self.ctx.home, raw.decode("ascii", "replace"), now)
            validate_user_name(token.user)
        except (BadToken, UserError) as e:
            log.info("desktop: one-time login refused: {why}", why=str(e))
            token = None
        sweep_token_files(self.ctx.home, now)
        if token is None:
            request.setResponseCode(403)
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return _page(
                "Login link not valid",
                "This login link was already used, has expired (links last 2 minutes) or was never made here. "
                "Run <code>oneos desktop</code> again, or log in with your password.",
                link=True,
            )
        user = token.user

        async def login() -> None:
            await make_home(self.ctx, user)
            if not _alive(request):
                return
            self.ctx.sessions.revoke(session_id(request))
            session = self.ctx.sessions.create(user)
            _set_session_cookie(self.ctx, request, session)
            log.info("desktop: {user} logged in with a one-time link", user=user)
            request.setResponseCode(303)
            request.setHeader(b"Location", b"/")
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            request.write(_page("Logged in", 'Go on to <a href="/">the desktop</a>.'))
            request.finish()

        return _answer(request, login)


def _page(title: str, body_html: str, link: bool = False) -> bytes:
    more = '<p><a href="/">The desktop</a></p>' if link else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} - OneOS</title>'
        f"</head><body><h1>{html.escape(title)}</h1><p>{body_html}</p>{more}</body></html>\n"
    ).encode()


class _Unavailable(resource.Resource):
    """Answers every request with *status* and a short message (the websocket or the page not installed)."""

    isLeaf = True

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__()
        self.status = status
        self.title = title
        self.message = message

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return _page(self.title, html.escape(self.message))


class _NotFound(resource.Resource):
    isLeaf = True

    def render(self, request: Any) -> Any:
        send_json(request, 404, {"error": f"no such API: {request.path.decode('latin-1')}", "kind": "ENOENT"})
        return server.NOT_DONE_YET


class Api(resource.Resource):
    """``/api/``: the routes; anything else under it is a JSON 404."""

    def __init__(self, ctx: DesktopContext) -> None:
        super().__init__()
        for name, route in (
            (b"session", SessionRoute(ctx)),
            (b"login", LoginRoute(ctx)),
            (b"logout", LogoutRoute(ctx)),
            (b"upload", UploadRoute(ctx)),
            (b"download", DownloadRoute(ctx)),
        ):
            self.putChild(name, route)

    def getChild(self, name: bytes, request: Any) -> resource.Resource:
        return _NotFound()

    def render(self, request: Any) -> Any:
        return _NotFound().render(request)


class Root(resource.Resource):
    """``/``: the API, the one-time login, the websocket, and the page's files for everything else."""

    def __init__(self, ctx: DesktopContext, static_root: resource.Resource, ws: resource.Resource) -> None:
        super().__init__()
        self.static = static_root
        self.routes: dict[bytes, resource.Resource] = {b"login": TokenLoginRoute(ctx), b"ws": ws}
        self.routes[b"api"] = Api(ctx)

    def getChildWithDefault(self, name: bytes, request: Any) -> resource.IResource:
        route = self.routes.get(name)
        if route is not None:
            return route
        if self.static.isLeaf:  # the page is missing: one answer for every path
            return self.static
        return self.static.getChildWithDefault(name, request)

    def render(self, request: Any) -> Any:
        return self.static.render(request)


def _static_files(web_dir: Path) -> resource.Resource:
    # twisted.web.static is imported here, quietly: loading it warns about its own deprecated error pages
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from twisted.web import static

    class StaticFiles(static.File):
        contentTypes = {
            **static.File.contentTypes,
            ".js": "text/javascript",
            ".mjs": "text/javascript",
            ".css": "text/css",
            ".json": "application/json",
            ".svg": "image/svg+xml",
            ".wasm": "application/wasm",
            ".map": "application/json",
            ".woff2": "font/woff2",
        }
        indexNames = ["index.html"]

        def directoryListing(self) -> resource.Resource:
            return self.childNotFound

    return StaticFiles(str(web_dir))


def default_web_dir() -> Path:
    """The repository's ``web/`` directory, beside the ``oneos`` package."""
    import oneos

    return Path(oneos.__file__).resolve().parent.parent / "web"


def static_resource(web_dir: Path) -> resource.Resource:
    """The page's files under *web_dir* (a directory without index.html is not listed), or a page saying they are missing."""
    if (web_dir / "index.html").is_file():
        return _static_files(web_dir)
    log.warn("desktop: no page to serve ({path} has no index.html)", path=str(web_dir))
    return _Unavailable(
        503,
        "The desktop's page is not installed",
        f"This runtime serves the desktop, but its page is missing: {web_dir}/index.html was not found.",
    )


def websocket_resource(ctx: DesktopContext) -> resource.Resource:
    """``/ws`` from :mod:`oneos.desktop.ws`, or a 503 while that module is missing or cannot be built."""
    try:
        module = importlib.import_module("oneos.desktop.ws")
    except ImportError as e:
        log.warn("desktop: no websocket (/ws answers 503): {error}", error=describe(e))
        return _Unavailable(503, "No websocket", "This runtime's desktop has no websocket yet.")
    try:
        return module.websocket_resource(ctx)
    except Exception:
        log.failure("desktop: cannot build the websocket (/ws answers 503)")
        return _Unavailable(503, "No websocket", "This runtime's desktop cannot serve its websocket.")


class DesktopSite(server.Site):
    """The desktop's one site: :class:`DesktopRequest` for every request, no access log, connections kept for stop."""

    requestFactory = DesktopRequest
    noisy = False

    def __init__(self, ctx: DesktopContext, root: resource.Resource, reactor: Any = None) -> None:
        super().__init__(root, reactor=reactor or ctx.reactor, timeout=IDLE_TIMEOUT)
        self.ctx = ctx
        #: set by the service once it listens on loopback: only loopback Host names are answered
        self.loopback_only = False
        self.protocols: weakref.WeakSet[Any] = weakref.WeakSet()

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        self.protocols.add(protocol)
        return protocol

    def startFactory(self) -> None:
        pass  # no access log (it would hold the one-time tokens): the routes log what matters

    def stopFactory(self) -> None:
        pass

    def log(self, request: Any) -> None:
        pass

    def close_connections(self) -> None:
        for protocol in list(self.protocols):
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.loseConnection()


def build_site(ctx: DesktopContext, web_dir: Path | None = None, ws: resource.Resource | None = None) -> DesktopSite:
    """The desktop's site for *ctx*: the page from *web_dir* (default: the repository's ``web/``), the API, /ws."""
    static_root = static_resource(default_web_dir() if web_dir is None else web_dir)
    return DesktopSite(ctx, Root(ctx, static_root, websocket_resource(ctx) if ws is None else ws))
