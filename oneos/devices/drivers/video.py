"""``video``: a camera (or any ffmpeg input) as a stream of JPEG frames.

ffmpeg reads the input and writes MJPEG (JPEG images one after another) to
the runtime, which cuts it into whole frames
(:class:`~oneos.devices.mjpeg.FrameSplitter`); frames are the unit, and a
reader's stream is whole JPEG images back to back (``ffplay -f mjpeg -``
shows it; ``oneos.devices.mjpeg`` splits it again).

Options:

* ``input`` (alias ``path``): what ffmpeg reads; default ``/dev/video0``.
  A ``/dev/video*`` path is read with ``-f v4l2`` unless ``format`` says
  otherwise;
* ``format``: ffmpeg's input format (``-f``), e.g. ``lavfi`` for a test
  source: ``format=lavfi,input=testsrc=size=320x240:rate=10``;
* ``size`` (``WxH``) and ``fps``: asked of a v4l2 camera
  (``-video_size``, ``-framerate``) and applied to the output;
* ``input_format``: a v4l2 camera's pixel format (``-input_format``, e.g.
  ``mjpeg`` or ``yuyv422``);
* ``quality``: JPEG quality, ffmpeg's ``-q:v`` (2 best .. 31), default 5;
* ``realtime``: read the input at its own rate (``-re``); default on for
  anything but a v4l2 camera (a file or a test source would otherwise run
  as fast as the CPU allows);
* ``timeout``: seconds without a frame after which the camera counts as
  gone (default 10);
* ``ffmpeg``: the ffmpeg program (default ``ffmpeg`` on the PATH).

ffmpeg runs while the device has readers.  Missing ffmpeg or a missing
``/dev/video*`` marks the device failed when the runtime starts; an input
ffmpeg cannot open, a camera that disappears mid-stream (ffmpeg fails, or
no frame within ``timeout``) ends every reader with an ``ENODEV`` error
naming the reason (ffmpeg's last line of error output), and marks the
device failed until a new reader tries again.  A slow reader drops whole
frames (never part of one) and never slows the others.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import defer

from oneos.devices.base import FRAME, Emit, InputDriver
from oneos.devices.drivers.process import DeviceProgram, find_program
from oneos.devices.errors import FAILED, INVALID, DeviceError
from oneos.devices.info import DROP
from oneos.devices.mjpeg import MAX_FRAME, FrameSplitter, MJPEGError
from oneos.devices.options import Options

_SIZE = re.compile(r"^\d{1,5}x\d{1,5}$")


class VideoInput(InputDriver):
    driver = "video"
    unit = FRAME
    slow = DROP
    queue = 2

    def __init__(self, reactor: Any, options: Options) -> None:
        super().__init__(reactor, options)
        path = options.text("path")
        self.input = options.text("input", path or "/dev/video0")
        camera = self.input.startswith("/dev/video")
        self.format = options.text("format", "v4l2" if camera else "")
        self.size = options.text("size")
        if self.size and not _SIZE.match(self.size):
            raise DeviceError(f"option size={self.size}: expected WIDTHxHEIGHT, e.g. 640x480", INVALID)
        self.fps = options.number("fps", 0.0, 0.0, 1000.0)
        self.input_format = options.text("input_format")
        self.quality = options.integer("quality", 5, 2, 31)
        self.realtime = options.flag("realtime", self.format != "v4l2")
        self.timeout = options.number("timeout", 10.0, 0.1, 3600.0)
        self.ffmpeg = options.text("ffmpeg", "ffmpeg")
        self.program: DeviceProgram | None = None
        self._watchdog: Any = None
        self._emit: Emit | None = None

    def argv(self) -> list[str]:
        """ffmpeg's command line for this device."""
        v4l2 = self.format == "v4l2"
        argv = [self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error"]
        if self.realtime:
            argv.append("-re")
        if self.format:
            argv += ["-f", self.format]
        if v4l2 and self.size:
            argv += ["-video_size", self.size]
        if v4l2 and self.fps:
            argv += ["-framerate", f"{self.fps:g}"]
        if v4l2 and self.input_format:
            argv += ["-input_format", self.input_format]
        argv += ["-i", self.input, "-an"]
        if self.fps:
            argv += ["-r", f"{self.fps:g}"]
        if self.size:
            argv += ["-s", self.size]
        return [*argv, "-f", "mjpeg", "-q:v", str(self.quality), "pipe:1"]

    def check(self) -> None:
        try:
            find_program(self.ffmpeg, "ffmpeg")
        except DeviceError as e:
            raise DeviceError(f"{e} (install ffmpeg, e.g. apt install ffmpeg, or give ffmpeg=PATH)", FAILED) from None
        if self.format == "v4l2" and self.input.startswith("/dev/") and not os.path.exists(self.input):
            raise DeviceError(f"no camera at {self.input}", FAILED)

    def start(self, emit: Emit) -> None:
        self._emit = emit
        splitter = FrameSplitter(MAX_FRAME)
        what = f"ffmpeg reading {self.input}"

        def out(data: bytes) -> None:
            try:
                frames = splitter.feed(data)
            except MJPEGError as e:
                self._fail(DeviceError(f"{what}: {e}", FAILED))
                return
            for frame in frames:
                self._arm()
                emit.unit(frame)

        def ended(error: DeviceError | None) -> None:
            self.program = None
            self._disarm()
            if self._emit is not None:
                self._emit = None
                emit.end(error)

        self.program = DeviceProgram(self.reactor, self.argv(), what, out, ended)
        self.program.spawn(stdin=False)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._watchdog = self.reactor.callLater(self.timeout, self._no_frames)

    def _disarm(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _no_frames(self) -> None:
        self._watchdog = None
        self._fail(DeviceError(f"no frame from {self.input} within {self.timeout:g}s (camera gone?)", FAILED))

    def _fail(self, error: DeviceError) -> None:
        """End the readers with *error* and stop ffmpeg."""
        emit, self._emit = self._emit, None
        program, self.program = self.program, None
        self._disarm()
        if program is not None:
            program.stop()
        if emit is not None:
            emit.end(error)

    def pause(self) -> None:
        if self.program is not None:
            self._disarm()  # no frame arrives while we do not read: that is not a camera gone
            self.program.pause_output()

    def resume(self) -> None:
        if self.program is not None:
            self._arm()
            self.program.resume_output()

    def stop(self) -> defer.Deferred | None:
        self._emit = None
        self._disarm()
        program, self.program = self.program, None
        return program.stop() if program is not None else None
