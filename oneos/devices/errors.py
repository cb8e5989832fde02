"""The devices' typed errors and their wire kind.

A device error carries a POSIX-like kind: ``ENOENT`` (no such device),
``EACCES`` (reading an output device, writing an input one), ``EINVAL``
(bad options, a bad value written), and ``ENODEV`` (the device failed: its
driver could not start, its program died, the camera went away).  The first
three are registered by :mod:`oneos.fs.errors` (each kind is registered
once), so they arrive as the file system's class for that code with the
message unchanged; ``ENODEV`` is the devices' own and is registered here.
Callers tell them apart by ``kind``, never by class.

Mid-stream, a device failure ends a reader's stream with an ``X`` frame of
the same kind (:class:`oneos.transfer.TransferError` on the reading side).
"""

from __future__ import annotations

import oneos.fs.errors  # noqa: F401  (registers ENOENT, EACCES, EINVAL: device errors arrive with them)
from oneos.errors import OneOSError, register_error

#: the kinds device errors use
NOT_FOUND = "ENOENT"
DENIED = "EACCES"
INVALID = "EINVAL"
FAILED = "ENODEV"


class DeviceError(OneOSError):
    """A device operation failed; *kind* is its wire kind (see the module docstring)."""

    def __init__(self, message: str, kind: str = FAILED) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = kind


def _failed(message: str) -> DeviceError:
    return DeviceError(message, FAILED)


register_error(FAILED, _failed)
