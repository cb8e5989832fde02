"""Open a OneOS device from a program OneOS runs: ``oneos_device.open("/dev/rt-2/cam0")``.

This file is put on the ``PYTHONPATH`` of every program a OneOS runtime
starts, so any Python (3.8 or later, not necessarily the runtime's own, with
or without Twisted) can use the grid's devices by name::

    import oneos_device

    with oneos_device.open("/dev/rt-2/cam0") as cam:      # or "rt-2/cam0", or just "cam0"
        data = cam.read(65536)                              # b"" once the device's stream ended
    with oneos_device.open("/dev/rt-1/led", "w") as led:
        led.write(b"1\\n")                                  # close() waits for the device's answer

It uses the standard library only.  It talks to the *device gateway* of the
runtime that started the program (``oneos/devices/gateway.py``): a loopback
socket whose address is in ``ONEOS_DEVICES``, opened with the program's own
secret ``ONEOS_AGENT_TOKEN`` (the gateway knows whose program it is and asks
the device's runtime as that OneOS user, so the device's owner and mode
apply).  The protocol, for other languages:

1. connect to ``ONEOS_DEVICES`` (``HOST:PORT``) and send one line
   ``OPEN <token> <r|w> <path> <units>\\n`` (*units*: for reading, end after
   that many frames, lines or chunks; 0: no limit);
2. read one line: ``OK <runtime>/<name>`` or ``ERR <KIND> <message>`` (*KIND*
   an errno name: ENOENT, EACCES, ENODEV, ENOTUNIQ, EINVAL, ...);
3. after ``OK`` the gateway sends *frames* (``kind`` 1 byte, big-endian
   length 4 bytes, payload): ``D`` data, then one ``E`` (the end, a JSON
   status) or ``X`` (an error, JSON ``{"kind", "message"}``).  For reading,
   the data frames are the device's stream; for writing, the program sends
   raw bytes, half-closes its side (``shutdown(SHUT_WR)``) at the end and
   reads the one ``E`` or ``X`` frame: the device's verdict.

Why frames and not the raw bytes: a stream that breaks (the camera pulled
out, the device's runtime gone) must not look like a clean end of file, and
its reason must reach the program whole.

Errors are :class:`OSError` with the matching ``errno`` (``open`` of an
unknown device raises :class:`FileNotFoundError`, a device the program's
owner may not use :class:`PermissionError`, a failed device ``ENODEV``); a
stream that fails part-way raises from ``read`` (after the bytes that did
arrive), ``write`` or ``close``.
"""

from __future__ import annotations

import errno as _errno
import io
import json
import os
import select
import socket
import struct
from typing import Any

__all__ = ["open", "Device", "ENV_ADDRESS", "ENV_TOKEN"]

#: where the runtime's device gateway listens (``HOST:PORT``)
ENV_ADDRESS = "ONEOS_DEVICES"
#: this program's secret for the gateway
ENV_TOKEN = "ONEOS_AGENT_TOKEN"

_HEADER = struct.Struct("!cI")
_DATA, _END, _ERROR = b"D", b"E", b"X"
#: largest frame the gateway sends
_MAX_FRAME = 1024 * 1024
#: longest answer line accepted
_MAX_LINE = 4096
#: bytes asked of the socket per read
_READ_SIZE = 256 * 1024


def _error(kind: str, message: str) -> OSError:
    """An OSError for the gateway's *kind* (an errno name), with its message."""
    code = getattr(_errno, kind, None) if kind.startswith("E") else None
    return OSError(code if isinstance(code, int) else _errno.EIO, message)


