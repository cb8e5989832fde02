"""Devices as files in the shell (/dev/RT/NAME): ls, cat, head, > and <, with a fake RPC and fake transfers on task.Clock."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest
from twisted.internet import defer, task

from oneos.devices.errors import DeviceError
from oneos.runtime.status import DeviceStatus, RuntimeStatus
from oneos.shell import devices
from oneos.shell.errors import BrokenPipe
from oneos.shell.interpreter import Interpreter
from oneos.shell.session import Grid, Session
from oneos.testing.shell import FakeFS, Out
from oneos.transfer import TransferError

CHUNK = b"x" * 4096


def _statuses() -> list[RuntimeStatus]:
    return [
        RuntimeStatus("rt-1", "i1"),
        RuntimeStatus(
            "rt-2",
            "i2",
            devices=(
                DeviceStatus("rnd", "in", "random", owner="ann", mode=0o644),
                DeviceStatus("led", "out", "gpio", owner="root", mode=0o600),
                DeviceStatus("cam0", "in", "video", "failed", "ffmpeg not found"),  # a runtime before permissions
            ),
        ),
        RuntimeStatus("rt-3", "i3", state="dead", devices=(DeviceStatus("old", "in", "random"),)),
    ]


class FakeRPC:
    """The kernel's ``runtimes`` and rt-2's device methods."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.failing: dict[str, BaseException] = {}

    def call(self, target: str, method: str, timeout: float | None = None, **args: Any) -> defer.Deferred:
        self.calls.append((target, method, args))
        if method == "runtimes":
            return defer.succeed([asdict(s) for s in _statuses()])
        name = args.get("name", "")
        if name in self.failing:
            return defer.fail(self.failing[name])
        if method in ("device_read", "device_write"):
            return defer.succeed({"host": "127.0.0.1", "port": 1, "token": f"{method}:{name}"})
        return defer.fail(DeviceError(f"unexpected {method}", "EINVAL"))


