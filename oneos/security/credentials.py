"""The network's credentials in ``$ONEOS_HOME/credentials.json``.

One shared identity for now: every runtime and ``oneos`` command of the
network connects to the broker with the same username and random secret
(per-identity topic ACLs come later; the file format leaves room for them)::

    {"v": 1, "broker": "mqtt://host:1883" or "", "username": "oneos", "password": "..."}

The file is written atomically with mode 0600.  The first runtime (embedded
broker) or ``oneos psd`` creates it; ``oneos invite`` turns it into a join
token (``oneos1.`` + base64url(JSON)) that ``oneos join`` writes on another
machine.  docs/security.md explains the model.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from oneos.errors import OneOSError

#: the file under $ONEOS_HOME
CREDENTIALS_FILE = "credentials.json"
#: the username every member of a network uses (one shared identity for now)
DEFAULT_USERNAME = "oneos"
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

    def __repr__(self) -> str:  # never show the secret in a traceback or log
        return f"Credentials(username={self.username!r}, password='***', broker={redact_url(self.broker)!r})"

    def to_json(self) -> dict:
        return {"v": FORMAT_VERSION, "broker": self.broker, "username": self.username, "password": self.password}


def path(home: Path) -> Path:
    return Path(home) / CREDENTIALS_FILE


def _from_json(data: object, where: str) -> Credentials:
    if not isinstance(data, dict):
        raise CredentialsError(f"{where}: expected a JSON object")
    version = data.get("v", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise CredentialsError(f"{where}: format version {version!r} is not supported (this OneOS reads v1)")
    username, password, broker = data.get("username"), data.get("password"), data.get("broker", "") or ""
    if not isinstance(username, str) or not username:
        raise CredentialsError(f"{where}: no username")
    if not isinstance(password, str) or not password:
        raise CredentialsError(f"{where}: no password")
    if not isinstance(broker, str):
        raise CredentialsError(f"{where}: 'broker' must be a URL string")
    return Credentials(username, password, broker)


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


def save(home: Path, creds: Credentials) -> Path:
    """Write *creds* to ``home/credentials.json`` atomically, readable by the owner only."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    target = path(home)
    fd, tmp = tempfile.mkstemp(prefix=".credentials.", suffix=".tmp", dir=home)  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(creds.to_json(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def generate(username: str = DEFAULT_USERNAME, broker: str = "") -> Credentials:
    """New credentials with a random secret (256 bits)."""
    return Credentials(username, secrets.token_urlsafe(32), broker)


def create(home: Path, broker: str = "") -> tuple[Credentials, bool]:
    """This home's credentials, created if there are none: (credentials, created).

    Idempotent: existing credentials are kept (never regenerated: that would
    lock every other machine out).  Two processes racing on a first start may
    both generate; the file then holds one of them and both return it.
    """
    existing = load(home)
    if existing is not None:
        return existing, False
    fresh = generate(broker=broker)
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    # link() refuses to replace: whoever links first wins, the other reads the winner's file
    fd, tmp = tempfile.mkstemp(prefix=".credentials.", suffix=".tmp", dir=home)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(fresh.to_json(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
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


def token(creds: Credentials, broker_url: str) -> str:
    """A join token: ``oneos1.`` + base64url(JSON of the credentials and the broker URL)."""
    data = Credentials(creds.username, creds.password, strip_userinfo(broker_url)).to_json()
    raw = json.dumps(data, separators=(",", ":")).encode()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_token(text: str) -> Credentials:
    """The credentials and broker URL in a join token; a malformed token is a clear error."""
    text = (text or "").strip()
    if not text.startswith(TOKEN_PREFIX):
        if text.startswith("oneos") and "." in text:
            raise CredentialsError(f"this join token is of format {text.split('.', 1)[0]!r}, which this OneOS "
                                   f"does not read (it reads {TOKEN_PREFIX[:-1]!r})")
        raise CredentialsError(f"not a OneOS join token (a token starts with {TOKEN_PREFIX!r}; "
                               "print one with 'oneos invite' on a machine of the network)")
    body = text[len(TOKEN_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        data = json.loads(raw.decode())
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise CredentialsError("the join token is damaged (was it cut short when copied?)") from None
    creds = _from_json(data, "join token")
    if not creds.broker:
        raise CredentialsError("the join token names no broker")
    from oneos.pubsub.client import parse_broker_url

    try:
        parse_broker_url(creds.broker)
    except OneOSError as e:
        raise CredentialsError(f"the join token's broker URL is bad: {e}") from None
    return creds


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


def with_credentials(url: str, creds: Credentials | None) -> str:
    """*url* carrying *creds* (``mqtt://user:pass@host:port``) unless it already names a user, or creds is None."""
    if creds is None:
        return url
    parts = urlsplit(url)
    if parts.username is not None:
        return url
    userinfo = f"{quote(creds.username, safe='')}:{quote(creds.password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))
