"""The desktop's login sessions and one-time login tokens: pure bookkeeping on an injected clock.

A browser that logged in holds only a random session id in an HttpOnly
cookie; everything else (whose it is, its CSRF token, when it expires)
stays here, on the runtime that served the login, so logout revokes it at
once and a stolen cookie dies with its idle or absolute expiry.  The
session store does no I/O: the clock is a ``seconds()`` callable (the
reactor's, or a ``task.Clock`` in tests) and the random source can be
replaced.

One-time tokens are how ``oneos desktop`` hands a browser a login without
a password (as Jupyter and Nomad do): the command, run by whoever owns this
runtime's ``$ONEOS_HOME``, writes a token file there
(:func:`write_token_file`); the runtime serving that home takes it once,
within its lifetime, for the user it names (:func:`take_token_file`, which
deletes the file before it answers).  These two and
:func:`sweep_token_files` are the only functions here that touch files; the
directory is always an argument, and the expiry is checked against the wall
clock the caller passes (the command and the runtime are two processes).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: Name of the cookie that carries the session id.
COOKIE = "oneos_session"
#: Seconds a session lives without a request or a message from its browser.
IDLE = 30 * 60.0
#: Seconds a session lives at most, however busy.
ABSOLUTE = 12 * 3600.0
#: Seconds a one-time login token from ``oneos desktop`` stays valid.
TOKEN_LIFETIME = 120.0
#: Sessions one runtime keeps at most; the oldest is dropped past this (a login flood cannot exhaust memory).
MAX_SESSIONS = 10_000


@dataclass
class WebSession:
    """One browser login: whose it is and when it ends."""

    id: str
    user: str
    #: sent by the page with every state-changing request (header ``X-OneOS-CSRF``)
    csrf: str
    created: float
    last_seen: float
    #: revoked by logout (or dropped); a revoked session never comes back
    revoked: bool = False
    #: called once when the session ends (logout, expiry): open websockets close
    on_end: list[Callable[[], object]] = field(default_factory=list)

    def expires_at(self, idle: float = IDLE, absolute: float = ABSOLUTE) -> float:
        return min(self.last_seen + idle, self.created + absolute)


class SessionStore:
    """Live sessions by id; expiry is checked on every lookup (no timer needed)."""

    def __init__(
        self,
        seconds: Callable[[], float],
        *,
        idle: float = IDLE,
        absolute: float = ABSOLUTE,
        token: Callable[[int], str] = secrets.token_urlsafe,
        limit: int = MAX_SESSIONS,
    ) -> None:
        self.seconds = seconds
        self.idle = idle
        self.absolute = absolute
        self._token = token
        self.limit = limit
        self._sessions: dict[str, WebSession] = {}

    def create(self, user: str) -> WebSession:
        """A new session for *user* (after the password or a one-time token was accepted)."""
        now = self.seconds()
        self._sweep(now)
        while len(self._sessions) >= self.limit:
            oldest = min(self._sessions.values(), key=lambda s: s.created)
            self._end(oldest)
        session = WebSession(id=self._token(32), user=user, csrf=self._token(32), created=now, last_seen=now)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None, touch: bool = True) -> WebSession | None:
        """The live session with this id, or None (unknown, revoked, idle too long, too old).

        *touch*: the browser is active (a request, a websocket message): the
        idle clock starts again.
        """
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self.seconds()
        if session.revoked or now >= session.expires_at(self.idle, self.absolute):
            self._end(session)
            return None
        if touch:
            session.last_seen = now
        return session

    def check_csrf(self, session: WebSession, presented: str | None) -> bool:
        """Whether *presented* (the request's ``X-OneOS-CSRF``) is this session's token (constant time)."""
        return bool(presented) and hmac.compare_digest(session.csrf.encode(), (presented or "").encode())

    def revoke(self, session_id: str | None) -> bool:
        """Logout: the session ends now (its websockets are closed by its ``on_end`` callbacks)."""
        session = self._sessions.get(session_id or "")
        if session is None:
            return False
        self._end(session)
        return True

    def revoke_user(self, user: str) -> int:
        """End every session of *user* (a removed user, a changed password); how many ended."""
        ended = [s for s in self._sessions.values() if s.user == user]
        for session in ended:
            self._end(session)
        return len(ended)

    def revoke_all(self) -> int:
        """End every session (the desktop stops: its browsers are logged out); how many ended."""
        ended = list(self._sessions.values())
        for session in ended:
            self._end(session)
        return len(ended)

    def __len__(self) -> int:
        return len(self._sessions)

    def _sweep(self, now: float) -> None:
        for session in [s for s in self._sessions.values() if now >= s.expires_at(self.idle, self.absolute)]:
            self._end(session)

    def _end(self, session: WebSession) -> None:
        self._sessions.pop(session.id, None)
        if session.revoked:
            return
        session.revoked = True
        callbacks, session.on_end = session.on_end, []
        for callback in callbacks:
            callback()


# -- one-time login tokens (oneos desktop) ---------------------------------------------------------

#: Directory under ``$ONEOS_HOME`` where ``oneos desktop`` leaves one-time tokens for its runtime.
TOKEN_DIR = "desktop-tokens"


class BadToken(ValueError):
    """A token file that is not one ``oneos desktop`` wrote."""


@dataclass(frozen=True)
class LoginToken:
    """What ``oneos desktop`` wrote: the token, for whom, until when (wall-clock seconds)."""

    token: str
    user: str
    expires: float

    def encode(self) -> str:
        return json.dumps({"token": self.token, "user": self.user, "expires": self.expires}) + "\n"


def new_login_token(user: str, now: float, lifetime: float = TOKEN_LIFETIME) -> LoginToken:
    return LoginToken(secrets.token_urlsafe(32), user, now + lifetime)


def read_token_file(text: str) -> LoginToken:
    """Parse a token file; :class:`BadToken` if it is not one."""
    try:
        body = json.loads(text)
        token = LoginToken(str(body["token"]), str(body["user"]), float(body["expires"]))
    except (ValueError, KeyError, TypeError) as e:
        raise BadToken(f"not a desktop login token ({e})") from None
    if len(token.token) < 32 or not token.user:
        raise BadToken("not a desktop login token (too short, or no user)")
    return token


def token_file_name(token: str) -> str:
    """The file a token lives in: named by a digest, so the name alone never logs anyone in."""
    return hashlib.sha256(token.encode()).hexdigest()[:32] + ".json"


#: Longest token :func:`take_token_file` considers (``secrets.token_urlsafe(32)`` gives 43 characters).
MAX_TOKEN_CHARS = 256


def token_dir(home: Path) -> Path:
    return Path(home) / TOKEN_DIR


def write_token_file(home: Path, token: LoginToken) -> Path:
    """Leave *token* for the runtime of *home* (``oneos desktop``): a new file, mode 0600, in a 0700 directory."""
    directory = token_dir(home)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / token_file_name(token.token)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token.encode())
    return path


def take_token_file(home: Path, presented: str, now: float) -> LoginToken:
    """The login *presented* stands for, taken once: its file is deleted before this returns.

    :class:`BadToken` (saying why, for the log; the browser is told nothing
    more than "not valid") when there is no such file (unknown, or already
    used), when it expired by the wall clock *now*, or when the file is not
    a private regular file of this process's user (someone else wrote it).
    """
    if not presented or len(presented) > MAX_TOKEN_CHARS or not presented.isascii():
        raise BadToken("no such token")
    path = token_dir(home) / token_file_name(presented)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP):
            raise BadToken("no such token (unknown, or already used)") from None
        raise BadToken(f"cannot read the token file: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        # delete first: whatever follows, this token never logs anyone in again
        path.unlink(missing_ok=True)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise BadToken("the token file is not a private file of this runtime's user")
        data = os.read(fd, 64 * 1024)
    finally:
        os.close(fd)
    token = read_token_file(data.decode("utf-8", "replace"))
    if not hmac.compare_digest(token.token.encode(), presented.encode()):
        raise BadToken("no such token")
    if now >= token.expires:
        raise BadToken("the token expired")
    return token


def sweep_token_files(home: Path, now: float) -> int:
    """Delete the expired (or unreadable) token files left in *home*; how many went."""
    removed = 0
    try:
        entries = list(token_dir(home).iterdir())
    except OSError:
        return 0
    for path in entries:
        if not path.name.endswith(".json"):
            continue
        try:
            token = read_token_file(path.read_text()[: 64 * 1024])
            if now < token.expires:
                continue
        except (OSError, UnicodeDecodeError, BadToken):
            pass
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed
