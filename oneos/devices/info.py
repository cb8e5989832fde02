"""What crosses the wire about devices: :class:`DeviceInfo` and device addresses.

Pure: no I/O, no Twisted.  ``device_list`` answers with a list of
:meth:`DeviceInfo.encode` objects; the runtime's retained status carries
the short form (:meth:`DeviceInfo.status_entry`: name, direction, driver,
state, reason, owner, mode).  ``owner`` and ``mode`` say who may use the
device (docs/devices.md "Who may use a device"); a record from a runtime
older than them has neither, and decodes with owner '' and mode None
(:func:`mode_string` shows ``c?????????``).  A device is named ``RUNTIME/NAME`` on the command line and
``/dev/RUNTIME/NAME`` in the file tree (:func:`parse_device_address`
reads both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from oneos.devices.errors import INVALID, DeviceError
from oneos.fs import permissions

OK = "ok"
FAILED = "failed"
STATES = (OK, FAILED)
INPUT = "in"
OUTPUT = "out"
#: what a slow reader of an input device does to the others
DROP = "drop"
BLOCK = "block"
#: the folder of the file tree devices appear under (``/dev/RUNTIME/NAME``)
DEV_ROOT = "/dev"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: the keys of DeviceInfo.encode(), in order (others are kept in ``extra``)
_KEYS = (
    "runtime",
    "name",
    "direction",
    "driver",
    "state",
    "reason",
    "options",
    "slow",
    "unit",
    "running",
    "readers",
    "writers",
    "bytes",
    "units",
    "dropped",
    "value",
    "owner",
    "mode",
)


@dataclass(frozen=True)
class DeviceInfo:
    """One device of one runtime, as ``device_list`` reports it."""

    runtime: str
    name: str
    direction: str
    driver: str
    state: str = OK
    #: why it failed ('' when ok)
    reason: str = ""
    options: dict[str, str] = field(default_factory=dict)
    #: input devices: ``drop`` or ``block`` (what a slow reader does); '' for outputs
    slow: str = ""
    #: what one unit is: ``frame`` (video), ``line`` (gpio, line-mode command) or ``chunk``
    unit: str = "chunk"
    #: the driver is producing or open now (on-demand drivers run only while in use)
    running: bool = False
    readers: int = 0
    writers: int = 0
    #: bytes produced (input) or taken (output) since the runtime started
    bytes: int = 0
    #: units produced (frames, lines, chunks) or lines written
    units: int = 0
    #: units dropped for slow readers (drop devices)
    dropped: int = 0
    #: a GPIO pin's value now ("0"/"1"), None when the driver has no value
    value: str | None = None
    #: the OneOS user the device belongs to ('' from a runtime that predates device permissions)
    owner: str = ""
    #: its rwx permission bits (owner and other, as files'; None from a runtime that predates them)
    mode: int | None = None
    #: keys of a newer peer, kept and encoded again
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """``RUNTIME/NAME``, as the command line names it."""
        return f"{self.runtime}/{self.name}"

    @property
    def path(self) -> str:
        """``/dev/RUNTIME/NAME``, where the file tree shows it."""
        return f"{DEV_ROOT}/{self.runtime}/{self.name}"

    @property
    def ok(self) -> bool:
        return self.state == OK

    @property
    def mode_text(self) -> str:
        """The mode as octal (``0600``), ``?`` when the runtime did not say."""
        return format_mode(self.mode)

    def status_entry(self) -> dict[str, Any]:
        """The short form in the runtime's retained status."""
        return {
            "name": self.name,
            "direction": self.direction,
            "driver": self.driver,
            "state": self.state,
            "reason": self.reason,
            "owner": self.owner,
            "mode": self.mode,
        }

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "runtime": self.runtime,
            "name": self.name,
            "direction": self.direction,
            "driver": self.driver,
            "state": self.state,
            "reason": self.reason,
            "options": dict(self.options),
            "slow": self.slow,
            "unit": self.unit,
            "running": self.running,
            "readers": self.readers,
            "writers": self.writers,
            "bytes": self.bytes,
            "units": self.units,
            "dropped": self.dropped,
            "value": self.value,
            "owner": self.owner,
            "mode": self.mode,
        }
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def decode(cls, body: object) -> DeviceInfo:
        """Read a device record; a malformed one is a :class:`DeviceError` (EINVAL), not a KeyError."""
        if not isinstance(body, dict):
            raise DeviceError(f"a device record is an object, not {type(body).__name__}", INVALID)
        for key in ("runtime", "name", "direction", "driver"):
            if not isinstance(body.get(key), str):
                raise DeviceError(f"a device record needs {key} (a string): {sorted(body)}", INVALID)
        state = body.get("state", OK)
        if state not in STATES:
            raise DeviceError(f"unknown device state {state!r}", INVALID)
        options = body.get("options", {})
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise DeviceError(f"device options are an object, not {type(options).__name__}", INVALID)
        value = body.get("value")
        owner = body.get("owner", "")
        if not isinstance(owner, str):
            raise DeviceError(f"a device's owner is a user name, not {owner!r}", INVALID)
        mode = body.get("mode")
        if mode is not None and not _is_mode(mode):
            raise DeviceError(f"a device's mode is permission bits (0 to 0o777), not {mode!r}", INVALID)
        try:
            counters = {k: _count(body, k) for k in ("readers", "writers", "bytes", "units", "dropped")}
        except (TypeError, ValueError) as e:
            raise DeviceError(f"bad device counter: {e}", INVALID) from None
        return cls(
            runtime=body["runtime"],
            name=body["name"],
            direction=body["direction"],
            driver=body["driver"],
            state=state,
            reason=str(body.get("reason") or ""),
            options={str(k): str(v) for k, v in options.items()},
            slow=str(body.get("slow") or ""),
            unit=str(body.get("unit") or "chunk"),
            running=bool(body.get("running", False)),
            value=None if value is None else str(value),
            owner=owner,
            mode=mode,
            extra={k: v for k, v in body.items() if k not in _KEYS},
            **counters,
        )


def _is_mode(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777


def format_mode(mode: int | None) -> str:
    """A device's mode as octal, ``0600``; ``?`` for None (a runtime that did not say)."""
    return "?" if mode is None else f"{mode:04o}"


def mode_string(mode: int | None) -> str:
    """``ls -l``'s ten characters for a device: ``c`` (a character device, as in UNIX's /dev), then rwx.

    ``crw-------`` for the default 0600; ``c?????????`` for None.
    """
    if mode is None:
        return "c?????????"
    return "c" + permissions.mode_string("file", mode)[1:]


def _count(body: dict[str, Any], key: str) -> int:
    value = body.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} is {value!r}, not a count")
    return value


def parse_device_address(text: str) -> tuple[str, str]:
    """``(runtime, name)`` from ``RUNTIME/NAME`` or ``/dev/RUNTIME/NAME``; EINVAL otherwise."""
    rest = text.strip()
    if rest.startswith(DEV_ROOT + "/"):
        rest = rest[len(DEV_ROOT) + 1 :]
    parts = rest.split("/")
    if len(parts) != 2 or not all(_NAME.match(p) for p in parts):
        raise DeviceError(f"{text!r} is not RUNTIME/NAME (or /dev/RUNTIME/NAME)", INVALID)
    return parts[0], parts[1]
