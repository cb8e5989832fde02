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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from oneos.errors import ConfigError
from oneos.pubsub.address import parse_broker_url

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


#: Port each listener takes when its setting is ``auto``.
AUTO_PORTS = {"pipe": 0, "ssh": 2222, "desktop": 3000}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def default_listen() -> dict[str, str]:
    """Listener settings: endpoint strings, '' = off, ``auto`` = see :func:`resolve_listen`; telnet off."""
    return {"pipe": "auto", "ssh": "auto", "telnet": "", "desktop": "auto"}


def is_loopback(host: str) -> bool:
    """Whether *host* names this machine only (127.0.0.0/8, ::1, localhost)."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def resolve_listen(listen: dict[str, str], pubsub: str, address: str) -> dict[str, str]:
    """Concrete endpoint strings for the ``auto`` listeners.

    A network whose broker is on loopback can only have members on this
    machine, so ``auto`` listens on 127.0.0.1 there: nothing is exposed on
    the one-machine default.  Once the broker is elsewhere the network spans
    machines, and a listener on loopback would silently strand its peers, so
    ``auto`` listens on the advertised *address* (every interface when the
    address is a host name rather than an IP literal).
    """
    local = is_loopback(parse_broker_url(pubsub).host)
    if local:
        interface = "127.0.0.1"
    elif _is_ip_literal(address):
        interface = address
    else:
        interface = "::" if ":" in address else "0.0.0.0"
    out = {}
    for name, value in listen.items():
        if value == "auto":
            kind = "tcp6" if ":" in interface else "tcp"
            value = f"{kind}:{AUTO_PORTS.get(name, 0)}:interface={interface.replace(':', chr(92) + ':')}"
        out[name] = value
    return out


def _is_ip_literal(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


#: Largest upload the desktop accepts by default, in MiB.
DEFAULT_MAX_UPLOAD_MB = 1024


@dataclass(frozen=True)
class DesktopSettings:
    """The ``desktop`` object of ``config.json`` (the listener itself is ``listen.desktop``)."""

    #: uploads larger than this (MiB) are refused with 413 as they arrive, before anything is written
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB

    @property
    def max_upload(self) -> int:
        """The upload limit in bytes."""
        return self.max_upload_mb * 1024 * 1024


def validate_desktop(value: Any) -> DesktopSettings:
    """The ``desktop`` setting: an object with ``max_upload_mb`` (1..65536); errors name ``desktop.FIELD``."""
    if isinstance(value, DesktopSettings):
        return value
    if not isinstance(value, dict):
        raise ConfigError("desktop", f'expected an object like {{"max_upload_mb": 1024}}, got {value!r}')
    known = tuple(DesktopSettings.__dataclass_fields__)
    for key in value:
        if key not in known:
            raise ConfigError(f"desktop.{key}", f"unknown setting (known: {', '.join(known)})")
    return DesktopSettings(
        max_upload_mb=_as_number(
            "desktop.max_upload_mb", value.get("max_upload_mb", DEFAULT_MAX_UPLOAD_MB), int, 1, 65536
        ),
    )


@dataclass(frozen=True)
class Config:
    """A validated runtime configuration."""

    home: Path
    id: str
    pubsub: str = DEFAULT_PUBSUB
    broker: str = "auto"
    #: '' = use the network's store, or host one here (SQLite under home) when the network has none
    store: str = ""
    kernel: bool = True
    memory_mb: int = 1024
    tags: tuple[str, ...] = ()
    address: str = ""
    keepalive: int = 2
    stats_interval: float = 2.0
    #: seconds a runtime may be unreachable before its programs are restarted elsewhere
    disconnect_grace: float = 10.0
    #: the OS account programs run as: auto (nobody when the runtime is root, else the runtime's user), or a name
    run_as: str = "auto"
    listen: dict[str, str] = field(default_factory=default_listen)
    #: I/O devices this machine exposes (:class:`Device`), served by the runtime's ``devices`` service
    devices: tuple[Device, ...] = ()
    #: the web desktop's settings (its listener is ``listen.desktop``)
    desktop: DesktopSettings = field(default_factory=DesktopSettings)
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
    def local_store(self) -> str:
        """The SQLite store this runtime hosts when the network has none yet."""
        return f"sqlite:///{self.home / 'fs.sqlite3'}"

    @property
    def wants_embedded_broker(self) -> bool:
        """Whether this runtime may host the broker itself if none answers."""
        if self.broker == "embedded":
            return True
        if self.broker == "external":
            return False
        address = parse_broker_url(self.pubsub)
        # the embedded broker speaks plain MQTT: an mqtts:// URL names a TLS broker someone else runs
        return is_loopback(address.host) and not getattr(address, "tls", False)


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


def _validate_account(value: Any) -> str:
    """``run_as``: ``auto`` or an OS account that exists here (checked now, so a typo stops the start)."""
    import pwd

    if not isinstance(value, str) or not value:
        raise ConfigError("run_as", f"expected 'auto' or an account name, got {value!r}")
    if value != "auto":
        try:
            pwd.getpwnam(value)
        except KeyError:
            raise ConfigError("run_as", f"no OS account {value!r} on this machine") from None
    return value


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
    """A Twisted server endpoint string such as ``tcp:2222:interface=127.0.0.1``, '' for off, or ``auto``."""
    if not isinstance(value, str):
        raise ConfigError(name, f"expected an endpoint string, got {value!r}")
    if value and value != "auto" and value.split(":", 1)[0] not in ("tcp", "tcp6", "ssl", "unix"):
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
    store = raw.get("store") or ""
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
        store=validate_store(store) if store else "",
        kernel=_as_bool("kernel", raw.get("kernel", True)),
        memory_mb=_as_number("memory_mb", raw.get("memory_mb", 1024), int, 16, 16 * 1024 * 1024),
        tags=tuple(tags),
        address=address,
        keepalive=_as_number("keepalive", raw.get("keepalive", 2), int, 1, 3600),
        stats_interval=_as_number("stats_interval", raw.get("stats_interval", 2.0), float, 0.1, 3600),
        disconnect_grace=_as_number("disconnect_grace", raw.get("disconnect_grace", 10.0), float, 0, 86400),
        run_as=_validate_account(raw.get("run_as", "auto")),
        listen=listen,
        devices=validate_devices(raw.get("devices", ())),
        desktop=validate_desktop(raw.get("desktop", {})),
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
        elif key == "devices":
            merged["devices"] = merge_devices(merged.get("devices", []), value)
        else:
            merged[key] = value
    return _validate(merged, home, embedded)


#: where a runtime with no configured id keeps the one generated at its first start
RUNTIME_ID_FILE = "runtime_id"


def remembered_id(config: Config) -> Config:
    """*config* with the id this home's runtime had before, when none is configured.

    A runtime without an id setting (the one-machine default) would get a
    new random id at every start, and become a stranger to the network
    after each restart (its agents, its status, ``oneos status`` history).
    So the id generated at its first start is written to
    ``$ONEOS_HOME/runtime_id`` and used again afterwards; an id from the
    config file or ``--id`` (or the identity ``oneos join`` installed) still
    wins.  The first write is atomic and exclusive: of two runtimes starting
    at once in one home, both end with the id written first.
    """
    if not config.generated_id:
        return config
    path = config.home / RUNTIME_ID_FILE
    kept = _read_runtime_id(path)
    if kept is None:
        config.home.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{RUNTIME_ID_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(config.id + "\n", encoding="utf-8")
            os.link(tmp, path)  # fails if another start wrote it first: then that one is the id
            kept = config.id
        except FileExistsError:
            kept = _read_runtime_id(path)
        except OSError as e:
            raise ConfigError(RUNTIME_ID_FILE, f"cannot write {path}: {e.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)
    return replace(config, id=kept or config.id)


def _read_runtime_id(path: Path) -> str | None:
    """The id kept in *path*, None if there is none; a :class:`ConfigError` naming the file if it is not an id."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(RUNTIME_ID_FILE, f"cannot read {path}: {e.strerror}") from None
    if not text:
        return None
    return validate_id(text, f"{RUNTIME_ID_FILE} ({path})")


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


