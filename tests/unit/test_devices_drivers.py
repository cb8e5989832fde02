"""The drivers that need a program or hardware, with fakes: command and video (a fake spawnProcess), gpio
(gpiozero's MockFactory).  No process is started: the fake reactor's spawnProcess connects the driver's
ProcessProtocol to a fake transport the test drives (output, exit status)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from oneos.config import Device
from oneos.devices.drivers import gpio
from oneos.devices.drivers.video import VideoInput
from oneos.devices.errors import DeviceError
from oneos.devices.options import Options
from test_devices_fanout import Consumer
from test_devices_mjpeg import jpeg
from test_devices_service import FakeTransfer, service, status_of


class FakeProcess:
    """The transport of a fake child: records what the driver does to it; the test makes it speak and end."""

    def __init__(self, proto: Any, argv: list[str]) -> None:
        self.proto, self.argv = proto, argv
        self.pid = 4242
        self.stdin_closed = False
        self.signals: list[str] = []
        self.written = b""
        self.pipes: dict[int, Any] = {}
        self.over = False

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def write(self, data: bytes) -> None:
        self.written += data

    def signalProcess(self, sig: str) -> None:
        self.signals.append(sig)
        self.exit(signal=15 if sig == "TERM" else 9)

    def out(self, data: bytes) -> None:
        self.proto.outReceived(data)

    def err(self, data: bytes) -> None:
        self.proto.errReceived(data)

    def exit(self, code: int = 0, signal: int | None = None) -> None:
        if self.over:
            return
        self.over = True
        reason = ProcessDone(0) if code == 0 and signal is None else ProcessTerminated(None if signal else code, signal)
        self.proto.processEnded(Failure(reason))


class ProcReactor(task.Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any = None, **kw: Any) -> FakeProcess:
        process = FakeProcess(proto, list(args))
        proto.makeConnection(process)
        self.spawned.append(process)
        return process


def read(svc: Any, transfer: FakeTransfer, clock: Any, name: str, units: int = 0) -> Consumer:
    return Consumer(clock, transfer.offers[svc.read(name, units=units)["token"]][0]).start()


# -- command ---------------------------------------------------------------------------------------------


def test_command_input_runs_while_read_and_its_clean_end_ends_the_readers():
    clock = ProcReactor()
    svc, transfer = service(Device("temp", "in", "command", {"cmd": "sh -c 'echo 21.5'", "linger": "0"}), clock=clock)
    assert clock.spawned == []  # nobody reads yet
    a = read(svc, transfer, clock, "temp")
    proc = clock.spawned[0]
    assert proc.argv == ["sh", "-c", "echo 21.5"] and proc.stdin_closed
    proc.out(b"21.")
    proc.out(b"5\n")
    proc.exit(0)
    assert a.data == b"21.5\n" and a.ended == "eof"
    assert status_of(svc, "temp")["state"] == "ok"
    b = read(svc, transfer, clock, "temp")  # a new reader starts it again
    assert len(clock.spawned) == 2 and b.ended is None


def test_command_death_fails_the_device_with_its_status_and_stderr_and_a_new_reader_retries():
    clock = ProcReactor()
    changes: list = []
    svc, transfer = service(
        Device("s", "in", "command", {"cmd": "sensor.sh", "unit": "line"}), clock=clock, changes=changes
    )
    assert status_of(svc, "s")["state"] == "failed"  # not on the PATH
    svc.devices["s"].driver.argv = ["sh"]  # as if it were installed now
    a = read(svc, transfer, clock, "s")
    assert status_of(svc, "s")["state"] == "ok"
    proc = clock.spawned[0]
    proc.out(b"1\n2\n3")  # lines: a partial one waits
    proc.err(b"reading /dev/i2c-1\nsensor.sh: I/O error\n")
    proc.exit(3)
    assert a.pieces == [b"1\n", b"2\n", b"3"]
    assert isinstance(a.ended, DeviceError) and a.ended.kind == "ENODEV"
    assert str(a.ended) == "device s on rt-1 failed: command sh exited with status 3: sensor.sh: I/O error"
    entry = status_of(svc, "s")
    assert entry["state"] == "failed" and entry["reason"] == "command sh exited with status 3: sensor.sh: I/O error"
    assert len(changes) >= 3  # failed, ok, failed again
    b = read(svc, transfer, clock, "s")
    assert len(clock.spawned) == 2 and status_of(svc, "s")["state"] == "ok" and b.ended is None
    clock.spawned[1].exit(signal=9)
    assert "was killed by signal 9" in str(b.ended)


def test_command_input_pauses_reading_the_program_for_a_slow_reader():
    clock = ProcReactor()
    svc, transfer = service(Device("s", "in", "command", {"cmd": "sh", "queue": "2"}), clock=clock)
    stalled = read(svc, transfer, clock, "s")
    stalled.stall()
    proc = clock.spawned[0]
    paused: list[str] = []
    proc.pipes[1] = type(
        "Pipe", (), {"pauseProducing": lambda s: paused.append("p"), "resumeProducing": lambda s: paused.append("r")}
    )()
    for i in range(3):
        proc.out(b"%d" % i)
    assert paused == ["p"]
    stalled.go()
    assert paused == ["p", "r"] and stalled.data == b"012"


def test_command_output_gets_writers_bytes_and_the_last_writers_answer_is_its_exit():
    clock = ProcReactor()
    svc, transfer = service(Device("lp", "out", "command", {"cmd": "cat -n"}), clock=clock)
    assert clock.spawned == []
    _, writer, _ = transfer.offers[svc.write("lp")["token"]]
    assert writer.write(b"page 1\n").called
    proc = clock.spawned[0]
    assert proc.argv == ["cat", "-n"] and not proc.stdin_closed
    _, second, _ = transfer.offers[svc.write("lp")["token"]]
    second.write(b"page 2\n")
    assert second.finish().result == {"bytes": 7, "device": "lp"}  # not the last writer: the program goes on
    assert not proc.stdin_closed
    done = writer.finish()
    assert proc.stdin_closed and not done.called
    proc.exit(0)
    assert done.result == {"bytes": 7, "device": "lp"} and proc.written == b"page 1\npage 2\n"
    # a failing job: the last writer is told, the device is failed until the next writer tries again
    _, third, _ = transfer.offers[svc.write("lp")["token"]]
    third.write(b"x")
    done = third.finish()
    clock.spawned[1].err(b"cat: write error\n")
    clock.spawned[1].exit(1)
    failure = []
    done.addErrback(failure.append)
    assert "command cat exited with status 1: cat: write error" in failure[0].getErrorMessage()
    assert status_of(svc, "lp")["state"] == "failed"


def test_command_output_that_dies_on_its_own_fails_the_writers():
    clock = ProcReactor()
    svc, transfer = service(Device("lp", "out", "command", {"cmd": "sh"}), clock=clock)
    _, writer, _ = transfer.offers[svc.write("lp")["token"]]
    writer.write(b"a")
    clock.spawned[0].exit(0)
    assert "ended before its input did" in status_of(svc, "lp")["reason"]
    failure = []
    writer.write(b"b").addErrback(failure.append)
    assert failure and failure[0].value.kind == "ENODEV"


# -- video -----------------------------------------------------------------------------------------------


def video(**options: str) -> Device:
    return Device("cam", "in", "video", {"ffmpeg": "/bin/sh", "format": "lavfi", "input": "testsrc", **options})


def test_video_command_lines():
    def argv(**given: str) -> list[str]:
        return VideoInput(None, Options(given)).argv()

    assert argv() == [
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "v4l2", "-i", "/dev/video0", "-an",
        "-f", "mjpeg", "-q:v", "5", "pipe:1",
    ]  # fmt: skip
    cam = argv(path="/dev/video2", size="640x480", fps="15", input_format="mjpeg", quality="3")
    assert cam[cam.index("-f") : cam.index("-i") + 2] == [
        "-f", "v4l2", "-video_size", "640x480", "-framerate", "15", "-input_format", "mjpeg", "-i", "/dev/video2",
    ]  # fmt: skip
    assert cam[-8:] == ["-r", "15", "-s", "640x480", "-f", "mjpeg", "-q:v", "3", "pipe:1"][-8:]
    test = argv(format="lavfi", input="testsrc=size=320x240:rate=10")
    assert test[5:10] == ["-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10"]


def test_video_frames_go_whole_to_every_reader_and_a_slow_one_drops():
    clock = ProcReactor()
    svc, transfer = service(video(), clock=clock)
    fast, slow = read(svc, transfer, clock, "cam"), read(svc, transfer, clock, "cam")
    slow.stall()
    ffmpeg = clock.spawned[0]
    assert ffmpeg.argv[0] == "/bin/sh" and "-re" in ffmpeg.argv
    frames = [jpeg(scan=bytes([i]) * (i + 1)) for i in range(10)]
    stream = b"".join(frames)
    for i in range(0, len(stream), 7):  # ffmpeg's pipe cuts anywhere
        ffmpeg.out(stream[i : i + 7])
    assert fast.pieces == frames
    slow.go()
    assert slow.pieces == [frames[0], frames[8] + frames[9]]  # the frame in flight, then the newest two
    info = svc.devices["cam"].info()
    assert (info.units, info.dropped, info.unit, info.slow) == (10, 7, "frame", "drop")


def test_video_one_frame_read():
    clock = ProcReactor()
    svc, transfer = service(video(), clock=clock)
    one = read(svc, transfer, clock, "cam", units=1)
    clock.spawned[0].out(jpeg() + jpeg(scan=b"2"))
    assert one.pieces == [jpeg()] and one.ended == "eof"


def test_a_camera_that_goes_away_ends_readers_with_ffmpegs_reason():
    clock = ProcReactor()
    svc, transfer = service(video(), clock=clock)
    reader = read(svc, transfer, clock, "cam")
    ffmpeg = clock.spawned[0]
    ffmpeg.out(jpeg())
    ffmpeg.err(b"[video4linux2,v4l2 @ 0x55] ioctl(VIDIOC_DQBUF): No such device\n/dev/video0: No such device\n")
    ffmpeg.exit(1)
    assert reader.pieces == [jpeg()]
    assert str(reader.ended) == (
        "device cam on rt-1 failed: ffmpeg reading testsrc exited with status 1: /dev/video0: No such device"
    )
    assert status_of(svc, "cam")["state"] == "failed"


def test_a_camera_that_stops_sending_is_gone_after_the_timeout():
    clock = ProcReactor()
    svc, transfer = service(video(timeout="5"), clock=clock)
    reader = read(svc, transfer, clock, "cam")
    ffmpeg = clock.spawned[0]
    clock.advance(4)
    ffmpeg.out(jpeg())
    clock.advance(4)  # the frame re-armed the watchdog
    assert reader.ended is None
    clock.advance(1.5)
    assert "no frame from testsrc within 5s (camera gone?)" in str(reader.ended)
    assert ffmpeg.signals == ["TERM"] and status_of(svc, "cam")["state"] == "failed"


def test_video_stops_ffmpeg_after_the_last_reader_and_the_linger():
    clock = ProcReactor()
    svc, transfer = service(video(linger="3", timeout="100"), clock=clock)
    token = svc.read("cam")["token"]
    reader, _, done = transfer.offers[token]
    Consumer(clock, reader).start()
    done.callback(None)
    clock.advance(2)
    assert clock.spawned[0].signals == []
    Consumer(clock, transfer.offers[svc.read("cam")["token"]][0]).start()  # back within the linger: same ffmpeg
    assert len(clock.spawned) == 1
    clock.advance(10)
    assert clock.spawned[0].signals == [] and svc.devices["cam"].running


# -- gpio (gpiozero's MockFactory) ----------------------------------------------------------------------


@pytest.fixture
def mock_pins():
    pytest.importorskip("gpiozero")
    gpio.reset_mock()
    yield gpio.mock_factory()
    gpio.reset_mock()


def test_gpio_output_wired_to_an_input_is_written_and_read_back(mock_pins):
    clock = task.Clock()
    svc, transfer = service(
        Device("led", "out", "gpio", {"pin": "17", "mock": "1", "mock_wire": "27"}),
        Device("button", "in", "gpio", {"pin": "27", "mock": "1"}),
        clock=clock,
    )
    assert [s["state"] for s in svc.status()] == ["ok", "ok"]
    reader = read(svc, transfer, clock, "button")
    assert reader.data == b"0\n"  # the current value first
    _, writer, _ = transfer.offers[svc.write("led")["token"]]
    writer.write(b"1\n")
    assert reader.data == b"0\n1\n" and svc.devices["led"].info().value == "1"
    writer.write(b"0\n1")  # a partial line waits for its end
    assert reader.data == b"0\n1\n0\n"
    assert writer.finish().result == {"bytes": 5, "device": "led"}
    assert reader.data == b"0\n1\n0\n1\n" and svc.devices["button"].info().value == "1"
    late = read(svc, transfer, clock, "button")
    assert late.data == b"1\n"


def test_gpio_refuses_a_bad_value_to_that_writer_only(mock_pins):
    svc, transfer = service(Device("led", "out", "gpio", {"pin": "5", "mock": "1"}))
    _, writer, _ = transfer.offers[svc.write("led")["token"]]
    failure = []
    writer.write(b"on\n").addErrback(failure.append)
    assert failure[0].value.kind == "EINVAL"
    assert "GPIO pin 5 takes lines of 0 or 1, not 'on'" in failure[0].getErrorMessage()
    assert status_of(svc, "led")["state"] == "ok"
    mock_pins.pin(5)
    with pytest.raises(DeviceError) as e:
        svc.read("led")
    assert e.value.kind == "EACCES"


def test_a_pin_that_cannot_be_opened_fails_the_device(mock_pins):
    svc, _ = service(
        Device("a", "out", "gpio", {"pin": "17", "mock": "1"}),
        Device("b", "in", "gpio", {"pin": "17", "mock": "1"}),  # the same pin twice
    )
    entry = status_of(svc, "b")
    assert entry["state"] == "failed" and "cannot open GPIO pin 17" in entry["reason"]
    assert status_of(svc, "a")["state"] == "ok"


class ThreadedClock(task.Clock):
    """A clock whose callFromThread queues, as a reactor runs such calls on its next turn."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.queued.append(lambda: f(*args))

    def turn(self) -> None:
        queued, self.queued = self.queued, []
        for call in queued:
            call()


def test_gpio_changes_reported_from_gpiozeros_threads_each_give_a_line_in_order(mock_pins):
    clock = ThreadedClock()
    svc, transfer = service(
        Device("led", "out", "gpio", {"pin": "17", "mock": "1", "mock_wire": "27"}),
        Device("button", "in", "gpio", {"pin": "27", "mock": "1"}),
        clock=clock,
    )
    reader = read(svc, transfer, clock, "button")
    _, writer, _ = transfer.offers[svc.write("led")["token"]]
    writer.write(b"1\n0\n1\n")  # three edges before the reactor's next turn
    assert reader.data == b"0\n"
    clock.turn()
    assert reader.data == b"0\n1\n0\n1\n"
