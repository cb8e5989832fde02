"""``dump``: an output that takes everything (the original's test sink).

Options: ``file`` (a path on this machine: bytes are appended to it;
default: they are discarded).  The device counts the bytes it took
(``bytes`` in ``device_list``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, BinaryIO

from oneos.devices.base import CHUNK, OutputDriver
from oneos.devices.errors import FAILED, DeviceError
from oneos.devices.options import Options


class DumpOutput(OutputDriver):
    driver = "dump"
    unit = CHUNK
    on_demand = False

    def __init__(self, reactor: Any, options: Options) -> None:
        super().__init__(reactor, options)
        self.file = options.text("file")
        self._out: BinaryIO | None = None

    def check(self) -> None:
        if self.file:
            folder = os.path.dirname(os.path.abspath(self.file))
            if not os.path.isdir(folder):
                raise DeviceError(f"cannot append to {self.file}: no folder {folder}", FAILED)

    def start(self, failed: Callable[[DeviceError], None]) -> None:
        if self.file:
            try:
                self._out = open(self.file, "ab")  # noqa: SIM115  (kept open while the device is)
            except OSError as e:
                raise DeviceError(f"cannot append to {self.file}: {e.strerror}", FAILED) from None

    def write(self, data: bytes) -> None:
        if self._out is not None:
            try:
                self._out.write(data)
                self._out.flush()
            except OSError as e:
                raise DeviceError(f"cannot append to {self.file}: {e.strerror}", FAILED) from None

    def stop(self) -> None:
        out, self._out = self._out, None
        if out is not None:
            out.close()