def open(path: str, mode: str = "r", *, units: int = 0, timeout: float | None = None) -> Device:
    """Open device *path* (``/dev/RT/NAME``, ``RT/NAME``, or ``NAME`` wherever it is) for ``r`` or ``w``.

    *units*: reading ends after that many units of the device (frames of a
    camera, lines of a pin, chunks); 0 for no limit.  *timeout*: seconds any
    one socket operation may take (None: wait as long as the device does).
    """
    if mode not in ("r", "rb", "w", "wb"):
        raise ValueError(f"mode must be 'r' or 'w' (bytes), not {mode!r}")
    if not isinstance(path, str) or not path or any(c.isspace() for c in path):
        raise ValueError(f"a device path is /dev/RUNTIME/NAME, RUNTIME/NAME or NAME, not {path!r}")
    if isinstance(units, bool) or not isinstance(units, int) or units < 0:
        raise ValueError(f"units must be a count (0: no limit), not {units!r}")
    address, token = os.environ.get(ENV_ADDRESS, ""), os.environ.get(ENV_TOKEN, "")
    if not address or not token:
        raise OSError(
            _errno.ENODEV,
            f"no OneOS device gateway: {ENV_ADDRESS} and {ENV_TOKEN} are set only for programs a OneOS runtime runs",
        )
    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except ValueError:
        raise OSError(_errno.EINVAL, f"{ENV_ADDRESS}={address!r} is not HOST:PORT") from None
    except OSError as e:
        raise OSError(e.errno or _errno.ECONNREFUSED, f"cannot reach the device gateway at {address}: {e}") from None
    try:
        sock.sendall(f"OPEN {token} {mode[0]} {path} {units}\n".encode("ascii", "replace"))
        line, rest = _read_line(sock)
    except BaseException:
        sock.close()
        raise
    if line.startswith("OK"):
        return Device(sock, path, mode[0], line[3:].strip(), rest)
    sock.close()
    if line.startswith("ERR "):
        kind, _, message = line[4:].partition(" ")
        raise _error(kind, message or kind)
    raise OSError(_errno.EPROTO, f"the device gateway answered {line[:80]!r}")


def _read_line(sock: socket.socket) -> tuple[str, bytes]:
    """The gateway's answer line and the bytes that came after it."""
    data = b""
    while b"\n" not in data:
        if len(data) > _MAX_LINE:
            raise OSError(_errno.EPROTO, "the device gateway's answer is too long")
        chunk = sock.recv(_MAX_LINE)
        if not chunk:
            raise OSError(_errno.EPIPE, "the device gateway closed the connection without answering")
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line.decode("utf-8", "replace"), rest


