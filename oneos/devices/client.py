"""The client of a runtime's device methods: list, read, write, pipe_out.

Every runtime serves these on its own RPC target (its id; the handlers are
:meth:`oneos.devices.service.DeviceService.handlers`), so each method takes
the runtime first.  Results arrive typed: a device as
:class:`~oneos.devices.info.DeviceInfo`, a stream as
:class:`~oneos.transfer.StreamAddress`.

Reading a device is two steps, as for an agent's output: ``read`` answers
where the stream is, and the caller connects there with
:func:`oneos.transfer.receive` (into any Sink).  Writing is ``write`` then
:func:`oneos.transfer.send`.  ``pipe_out`` has the device's runtime send
the stream into a stream another runtime offered (a program's stdin from
``AgentsClient.stdin``), so device-to-program bytes never pass through the
caller.  A program's output goes into a device with
``AgentsClient.pipe_out(runtime, agent, into=DevicesClient.write(...))``.

*user*: every call is made for this OneOS user, and the device's runtime
checks the device's owner and mode against it (``EACCES`` when refused;
docs/devices.md "Who may use a device").  None is the runtime acting for
itself, never refused; a runtime serving a user (the shell, the desktop, a
program's device gateway) must name that user.  A client identity's calls
are made as its own user whatever it sends.

Errors: ``ENOENT`` (no such device), ``EACCES`` (reading an output,
writing an input, or a user the device's mode does not let), ``ENODEV`` (the device failed; the message says why):
test ``error.kind``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

import oneos.devices.errors  # noqa: F401  (the devices' wire kinds: a failed device arrives as DeviceError)
from oneos.devices.info import DeviceInfo
from oneos.transfer import StreamAddress

#: the device methods a client identity (USER@TAG) may call on a runtime
CLIENT_METHODS = ("device_list", "device_read", "device_write", "device_pipe_out")


class DevicesClient:
    """Typed calls to the device methods of any runtime."""

    def __init__(self, rpc: Any, timeout: float | None = None, *, user: str | None = None) -> None:
        self.rpc = rpc
        #: seconds to wait for an answer (None: the RPC client's default)
        self.timeout = timeout
        #: the OneOS user every call is made for (None: the runtime itself, see the module docstring)
        self.user = user

    def as_user(self, user: str | None) -> DevicesClient:
        """The same connection, acting for *user* (a shell session's or a program owner's client)."""
        return DevicesClient(self.rpc, self.timeout, user=user)

    def _call(self, runtime: str, method: str, **args: Any) -> defer.Deferred:
        if self.user is not None:
            args["user"] = self.user
        return self.rpc.call(runtime, method, timeout=self.timeout, **args)

    def list_devices(self, runtime: str) -> defer.Deferred:
        """The devices of *runtime*: a list of :class:`DeviceInfo`."""
        return self._call(runtime, "device_list").addCallback(lambda rows: [DeviceInfo.decode(r) for r in rows])

    def read(self, runtime: str, name: str, units: int = 0) -> defer.Deferred:
        """Where to read device *name* from: a :class:`StreamAddress`.

        *units*: the stream ends after that many units (frames, lines or
        chunks, DeviceInfo.unit); 0: until the reader leaves or the device ends.
        """
        args = {"units": units} if units else {}
        return self._call(runtime, "device_read", name=name, **args).addCallback(StreamAddress.decode)

    def write(self, runtime: str, name: str) -> defer.Deferred:
        """Where to stream into device *name*: a :class:`StreamAddress`."""
        return self._call(runtime, "device_write", name=name).addCallback(StreamAddress.decode)

    def pipe_out(self, runtime: str, name: str, into: StreamAddress, units: int = 0, to: str = "") -> defer.Deferred:
        """Have *runtime* send device *name*'s stream into *into* (e.g. an agent's stdin); *to* names it for logs."""
        args: dict[str, Any] = {"units": units} if units else {}
        return self._call(runtime, "device_pipe_out", name=name, to=to, **into.encode(), **args)
