"""Who may log in to the shell: password hashes and SSH public keys.

Both live in the OneOS file tree, in the kernel's area ``/etc/oneos``, so
every runtime's front door serves the same users and a leader change loses
nobody.  Passwords are in ``/etc/oneos/users.json`` as salted scrypt hashes
(the standard library's ``hashlib.scrypt``, so no C extension is needed and
a stolen file does not give the passwords away; hashing runs in a thread).
Public keys are in ``/etc/oneos/authorized_keys``: ``NAME KEYTYPE BASE64
[comment]`` lines give a key to the OneOS user NAME; plain OpenSSH lines
(``KEYTYPE BASE64 [comment]``) give it to the machine owner (the local login
name), the way ``~/.ssh/authorized_keys`` gives access to one account.
Older runtimes kept both in ``$ONEOS_HOME``: :func:`migrate_home` moves them
into the tree on first start.

Both are re-read on every login, so ``oneos user add`` on any machine takes
effect without restarting anything.  One more file stays on the machine:
``$ONEOS_HOME/local_authorized_keys``, the key the ``oneos`` command minted
for this machine's owner to reach this machine's own runtime.

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
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from oneos.errors import OneOSError, RPCTimeout

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
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32
    )
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of *password* against a stored hash; False for anything malformed."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or len(password) > MAX_PASSWORD:
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 1024 * 1024,
            dklen=32,
        )
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, TypeError, MemoryError):
        return False


#: Where the kernel keeps who may log in, in the OneOS tree (see oneos.fs.service.SYSTEM_DIR).
USERS_PATH = "/etc/oneos/users.json"
KEYS_PATH = "/etc/oneos/authorized_keys"
HOST_KEY_PATH = "/etc/oneos/ssh_host_key"
#: Keys the ``oneos`` command on this machine minted for its own runtime (see oneos.cli.shell.local_identity).
LOCAL_KEYS_FILE = "local_authorized_keys"


def parse_users(data: bytes, where: str = USERS_PATH) -> dict[str, dict[str, Any]]:
    """The users in a ``users.json`` text; an unreadable one gives nobody (and a log line)."""
    try:
        raw = json.loads(data or b"{}")
    except ValueError as e:
        log.warn("cannot read {path}: {error}; nobody can log in with a password", path=where, error=e)
        return {}
    users = raw.get("users") if isinstance(raw, dict) else None
    return {k: v for k, v in users.items() if isinstance(v, dict)} if isinstance(users, dict) else {}


def render_users(users: dict[str, dict[str, Any]]) -> bytes:
    return json.dumps({"v": 1, "users": users}, indent=2, sort_keys=True).encode() + b"\n"


class TreeUsers:
    """Users and keys kept in the OneOS tree, so every runtime's front door knows the same people.

    *fs* is an :class:`oneos.fs.client.FSClient` with ``system=True``.  Every
    read goes to the tree, so ``oneos user add`` on any machine takes effect
    at the next login everywhere.
    """

    def __init__(self, fs: Any, blocking: Callable[..., defer.Deferred] = threads.deferToThread) -> None:
        self.fs = fs
        #: runs scrypt off the reactor thread (tests pass a synchronous runner)
        self.blocking = blocking
        self._last: dict[str, bytes] = {}

    @defer.inlineCallbacks
    def _read(self, path: str) -> Any:
        """The file's bytes; while the tree cannot be reached (a failover), the last copy read.

        Logins keep working for the seconds nobody serves the tree; a change
        made meanwhile (a user removed) takes effect once it is back.
        """
        from oneos.fs.errors import NotFound, StoreUnavailable

        try:
            data = yield self.fs.read_small(path)
        except NotFound:
            data = b""
        except (StoreUnavailable, RPCTimeout) as e:
            if path not in self._last:
                raise
            log.info("using the last copy of {path}: {error}", path=path, error=str(e))
            return self._last[path]
        self._last[path] = data
        return data

    @defer.inlineCallbacks
    def load(self) -> Any:
        data = yield self._read(USERS_PATH)
        return parse_users(data)

    @defer.inlineCallbacks
    def save(self, users: dict[str, dict[str, Any]]) -> Any:
        yield self.fs.mkdir("/etc/oneos", parents=True, exist_ok=True)
        yield self.fs.write_small(USERS_PATH, render_users(users))

    @defer.inlineCallbacks
    def names(self) -> Any:
        users = yield self.load()
        return sorted(users)

    @defer.inlineCallbacks
    def add(self, name: str, password: str) -> Any:
        validate_user_name(name)
        users = yield self.load()
        if name in users:
            raise UserError(f"user {name!r} already exists (use 'oneos passwd {name}' to change the password)")
        users[name] = {"password": (yield self.blocking(hash_password, password))}
        yield self.save(users)

    @defer.inlineCallbacks
    def set_password(self, name: str, password: str) -> Any:
        users = yield self.load()
        if name not in users:
            raise UserError(f"no user {name!r} (add one with 'oneos user add {name}')")
        users[name]["password"] = yield self.blocking(hash_password, password)
        yield self.save(users)

    @defer.inlineCallbacks
    def remove(self, name: str) -> Any:
        users = yield self.load()
        if users.pop(name, None) is None:
            raise UserError(f"no user {name!r}")
        yield self.save(users)

    @defer.inlineCallbacks
    def check(self, name: str, password: str) -> Any:
        """Whether *password* is *name*'s; scrypt runs in a thread so logins never stall the reactor."""
        users = yield self.load()
        entry = users.get(name)
        # Hash even for an unknown user so timing does not tell whether the user exists.
        stored = str(entry.get("password", "")) if entry is not None else None
        ok = yield self.blocking(_verify_or_dummy, password, stored)
        return bool(ok and entry is not None)

    @defer.inlineCallbacks
    def authorized_keys(self) -> Any:
        data = yield self._read(KEYS_PATH)
        return parse_authorized_keys(data.decode("utf-8", "replace"), KEYS_PATH)

    @defer.inlineCallbacks
    def add_key_lines(self, lines: list[str]) -> Any:
        """Append *lines* not already in the tree's authorized_keys; fires with how many were added."""
        data = yield self._read(KEYS_PATH)
        text = data.decode("utf-8", "replace")
        present = set(text.splitlines())
        new = [line for line in lines if line.strip() and line not in present]
        if new:
            text = text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(new) + "\n"
            yield self.fs.mkdir("/etc/oneos", parents=True, exist_ok=True)
            yield self.fs.write_small(KEYS_PATH, text.encode())
        return len(new)


