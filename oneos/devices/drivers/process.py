"""A device's program as a child of the runtime (shared by the ``command`` and ``video`` drivers).

The program runs as the runtime's own account: devices are named by the
machine's owner (``config.json``, the runtime's flags), never by a user of
the network, and a camera or a GPIO chip is usually readable only by that
account.  Its standard output goes to a callback (reading pauses while the
device's readers are behind), its standard input takes writes with
back-pressure, and the last lines of its standard error are kept for the
message when it fails.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from oneos.devices.errors import FAILED, INVALID, DeviceError

#: bytes of a program's standard error kept for messages
STDERR_TAIL = 2048
#: seconds between SIGTERM and SIGKILL when a device's program is stopped
STOP_GRACE = 3.0


def program_argv(command: str, option: str = "cmd") -> list[str]:
    """The argv of a shell-like command line (no shell is run); EINVAL if it is empty or unbalanced."""
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise DeviceError(f"option {option}={command}: {e}", INVALID) from None
    if not argv:
        raise DeviceError(f"option {option} is needed: the program to run", INVALID)
    return argv


def find_program(name: str, what: str = "program") -> str:
    """The path of *name* (a path, or a name on the PATH); ENODEV with the reason if there is none."""
    if os.sep in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return name
        raise DeviceError(f"{what} {name} not found (or not executable)", FAILED)
    found = shutil.which(name)
    if found is None:
        raise DeviceError(f"{what} {name!r} not found on the PATH", FAILED)
    return found


class DeviceProgram(protocol.ProcessProtocol):
    """One run of a device's program (see the module docstring).

    *on_out* gets stdout's bytes; *on_end* is called once with None (exit
    status 0) or a DeviceError naming the exit status and the end of
    stderr, unless :meth:`stop` was called first (an expected end).
    """

    def __init__(
        self,
        reactor: Any,
        argv: list[str],
        what: str,
        on_out: Callable[[bytes], None],
        on_end: Callable[[DeviceError | None], None],
    ) -> None:
        self.reactor = reactor
        self.argv = argv
        self.what = what
        self.on_out = on_out
        self.on_end = on_end
        self.stderr = b""
        self.pid: int | None = None
        #: stopped on purpose: its end is no failure
        self.stopping = False
        #: its input was closed: its exit status answers close_input(), nobody else
        self.closing = False
        self.over = False
        #: how it ended (None: status 0 or stopped on purpose), once over
        self.outcome: DeviceError | None = None
        self._end_waiters: list[defer.Deferred] = []
        self._kill: Any = None
        #: stdin back-pressure: writes wait while the pipe is full
        self._paused_in = False
        self._waiting: list[defer.Deferred] = []

    def spawn(self, stdin: bool = False) -> None:
        """Start the program (*stdin*: keep its input open for writes; else it reads end of file)."""
        try:
            self.reactor.spawnProcess(
                self, self.argv[0], self.argv, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"}
            )
        except OSError as e:
            raise DeviceError(f"cannot start {self.what}: {e}", FAILED) from None
        if not stdin and self.transport is not None:
            self.transport.closeStdin()

    def _pipe(self, fd: int) -> Any:
        return getattr(self.transport, "pipes", {}).get(fd)

    # -- ProcessProtocol ------------------------------------------------------
    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)
        writer = self._pipe(0)
        if writer is not None:
            writer.registerProducer(self, True)

    def outReceived(self, data: bytes) -> None:
        if not self.over:
            self.on_out(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-STDERR_TAIL:]

    def processEnded(self, reason: Failure) -> None:
        self.over = True
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._release(DeviceError(f"{self.what} ended", "EPIPE"))
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        if self.stopping:
            error = None
        elif code == 0 and not sig:
            error = None
        else:
            how = f"was killed by signal {sig}" if sig else f"exited with status {code}"
            tail = self.stderr.decode("utf-8", "replace").strip().splitlines()
            error = DeviceError(f"{self.what} {how}" + (f": {tail[-1].strip()}" if tail else ""), FAILED)
        self.outcome = error
        if not (self.stopping or self.closing):
            self.on_end(error)
        waiters, self._end_waiters = self._end_waiters, []
        for d in waiters:
            d.callback(error)

    def when_ended(self) -> defer.Deferred:
        """Fires with how it ended (None, or the DeviceError naming its status) once it has."""
        if self.over:
            return defer.succeed(self.outcome)
        d: defer.Deferred = defer.Deferred()
        self._end_waiters.append(d)
        return d

    # -- flow control ------------------------------------------------------------
    def pause_output(self) -> None:
        pipe = self._pipe(1)
        if pipe is not None:
            pipe.pauseProducing()

    def resume_output(self) -> None:
        pipe = self._pipe(1)
        if pipe is not None:
            pipe.resumeProducing()

    # IPushProducer for the stdin pipe
    def pauseProducing(self) -> None:
        self._paused_in = True

    def resumeProducing(self) -> None:
        self._paused_in = False
        self._release(None)

    def stopProducing(self) -> None:
        self._release(DeviceError(f"{self.what} closed its input", FAILED))

    def _release(self, error: DeviceError | None) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

    def write(self, data: bytes) -> defer.Deferred:
        """Send *data* to its stdin; fires when it may take more."""
        if self.over or self.transport is None:
            return defer.fail(DeviceError(f"{self.what} is not running", FAILED))
        self.transport.write(data)
        if not self._paused_in:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def close_input(self) -> defer.Deferred:
        """Close its stdin and wait for it to end: fires with None, or fails with its exit status."""
        self.closing = True
        if not self.over and self.transport is not None:
            self.transport.closeStdin()

        def outcome(error: DeviceError | None) -> None:
            if error is not None:
                raise error

        return self.when_ended().addCallback(outcome)

    def stop(self, grace: float = STOP_GRACE) -> defer.Deferred:
        """End it on purpose (SIGTERM, SIGKILL after *grace*); fires once it has ended."""
        self.stopping = True
        if not self.over and self.transport is not None:
            try:
                self.transport.signalProcess("TERM")
            except Exception:  # already gone: processEnded is on its way
                pass
            self._kill = self.reactor.callLater(grace, self._force)
        return self.when_ended().addCallback(lambda _: None)

    def _force(self) -> None:
        self._kill = None
        if not self.over and self.transport is not None:
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass
