"""Reading a device's ``KEY=VALUE`` options (pure).

The configuration keeps options as strings (``config.Device.options``);
each driver reads the ones it knows through an :class:`Options`, which
converts and checks them, and :meth:`Options.finish` refuses any left over
(a typo such as ``rat=10`` is an error naming the known options, not an
option silently ignored).  Every problem is a :class:`DeviceError` of kind
``EINVAL`` whose message names the option: the device is then marked
failed with that reason.
"""

from __future__ import annotations

from collections.abc import Mapping

from oneos.devices.errors import INVALID, DeviceError

_TRUE = ("1", "yes", "true", "on")
_FALSE = ("0", "no", "false", "off", "")


class Options:
    """A device's options, read once each (see the module docstring)."""

    def __init__(self, given: Mapping[str, str]) -> None:
        self.given = dict(given)
        self.known: list[str] = []

    def _take(self, key: str) -> str | None:
        if key not in self.known:
            self.known.append(key)
        return self.given.get(key)

    def has(self, key: str) -> bool:
        """Whether *key* was given (it then counts as known)."""
        self._take(key)
        return key in self.given

    def text(self, key: str, default: str = "") -> str:
        value = self._take(key)
        return default if value is None else value

    def required(self, key: str, what: str) -> str:
        value = self._take(key)
        if value is None or not value.strip():
            raise DeviceError(f"option {key} is needed: {what}", INVALID)
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self._take(key)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise DeviceError(f"option {key}={value}: expected a number", INVALID) from None
        if not low <= number <= high:
            raise DeviceError(f"option {key}={value}: expected {low:g} to {high:g}", INVALID)
        return number

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self._take(key)
        if value is None:
            return default
        try:
            number = int(value, 10)
        except ValueError:
            raise DeviceError(f"option {key}={value}: expected a whole number", INVALID) from None
        if not low <= number <= high:
            raise DeviceError(f"option {key}={value}: expected {low} to {high}", INVALID)
        return number

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._take(key)
        if value is None:
            return default
        if value.strip().lower() in _TRUE:
            return True
        if value.strip().lower() in _FALSE:
            return False
        raise DeviceError(f"option {key}={value}: expected 1 or 0", INVALID)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._take(key)
        if value is None:
            return default
        if value not in choices:
            raise DeviceError(f"option {key}={value}: expected one of {', '.join(choices)}", INVALID)
        return value

    def finish(self, driver: str) -> None:
        """Refuse options nobody read."""
        unknown = sorted(set(self.given) - set(self.known))
        if unknown:
            raise DeviceError(
                f"unknown option {unknown[0]} for the {driver} driver (known: {', '.join(self.known) or 'none'})",
                INVALID,
            )