@defer.inlineCallbacks
def migrate_home(fs: Any, home: Path) -> Any:
    """Move a runtime's old ``users.json`` and ``authorized_keys`` from ``$ONEOS_HOME`` into the tree.

    Users the tree does not know yet are added (the tree wins on a clash),
    keys are appended, and the local files are renamed ``*.migrated`` so they
    are not merged again and nobody mistakes them for the live ones.
    Fires with a list of what was done, for the log.
    """
    done: list[str] = []
    tree = TreeUsers(fs)
    local_users = Path(home) / USERS_FILE
    if local_users.exists():
        mine = parse_users(local_users.read_bytes(), str(local_users))
        users = yield tree.load()
        added = [name for name in mine if name not in users]
        if added:
            users.update({name: mine[name] for name in added})
            yield tree.save(users)
        local_users.rename(local_users.with_name(USERS_FILE + ".migrated"))
        done.append(f"{local_users} -> {USERS_PATH} ({len(added)} user(s) added)")
    local_keys = Path(home) / KEYS_FILE
    if local_keys.exists():
        lines = [
            line
            for line in local_keys.read_text(errors="replace").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        n = yield tree.add_key_lines(lines)
        local_keys.rename(local_keys.with_name(KEYS_FILE + ".migrated"))
        done.append(f"{local_keys} -> {KEYS_PATH} ({n} key(s) added)")
    return done


def _verify_or_dummy(password: str, stored: str | None) -> bool:
    """verify_password against *stored*; for an unknown user (None) the same scrypt work, then False.

    Why not a dummy hash made at import: scrypt takes ~50 ms of CPU, which
    every runtime paid at start (200 runtimes starting together: 10 s of
    CPU) for a login that may never come.  Hashing the attempt with the
    default parameters costs what checking a stored hash costs, so the time
    taken still does not tell whether the user exists.
    """
    if stored is None:
        hash_password(password, salt=b"\0" * 16)
        return False
    return verify_password(password, stored)


def machine_owner() -> str:
    """The user a plain OpenSSH authorized_keys line logs in as."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers)
        return "root"


def parse_authorized_keys(text: str, where: str) -> list[tuple[str, bytes]]:
    """(user, key blob) pairs from authorized_keys text; bad lines are skipped with a log line."""
    out: list[tuple[str, bytes]] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        user = machine_owner()
        if len(words) >= 3 and not _is_key_type(words[0]) and _is_key_type(words[1]):
            user, words = words[0], words[1:]
        try:
            blob = keys.Key.fromString(" ".join(words[:2]).encode()).blob()
        except Exception:
            log.warn("{path}:{n}: not a public key line; skipped", path=where, n=number)
            continue
        out.append((user, blob))
    return out


def read_local_keys(home: Path) -> list[tuple[str, bytes]]:
    """The keys in ``$ONEOS_HOME/local_authorized_keys`` (this machine's own ``oneos`` client)."""
    path = Path(home) / LOCAL_KEYS_FILE
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warn("cannot read {path}: {error}", path=str(path), error=e)
        return []
    return parse_authorized_keys(text, str(path))


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
    """Passwords from the tree's users.json, refused slowly and without saying why."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, users: TreeUsers, delay: FailureDelay) -> None:
        self.users = users
        self.delay = delay

    @defer.inlineCallbacks
    def requestAvatarId(self, creds: Any) -> Any:
        try:
            name = creds.username.decode("utf-8")
            password = creds.password.decode("utf-8")
        except (UnicodeDecodeError, AttributeError):
            yield self.delay.refuse("?")
            return
        try:
            ok = len(name) <= 64 and (yield self.users.check(name, password))
        except OneOSError as e:  # the tree cannot be read: refuse, and say why in the log
            log.warn("password login for {user!r} refused: {error}", user=name[:64], error=str(e))
            ok = False
        if not ok:
            log.info("password login refused for {user!r}", user=name[:64])
            yield self.delay.refuse(name[:64])
        self.delay.succeeded(name)
        return name.encode()


@implementer(ICredentialsChecker)
class PublicKeyChecker:
    """SSH keys from the tree's authorized_keys (and this machine's own client key); a key is only good for its user."""

    credentialInterfaces = (credentials.ISSHPrivateKey,)

    def __init__(self, users: TreeUsers, home: Path, delay: FailureDelay) -> None:
        self.users = users
        self.home = Path(home)
        self.delay = delay

    @defer.inlineCallbacks
    def _known(self, name: str, blob: bytes) -> Any:
        if (name, blob) in set(read_local_keys(self.home)):
            return True
        try:
            pairs = yield self.users.authorized_keys()
        except OneOSError as e:
            log.warn("key login for {user!r} refused: {error}", user=name[:64], error=str(e))
            return False
        return (name, blob) in set(pairs)

    @defer.inlineCallbacks
    def requestAvatarId(self, creds: Any) -> Any:
        try:
            name = creds.username.decode("utf-8")
        except UnicodeDecodeError:
            raise error.UnauthorizedLogin("login refused") from None
        if not (yield self._known(name, creds.blob)):
            # The client asking "would this key do?" is normal: no delay.
            raise error.UnauthorizedLogin("login refused")
        if not creds.signature:
            raise ValidPublicKey()  # conch: ask for the signature
        try:
            ok = keys.Key.fromString(creds.blob).verify(creds.signature, creds.sigData)
        except Exception:
            ok = False
        if not ok:
            yield self.delay.refuse(name)
        self.delay.succeeded(name)
        return name.encode()