class FakeTransfers:
    """``receive`` pumps a device's chunks on the clock into the sink; ``send`` keeps what a source gives."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.limit: dict[str, int] = {}  # token -> chunks before the end (absent: endless)
        self.fail_after: dict[str, int] = {}
        self.sent: dict[str, bytes] = {}
        self.received: dict[str, int] = {}
        self.closed: list[str] = []

    def receive(self, reactor: Any, host: str, port: int, token: str, sink: Any, tls: Any = None) -> defer.Deferred:
        result: defer.Deferred = defer.Deferred()
        self.received[token] = 0

        def pump() -> None:
            n = self.received[token]
            if token in self.fail_after and n >= self.fail_after[token]:
                result.errback(TransferError("the sender vanished before the end of the stream", "EPIPE"))
                return
            if token in self.limit and n >= self.limit[token]:
                sink.finish().chainDeferred(result)
                return
            self.received[token] = n + 1
            sink.write(CHUNK).addCallbacks(lambda _: self.clock.callLater(0.001, pump), gone)

        def gone(failure: Any) -> None:
            self.closed.append(token)  # the real receive aborts the connection here
            result.errback(failure)

        self.clock.callLater(0.001, pump)
        return result

    def send(self, reactor: Any, host: str, port: int, token: str, source: Any, tls: Any = None) -> defer.Deferred:
        self.sent[token] = b""

        def more(data: bytes) -> Any:
            if not data:
                return {}
            self.sent[token] += data
            return source.next().addCallback(more)

        return source.next().addCallback(more)


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch):
    clock = task.Clock()
    transfers = FakeTransfers(clock)
    monkeypatch.setattr(devices, "receive", transfers.receive)
    monkeypatch.setattr(devices, "send", transfers.send)
    rpc = FakeRPC()
    out, err = Out(), Out()
    interp = Interpreter(Session("ann", home="/home"), Grid(FakeFS(), rpc, None, clock), out, err)
    return interp, out, err, rpc, transfers, clock


def run(shell: Any, line: str) -> int:
    interp, _, _, _, _, clock = shell
    results: list[Any] = []
    interp.execute(line).addBoth(results.append)
    for _ in range(100_000):
        if results:
            break
        clock.advance(0.001)
    assert results, f"{line!r} did not end"
    return results[0]


def test_ls_dev_lists_live_runtimes_with_devices(shell):
    _, out, err, _, _, _ = shell
    assert run(shell, "ls /dev") == 0
    assert out.text == "rt-2/\n"  # rt-1 has none, rt-3 is dead
    assert run(shell, "ls /dev/rt-2") == 0
    assert out.text.split()[1:] == ["cam0", "led", "rnd"]
    out.data.clear()
    assert run(shell, "ls -l /dev/rt-2") == 0
    lines = out.text.splitlines()
    assert lines[0].split() == ["c?????????", "?", "in", "video", "failed", "cam0", "(ffmpeg", "not", "found)"]
    assert lines[1].split() == ["crw-------", "root", "out", "gpio", "ok", "led"]
    assert lines[2].split() == ["crw-r--r--", "ann", "in", "random", "ok", "rnd"]
    out.data.clear()
    assert run(shell, "ls -l /dev/rt-2/rnd; ls /dev") == 0
    assert out.text.split()[:6] == ["crw-r--r--", "ann", "in", "random", "ok", "/dev/rt-2/rnd"]
    assert run(shell, "ls /dev/rt-3") == 1 and "/dev/rt-3: no such file or directory" in err.text
    assert run(shell, "ls /dev/rt-2/nope") == 1 and "/dev/rt-2/nope: no such file" in err.text


def test_cat_device_head_stops_the_stream(shell):
    _, out, err, rpc, transfers, _ = shell
    assert run(shell, "cat /dev/rt-2/rnd | head -c 64 | wc -c") == 0
    assert out.text.strip() == "64" and err.text == ""
    assert ("rt-2", "device_read", {"name": "rnd"}) in rpc.calls
    token = "device_read:rnd"
    assert token in transfers.closed  # the reader left: the stream was closed
    assert transfers.received[token] < 64  # bounded: back-pressure, not everything buffered


def test_head_reads_a_device_and_closes_it(shell):
    _, out, _, _, transfers, _ = shell
    assert run(shell, "head -c 10 /dev/rt-2/rnd; head -c 5 < /dev/rt-2/rnd; head -n 0 /dev/rt-2/rnd") == 0
    assert out.text == "x" * 15
    assert "device_read:rnd" in transfers.closed


def test_cat_device_to_its_end(shell):
    _, out, _, _, transfers, _ = shell
    transfers.limit["device_read:rnd"] = 3
    assert run(shell, "cat /dev/rt-2/rnd | wc -c") == 0
    assert out.text.strip() == str(3 * len(CHUNK))


def test_echo_into_an_output_device(shell):
    _, _, err, rpc, transfers, _ = shell
    assert run(shell, "echo 1 > /dev/rt-2/led") == 0, err.text
    assert transfers.sent["device_write:led"] == b"1\n"
    assert ("rt-2", "device_write", {"name": "led"}) in rpc.calls


def test_errors_are_one_line(shell):
    _, _, err, rpc, transfers, _ = shell
    assert run(shell, "cat /dev/rt-2/nope") == 1
    assert err.text == "cat: /dev/rt-2/nope: no such device\n"
    err.data.clear()
    assert run(shell, "cat /dev/rt-2/led") == 1
    assert err.text.startswith("cat: /dev/rt-2/led: permission denied (an output device")
    err.data.clear()
    assert run(shell, "echo 1 > /dev/rt-2/rnd") == 1
    assert "/dev/rt-2/rnd: permission denied (an input device" in err.text and len(err.text.splitlines()) == 1
    err.data.clear()
    rpc.failing["cam0"] = DeviceError("device cam0 failed: ffmpeg not found", "ENODEV")
    assert run(shell, "cat /dev/rt-2/cam0") == 1
    assert err.text == "cat: /dev/rt-2/cam0: device cam0 failed: ffmpeg not found\n"
    err.data.clear()
    assert run(shell, "cat /dev/rt-3/old") == 1
    assert err.text == "cat: /dev/rt-3/old: no such device (runtime rt-3 is not running)\n"
    err.data.clear()
    transfers.fail_after["device_read:rnd"] = 2
    assert run(shell, "cat /dev/rt-2/rnd | wc -c") == 0  # the last stage's status, as bash
    assert "cat: /dev/rt-2/rnd: the sender vanished" in err.text
    err.data.clear()
    assert run(shell, "cat /dev/rt-2") == 1 and "is a directory" in err.text


def test_a_programs_device_redirections_are_checked_before_anything_starts(shell):
    interp, _, err, rpc, _, _ = shell
    # '< DEVICE' and '> DEVICE' of a program (tests/integration/test_devices_program.py runs them):
    # an unknown device, or one of the wrong direction, is refused before the scheduler is asked
    for line, expected in (
        ("prog < /dev/rt-2/nope", "/dev/rt-2/nope: no such device"),
        ("prog < /dev/rt-2/led", "/dev/rt-2/led: permission denied (an output device"),
        ("prog > /dev/rt-2/rnd", "/dev/rt-2/rnd: permission denied (an input device"),
        ("prog 2> /dev/rt-9/led", "/dev/rt-9/led: no such device (runtime rt-9 is not running)"),
        ("prog > /dev/rt-2/led | other", "/dev/rt-2/led: only the last program of a pipeline"),
    ):
        err.data.clear()
        assert run(shell, line) == 1, line
        assert expected in err.text and len(err.text.splitlines()) == 1, (line, err.text)
    assert not [c for c in rpc.calls if c[0] == "scheduler" or c[1].startswith("device_")]


def test_device_input_close_before_start_reads_nothing(shell):
    interp, _, _, rpc, _, _ = shell
    source = devices.DeviceInput(interp.grid, "/dev/rt-2/rnd")
    source.close()
    results: list[Any] = []
    source.next().addBoth(results.append)
    assert results == [b""]
    assert not [c for c in rpc.calls if c[1] == "device_read"]
    with pytest.raises(BrokenPipe):
        source.pipe.write(b"late")


def test_device_calls_are_made_as_the_sessions_user_and_a_refusal_is_one_line(shell):
    from oneos.errors import rebuild_error

    interp, out, err, rpc, transfers, _ = shell
    interp.grid.fs.user = "ann"  # the session's file client acts for ann: so do its device calls
    assert run(shell, "head -c 10 /dev/rt-2/rnd") == 0 and out.text == "x" * 10
    assert run(shell, "echo 1 > /dev/rt-2/led") == 0
    assert ("rt-2", "device_read", {"name": "rnd", "user": "ann"}) in rpc.calls
    assert ("rt-2", "device_write", {"name": "led", "user": "ann"}) in rpc.calls
    refusal = "device led on rt-2: permission denied: user ann may not write it (owner root, mode 0600)"
    rpc.failing["led"] = rebuild_error("EACCES", refusal)  # as the runtime's answer arrives
    assert run(shell, "echo 1 > /dev/rt-2/led") == 1
    assert err.text.endswith(f": /dev/rt-2/led: {refusal}\n") and len(err.text.splitlines()) == 1
    err.data.clear()
    rpc.failing["rnd"] = rebuild_error("EACCES", "device rnd on rt-2: permission denied: user ann may not read it")
    assert run(shell, "cat /dev/rt-2/rnd") == 1
    assert err.text == "cat: /dev/rt-2/rnd: device rnd on rt-2: permission denied: user ann may not read it\n"
