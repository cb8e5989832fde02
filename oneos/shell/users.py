"""Who may log in to the shell: password hashes and SSH public keys.

Passwords live in ``$ONEOS_HOME/users.json`` as salted scrypt hashes (the
standard library's ``hashlib.scrypt``, so no C extension is needed and a
stolen file does not give the passwords away).  Public keys live in
``$ONEOS_HOME/authorized_keys``: ``NAME KEYTYPE BASE64 [comment]`` lines give
a key to the OneOS user NAME; plain OpenSSH lines (``KEYTYPE BASE64
[comment]``) give it to the machine owner (the local login name), the way
``~/.ssh/authorized_keys`` gives access to one account.

Both files are re-read on every login, so ``oneos user add`` and edits of
``authorized_keys`` take effect without restarting the runtime.

The checkers below answer Twisted's cred ``ICredentialsChecker``; every
refusal is the same :class:`UnauthorizedLogin` ("login refused"), never
"no such user" versus "wrong password", and password failures are delayed
by :class:`FailureDelay` so guessing is slow.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from oneos.errors import OneOSError

log = Logger()

USERS_FILE = "users.json"
KEYS_FILE = "authorized_keys"
NAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
#: scrypt cost: n=2**14, r=8, p=1 (~16 MiB, ~50 ms): slow to guess, quick to log in.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_PASSWORD = 1024


class UserError(OneOSError):
    """A user-management request cannot be done (bad name, unknown user ...)."""


def validate_user_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise UserError(f"{name!r} is not a valid user name (lower-case letters, digits, '_', '.', '-'; at most 32)")
    return name


def hash_password(password: str, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    """``scrypt$N$R$P$SALT$HASH`` (base64), the format kept in users.json."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of *password* against a stored hash; False for anything malformed."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or len(password) > MAX_PASSWORD:
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=64 * 1024 * 1024, dklen=32)
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, TypeError, MemoryError):
        return False


class UserDB:
    """``users.json`` under a OneOS home: ``{"v": 1, "users": {NAME: {"password": HASH}}}``."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / USERS_FILE

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warn("cannot read {path}: {error}; nobody can log in with a password", path=str(self.path), error=e)
            return {}
        users = raw.get("users") if isinstance(raw, dict) else None
        return {k: v for k, v in users.items() if isinstance(v, dict)} if isinstance(users, dict) else {}

    def save(self, users: dict[str, dict[str, Any]]) -> None:
        """Atomic replace, readable by the owner only (hashes are still secrets)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"v": 1, "users": users}, f, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    def names(self) -> list[str]:
        return sorted(self.load())

    def add(self, name: str, password: str) -> None:
        validate_user_name(name)
        users = self.load()
        if name in users:
            raise UserError(f"user {name!r} already exists (use 'oneos passwd {name}' to change the password)")
        users[name] = {"password": hash_password(password)}
        self.save(users)

    def set_password(self, name: str, password: str) -> None:
        users = self.load()
        if name not in users:
            raise UserError(f"no user {name!r} (add one with 'oneos user add {name}')")
        users[name]["password"] = hash_password(password)
        self.save(users)

    def remove(self, name: str) -> None:
        users = self.load()
        if users.pop(name, None) is None:
            raise UserError(f"no user {name!r}")
        self.save(users)

    def check(self, name: str, password: str) -> bool:
        entry = self.load().get(name)
        if entry is None:
            # Hash anyway so timing does not tell whether the user exists.
            verify_password(password, _DUMMY_HASH)
            return False
        return verify_password(password, str(entry.get("password", "")))


_DUMMY_HASH = hash_password("not a password", salt=b"\0" * 16)


