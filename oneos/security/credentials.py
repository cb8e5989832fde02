"""Identities on the bus, kept in ``$ONEOS_HOME/credentials.json``.

Every runtime and every ``oneos`` client connects to the broker as an
*identity*: a user name and a password.  Two kinds, told apart by the name:

- a **runtime** identity is named like a runtime id (``rt-a``): it may
  publish its own status and agents, answer requests and act for any OneOS
  user (a runtime is the front door that authenticated them);
- a **client** identity is named ``USER@TAG`` (``alice@laptop``): it may only
  make requests, and every request it makes is checked as OneOS user USER.

The network has one random *secret*, kept only on the machine that created
it (the first runtime with the embedded broker, or ``oneos psd``).  An
identity's password is HMAC-SHA256(secret, name): the broker checks any
identity with the secret alone, and a machine given one identity's password
(``oneos invite`` / ``oneos join``) cannot mint another::

    {"v": 1, "broker": "mqtt://host:1883" or "", "username": "rt-a",
     "password": "...", "secret": "..." (only on the issuing machine)}

The file is written atomically with mode 0600.  docs/security.md explains
the model; oneos/security/acl.py says what each kind may publish and read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from oneos.errors import OneOSError

#: the file under $ONEOS_HOME
CREDENTIALS_FILE = "credentials.json"
#: the identity the network's creator (a broker's home) and ``oneos`` commands use on the machine
#: holding the network secret when no runtime runs there: runtime-kind (trusted like the runtimes,
#: so 'oneos user' can manage the kernel's users), but it never publishes a status
ADMIN_IDENTITY = "oneos-admin"
#: what HMAC(secret, name) is computed over, so a password is never usable for another purpose
_DERIVE_CONTEXT = "oneos identity v1:"
#: a runtime identity: a runtime id (config.validate_id's rule)
_RUNTIME_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: a client identity: OneOS user name, '@', a tag naming the client
_CLIENT_NAME = re.compile(r"^([a-z_][a-z0-9_.-]{0,31})@([A-Za-z0-9._-]{1,64})$")
#: what a join token starts with (the version of its format)
TOKEN_PREFIX = "oneos1."
FORMAT_VERSION = 1


class CredentialsError(OneOSError):
    """credentials.json is unreadable, or a join token is malformed."""


@dataclass(frozen=True)
class Credentials:
    """Who this machine is to the broker (and, in a token, where the broker is)."""

    username: str
    password: str
    #: the broker URL as other machines reach it ('' = not recorded)
    broker: str = ""
    #: the network secret ('' except on the machine that issues identities)
    secret: str = ""

    def __repr__(self) -> str:  # never show a password or the secret in a traceback or log
        return (
            f"Credentials(username={self.username!r}, password='***', broker={redact_url(self.broker)!r}, "
            f"secret={'***' if self.secret else ''!r})"
        )

    def to_json(self) -> dict[str, Any]:
        data = {"v": FORMAT_VERSION, "broker": self.broker, "username": self.username, "password": self.password}
        if self.secret:
            data["secret"] = self.secret
        return data

    @property
    def issuer(self) -> bool:
        """Whether these credentials hold the network secret (can issue identities)."""
        return bool(self.secret)


def derive(secret: str, name: str) -> str:
    """The password of identity *name* in the network whose secret is *secret*."""
    digest = hmac.new(secret.encode("utf-8"), (_DERIVE_CONTEXT + name).encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def role(name: str | None) -> str | None:
    """'runtime', 'client', or None when *name* is not a valid identity name."""
    if not name:
        return None
    if _CLIENT_NAME.match(name):
        return "client"
    if _RUNTIME_NAME.match(name):
        return "runtime"
    return None


def client_user(name: str) -> str | None:
    """The OneOS user a client identity acts as (None for a runtime or invalid name)."""
    m = _CLIENT_NAME.match(name or "")
    return m.group(1) if m else None


def valid(secret: str, name: str | None, password: str | bytes | None) -> bool:
    """Whether *password* is identity *name*'s in the network of *secret* (constant-time compare)."""
    if not secret or role(name) is None or password is None:
        return False
    if isinstance(password, str):
        password = password.encode("utf-8")
    return hmac.compare_digest(password, derive(secret, str(name)).encode("utf-8"))


def issue(network: Credentials, name: str, broker: str = "") -> Credentials:
    """Credentials for identity *name*, issued with *network*'s secret (never carrying the secret)."""
    if not network.secret:
        raise CredentialsError(
            f"these credentials ({network.username}) cannot issue identities: only the machine "
            "that created the network holds its secret (run this there)"
        )
    if role(name) is None:
        raise CredentialsError(
            f"{name!r} is not an identity name: a runtime id (letters, digits, '.', '_', '-') or USER@TAG for a client"
        )
    return Credentials(name, derive(network.secret, name), broker or network.broker)


def identity(found: Credentials, name: str) -> Credentials:
    """*found*'s credentials for acting as *name*: derived with the secret, or *found* itself if it is *name*."""
    if found.secret:
        return Credentials(name, derive(found.secret, name), found.broker, found.secret)
    if found.username != name:
        raise CredentialsError(
            f"this machine's identity is {found.username!r}, not {name!r}: a runtime's id must be "
            "the identity 'oneos join' installed (remove 'id' from config.json, or ask for an "
            f"invitation for {name!r}: 'oneos invite --name {name}')"
        )
    return found


