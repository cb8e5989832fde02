"""Fan-out of a device to many readers (oneos/devices/fanout.py), on task.Clock with fake consumers.

A fake consumer pulls from its Reader as the transfer pump does (``next()``
again once a piece is written); a slow one pulls again only after a delay,
a stalled one not at all (its socket is full).  Drop: a slow reader misses
whole units and never holds the others back.  Block: the slowest reader
pauses the driver and nobody loses a unit.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task

from oneos.devices.errors import DeviceError
from oneos.devices.fanout import Hub, Reader
from oneos.devices.info import BLOCK, DROP


class Consumer:
    """Pulls a Reader like the transfer pump: again at once, or *delay* seconds after each piece."""

    def __init__(self, clock: task.Clock, reader: Reader, delay: float = 0.0) -> None:
        self.clock, self.reader, self.delay = clock, reader, delay
        self.pieces: list[bytes] = []
        self.ended: Any = None
        self.stalled = False
        self._waiting = False

    def start(self) -> Consumer:
        self._pull()
        return self

    def _pull(self) -> None:
        if self.stalled or self._waiting or self.ended is not None:
            return
        self._waiting = True
        self.reader.next().addCallbacks(self._got, self._failed)

    def _got(self, data: bytes) -> None:
        self._waiting = False
        if not data:
            self.ended = "eof"
            return
        self.pieces.append(data)
        if self.delay:
            self.clock.callLater(self.delay, self._pull)
        else:
            self._pull()

    def _failed(self, failure: Any) -> None:
        self._waiting = False
        self.ended = failure.value

    def stall(self) -> None:
        self.stalled = True

    def go(self) -> None:
        self.stalled = False
        self._pull()

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


class Driver:
    """A source of units that honours pause/resume, producing *rate* units a second on the clock."""

    def __init__(self, clock: task.Clock, rate: float = 10.0) -> None:
        self.clock, self.rate = clock, rate
        self.paused = False
        self.pauses = 0
        self.n = 0
        self.hub: Hub | None = None
        self._loop = task.LoopingCall(self.produce)
        self._loop.clock = clock

    def pause(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume(self) -> None:
        self.paused = False

    def produce(self) -> None:
        if not self.paused and self.hub is not None:
            self.n += 1
            self.hub.unit(frame(self.n))

    def run(self) -> None:
        self._loop.start(1 / self.rate, now=False)


def frame(n: int) -> bytes:
    """A unit that says which it is and how long it is (so a partial one would show)."""
    body = f"<frame {n}>".encode() * (1 + n % 5)
    return len(body).to_bytes(4, "big") + body


def frames_in(data: bytes) -> list[int]:
    """The unit numbers in a stream of frame()s; fails on a partial unit."""
    out, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        body = data[pos + 4 : pos + 4 + size]
        assert len(body) == size, "a partial unit"
        n = int(body[len(b"<frame ") :].split(b">")[0])
        assert body == f"<frame {n}>".encode() * (1 + n % 5)
        out.append(n)
        pos += 4 + size
    return out


def setup(policy: str, queue: int, n: int, clock: task.Clock, rate: float = 10.0):
    driver = Driver(clock, rate)
    hub = Hub(policy, driver.pause, driver.resume)
    driver.hub = hub
    readers = [Reader(policy, queue, lambda r: hub.add(r)) for _ in range(n)]
    return driver, hub, readers


def test_drop_a_stalled_reader_misses_whole_units_and_never_holds_the_others():
    clock = task.Clock()
    driver, hub, readers = setup(DROP, 2, 3, clock)
    fast1, fast2, slow = (Consumer(clock, r).start() for r in readers)
    slow.stall()
    for _ in range(100):
        driver.produce()
    assert frames_in(fast1.data) == frames_in(fast2.data) == list(range(1, 101))
    assert driver.pauses == 0
    slow.go()
    got = frames_in(slow.data)
    assert got == [1, 99, 100]  # the one it was waiting for, then only the newest two: the others dropped whole
    assert readers[2].dropped == 97 and hub.dropped == 97


def test_drop_rates_on_the_clock_the_slow_reader_does_not_slow_the_fast():
    clock = task.Clock()
    driver, hub, readers = setup(DROP, 2, 3, clock, rate=10)
    fast1, fast2 = Consumer(clock, readers[0]).start(), Consumer(clock, readers[1]).start()
    slow = Consumer(clock, readers[2], delay=1.0).start()  # takes one piece a second
    driver.run()
    clock.pump([0.1] * 100)  # ten seconds
    assert len(frames_in(fast1.data)) == len(frames_in(fast2.data)) == driver.n == 100
    slow_got = frames_in(slow.data)
    assert 10 <= len(slow_got) <= 25 and slow_got == sorted(slow_got)  # about one batch a second, newest first kept
    assert hub.dropped > 60 and driver.pauses == 0


def test_block_the_slowest_reader_pauses_the_driver_and_nobody_loses_a_unit():
    clock = task.Clock()
    driver, hub, readers = setup(BLOCK, 4, 3, clock)
    fast1, fast2, slow = (Consumer(clock, r).start() for r in readers)
    slow.stall()
    for _ in range(20):
        driver.produce()
    assert driver.paused and driver.n == 5  # the stalled reader holds its queue of 4 (+ the one in flight)
    assert frames_in(fast1.data) == list(range(1, 6))
    slow.go()
    assert not driver.paused
    for _ in range(20):
        driver.produce()
    want = list(range(1, driver.n + 1))
    assert frames_in(fast1.data) == frames_in(fast2.data) == frames_in(slow.data) == want
    assert hub.dropped == 0


def test_block_rates_on_the_clock_everyone_goes_at_the_slowest_pace():
    clock = task.Clock()
    driver, hub, readers = setup(BLOCK, 4, 2, clock, rate=10)
    fast = Consumer(clock, readers[0]).start()
    slow = Consumer(clock, readers[1], delay=1.0).start()
    driver.run()
    clock.pump([0.1] * 100)
    assert driver.pauses > 0
    assert frames_in(fast.data)[: len(frames_in(slow.data))] == frames_in(slow.data)
    assert driver.n < 60  # paced by the slow reader (4 units a second at most), not 100
    assert hub.dropped == 0


def test_block_with_nobody_reading_pauses_and_a_reader_resumes():
    clock = task.Clock()
    driver, hub, readers = setup(BLOCK, 4, 1, clock)
    hub.unit(b"x")
    assert driver.paused  # nobody to read it
    Consumer(clock, readers[0]).start()
    assert not driver.paused


def test_a_limit_ends_the_stream_cleanly_after_that_many_units():
    clock = task.Clock()
    driver, hub, readers = setup(DROP, 2, 2, clock)
    limited = Reader(DROP, 2, lambda r: hub.add(r), limit=3)
    one = Consumer(clock, limited).start()
    other = Consumer(clock, readers[0]).start()
    for _ in range(10):
        driver.produce()
    assert frames_in(one.data) == [1, 2, 3] and one.ended == "eof"
    assert limited not in hub.readers and len(frames_in(other.data)) == 10
    stalled = Reader(DROP, 8, lambda r: hub.add(r), limit=2)
    late = Consumer(clock, stalled).start()
    late.stall()
    for _ in range(5):
        driver.produce()
    late.go()
    assert frames_in(late.data) == [11, 12] and late.ended == "eof"


def test_the_end_comes_after_what_is_waiting_and_an_error_is_passed_on():
    clock = task.Clock()
    driver, hub, readers = setup(DROP, 8, 2, clock)
    ok, stalled = Consumer(clock, readers[0]).start(), Consumer(clock, readers[1]).start()
    stalled.stall()
    for _ in range(3):
        driver.produce()
    hub.end(DeviceError("camera gone", "ENODEV"))
    assert isinstance(ok.ended, DeviceError) and ok.ended.kind == "ENODEV"
    assert stalled.ended is None
    stalled.go()
    assert frames_in(stalled.data) == [1, 2, 3] and str(stalled.ended) == "camera gone"
    assert hub.readers == []


def test_a_clean_end_and_a_snapshot_first():
    clock = task.Clock()
    hub = Hub(DROP, lambda: None, lambda: None)
    reader = Reader(DROP, 4, lambda r: hub.add(r, [b"1\n"]))
    consumer = Consumer(clock, reader).start()
    hub.unit(b"0\n")
    hub.end(None)
    assert consumer.data == b"1\n0\n" and consumer.ended == "eof"
    assert reader.next().result == b""  # still over


def test_a_reader_attaches_only_when_its_consumer_first_asks():
    hub = Hub(BLOCK, lambda: None, lambda: None)
    reader = Reader(BLOCK, 4, lambda r: hub.add(r))
    hub.unit(b"before")
    assert hub.readers == [] and not reader.attached
    reader.next()
    assert hub.readers == [reader]
    hub.remove(reader)
    assert reader.hub is None and hub.paused


def test_a_bad_policy_is_refused():
    with pytest.raises(ValueError):
        Hub("sometimes", lambda: None, lambda: None)