def machine_owner() -> str:
    """The user a plain OpenSSH authorized_keys line logs in as."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers)
        return "root"


def read_authorized_keys(home: Path) -> list[tuple[str, bytes]]:
    """(user, key blob) pairs from ``authorized_keys``; bad lines are skipped with a log line."""
    path = Path(home) / KEYS_FILE
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warn("cannot read {path}: {error}", path=str(path), error=e)
        return []
    out: list[tuple[str, bytes]] = []
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        user = machine_owner()
        if len(words) >= 3 and not _is_key_type(words[0]) and _is_key_type(words[1]):
            user, words = words[0], words[1:]
        try:
            blob = keys.Key.fromString(" ".join(words[:2]).encode()).blob()
        except Exception:
            log.warn("{path}:{n}: not a public key line; skipped", path=str(path), n=number)
            continue
        out.append((user, blob))
    return out


def _is_key_type(word: str) -> bool:
    return word.startswith(("ssh-", "ecdsa-", "sk-"))


class FailureDelay:
    """Slows password guessing: each consecutive failure for a user waits longer.

    The delay doubles from *base* to *cap* seconds per failure and resets on
    success; it is kept per user name (the peer address is not known to cred
    checkers), and callers get the same refusal either way.
    """

    def __init__(self, reactor: Any, base: float = 0.5, cap: float = 8.0) -> None:
        self.reactor = reactor
        self.base = base
        self.cap = cap
        self.failures: dict[str, int] = {}

    def refuse(self, user: str) -> defer.Deferred:
        n = self.failures.get(user, 0)
        if len(self.failures) > 10000:  # bounded memory under a spray of names
            self.failures.clear()
        self.failures[user] = n + 1
        delay = min(self.cap, self.base * (2**n))
        d: defer.Deferred = defer.Deferred()
        self.reactor.callLater(delay, d.errback, error.UnauthorizedLogin("login refused"))
        return d

    def succeeded(self, user: str) -> None:
        self.failures.pop(user, None)


@implementer(ICredentialsChecker)
class PasswordChecker:
    """Passwords from users.json, refused slowly and without saying why."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, home: Path, delay: FailureDelay) -> None:
        self.db = UserDB(home)
        self.delay = delay

    def requestAvatarId(self, creds: Any) -> defer.Deferred:
        try:
            name = creds.username.decode("utf-8")
            password = creds.password.decode("utf-8")
        except (UnicodeDecodeError, AttributeError):
            return self.delay.refuse("?")
        if len(name) > 64 or not self.db.check(name, password):
            log.info("password login refused for {user!r}", user=name[:64])
            return self.delay.refuse(name[:64])
        self.delay.succeeded(name)
        return defer.succeed(name.encode())


@implementer(ICredentialsChecker)
class PublicKeyChecker:
    """SSH keys from authorized_keys; a key is only good for the user it is mapped to."""

    credentialInterfaces = (credentials.ISSHPrivateKey,)

    def __init__(self, home: Path, delay: FailureDelay) -> None:
        self.home = Path(home)
        self.delay = delay

    def requestAvatarId(self, creds: Any) -> defer.Deferred:
        try:
            name = creds.username.decode("utf-8")
        except UnicodeDecodeError:
            return defer.fail(error.UnauthorizedLogin("login refused"))
        if (name, creds.blob) not in set(read_authorized_keys(self.home)):
            # The client asking "would this key do?" is normal: no delay.
            return defer.fail(error.UnauthorizedLogin("login refused"))
        if not creds.signature:
            return defer.fail(ValidPublicKey())  # conch: ask for the signature
        try:
            ok = keys.Key.fromString(creds.blob).verify(creds.signature, creds.sigData)
        except Exception:
            ok = False
        if not ok:
            return self.delay.refuse(name)
        self.delay.succeeded(name)
        return defer.succeed(name.encode())


@implementer(ICredentialsChecker)
class AnonymousChecker:
    """Lets anyone in as *user*: only when the configuration asks for it."""

    credentialInterfaces = (credentials.IAnonymous,)

    def __init__(self, user: str = "guest") -> None:
        self.user = user

    def requestAvatarId(self, creds: Any) -> defer.Deferred:
        return defer.succeed(self.user.encode())