# --- I/O devices ----------------------------------------------------------

DEVICE_DIRECTIONS = ("in", "out")
#: the drivers of oneos/devices/drivers (its DRIVERS table; tests/unit/test_devices_service.py checks they agree).
#: A driver not listed is a configuration error naming the field; a device whose driver cannot work on this
#: machine (no ffmpeg, no GPIO, a bad option) is only marked failed, and the runtime runs without it.
DEVICE_DRIVERS = ("video", "gpio", "command", "random", "dump")
DEVICE_SPEC_FORM = "NAME:in|out:DRIVER[:KEY=VALUE,...]"
OPTION_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
#: options every device has whatever its driver: who may use it (docs/devices.md "Who may use a device").
#: The runtime's devices service reads them; they never reach the driver.
DEVICE_ACCESS_OPTIONS = ("owner", "mode")
#: a device's mode when none is configured: its owner may use it, nobody else (the admin and the kernel always may)
DEFAULT_DEVICE_MODE = 0o600
#: the highest device mode: the rwx triplets only (setuid, setgid and sticky would mean nothing for a device)
MAX_DEVICE_MODE = 0o777
#: a OneOS user name; the same rule as oneos.shell.users.NAME_PATTERN, which this layer may not import
#: (tests/unit/test_devices_config.py checks that they agree)
USER_NAME_PATTERN = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_OCTAL_MODE = re.compile(r"^(0o)?[0-7]{1,4}$")


