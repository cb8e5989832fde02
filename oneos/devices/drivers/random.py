"""``random``: an input of random bytes (the original's test device).

Options: ``size`` bytes per chunk (default 4096), ``rate`` bytes per second
(default 0: as fast as the readers take them), ``seed`` (an integer: the
same bytes every time, for tests; default: the operating system's
randomness).  A slow reader blocks the others (back-pressure pauses the
source), so every reader gets the same gapless stream.
"""

from __future__ import annotations

import os
import random
from typing import Any

from oneos.devices.base import CHUNK, Emit, InputDriver
from oneos.devices.info import BLOCK
from oneos.devices.options import Options


class RandomInput(InputDriver):
    driver = "random"
    unit = CHUNK
    slow = BLOCK
    queue = 16

    def __init__(self, reactor: Any, options: Options) -> None:
        super().__init__(reactor, options)
        self.size = options.integer("size", 4096, 1, 1024 * 1024)
        self.rate = options.number("rate", 0.0, 0.0, 1e9)
        self.seed = options.integer("seed", -1, -1, 2**63) if options.has("seed") else None
        self._random = random.Random(self.seed) if self.seed is not None else None
        self._emit: Emit | None = None
        self._paused = False
        self._call: Any = None

    def _bytes(self) -> bytes:
        return self._random.randbytes(self.size) if self._random is not None else os.urandom(self.size)

    def start(self, emit: Emit) -> None:
        self._emit = emit
        self._paused = False
        self._schedule()

    def _schedule(self) -> None:
        if self._call is None and self._emit is not None and not self._paused:
            delay = self.size / self.rate if self.rate else 0
            self._call = self.reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        if self._emit is None or self._paused:
            return
        self._emit.unit(self._bytes())
        self._schedule()

    def pause(self) -> None:
        self._paused = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def resume(self) -> None:
        self._paused = False
        self._schedule()

    def stop(self) -> None:
        self.pause()
        self._emit = None
