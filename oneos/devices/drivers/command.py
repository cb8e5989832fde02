"""``command``: a program as a device.

Input: the program's standard output is the device's stream (a sensor
script, ``arecord``).  Output: what writers send is the program's standard
input (a printer's ``lpr``, a display script).

Options: ``cmd`` (the command line, split like a shell's words with
``shlex``, run without a shell; needed), ``unit`` (input: ``chunk``, the
default, or ``line``: the stream is cut into lines and a dropping reader
misses whole lines), ``wait`` (output: seconds the program gets to end
after its input closes, default 10; then it is stopped).

The program runs while the device is in use: an input's from its first
reader until its last one leaves (after the device's ``linger``), an
output's from its first writer until its last writer ends, when its input
is closed and its exit status is the last writer's answer.  Its death with
a non-zero status (or a signal) marks the device failed with the status and
the last line of its standard error; its readers end with that error.  An
input whose program exits with status 0 ends its readers' streams cleanly
(the next reader starts it again).  A slow reader blocks by default: the
program's output is not read while any reader is behind, so its writes
block like a UNIX pipe's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from oneos.devices.base import CHUNK, LINE, Emit, InputDriver, LineSplitter, OutputDriver
from oneos.devices.drivers.process import DeviceProgram, find_program, program_argv
from oneos.devices.errors import FAILED, DeviceError
from oneos.devices.info import BLOCK
from oneos.devices.options import Options


class CommandInput(InputDriver):
    driver = "command"
    slow = BLOCK
    queue = 16

    def __init__(self, reactor: Any, options: Options) -> None:
        super().__init__(reactor, options)
        self.argv = program_argv(options.required("cmd", "the program to run"))
        self.lines = options.choice("unit", CHUNK, (CHUNK, LINE)) == LINE
        self.program: DeviceProgram | None = None

    @property
    def unit(self) -> str:  # type: ignore[override]  # per device: chunks or lines
        return LINE if self.lines else CHUNK

    def check(self) -> None:
        find_program(self.argv[0])

    def start(self, emit: Emit) -> None:
        splitter = LineSplitter() if self.lines else None

        def out(data: bytes) -> None:
            if splitter is None:
                emit.unit(data)
            else:
                for line in splitter.feed(data):
                    emit.unit(line)

        def ended(error: DeviceError | None) -> None:
            if splitter is not None and (rest := splitter.rest()):
                emit.unit(rest)
            self.program = None
            emit.end(error)

        self.program = DeviceProgram(self.reactor, self.argv, f"command {self.argv[0]}", out, ended)
        self.program.spawn(stdin=False)

    def pause(self) -> None:
        if self.program is not None:
            self.program.pause_output()

    def resume(self) -> None:
        if self.program is not None:
            self.program.resume_output()

    def stop(self) -> defer.Deferred | None:
        program, self.program = self.program, None
        return program.stop() if program is not None else None


class CommandOutput(OutputDriver):
    driver = "command"
    unit = CHUNK
    on_demand = True

    def __init__(self, reactor: Any, options: Options) -> None:
        super().__init__(reactor, options)
        self.argv = program_argv(options.required("cmd", "the program to run"))
        self.wait = options.number("wait", 10.0, 0.0, 86400.0)
        self.program: DeviceProgram | None = None

    def check(self) -> None:
        find_program(self.argv[0])

    def start(self, failed: Callable[[DeviceError], None]) -> None:
        def ended(error: DeviceError | None) -> None:
            self.program = None
            failed(error or DeviceError(f"command {self.argv[0]} ended before its input did", FAILED))

        self.program = DeviceProgram(self.reactor, self.argv, f"command {self.argv[0]}", lambda data: None, ended)
        self.program.spawn(stdin=True)

    def write(self, data: bytes) -> defer.Deferred:
        if self.program is None:
            return defer.fail(DeviceError(f"command {self.argv[0]} is not running", FAILED))
        return self.program.write(data)

    def stop(self) -> defer.Deferred | None:
        program, self.program = self.program, None
        if program is None:
            return None
        d = program.close_input()  # its exit status is the answer now, not a failure report
        timer = self.reactor.callLater(self.wait, program.stop)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(done)
