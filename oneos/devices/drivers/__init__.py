"""The one table of device drivers: driver name -> direction -> class.

Adding a driver is one module in this package (a subclass of
:class:`~oneos.devices.base.InputDriver` and/or
:class:`~oneos.devices.base.OutputDriver`) and one line here.  A driver's
third-party library is imported when a device of it starts, never here, so
a machine without it only has that driver's devices failed.
"""

from __future__ import annotations

from oneos.devices.base import InputDriver, OutputDriver
from oneos.devices.drivers.command import CommandInput, CommandOutput
from oneos.devices.drivers.dump import DumpOutput
from oneos.devices.drivers.gpio import GpioInput, GpioOutput
from oneos.devices.drivers.random import RandomInput
from oneos.devices.drivers.video import VideoInput

DRIVERS: dict[str, dict[str, type[InputDriver] | type[OutputDriver]]] = {
    "video": {"in": VideoInput},
    "gpio": {"in": GpioInput, "out": GpioOutput},
    "command": {"in": CommandInput, "out": CommandOutput},
    "random": {"in": RandomInput},
    "dump": {"out": DumpOutput},
}
