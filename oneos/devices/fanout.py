"""One input driver, many readers: the fan-out of a device's units.

A :class:`Hub` takes each unit the driver produces (a frame, a line, a
chunk) and gives it to every attached :class:`Reader`.  A reader is the
:class:`~oneos.transfer.Source` of one stream: the transfer server's pump
asks it for data (``next()``) whenever its connection can take more, so a
reader whose consumer is slow simply stops asking and its units wait in its
queue.  What happens then is the device's policy:

* ``drop``: the reader keeps at most ``queue`` units (and ``max_bytes``);
  older waiting units are dropped, whole, so the reader gets the newest
  ones when it catches up; the driver and the other readers never wait.
* ``block``: when any reader has ``queue`` units (or ``max_bytes``)
  waiting, the driver is paused (back-pressure from the slowest reader)
  until every reader is below half of that again; nobody loses a byte.
  With no reader at all (an on-demand device lingering after its last
  reader) a blocking driver is paused too.

A unit handed to the pump is written whole, so a reader's stream never
holds part of a unit.  Tested on ``task.Clock`` with fake consumers
(tests/unit/test_devices_fanout.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer

from oneos.devices.errors import DeviceError
from oneos.devices.info import BLOCK, DROP

#: bytes a reader may have waiting whatever its unit count (a frame larger than this is still kept whole)
MAX_QUEUED_BYTES = 4 * 1024 * 1024
#: most bytes one next() returns (several waiting units joined)
MAX_BATCH = 1024 * 1024


class Reader:
    """One reader of a device: a transfer Source fed by the hub.

    It attaches itself (``on_attach``) when the pump first asks for data,
    that is once its consumer has connected: an offered stream nobody
    claimed never holds the others back.  *limit*: end the stream cleanly
    after that many units (0: no limit).
    """

    def __init__(
        self,
        policy: str,
        queue: int,
        on_attach: Callable[[Reader], None],
        *,
        limit: int = 0,
        max_bytes: int = MAX_QUEUED_BYTES,
        label: str = "",
    ) -> None:
        self.policy = policy
        self.queue_units = max(1, queue)
        self.max_bytes = max_bytes
        self.on_attach = on_attach
        self.limit = limit
        self.label = label
        self.hub: Hub | None = None
        self.attached = False
        self._queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self._pending: defer.Deferred | None = None
        #: set once the stream is over: None (clean end) or the error
        self._ended = False
        self._error: DeviceError | None = None
        self.received = 0
        self.delivered = 0
        self.dropped = 0
        self.bytes = 0

    # -- what the pump calls ---------------------------------------------------
    def next(self) -> defer.Deferred:
        if not self.attached:
            self.attached = True
            if not self._ended:  # ended before its consumer came (the runtime is stopping): nothing to join
                self.on_attach(self)
        if self._queue:
            return defer.succeed(self._take())
        if self._ended:
            return self._over()
        self._pending = defer.Deferred()
        return self._pending

    def _take(self) -> bytes:
        parts = [self._queue.popleft()]
        size = len(parts[0])
        while self._queue and size + len(self._queue[0]) <= MAX_BATCH:
            part = self._queue.popleft()
            parts.append(part)
            size += len(part)
        self.queued_bytes -= size
        self.delivered += len(parts)
        self.bytes += size
        if self.hub is not None:
            self.hub.drained(self)
        return b"".join(parts)

    def _over(self) -> defer.Deferred:
        if self._error is not None:
            return defer.fail(self._error)
        return defer.succeed(b"")

    # -- what the hub calls -------------------------------------------------------
    def put(self, unit: bytes) -> None:
        if self._ended:
            return
        self.received += 1
        if self._pending is not None and not self._queue:
            d, self._pending = self._pending, None
            self.delivered += 1
            self.bytes += len(unit)
            self._check_limit()
            d.callback(unit)
            return
        self._queue.append(unit)
        self.queued_bytes += len(unit)
        if self.policy == DROP:
            while len(self._queue) > 1 and (len(self._queue) > self.queue_units or self.queued_bytes > self.max_bytes):
                self.queued_bytes -= len(self._queue.popleft())
                self.dropped += 1
        self._check_limit()

    def _check_limit(self) -> None:
        """With a limit, the stream ends once that many units were delivered or are waiting."""
        if self.limit and self.delivered + len(self._queue) >= self.limit:
            while self.delivered + len(self._queue) > self.limit:
                self.queued_bytes -= len(self._queue.pop())
            self.end(None)
            if self.hub is not None:
                self.hub.remove(self)

    def end(self, error: DeviceError | None) -> None:
        """No more units: the reader's stream ends after what is waiting (with *error* if given)."""
        if self._ended:
            return
        self._ended, self._error = True, error
        if self._pending is not None and not self._queue:
            d, self._pending = self._pending, None
            if error is not None:
                d.errback(error)
            else:
                d.callback(b"")

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def full(self) -> bool:
        """Behind enough to pause a blocking driver."""
        return len(self._queue) >= self.queue_units or self.queued_bytes >= self.max_bytes

    def low(self) -> bool:
        """Caught up enough to resume it."""
        return len(self._queue) <= self.queue_units // 2 and self.queued_bytes <= self.max_bytes // 2


class Hub:
    """A device's readers and the policy between them (see the module docstring)."""

    def __init__(self, policy: str, pause: Callable[[], Any], resume: Callable[[], Any]) -> None:
        if policy not in (DROP, BLOCK):
            raise ValueError(f"policy {policy!r} is neither drop nor block")
        self.policy = policy
        self._pause = pause
        self._resume = resume
        self.readers: list[Reader] = []
        self.paused = False
        self.units = 0
        self.bytes = 0
        #: units dropped for readers that left (the live readers count their own)
        self._dropped_gone = 0

    @property
    def dropped(self) -> int:
        return self._dropped_gone + sum(r.dropped for r in self.readers)

    def add(self, reader: Reader, first: Sequence[bytes] = ()) -> None:
        """Attach *reader*; it gets *first* (the driver's snapshot) before anything else."""
        reader.hub = self
        self.readers.append(reader)
        for unit in first:
            reader.put(unit)
        self._flow()

    def remove(self, reader: Reader) -> None:
        if reader in self.readers:
            self.readers.remove(reader)
            self._dropped_gone += reader.dropped
        reader.hub = None
        self._flow()

    def unit(self, data: bytes) -> None:
        """The driver produced *data*: every reader gets it."""
        self.units += 1
        self.bytes += len(data)
        for reader in list(self.readers):
            reader.put(data)
        self._flow()

    def drained(self, reader: Reader | None) -> None:
        """A reader took units: resume a paused driver once every reader is low."""
        self._flow()

    def _flow(self) -> None:
        """Block policy: pause while a reader is full or nobody reads; resume once every reader is low."""
        if self.policy != BLOCK:
            return
        if not self.paused and (not self.readers or any(r.full() for r in self.readers)):
            self.paused = True
            self._pause()
        elif self.paused and self.readers and all(r.low() for r in self.readers):
            self.paused = False
            self._resume()

    def end(self, error: DeviceError | None) -> None:
        """The driver ended: every reader's stream ends after what it has waiting."""
        readers, self.readers = self.readers, []
        for reader in readers:
            self._dropped_gone += reader.dropped
            reader.hub = None
            reader.end(error)
        if self.paused:
            self.paused = False
