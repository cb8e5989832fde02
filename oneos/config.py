"""Runtime configuration: defaults, ``$ONEOS_HOME/config.json``, flags.

Precedence is defaults < config file < command-line flags.  With no config
file at all the runtime runs the *embedded default*: an in-process broker on
127.0.0.1:1883 unless one already answers there, the SQLite store under
``$ONEOS_HOME``, and a kernel runtime.  Every value is validated here and a
bad one raises :class:`ConfigError` naming the field, so a typo never turns
into a traceback deep inside a service.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from oneos.errors import ConfigError
from oneos.pubsub.client import parse_broker_url

CONFIG_FILE = "config.json"
DEFAULT_PUBSUB = "mqtt://127.0.0.1:1883"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
BROKER_MODES = ("auto", "embedded", "external")
LISTENER_NAMES = ("pipe", "ssh", "telnet", "desktop")


def oneos_home(environ: dict[str, str] | None = None) -> Path:
    """``$ONEOS_HOME``, or ``~/.oneos``: where config, keys and the store live."""
    env = os.environ if environ is None else environ
    return Path(env.get("ONEOS_HOME") or Path.home() / ".oneos").expanduser()


def default_listen() -> dict[str, str]:
    """Listeners on loopback; telnet off.  Endpoint strings, '' = off."""
    return {
        "pipe": "tcp:0:interface=127.0.0.1",
        "ssh": "tcp:2222:interface=127.0.0.1",
        "telnet": "",
        "desktop": "tcp:3000:interface=127.0.0.1",
    }


@dataclass(frozen=True)
class Config:
    """A validated runtime configuration."""

    home: Path
    id: str
    pubsub: str = DEFAULT_PUBSUB
    broker: str = "auto"
    store: str = ""
    kernel: bool = True
    memory_mb: int = 1024
    tags: tuple[str, ...] = ()
    address: str = ""
    keepalive: int = 2
    stats_interval: float = 2.0
    listen: dict[str, str] = field(default_factory=default_listen)
    #: True when no config file existed: the one-machine embedded default.
    embedded: bool = False
    #: True when the id was generated because none was configured.
    generated_id: bool = False

    def to_file_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds (no derived fields)."""
        d = asdict(self)
        for derived in ("home", "embedded", "generated_id"):
            d.pop(derived)
        if self.generated_id:
            d["id"] = ""
        d["tags"] = list(self.tags)
        return d

    @property
    def wants_embedded_broker(self) -> bool:
        """Whether this runtime may host the broker itself if none answers."""
        if self.broker == "embedded":
            return True
        if self.broker == "external":
            return False
        host = parse_broker_url(self.pubsub).host
        return host in ("127.0.0.1", "localhost", "::1")


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "y", "true", "1", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("no", "n", "false", "0", "off"):
        return False
    raise ConfigError(name, f"expected yes or no, got {value!r}")


