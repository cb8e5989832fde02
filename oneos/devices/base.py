"""The driver interface: what a device's driver does, and nothing else.

A driver talks to the hardware or program behind one device.  Everything
shared (readers and writers, fan-out, drop or block, starting on demand,
failure states, counters, status) is the ``devices`` service's
(:mod:`oneos.devices.service`), so a driver is one small class:

* an **input** driver (:class:`InputDriver`) produces *units* (a frame, a
  line, a chunk of bytes) by calling ``emit.unit(data)``, and ends with
  ``emit.end(None)`` (end of stream) or ``emit.end(DeviceError)`` (it
  failed).  ``pause()``/``resume()`` are back-pressure from the readers;
* an **output** driver (:class:`OutputDriver`) takes the bytes writers
  send (``write`` fires when it may take more), and reports a failure
  that happens on its own (its program died) through the ``failed``
  callback given to ``start``.

Each driver is a class in its own module under ``oneos/devices/drivers/``,
listed once in the table of ``oneos/devices/drivers/__init__.py``.  Its
constructor reads its options (:class:`~oneos.devices.options.Options`)
and raises :class:`DeviceError` (``EINVAL``) for a bad one; it does no I/O.
``check()`` looks, cheaply, whether it can work on this machine (a program
on the PATH, a device file) before anyone uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from twisted.internet import defer

from oneos.devices.errors import DeviceError
from oneos.devices.info import BLOCK
from oneos.devices.options import Options

#: what a unit of each driver is (DeviceInfo.unit)
CHUNK, LINE, FRAME = "chunk", "line", "frame"


class Emit(Protocol):
    """Where an input driver's units go (the device's fan-out)."""

    def unit(self, data: bytes) -> None: ...

    def end(self, error: DeviceError | None) -> None: ...


class InputDriver:
    """Base of input drivers (see the module docstring)."""

    #: the driver's name, as configurations give it
    driver: ClassVar[str] = ""
    #: what one unit is: CHUNK, LINE or FRAME
    unit: ClassVar[str] = CHUNK
    #: what a slow reader does by default: BLOCK (the driver pauses) or DROP (the reader misses units)
    slow: ClassVar[str] = BLOCK
    #: pause() really stops production (BLOCK needs it)
    pausable: ClassVar[bool] = True
    #: produces only while it has readers; False: from the runtime's start to its stop
    on_demand: ClassVar[bool] = True
    #: units a reader may have waiting before it drops (DROP) or pauses the driver (BLOCK)
    queue: ClassVar[int] = 16

    def __init__(self, reactor: Any, options: Options) -> None:
        self.reactor = reactor

    def check(self) -> None:
        """Raise DeviceError if the driver cannot work on this machine (cheap: no device is opened)."""

    def start(self, emit: Emit) -> None:
        """Begin producing units into *emit*; raise DeviceError if it cannot."""
        raise NotImplementedError

    def pause(self) -> None:
        """Stop producing until resume() (readers are behind)."""

    def resume(self) -> None:
        """Produce again."""

    def stop(self) -> defer.Deferred | None:
        """Stop producing (nobody reads, or the runtime stops); no unit is emitted once this fires."""
        return None

    def snapshot(self) -> list[bytes]:
        """Units a reader gets first when it attaches (a pin's current value)."""
        return []

    def value(self) -> str | None:
        """The device's current value, when it has one (a pin's "0"/"1")."""
        return None


class OutputDriver:
    """Base of output drivers (see the module docstring)."""

    driver: ClassVar[str] = ""
    #: LINE: each write() is one whole line (the service splits writers' bytes); CHUNK: bytes as they come
    unit: ClassVar[str] = CHUNK
    #: opened when the first writer comes and closed when the last one ends; False: always open
    on_demand: ClassVar[bool] = False

    def __init__(self, reactor: Any, options: Options) -> None:
        self.reactor = reactor

    def check(self) -> None:
        """Raise DeviceError if the driver cannot work on this machine."""

    def start(self, failed: Callable[[DeviceError], None]) -> defer.Deferred | None:
        """Open the device; *failed* is called if it fails later on its own.  Raise (or fail) if it cannot open."""
        return None

    def write(self, data: bytes) -> defer.Deferred | None:
        """Take *data* (one line for LINE drivers); fires when it may take more.  Fails (EINVAL) for a bad value."""
        raise NotImplementedError

    def stop(self) -> defer.Deferred | None:
        """Close the device; fires once closed, failing if closing showed a failure (a program's exit status)."""
        return None

    def value(self) -> str | None:
        return None


#: longest line a LINE device passes whole; a longer one is passed in pieces of this size
MAX_LINE = 64 * 1024


class LineSplitter:
    """Cuts bytes into lines, each with its ``\\n`` (pure); :meth:`rest` is an unfinished last line."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines = self._buf.split(b"\n")
        self._buf = lines.pop()
        out = [line + b"\n" for line in lines]
        while len(self._buf) > self.max_line:
            out.append(self._buf[: self.max_line])
            self._buf = self._buf[self.max_line :]
        return out

    def rest(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest
