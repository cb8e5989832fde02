"""Devices as files for the shell: ``/dev``, ``/dev/RUNTIME``, ``/dev/RUNTIME/NAME``.

The tree under ``/dev`` is not in the file store: it is the live runtimes'
statuses (``RuntimeStatus.devices``, from the kernel's ``runtimes``), so a
dead runtime's devices disappear with it.  Bytes go through the devices RPC
(:class:`~oneos.devices.client.DevicesClient`) and the transfer layer:

* :class:`DeviceInput`: a device read as a Source (``cat``, ``head FILE``,
  ``< /dev/RT/NAME``): ``DevicesClient.read`` then ``transfer.receive`` into
  a small bounded pipe.  A reader that stops (``| head -c 64``) closes the
  pipe, the next write of the transfer fails and its connection is closed,
  so the device's runtime sees the reader leave;
* :class:`DeviceOutput`: a built-in's (or a program's, through the launcher)
  ``> /dev/RT/NAME``: ``DevicesClient.write`` then ``transfer.send`` from a
  pipe the built-in writes;
* :func:`dev_entry`, :func:`enter_dir`: ``/dev`` in ``ls /``, ``cd /dev[/RT]``;
* :func:`list_dev`: ``ls /dev``, ``ls [-l] /dev/RT`` (``-l``: the mode as
  a character device's, ``crw-------``, and the owner, from the statuses).

Every device call is made as the session's user (:func:`devices_client`):
the device's runtime checks its owner and mode (docs/devices.md "Who may
use a device") and refuses with ``EACCES`` naming device and user.

Errors are one line naming the path: ``ENOENT`` (no such runtime or
device), ``EACCES`` (reading an output device, writing an input one),
``ENODEV`` (the device failed, with the runtime's reason).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer

from oneos import transfer
from oneos.devices.client import DevicesClient
from oneos.devices.errors import DENIED, FAILED, INVALID, NOT_FOUND, DeviceError
from oneos.devices.info import DEV_ROOT, INPUT, OUTPUT, mode_string
from oneos.errors import describe
from oneos.fs.store import Stat
from oneos.runtime.client import KernelClient
from oneos.shell.errors import BrokenPipe
from oneos.shell.streams import PipedOutput, StreamPipe

#: Bytes of a device's stream held for a slow built-in before the device's transfer waits.
DEVICE_PIPE_LIMIT = 64 * 1024
#: Seconds to wait for the kernel's or a device runtime's answer.
RPC_TIMEOUT = 10.0

# The transfer functions, here so tests can replace them.
receive = transfer.receive
send = transfer.send


def is_device_path(path: str) -> bool:
    """Whether a normalised OneOS path is under ``/dev`` (served from the devices, not the file store)."""
    return path == DEV_ROOT or path.startswith(DEV_ROOT + "/")


def is_device_dir(path: str) -> bool:
    """``/dev`` or ``/dev/RUNTIME`` (listed as folders)."""
    return is_device_path(path) and len(_parts(path)) < 2


def dev_entry() -> Stat:
    """``/dev`` as an entry of ``ls /``: a folder that is not in the store (it is the live runtimes' devices)."""
    now = time.time()
    return Stat(DEV_ROOT, "dir", 0, 0o555, "root", now, now)


async def enter_dir(grid: Any, job: Any, path: str) -> None:
    """Check ``cd PATH`` for *path* under /dev: ``/dev`` always, ``/dev/RT`` while RT is alive with devices.

    ENOENT (no such runtime, or one without devices, as ``ls`` says) or
    ENOTDIR (a device) otherwise, as one line naming the path.
    """
    parts = _parts(path)
    if not parts:
        return
    live = await live_runtimes(grid, job)
    status = next((r for r in live if r.id == parts[0]), None)
    if len(parts) == 1 and status is not None and status.devices:
        return
    if len(parts) == 2 and status is not None and any(d.name == parts[1] for d in status.devices):
        raise DeviceError(f"{path}: not a directory", "ENOTDIR")
    raise DeviceError(f"{path}: no such file or directory", NOT_FOUND)


def devices_client(grid: Any) -> DevicesClient:
    """The devices RPC acting for the session's user (the one its file client acts for; None: the runtime)."""
    return DevicesClient(grid.rpc, timeout=RPC_TIMEOUT, user=getattr(grid.fs, "user", None))


def _parts(path: str) -> list[str]:
    return [p for p in path[len(DEV_ROOT) :].split("/") if p]


async def _wait(job: Any, d: defer.Deferred) -> Any:
    return await (job.wait(d) if job is not None else d)


async def live_runtimes(grid: Any, job: Any = None) -> list[Any]:
    """The alive runtimes' statuses (each with its ``devices``), by id."""
    rows = await _wait(job, KernelClient(grid.rpc, timeout=RPC_TIMEOUT).runtimes())
    return sorted((r for r in rows if r.alive), key=lambda r: r.id)


async def locate(grid: Any, job: Any, path: str, direction: str = "") -> tuple[str, Any]:
    """``(runtime, DeviceStatus)`` of device *path*; ENOENT / EACCES as one line naming it.

    A failed device is returned: the runtime tries it again for a new reader
    or writer, and answers ENODEV with the reason if it still fails.
    """
    parts = _parts(path)
    if len(parts) < 2:
        raise DeviceError(f"{path}: is a directory", INVALID)
    if len(parts) > 2:
        raise DeviceError(f"{path}: no such device", NOT_FOUND)
    rt, name = parts
    status = next((r for r in await live_runtimes(grid, job) if r.id == rt), None)
    if status is None:
        raise DeviceError(f"{path}: no such device (runtime {rt} is not running)", NOT_FOUND)
    device = next((d for d in status.devices if d.name == name), None)
    if device is None:
        raise DeviceError(f"{path}: no such device", NOT_FOUND)
    if direction == INPUT and device.direction == OUTPUT:
        raise DeviceError(f"{path}: permission denied (an output device: it can be written, not read)", DENIED)
    if direction == OUTPUT and device.direction == INPUT:
        raise DeviceError(f"{path}: permission denied (an input device: it can be read, not written)", DENIED)
    return rt, device


def _named(path: str, error: BaseException) -> BaseException:
    """*error* as one line naming *path* (a device's RPC or stream error)."""
    if isinstance(error, (BrokenPipe, defer.CancelledError)):
        return error
    text = describe(error)
    if path in text:
        return error
    kind = getattr(error, "kind", None) or getattr(error, "code", None) or FAILED
    return DeviceError(f"{path}: {text}", str(kind))


class _PipeSink:
    """A device's stream into a pipe, as a transfer Sink; fails (closing the connection) once the reader has gone."""

    def __init__(self, pipe: StreamPipe) -> None:
        self.pipe = pipe

    def write(self, data: bytes) -> defer.Deferred:
        try:
            self.pipe.write(data)
        except BrokenPipe as e:
            return defer.fail(e)
        return self.pipe.drain()

    def finish(self) -> defer.Deferred:
        return defer.succeed({})

    def abort(self) -> None:
        pass


class DeviceInput:
    """Device *path* as a Source a built-in reads (opened at the first read, like FileInput).

    What fails (no such device, the device failed, its runtime went away
    mid-stream) reaches the reader as a :class:`DeviceError` naming the
    path, after the bytes that did arrive.  :meth:`close` stops the stream:
    the device's runtime sees its reader leave.
    """

    def __init__(self, grid: Any, path: str, job: Any = None) -> None:
        self.grid = grid
        self.path = path
        self.job = job
        self.pipe = StreamPipe(path, limit=DEVICE_PIPE_LIMIT)
        self.started = False

    def next(self) -> defer.Deferred:
        if not self.started:
            self.started = True
            d = defer.Deferred.fromCoroutine(self._run())
            d.addCallbacks(lambda _: self.pipe.close(), self._failed)
        return self.pipe.next()

    async def _run(self) -> None:
        rt, device = await locate(self.grid, self.job, self.path, INPUT)
        if self.pipe.reader_closed:
            return
        where = await devices_client(self.grid).read(rt, device.name)
        if self.pipe.reader_closed:
            return
        await receive(self.grid.reactor, where.host, where.port, where.token, _PipeSink(self.pipe), **where.options())

    def _failed(self, failure: Any) -> None:
        if self.pipe.reader_closed:
            return  # the reader stopped it (head -c): nothing to say
        self.pipe.fail(_named(self.path, failure.value))

    def close(self) -> None:
        self.pipe.close_reader()


class DeviceOutput(PipedOutput):
    """A built-in's output streamed into device *path* (``echo 1 > /dev/RT/led``), like FileOutput.

    If the device cannot be written (unknown, an input, failed) later
    writes raise BrokenPipe, so the built-in stops, and :meth:`finish`
    returns the error.
    """

    def __init__(self, grid: Any, path: str, job: Any = None) -> None:
        self.path = path
        super().__init__(
            f"> {path}",
            lambda pipe: defer.Deferred.fromCoroutine(self._run(grid, job, pipe)),
            limit=DEVICE_PIPE_LIMIT,
        )

    async def _run(self, grid: Any, job: Any, pipe: StreamPipe) -> None:
        rt, device = await locate(grid, job, self.path, OUTPUT)
        where = await devices_client(grid).write(rt, device.name)
        await send(grid.reactor, where.host, where.port, where.token, pipe, **where.options())

    def _describe(self, error: BaseException) -> BaseException:
        return _named(self.path, error)


def _device_line(device: Any, name: str, long: bool) -> str:
    """``MODE OWNER DIRECTION DRIVER STATE NAME  (reason)``: who may use it first, as ``ls -l`` puts it."""
    if not long:
        return name
    reason = f"  ({device.reason})" if device.reason else ""
    owner = device.owner or "?"
    return f"{mode_string(device.mode)} {owner:<8} {device.direction:<3} {device.driver:<8} {device.state:<6} {name}{reason}"


async def list_dev(grid: Any, job: Any, path: str, long: bool, shown: str) -> list[str]:
    """The lines of ``ls [-l] PATH`` for a path under /dev (*shown*: the path as typed)."""
    parts = _parts(path)
    live = await live_runtimes(grid, job)
    if not parts:
        with_devices = [r for r in live if r.devices]
        if long:
            return [
                f"d--------- {len(r.devices):>3} device{'s' if len(r.devices) != 1 else ''}  {r.id}"
                for r in with_devices
            ]
        return [f"{r.id}/" for r in with_devices]
    status = next((r for r in live if r.id == parts[0]), None)
    if status is None or (len(parts) == 1 and not status.devices):
        raise DeviceError(f"{shown}: no such file or directory", NOT_FOUND)
    if len(parts) == 1:
        return [_device_line(d, d.name, long) for d in sorted(status.devices, key=lambda d: d.name)]
    device = next((d for d in status.devices if d.name == parts[1]), None) if len(parts) == 2 else None
    if device is None:
        raise DeviceError(f"{shown}: no such file or directory", NOT_FOUND)
    return [_device_line(device, shown, long)]