def _as_number(name: str, value: Any, kind: type, low: float, high: float) -> Any:
    if isinstance(value, bool):
        raise ConfigError(name, f"expected a number, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(name, f"expected a number, got {value!r}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(name, f"expected a whole number, got {value!r}")
    if not low <= number <= high:
        raise ConfigError(name, f"{number} is outside {low:g}..{high:g}")
    return number


def validate_id(value: Any, name: str = "id") -> str:
    """A runtime id: letters, digits, '.', '_', '-'; at most 64 characters."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ConfigError(name, f"{value!r} is not a valid runtime id (letters, digits, '.', '_', '-'; up to 64)")
    return value


def validate_store(value: Any) -> str:
    """A store URL: ``sqlite:///path`` or ``mongodb://host[:port]/db``."""
    if not isinstance(value, str):
        raise ConfigError("store", f"expected a URL, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme == "sqlite" and parts.path:
        return value
    if parts.scheme == "mongodb" and parts.hostname and parts.path.strip("/"):
        return value
    raise ConfigError("store", f"{value!r} is not sqlite:///PATH or mongodb://HOST[:PORT]/DATABASE")


def validate_endpoint(name: str, value: Any) -> str:
    """A Twisted server endpoint string such as ``tcp:2222:interface=127.0.0.1``, or '' for off."""
    if not isinstance(value, str):
        raise ConfigError(name, f"expected an endpoint string, got {value!r}")
    if value and value.split(":", 1)[0] not in ("tcp", "tcp6", "ssl", "unix"):
        raise ConfigError(name, f"{value!r} is not an endpoint string like tcp:2222:interface=127.0.0.1")
    return value


def _validate(raw: dict[str, Any], home: Path, embedded: bool) -> Config:
    known = {f for f in Config.__dataclass_fields__ if f not in ("home", "embedded", "generated_id")}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting (known: {', '.join(sorted(known))})")
    rid = raw.get("id") or ""
    generated = not rid
    if generated:
        rid = str(uuid.uuid4())
    validate_id(rid)
    pubsub = raw.get("pubsub", DEFAULT_PUBSUB)
    if not isinstance(pubsub, str):
        raise ConfigError("pubsub", f"expected a URL, got {pubsub!r}")
    parse_broker_url(pubsub)
    broker = raw.get("broker", "auto")
    if broker not in BROKER_MODES:
        raise ConfigError("broker", f"{broker!r} is not one of {', '.join(BROKER_MODES)}")
    store = raw.get("store") or f"sqlite:///{home / 'fs.sqlite3'}"
    tags = raw.get("tags", [])
    if isinstance(tags, str):
        tags = [t for t in tags.replace(",", " ").split() if t]
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) and TAG_PATTERN.match(t) for t in tags):
        raise ConfigError("tags", f"{tags!r} is not a list of tags (letters, digits, '.', '_', ':', '-')")
    address = raw.get("address", "")
    if not isinstance(address, str) or any(c.isspace() for c in address):
        raise ConfigError("address", f"{address!r} is not a host name or IP address")
    listen = default_listen()
    given = raw.get("listen", {})
    if not isinstance(given, dict):
        raise ConfigError("listen", "expected an object of listener name to endpoint string")
    for key, value in given.items():
        if key not in LISTENER_NAMES:
            raise ConfigError(f"listen.{key}", f"unknown listener (known: {', '.join(LISTENER_NAMES)})")
        listen[key] = validate_endpoint(f"listen.{key}", value)
    return Config(
        home=home,
        id=rid,
        pubsub=pubsub,
        broker=broker,
        store=validate_store(store),
        kernel=_as_bool("kernel", raw.get("kernel", True)),
        memory_mb=_as_number("memory_mb", raw.get("memory_mb", 1024), int, 16, 16 * 1024 * 1024),
        tags=tuple(tags),
        address=address,
        keepalive=_as_number("keepalive", raw.get("keepalive", 2), int, 1, 3600),
        stats_interval=_as_number("stats_interval", raw.get("stats_interval", 2.0), float, 0.1, 3600),
        listen=listen,
        embedded=embedded,
        generated_id=generated,
    )


def read_config_file(home: Path) -> dict[str, Any] | None:
    """The raw settings in ``home/config.json``, or None if there is none."""
    path = home / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError("config.json", f"cannot read {path}: {e.strerror}") from None
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ConfigError("config.json", f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError("config.json", f"{path} must hold a JSON object")
    return raw


def load_config(home: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then ``config.json``, then *overrides* (None values ignored)."""
    home = oneos_home() if home is None else home
    raw = read_config_file(home)
    embedded = raw is None
    merged: dict[str, Any] = dict(raw or {})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "listen":
            merged["listen"] = {**merged.get("listen", {}), **value}
        else:
            merged[key] = value
    return _validate(merged, home, embedded)


def save_config(config: Config) -> Path:
    """Write ``config.json`` atomically (write then rename)."""
    config.home.mkdir(parents=True, exist_ok=True)
    path = config.home / CONFIG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config.to_file_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def with_changes(config: Config, **changes: Any) -> Config:
    """Revalidate *config* with *changes* applied."""
    raw = config.to_file_dict()
    if config.generated_id and "id" not in changes:
        raw["id"] = config.id
    raw.update(changes)
    result = _validate(raw, config.home, config.embedded)
    return result if "id" in changes else replace(result, generated_id=config.generated_id)
