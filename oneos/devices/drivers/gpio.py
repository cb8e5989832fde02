"""``gpio``: a GPIO pin through gpiozero.

Input: the stream is the pin's value as lines, ``"0\\n"`` or ``"1\\n"``:
the current value first, then one line per change.  Output: each line a
writer sends, ``0`` or ``1``, sets the pin (blank lines are ignored,
anything else is refused with ``EINVAL``).

Options: ``pin`` (needed: a BCM number such as ``17``, or a gpiozero pin
name such as ``GPIO17`` or ``BOARD11``), ``pull_up`` (input: 1 for a
pull-up resistor; default 0), ``bounce`` (input: seconds of debounce),
``active_high`` (output: 0 to invert; default 1), ``initial`` (output: the
value set when the runtime starts, default 0), ``mock`` (1: use gpiozero's
``MockFactory``, for tests and machines without GPIO; every mock device of
a runtime shares one factory), ``mock_wire`` (mock output only: the mock
input pin this output drives, as if a wire joined them, so a test can read
back what it wrote).

The pin is opened when the runtime starts and closed when it stops.  A pin
change is an event, not a stream to pause: a slow reader drops the oldest
lines it has waiting (its ``queue``) and always ends up with the latest
value.  gpiozero is an optional dependency (``pip install
'oneos[devices]'``); without it a gpio device is failed with that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oneos.devices.base import LINE, Emit, InputDriver, OutputDriver
from oneos.devices.errors import FAILED, INVALID, DeviceError
from oneos.devices.info import DROP
from oneos.devices.options import Options

_mock: Any = None


def mock_factory() -> Any:
    """The runtime's one gpiozero MockFactory (made on first use)."""
    global _mock
    if _mock is None:
        from gpiozero.pins.mock import MockFactory

        _mock = MockFactory()
    return _mock


def reset_mock() -> None:
    """Forget the mock pins (tests)."""
    global _mock
    if _mock is not None:
        _mock.reset()
    _mock = None


def _gpiozero() -> Any:
    try:
        import gpiozero
    except ImportError:
        raise DeviceError(
            "gpiozero is not installed (pip install 'oneos[devices]', or Debian's python3-gpiozero)", FAILED
        ) from None
    return gpiozero


def _pin(options: Options) -> int | str:
    text = options.required("pin", "the GPIO pin, e.g. pin=17").strip()
    return int(text) if text.isdigit() else text


def _opened(what: str, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except Exception as e:  # gpiozero's own errors: no pin factory, pin in use, bad pin ...
        raise DeviceError(f"cannot open {what}: {type(e).__name__}: {e}", FAILED) from None


def _in_reactor(reactor: Any, call: Callable[[], None]) -> None:
    """Run *call* in the reactor thread (gpiozero calls back from its own threads on real pins)."""
    from_thread = getattr(reactor, "callFromThread", None)
    if from_thread is None:
        call()  # a test clock: no threads
    else:
        from_thread(call)


class GpioInput(InputDriver):
    driver = "gpio"
    unit = LINE
    slow = DROP
    pausable = False
    on_demand = False
    queue = 64

    def __init__(self, reactor: Any, options: Options) -> None:
        super().__init__(reactor, options)
        self.pin = _pin(options)
        self.pull_up = options.flag("pull_up")
        self.bounce = options.number("bounce", 0.0, 0.0, 60.0)
        self.mock = options.flag("mock")
        self.device: Any = None
        self._last: int | None = None

    def check(self) -> None:
        _gpiozero()

    def start(self, emit: Emit) -> None:
        gpiozero = _gpiozero()
        factory = mock_factory() if self.mock else None
        self.device = _opened(
            f"GPIO pin {self.pin}",
            lambda: gpiozero.DigitalInputDevice(
                self.pin, pull_up=self.pull_up, bounce_time=self.bounce or None, pin_factory=factory
            ),
        )
        self._last = int(self.device.value)

        def changed(value: int) -> None:
            if self.device is not None and value != self._last:
                self._last = value
                emit.unit(b"%d\n" % value)

        # the value is taken when gpiozero reports the edge: by the time the reactor runs the call, the pin
        # may have changed again, and each change is a line
        self.device.when_activated = lambda: _in_reactor(self.reactor, lambda: changed(1))
        self.device.when_deactivated = lambda: _in_reactor(self.reactor, lambda: changed(0))

    def stop(self) -> None:
        device, self.device = self.device, None
        if device is not None:
            device.close()

    def snapshot(self) -> list[bytes]:
        return [] if self._last is None else [b"%d\n" % self._last]

    def value(self) -> str | None:
        return None if self._last is None else str(self._last)


class GpioOutput(OutputDriver):
    driver = "gpio"
    unit = LINE
    on_demand = False

    def __init__(self, reactor: Any, options: Options) -> None:
        super().__init__(reactor, options)
        self.pin = _pin(options)
        self.active_high = options.flag("active_high", True)
        self.initial = options.flag("initial")
        self.mock = options.flag("mock")
        wire = options.text("mock_wire")
        if wire and not self.mock:
            raise DeviceError("option mock_wire is for mock pins only (give mock=1)", INVALID)
        self.wire: int | str | None = (int(wire) if wire.isdigit() else wire) if wire else None
        self.device: Any = None

    def check(self) -> None:
        _gpiozero()

    def start(self, failed: Callable[[DeviceError], None]) -> None:
        gpiozero = _gpiozero()
        factory = mock_factory() if self.mock else None
        if factory is not None and self.wire is not None:
            from gpiozero.pins.mock import MockConnectedPin

            _opened(
                f"mock pin {self.pin} wired to {self.wire}",
                lambda: factory.pin(self.pin, pin_class=MockConnectedPin, input_pin=factory.pin(self.wire)),
            )
        self.device = _opened(
            f"GPIO pin {self.pin}",
            lambda: gpiozero.DigitalOutputDevice(
                self.pin, active_high=self.active_high, initial_value=self.initial, pin_factory=factory
            ),
        )

    def write(self, data: bytes) -> None:
        text = data.strip()
        if not text:
            return
        if text not in (b"0", b"1"):
            shown = text[:40].decode("utf-8", "replace")
            raise DeviceError(f"GPIO pin {self.pin} takes lines of 0 or 1, not {shown!r}", INVALID)
        if self.device is None:
            raise DeviceError(f"GPIO pin {self.pin} is not open", FAILED)
        if text == b"1":
            self.device.on()
        else:
            self.device.off()

    def stop(self) -> None:
        device, self.device = self.device, None
        if device is not None:
            device.close()

    def value(self) -> str | None:
        return None if self.device is None else str(int(self.device.value))