def parse_device_mode(text: str) -> int:
    """A device's ``mode=`` option as permission bits: octal like ``600``, ``0644``, ``0o660``.

    Raises ValueError with the reason.  Octal only, as ``chmod`` takes it:
    a device's mode is set by the machine's owner in its configuration, and
    one spelling is easier to audit than two.
    """
    value = text.strip().lower()
    if not _OCTAL_MODE.match(value):
        raise ValueError(f"mode={text}: not an octal mode like 0600 or 0644")
    mode = int(value.removeprefix("0o"), 8)
    if mode > MAX_DEVICE_MODE:
        raise ValueError(f"mode={text}: a device's mode is rwx bits only, 0000 to 0777")
    return mode


def check_device_owner(text: str) -> str:
    """A device's ``owner=`` option: a OneOS user name; raises ValueError with the reason."""
    if not USER_NAME_PATTERN.match(text):
        raise ValueError(
            f"owner={text}: not a OneOS user name (lower-case letters, digits, '_', '.', '-'; up to 32, not a digit first)"
        )
    return text


@dataclass(frozen=True)
class Device:
    """An I/O device this machine exposes: ``config.json`` holds it as
    ``{"name", "direction", "driver", "options"}``.  Two options are every
    device's, not its driver's: ``owner`` and ``mode``, who may use it."""

    name: str
    direction: str
    driver: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        """The configured ``owner`` option ('': none given, the runtime's own account owns it)."""
        return self.options.get("owner", "")

    @property
    def mode(self) -> int:
        """The ``mode`` option's permission bits (:data:`DEFAULT_DEVICE_MODE` when none is given).

        Raises ValueError for a malformed one; a Device from :func:`validate_devices` never has one.
        """
        text = self.options.get("mode")
        return DEFAULT_DEVICE_MODE if text is None else parse_device_mode(text)

    @property
    def driver_options(self) -> dict[str, str]:
        """The options the driver reads: all but :data:`DEVICE_ACCESS_OPTIONS`."""
        return {k: v for k, v in self.options.items() if k not in DEVICE_ACCESS_OPTIONS}

    @property
    def spec(self) -> str:
        """The one-line form ``NAME:in|out:DRIVER[:KEY=VALUE,...]``."""
        text = f"{self.name}:{self.direction}:{self.driver}"
        if self.options:
            text += ":" + ",".join(f"{k}={v}" for k, v in self.options.items())
        return text


def parse_device_spec(text: str, index: int = 0) -> Device:
    """A :class:`Device` from ``NAME:in|out:DRIVER[:KEY=VALUE,...]``; errors name ``devices[index].FIELD``."""
    where = f"devices[{index}]"
    if not isinstance(text, str) or text.count(":") < 2:
        raise ConfigError(where, f"{text!r} is not {DEVICE_SPEC_FORM}")
    name, direction, driver, *rest = text.strip().split(":", 3)
    options: dict[str, str] = {}
    for item in rest[0].split(",") if rest and rest[0].strip() else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise ConfigError(f"{where}.options", f"{item!r} is not KEY=VALUE")
        if key in options:
            raise ConfigError(f"{where}.options.{key}", "given twice")
        options[key] = value.strip()
    return _device(
        {"name": name.strip(), "direction": direction.strip(), "driver": driver.strip(), "options": options}, index
    )


def _device(value: Any, index: int) -> Device:
    where = f"devices[{index}]"
    if isinstance(value, str):
        return parse_device_spec(value, index)
    if not isinstance(value, dict):
        raise ConfigError(
            where, f"expected an object {{name, direction, driver, options}} or {DEVICE_SPEC_FORM}, got {value!r}"
        )
    for key in value:
        if key not in ("name", "direction", "driver", "options"):
            raise ConfigError(f"{where}.{key}", "unknown key (known: name, direction, driver, options)")
    name = value.get("name")
    if not isinstance(name, str) or not ID_PATTERN.match(name):
        raise ConfigError(f"{where}.name", f"{name!r} is not a device name (letters, digits, '.', '_', '-'; up to 64)")
    direction = value.get("direction")
    if direction not in DEVICE_DIRECTIONS:
        raise ConfigError(f"{where}.direction", f"{direction!r} is not in or out")
    driver = value.get("driver")
    if not isinstance(driver, str) or not ID_PATTERN.match(driver):
        raise ConfigError(f"{where}.driver", f"{driver!r} is not a driver name (one of {', '.join(DEVICE_DRIVERS)})")
    # A well-formed but unknown driver is kept: the runtime marks that one device failed with the
    # reason and runs on (docs/devices.md), so a config written for a newer OneOS still starts.
    # The interview (oneos configure) refuses it up front with check_known_drivers.
    given = value.get("options", {})
    if not isinstance(given, dict):
        raise ConfigError(f"{where}.options", f"expected an object of KEY to VALUE, got {given!r}")
    options: dict[str, str] = {}
    for key, option in given.items():
        if not isinstance(key, str) or not OPTION_KEY_PATTERN.match(key):
            raise ConfigError(
                f"{where}.options",
                f"{key!r} is not an option name (a letter or '_', then letters, digits, '.', '_', '-')",
            )
        if isinstance(option, bool) or not isinstance(option, (str, int, float)):
            raise ConfigError(f"{where}.options.{key}", f"expected a string, got {option!r}")
        options[key] = str(option)
    for key, check in (("owner", check_device_owner), ("mode", parse_device_mode)):
        if key in options:
            try:
                check(options[key])
            except ValueError as e:
                raise ConfigError(f"{where}.options.{key}", str(e)) from None
    return Device(name=name, direction=direction, driver=driver, options=options)


def check_known_drivers(devices: Sequence[Device]) -> None:
    """ConfigError naming ``devices[i].driver`` for the first device whose driver this OneOS lacks.

    Loading a config keeps such a device (it is marked failed when the
    runtime starts); ``oneos configure`` asks this so a typo is caught while
    the user is still answering.
    """
    for index, device in enumerate(devices):
        if device.driver not in DEVICE_DRIVERS:
            raise ConfigError(
                f"devices[{index}].driver", f"{device.driver!r} is not one of {', '.join(DEVICE_DRIVERS)}"
            )


def validate_devices(value: Any) -> tuple[Device, ...]:
    """The ``devices`` setting: a list of device objects (or spec strings), names unique."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError("devices", f"expected a list of devices, got {value!r}")
    devices: list[Device] = []
    for index, item in enumerate(value):
        device = item if isinstance(item, Device) else _device(item, index)
        if any(d.name == device.name for d in devices):
            raise ConfigError(f"devices[{index}].name", f"{device.name!r} is already the name of another device")
        devices.append(device)
    return tuple(devices)


def _raw_device_name(item: Any) -> Any:
    """The name of a device as config.json or a flag gives it (None if it gives none)."""
    if isinstance(item, Device):
        return item.name
    if isinstance(item, dict):
        return item.get("name")
    if isinstance(item, str):
        return item.split(":", 1)[0].strip()
    return None


def merge_devices(configured: Any, flags: Any) -> Any:
    """config.json's devices with the ``--device`` flags': a flag's device replaces the configured one of its name.

    Anything malformed is passed on as it is, for :func:`validate_devices`
    to refuse with the field's name.
    """
    if not isinstance(configured, (list, tuple)) or not isinstance(flags, (list, tuple)):
        return flags if isinstance(configured, (list, tuple)) else configured
    given = {_raw_device_name(item) for item in flags}
    return [item for item in configured if _raw_device_name(item) not in given] + list(flags)
