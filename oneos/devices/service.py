"""The runtime's ``devices`` service: the devices this machine exposes, served to the whole grid.

One :class:`ServedDevice` per configured device holds its driver (see
:mod:`oneos.devices.base`), its state (``ok`` or ``failed`` with the
reason), its readers and writers and its counters.  The service's RPC
handlers (on the runtime's own target, next to the agents'; their client is
:class:`oneos.devices.client.DevicesClient`):

* ``device_list()``: every device as a :class:`~oneos.devices.info.DeviceInfo` record;
* ``device_read(name, units=0)``: a :class:`~oneos.transfer.StreamAddress`
  whose stream is the device's data (*units*: end after that many frames,
  lines or chunks; 0: until the reader leaves or the device ends);
* ``device_write(name)``: a StreamAddress to stream into the device;
* ``device_pipe_out(name, host, port, token, units=0, to='', tls=False)``:
  this runtime sends the device's data into a stream another runtime
  offered (an agent's ``agent_stdin``), so a pipeline's bytes go device to
  program directly.

Lifecycle: the service builds each driver when the runtime is built
(reading options only: a bad option or an unknown driver marks the device
failed for good), checks them when it starts (a missing program marks it
failed), opens the always-on ones (GPIO, dump), and starts the on-demand
ones (video, command, random) when their first reader or writer comes.  A
driver that fails later marks its device failed and ends its readers with
the reason; a new reader or writer of such a device tries again (check,
then start), so a camera plugged back in works without a restart.

Who may use a device: each has an ``owner`` (a OneOS user) and a ``mode``
(rwx bits, owner and other, judged by :func:`oneos.fs.permissions.permitted`
as files are; no groups), from its options ``owner=`` and ``mode=``; by
default the OS account the runtime runs as owns it, with mode 0600, so a
device a machine's owner plugs in is theirs alone until they open it up.
Every handler takes ``user``, the OneOS user the call is made for (pinned by
the RPC server for a client identity; named by a runtime acting for a user;
None for a runtime acting for itself, which like the admin ``root`` is never
refused).  Reading needs ``r``, writing ``w``; the check comes before any
reader or writer is made, so a refused user never starts a driver.
``device_list`` shows every device to everyone, with its owner and mode,
as ``ls`` shows entries one may not read.

Errors: an unknown device is ``ENOENT``, reading an output or writing an
input ``EACCES``, a user the mode does not let ``EACCES``, a failed device
``ENODEV`` (oneos.devices.errors).
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from oneos.config import DEFAULT_DEVICE_MODE, Device
from oneos.devices.base import LINE, InputDriver, LineSplitter, OutputDriver
from oneos.devices.drivers import DRIVERS
from oneos.devices.errors import DENIED, FAILED, NOT_FOUND, DeviceError
from oneos.devices.fanout import Hub, Reader
from oneos.devices.info import BLOCK, DROP, INPUT, OK, OUTPUT, DeviceInfo, format_mode
from oneos.devices.info import FAILED as FAILED_STATE
from oneos.devices.options import Options
from oneos.fs.permissions import ADMIN, READ, WRITE, permitted
from oneos.transfer import send

log = Logger()

#: seconds an on-demand input keeps running after its last reader left (a quick next reader reuses it)
DEFAULT_LINGER = 2.0


def default_device_owner() -> str:
    """Who owns a device configured without ``owner=``: the OS account this runtime runs as.

    That is the name a local ``oneos`` shell logs in as by default, so the
    machine's owner can use their own devices on a first start without
    configuring anything, and nobody else can.  If the account has no name
    (no passwd entry, no LOGNAME), the admin owns it: still nobody else.
    """
    try:
        return getpass.getuser() or ADMIN
    except (OSError, KeyError, ImportError):
        return ADMIN


class Writer:
    """One writer of an output device: the transfer Sink its stream is written into."""

    def __init__(self, device: ServedDevice) -> None:
        self.device = device
        self.lines = LineSplitter() if device.unit == LINE else None
        self.bytes = 0
        self.done = False

    def write(self, data: bytes) -> defer.Deferred:
        return self.device._write(self, data)

    def finish(self) -> defer.Deferred:
        return self.device._finish(self)

    def abort(self) -> None:
        self.device._abort(self)


class ServedDevice:
    """One device of this runtime (see the module docstring)."""

    def __init__(
        self,
        runtime_id: str,
        reactor: Any,
        config: Device,
        on_change: Callable[[], Any],
        *,
        default_owner: str | None = None,
    ) -> None:
        self.runtime_id = runtime_id
        self.reactor = reactor
        self.config = config
        self.name = config.name
        self.direction = config.direction
        self.on_change = on_change
        self.state = OK
        self.reason = ""
        #: the failure is the configuration's (unknown driver, bad option): no retry helps
        self.permanent = False
        self.driver: InputDriver | OutputDriver | None = None
        self.slow = ""
        self.queue = 1
        self.linger = 0.0
        self.running = False
        #: the runtime is stopping: nothing starts again
        self.closed = False
        self.hub: Hub | None = None
        #: readers offered or attached (the hub holds the attached ones)
        self.readers: set[Reader] = set()
        self.writers: set[Writer] = set()
        self.bytes = 0
        self.units = 0
        self._linger: Any = None
        #: the input driver's current run (what it emits into); None when stopped
        self._run: _Run | None = None
        #: writers waiting while the output driver opens
        self._starting: list[defer.Deferred] | None = None
        #: who may use it (module docstring): the configured owner, else the runtime's account
        self.owner = config.owner or default_owner or default_device_owner()
        self.mode = DEFAULT_DEVICE_MODE
        try:
            self._access()
            self._build()
        except DeviceError as e:
            self.permanent = True
            self.state, self.reason = FAILED_STATE, str(e)

    @property
    def label(self) -> str:
        return f"device {self.name} on {self.runtime_id}"

    @property
    def unit(self) -> str:
        return self.driver.unit if self.driver is not None else "chunk"

    def _access(self) -> None:
        """Read ``mode=`` (a Device built without the configuration's checks may hold a bad one)."""
        try:
            self.mode = self.config.mode
        except ValueError as e:
            raise DeviceError(f"option {e}", "EINVAL") from None

    def check_access(self, user: str | None, want: int) -> None:
        """EACCES naming the device and the user unless *user* may do *want* (READ or WRITE) to it."""
        if permitted(user, self.owner, self.mode, want):
            return
        verb = "read" if want == READ else "write"
        raise DeviceError(
            f"{self.label}: permission denied: user {user} may not {verb} it"
            f" (owner {self.owner}, mode {format_mode(self.mode)})",
            DENIED,
        )

    def _build(self) -> None:
        kinds = DRIVERS.get(self.config.driver)
        if kinds is None:
            known = ", ".join(sorted(DRIVERS))
            raise DeviceError(f"unknown driver {self.config.driver!r} (known: {known})", FAILED)
        cls = kinds.get(self.direction)
        if cls is None:
            has = " and ".join("an input" if d == INPUT else "an output" for d in kinds)
            raise DeviceError(f"the {self.config.driver} driver has no {self.direction!r} side (it is {has})", FAILED)
        options = Options(self.config.driver_options)
        if self.direction == INPUT:
            assert issubclass(cls, InputDriver)
            self.slow = options.choice("slow", cls.slow, (DROP, BLOCK))
            if self.slow == BLOCK and not cls.pausable:
                raise DeviceError(f"option slow=block: the {cls.driver} driver cannot pause, only drop", "EINVAL")
            self.queue = options.integer("queue", cls.queue, 1, 100_000)
            self.linger = options.number("linger", DEFAULT_LINGER if cls.on_demand else 0.0, 0.0, 86400.0)
        self.driver = cls(self.reactor, options)
        options.finish(self.config.driver)
        if isinstance(self.driver, InputDriver):
            self.hub = Hub(self.slow, self.driver.pause, self.driver.resume)

    # -- state ---------------------------------------------------------------------
    def _fail(self, error: DeviceError | str) -> None:
        reason = str(error)
        changed = (self.state, self.reason) != (FAILED_STATE, reason)
        self.state, self.reason = FAILED_STATE, reason
        if changed:
            log.warn("{label} failed: {reason}", label=self.label, reason=reason)
            self.on_change()

    def _recovered(self) -> None:
        if self.state != OK:
            self.state, self.reason = OK, ""
            log.info("{label} is ok again", label=self.label)
            self.on_change()

    def info(self) -> DeviceInfo:
        driver = self.driver
        value = None
        if driver is not None:
            try:
                value = driver.value()
            except Exception:
                value = None
        hub = self.hub
        return DeviceInfo(
            runtime=self.runtime_id,
            name=self.name,
            direction=self.direction,
            driver=self.config.driver,
            state=self.state,
            reason=self.reason,
            options=dict(self.config.options),
            slow=self.slow,
            unit=self.unit,
            running=self.running,
            readers=len(hub.readers) if hub is not None else 0,
            writers=len(self.writers),
            bytes=hub.bytes if hub is not None else self.bytes,
            units=hub.units if hub is not None else self.units,
            dropped=hub.dropped if hub is not None else 0,
            value=value,
            owner=self.owner,
            mode=self.mode,
        )

    def _usable(self) -> None:
        """Raise ENODEV if the device cannot be used now; a failed device that may work again is checked again."""
        if self.closed:
            raise DeviceError(f"{self.label} is going away: its runtime is stopping", FAILED)
        if self.state == OK:
            return
        if self.permanent or self.driver is None:
            raise DeviceError(f"{self.label} failed: {self.reason}", FAILED)
        try:
            self.driver.check()
        except DeviceError as e:
            self._fail(e)
            raise DeviceError(f"{self.label} failed: {e}", FAILED) from None
        self._recovered()

    # -- start and stop ------------------------------------------------------------
    def open(self) -> None:
        """At the runtime's start: check the driver, and start it now unless it runs on demand."""
        if self.driver is None or self.permanent:
            return
        try:
            self.driver.check()
        except DeviceError as e:
            self._fail(e)
            return
        if not self.driver.on_demand:
            if isinstance(self.driver, InputDriver):
                self._start_input()
            else:
                self._start_output().addErrback(lambda f: None)

    def close(self) -> defer.Deferred:
        """At the runtime's stop: end every reader, stop the driver."""
        self.closed = True
        self._cancel_linger()
        if self.hub is not None:
            self.hub.end(DeviceError(f"{self.label} is going away: its runtime is stopping", FAILED))
        for reader in list(self.readers):
            reader.end(DeviceError(f"{self.label} is going away: its runtime is stopping", FAILED))
        return self._stop_driver()

    def _stop_driver(self) -> defer.Deferred:
        if not self.running or self.driver is None:
            return defer.succeed(None)
        self.running, self._run = False, None
        d = defer.maybeDeferred(self.driver.stop)
        return d.addErrback(lambda f: log.info("{label}: stopping: {why}", label=self.label, why=f.getErrorMessage()))

    # -- input ---------------------------------------------------------------------
    def reader(self, units: int = 0, *, user: str | None) -> Reader:
        """A new reader (the Source of one stream) for *user*; EACCES for an output or without r, ENODEV when failed."""
        if self.direction != INPUT:
            raise DeviceError(f"{self.label} is an output device: it can be written, not read", DENIED)
        self.check_access(user, READ)
        if isinstance(units, bool) or not isinstance(units, int) or units < 0:
            raise DeviceError(f"units must be a count (0: no limit), not {units!r}", "EINVAL")
        self._usable()
        reader = Reader(self.slow, self.queue, self._attach, limit=units, label=self.label)
        self.readers.add(reader)
        return reader

    def _attach(self, reader: Reader) -> None:
        """The reader's consumer connected: give it the device's units (starting the driver if need be)."""
        assert self.hub is not None and isinstance(self.driver, InputDriver)
        self._cancel_linger()
        if not self.running:
            if self.state != OK or self.closed:
                try:
                    self._usable()
                except DeviceError as e:
                    reader.end(e)
                    return
            self._start_input()
        if not self.running:
            reader.end(DeviceError(f"{self.label} failed: {self.reason}", FAILED))
            return
        self.hub.add(reader, self.driver.snapshot())

    def detach(self, reader: Reader) -> None:
        """The reader's stream is over (finished, failed, or never claimed)."""
        self.readers.discard(reader)
        if self.hub is not None:
            self.hub.remove(reader)
            if not self.hub.readers and self.running and self.driver is not None and self.driver.on_demand:
                self._cancel_linger()
                if self.linger:
                    self._linger = self.reactor.callLater(self.linger, self._idle)
                else:
                    self._idle()

    def _idle(self) -> None:
        self._linger = None
        if self.hub is not None and not self.hub.readers:
            self._stop_driver()

    def _cancel_linger(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None

    def _start_input(self) -> None:
        assert isinstance(self.driver, InputDriver) and self.hub is not None
        self.hub.paused = False
        self.running = True
        self._run = run = _Run(self)
        try:
            self.driver.start(run)
        except DeviceError as e:
            self.running, self._run = False, None
            self._fail(e)
            return
        except Exception as e:
            self.running, self._run = False, None
            self._fail(DeviceError(f"{type(e).__name__}: {e}", FAILED))
            log.failure("{label}: the driver failed to start", label=self.label)
            return
        if self.running:
            self._recovered()

    def _produced(self, run: _Run, data: bytes) -> None:
        if run is self._run and self.hub is not None:
            self.hub.unit(data)

    def _ended_run(self, run: _Run, error: DeviceError | None) -> None:
        """The driver ended: its readers' streams end (with the error); a failure marks the device failed."""
        if run is not self._run:
            return  # a run stopped on purpose: nothing to tell
        self._run = None
        self.running = False
        self._cancel_linger()
        if error is not None:
            self._fail(error)
            error = DeviceError(f"{self.label} failed: {error}", FAILED)
        if self.hub is not None:
            self.hub.end(error)

    # -- output --------------------------------------------------------------------
    def writer(self, *, user: str | None) -> Writer:
        """A new writer (the Sink of one stream) for *user*; EACCES for an input or without w, ENODEV when failed."""
        if self.direction != OUTPUT:
            raise DeviceError(f"{self.label} is an input device: it can be read, not written", DENIED)
        self.check_access(user, WRITE)
        self._usable()
        writer = Writer(self)
        self.writers.add(writer)
        return writer

    def _start_output(self) -> defer.Deferred:
        """Open the output driver if it is not open; fires once it is (or fails with why not)."""
        if self.running:
            return defer.succeed(None)
        if self.closed:
            return defer.fail(DeviceError(f"{self.label} is going away: its runtime is stopping", FAILED))
        d: defer.Deferred = defer.Deferred()
        if self._starting is not None:  # being opened for another writer: wait for that
            self._starting.append(d)
            return d
        assert isinstance(self.driver, OutputDriver)
        self._starting = [d]

        def failed(error: DeviceError) -> None:
            self.running = False
            self._fail(error)

        def settle(result: Any) -> None:
            waiting, self._starting = self._starting or [], None
            if isinstance(result, Failure):
                error = result.value if isinstance(result.value, DeviceError) else None
                error = error or DeviceError(result.getErrorMessage(), FAILED)
                self._fail(error)
                for w in waiting:
                    w.errback(DeviceError(f"{self.label} failed: {error}", FAILED))
                return
            self.running = True
            self._recovered()
            for w in waiting:
                w.callback(None)

        defer.maybeDeferred(self.driver.start, failed).addBoth(settle)
        return d

    @defer.inlineCallbacks
    def _write(self, writer: Writer, data: bytes) -> Any:
        if writer.done:
            raise DeviceError(f"{self.label}: this stream has ended", "EPIPE")
        if self.state != OK:
            raise DeviceError(f"{self.label} failed: {self.reason}", FAILED)
        yield self._start_output()
        pieces = writer.lines.feed(data) if writer.lines is not None else [data]
        writer.bytes += len(data)
        self.bytes += len(data)
        for piece in pieces:
            yield self._put(piece)

    @defer.inlineCallbacks
    def _put(self, piece: bytes) -> Any:
        assert isinstance(self.driver, OutputDriver)
        try:
            yield defer.maybeDeferred(self.driver.write, piece)
        except DeviceError as e:
            if e.kind != "EINVAL":  # a bad value is the writer's problem; anything else is the device's
                self._fail(e)
                raise DeviceError(f"{self.label} failed: {e}", e.kind) from None
            raise DeviceError(f"{self.label}: {e}", e.kind) from None
        self.units += 1

    @defer.inlineCallbacks
    def _finish(self, writer: Writer) -> Any:
        rest = writer.lines.rest() if writer.lines is not None else b""
        try:
            if rest:
                yield self._start_output()
                yield self._put(rest)
        finally:
            writer.done = True
            self.writers.discard(writer)
        if not self.writers and self.running and self.driver is not None and self.driver.on_demand:
            self.running = False
            try:
                yield defer.maybeDeferred(self.driver.stop)
            except DeviceError as e:
                self._fail(e)
                raise DeviceError(f"{self.label} failed: {e}", FAILED) from None
        return {"bytes": writer.bytes, "device": self.name}

    def _abort(self, writer: Writer) -> None:
        writer.done = True
        self.writers.discard(writer)
        if not self.writers and self.running and self.driver is not None and self.driver.on_demand:
            self._stop_driver()


class _Run:
    """Where one run of an input driver emits (base.Emit): a run stopped on purpose is ignored."""

    def __init__(self, device: ServedDevice) -> None:
        self.device = device

    def unit(self, data: bytes) -> None:
        self.device._produced(self, data)

    def end(self, error: DeviceError | None) -> None:
        self.device._ended_run(self, error)


class DeviceService(service.Service):
    """The devices of this runtime (see the module docstring)."""

    name = "devices"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        runtime_id: str,
        reactor: Any,
        transfer: Any,
        devices: Sequence[Device],
        *,
        on_change: Callable[[], Any] | None = None,
        owner: str | None = None,
    ) -> None:
        self.runtime_id = runtime_id
        self.reactor = reactor
        self.transfer = transfer
        #: called when a device's state changes (the runtime publishes its status at once)
        self.on_change = on_change
        #: who owns a device configured without ``owner=`` (None: this runtime's OS account, read now)
        default_owner = owner or default_device_owner()
        self.devices: dict[str, ServedDevice] = {
            d.name: ServedDevice(runtime_id, reactor, d, self._changed, default_owner=default_owner) for d in devices
        }

    def _changed(self) -> None:
        if self.on_change is not None and self.running:
            self.on_change()

    def startService(self) -> None:
        super().startService()
        for device in self.devices.values():
            device.open()
        for device in self.devices.values():
            if device.state != OK:
                log.warn("{label} is failed: {reason}", label=device.label, reason=device.reason)
        if self.devices:
            ok = sum(1 for d in self.devices.values() if d.state == OK)
            log.info("devices: {ok} of {n} ok ({names})", ok=ok, n=len(self.devices), names=", ".join(self.devices))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.DeferredList([d.close() for d in self.devices.values()]).addCallback(lambda _: None)

    # -- what the runtime's status says ------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """Each device's short form (name, direction, driver, state, reason, owner, mode) for the retained status."""
        return [d.info().status_entry() for d in self.devices.values()]

    # -- RPC -------------------------------------------------------------------------
    def handlers(self) -> dict[str, Any]:
        """The runtime's device methods, by RPC method name (their client: oneos.devices.client.DevicesClient)."""
        return {
            "device_list": self.list_devices,
            "device_read": self.read,
            "device_write": self.write,
            "device_pipe_out": self.pipe_out,
        }

    def _get(self, name: str) -> ServedDevice:
        device = self.devices.get(name)
        if device is None:
            raise DeviceError(f"no device {name!r} on runtime {self.runtime_id}", NOT_FOUND)
        return device

    def list_devices(self, user: str | None = None) -> list[dict[str, Any]]:
        """Every device of this runtime, with its owner and mode (*user*: the caller's; everyone sees every device)."""
        return [d.info().encode() for d in self.devices.values()]

    def read(self, name: str, units: int = 0, user: str | None = None) -> dict[str, Any]:
        """A stream of the device's data for *user* (who needs r): where to connect (host, port, token)."""
        device = self._get(name)
        reader = device.reader(units, user=user)
        token, done = self.transfer.offer(source=reader)
        done.addBoth(lambda result: self._ended(device, reader, result))
        return {**self.transfer.where(), "token": token}

    def write(self, name: str, user: str | None = None) -> dict[str, Any]:
        """A stream into the device for *user* (who needs w): where to connect (host, port, token)."""
        device = self._get(name)
        writer = device.writer(user=user)
        token, done = self.transfer.offer(sink=writer)
        done.addErrback(
            lambda f: log.info("{label}: a writer's stream ended: {why}", label=device.label, why=f.getErrorMessage())
        )
        return {**self.transfer.where(), "token": token}

    def pipe_out(
        self,
        name: str,
        host: str,
        port: int,
        token: str,
        units: int = 0,
        to: str = "",
        tls: bool = False,
        user: str | None = None,
    ) -> dict[str, Any]:
        """Send the device's data into a stream offered elsewhere (a program's stdin; *to* names it); *user* needs r."""
        device = self._get(name)
        reader = device.reader(units, user=user)
        d = send(self.reactor, host, port, token, reader, tls=bool(tls) or None)
        d.addBoth(lambda result: self._ended(device, reader, result, to or f"{host}:{port}"))
        return {"ok": True}

    def _ended(self, device: ServedDevice, reader: Reader, result: Any, to: str = "") -> None:
        device.detach(reader)
        if isinstance(result, Failure):
            log.info(
                "{label}: a reader's stream{to} ended: {why}",
                label=device.label,
                to=f" to {to}" if to else "",
                why=result.getErrorMessage(),
            )