def path(home: Path) -> Path:
    return Path(home) / CREDENTIALS_FILE


def _from_json(data: object, where: str) -> Credentials:
    if not isinstance(data, dict):
        raise CredentialsError(f"{where}: expected a JSON object")
    version = data.get("v", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise CredentialsError(f"{where}: format version {version!r} is not supported (this OneOS reads v1)")
    username, password, broker = data.get("username"), data.get("password"), data.get("broker", "") or ""
    secret = data.get("secret", "") or ""
    if not isinstance(username, str) or not username:
        raise CredentialsError(f"{where}: no username")
    if role(username) is None:
        raise CredentialsError(f"{where}: {username!r} is not an identity name")
    if not isinstance(password, str) or not password:
        raise CredentialsError(f"{where}: no password")
    if not isinstance(broker, str):
        raise CredentialsError(f"{where}: 'broker' must be a URL string")
    if not isinstance(secret, str):
        raise CredentialsError(f"{where}: 'secret' must be a string")
    return Credentials(username, password, broker, secret)


def load(home: Path) -> Credentials | None:
    """This home's credentials, or None if it has none; a damaged file is a clear error."""
    p = path(home)
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CredentialsError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise CredentialsError(f"{p} is not valid JSON ({e})") from None
    return _from_json(data, str(p))


def _write_private(home: Path, creds: Credentials) -> str:
    """*creds* in a fresh fsynced file in *home*, mode 0600 (mkstemp's); its path, for the caller to place."""
    home.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".credentials.", suffix=".tmp", dir=home)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(creds.to_json(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def save(home: Path, creds: Credentials) -> Path:
    """Write *creds* to ``home/credentials.json`` atomically, readable by the owner only."""
    home = Path(home)
    target = path(home)
    tmp = _write_private(home, creds)
    try:
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def generate(username: str, broker: str = "") -> Credentials:
    """A new network (a random 256-bit secret) and *username*'s identity in it."""
    secret = secrets.token_urlsafe(32)
    return Credentials(username, derive(secret, username), broker, secret)


def create(home: Path, username: str, broker: str = "") -> tuple[Credentials, bool]:
    """This home's credentials, a new network created if there are none: (credentials, created).

    Idempotent: existing credentials are kept (never regenerated: that would
    lock every other machine out).  Two processes racing on a first start may
    both generate; the file then holds one of them and both return it.
    """
    existing = load(home)
    if existing is not None:
        return existing, False
    fresh = generate(username, broker=broker)
    home = Path(home)
    # link() refuses to replace: whoever links first wins, the other reads the winner's file
    tmp = _write_private(home, fresh)
    try:
        try:
            os.link(tmp, path(home))
        except FileExistsError:
            winner = load(home)
            if winner is not None:
                return winner, False
            raise
    finally:
        Path(tmp).unlink(missing_ok=True)
    return fresh, True


# --------------------------------------------------------------------------
# join tokens


def token(creds: Credentials, broker_url: str, tls: dict[str, Any] | None = None) -> str:
    """A join token: ``oneos1.`` + base64url(JSON of the credentials and the broker URL).

    *tls*: a TLS bundle (oneos/security/tls.py ``bundle``) for a network with
    its own CA: the CA certificate, and the new machine's certificate and key.
    """
    data = Credentials(creds.username, creds.password, strip_userinfo(broker_url)).to_json()  # never the secret
    if tls:
        data["tls"] = tls
    raw = json.dumps(data, separators=(",", ":")).encode()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_token(text: str) -> Credentials:
    """The credentials and broker URL in a join token; a malformed token is a clear error."""
    return read_token(text)[0]


def read_token(text: str) -> tuple[Credentials, dict[str, Any] | None]:
    """The credentials, broker URL and TLS bundle (None: none) in a join token; a malformed token is a clear error."""
    text = (text or "").strip()
    if not text.startswith(TOKEN_PREFIX):
        if text.startswith("oneos") and "." in text:
            raise CredentialsError(
                f"this join token is of format {text.split('.', 1)[0]!r}, which this OneOS "
                f"does not read (it reads {TOKEN_PREFIX[:-1]!r})"
            )
        raise CredentialsError(
            f"not a OneOS join token (a token starts with {TOKEN_PREFIX!r}; "
            "print one with 'oneos invite' on a machine of the network)"
        )
    body = text[len(TOKEN_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = json.loads(raw.decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise CredentialsError("the join token is damaged (was it cut short when copied?)") from None
    bundle = data.pop("tls", None) if isinstance(data, dict) else None
    if bundle is not None and not isinstance(bundle, dict):
        raise CredentialsError("the join token's TLS part is damaged")
    creds = _from_json(data, "join token")
    if creds.secret:
        raise CredentialsError(
            "this join token carries a network secret, which tokens never do: not a token 'oneos invite' printed"
        )
    if not creds.broker:
        raise CredentialsError("the join token names no broker")
    from oneos.pubsub.address import parse_broker_url

    try:
        parse_broker_url(creds.broker)
    except OneOSError as e:
        raise CredentialsError(f"the join token's broker URL is bad: {e}") from None
    return creds, bundle


# --------------------------------------------------------------------------
# URLs


def redact_url(url: str) -> str:
    """*url* with any password replaced by ``***``, fit for logs and status lines."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def strip_userinfo(url: str) -> str:
    """*url* without ``user:password@``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