class Device(io.RawIOBase):
    """An open device: ``read``/``readinto``/``readline`` or ``write``, then ``close`` (a context manager).

    ``read(n)`` returns what has arrived, at most *n* bytes and at least one
    (it waits for the device), and ``b""`` once the stream ended cleanly.
    ``address`` is where the device is (``RUNTIME/NAME``); after a writer's
    ``close``, ``status`` is the device's answer (``{"bytes": N, ...}``).
    """

    def __init__(self, sock: socket.socket, path: str, mode: str, address: str, rest: bytes = b"") -> None:
        super().__init__()
        self._sock = sock
        self.name = path
        self.mode = mode + "b"
        self.address = address
        self.status: dict[str, Any] | None = None
        #: bytes from the socket not yet cut into frames
        self._raw = bytearray(rest)
        #: data of frames already cut, not yet read
        self._data = bytearray()
        self._ended = False
        self._failure: OSError | None = None
        self._cut()  # (frames that came with the answer line)

    # -- frames ----------------------------------------------------------------------
    def _cut(self) -> None:
        """Move every whole frame of ``_raw`` into the data, the end or the failure."""
        while len(self._raw) >= _HEADER.size and not (self._ended or self._failure):
            kind, length = _HEADER.unpack_from(self._raw)
            if kind not in (_DATA, _END, _ERROR) or length > _MAX_FRAME:
                self._failure = OSError(_errno.EPROTO, f"malformed frame from the device gateway ({kind!r})")
                return
            if len(self._raw) < _HEADER.size + length:
                return
            payload = bytes(self._raw[_HEADER.size : _HEADER.size + length])
            del self._raw[: _HEADER.size + length]
            if kind == _DATA:
                self._data += payload
            elif kind == _END:
                self._ended = True
                try:
                    status = json.loads(payload or b"{}")
                except ValueError:
                    status = {}
                self.status = status if isinstance(status, dict) else {}
            else:
                try:
                    body = json.loads(payload)
                    self._failure = _error(str(body["kind"]), f"{self.name}: {body['message']}")
                except (ValueError, KeyError, TypeError):
                    self._failure = OSError(_errno.EIO, f"{self.name}: the device's stream failed")

    def _receive(self) -> None:
        """Read the socket once (waiting); the connection's end without an end frame is an error."""
        reset: OSError | None = None
        try:
            chunk = self._sock.recv(_READ_SIZE)
        except (ConnectionResetError, BrokenPipeError) as e:
            chunk, reset = b"", e
        if chunk:
            self._raw += chunk
            self._cut()
            return
        if not (self._ended or self._failure):
            why = f" ({reset})" if reset is not None else ""
            self._failure = OSError(
                _errno.EPIPE,
                f"{self.name}: the device gateway closed the stream before its end{why} (did the runtime stop?)",
            )

    def _fill(self) -> None:
        """Wait until there is data, the end, or a failure."""
        while not self._data and not self._ended and self._failure is None:
            self._receive()

    # -- reading -----------------------------------------------------------------------
    def readable(self) -> bool:
        return self.mode == "rb"

    def readinto(self, buffer: Any) -> int:
        if self.mode != "rb":
            raise io.UnsupportedOperation("this device was opened for writing")
        if self.closed:
            raise ValueError("I/O operation on a closed device")
        self._fill()
        if not self._data:
            if self._failure is not None:
                raise self._failure
            return 0
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._data))
        view[:n] = self._data[:n]
        del self._data[:n]
        return n

    def peek(self, size: int = 0) -> bytes:
        """What ``read`` would return next, without taking it (lets ``readline`` read whole lines fast)."""
        if self.mode != "rb":
            raise io.UnsupportedOperation("this device was opened for writing")
        self._fill()
        if not self._data and self._failure is not None:
            raise self._failure
        return bytes(self._data)

    # -- writing -----------------------------------------------------------------------
    def writable(self) -> bool:
        return self.mode == "wb"

    def write(self, data: Any) -> int:
        if self.mode != "wb":
            raise io.UnsupportedOperation("this device was opened for reading")
        if self.closed:
            raise ValueError("I/O operation on a closed device")
        self._verdict(wait=False)
        data = bytes(data)
        try:
            self._sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self._verdict(wait=True)
            raise OSError(_errno.EPIPE, f"{self.name}: the device's stream broke") from None
        return len(data)

    def _verdict(self, wait: bool) -> None:
        """A writer's answer from the device: raise if it failed, or if it ended while we still write."""
        while not (self._ended or self._failure):
            if not wait and not select.select([self._sock], [], [], 0)[0]:
                return
            self._receive()
        if self._failure is not None:
            raise self._failure
        if not wait:
            raise OSError(_errno.EPIPE, f"{self.name}: the device ended the stream")

    # -- the end ------------------------------------------------------------------------
    def close(self) -> None:
        """Close; a writer first ends its stream and waits for the device's answer (an error raises)."""
        if self.closed:
            return
        try:
            if self.mode == "wb" and not (self._ended or self._failure):
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self._verdict(wait=True)
            elif self.mode == "wb" and self._failure is not None:
                raise self._failure
        finally:
            self._sock.close()
            super().close()

    def __del__(self) -> None:
        # Garbage collected without close(): end the stream without waiting for the device's answer.
        try:
            self._sock.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<oneos_device.Device {self.name!r} mode={self.mode!r}{' closed' if self.closed else ''}>"
