"""Splitting an MJPEG byte stream into whole JPEG images (pure, incremental).

ffmpeg's ``-f mjpeg`` output (and a video device's stream) is JPEG images
one after another.  :class:`FrameSplitter` is fed the bytes in pieces of
any size and returns each image once its last byte has arrived.  It walks
the JPEG structure rather than searching for the end marker: after SOI
(``FF D8``) each marker segment is skipped by its length, so an ``FF D9``
inside a segment (an EXIF thumbnail in APP1) does not end the frame; after
SOS (``FF DA``) the entropy-coded data is scanned for the next marker
(``FF 00`` is a stuffed byte and ``FF D0``..``FF D7`` are restart markers,
both part of the data) until EOI (``FF D9``).  Bytes before an SOI, or a
frame whose structure breaks, are skipped up to the next SOI, looked for
from the broken frame's start (counted in :attr:`FrameSplitter.skipped`); a frame larger than *max_frame* is an
:class:`MJPEGError`, so a stream that never ends a frame cannot grow
memory without bound.
"""

from __future__ import annotations

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
SOS = 0xDA
#: markers without a length: TEM and the restart markers RST0..RST7
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])
#: default largest frame accepted (bytes)
MAX_FRAME = 16 * 1024 * 1024

_SEEK, _SEGMENTS, _ENTROPY = 0, 1, 2


class MJPEGError(ValueError):
    """The stream holds a frame larger than the splitter accepts."""


class FrameSplitter:
    """Feed bytes, get whole JPEG frames back (see the module docstring)."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._state = _SEEK
        #: bytes dropped because they were not part of a whole frame
        self.skipped = 0
        #: frames returned so far
        self.frames = 0

    @property
    def pending(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """The frames completed by *data* (in order)."""
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._state == _SEEK:
                if not self._seek():
                    break
            elif self._state == _SEGMENTS:
                done = self._segment()
                if done is None:
                    break
                if done:
                    end = self._pos
                    out.append(bytes(self._buf[:end]))
                    del self._buf[:end]
                    self._pos, self._state = 0, _SEEK
                    self.frames += 1
            elif not self._entropy():
                break
        if len(self._buf) > self.max_frame:
            size = len(self._buf)
            self._buf.clear()
            self._pos, self._state = 0, _SEEK
            raise MJPEGError(f"a frame grew past {self.max_frame} bytes without ending ({size} bytes held)")
        return out

    def _seek(self) -> bool:
        """Find the next SOI; drop what precedes it.  False: none yet."""
        at = self._buf.find(SOI)
        if at < 0:
            keep = 1 if self._buf.endswith(b"\xff") else 0
            self.skipped += len(self._buf) - keep
            del self._buf[: len(self._buf) - keep]
            return False
        self.skipped += at
        del self._buf[:at]
        self._pos, self._state = 2, _SEGMENTS
        return True

    def _resync(self) -> None:
        """The frame's structure broke: drop its SOI and look for the next one, inside what was read as this frame too

        (a frame cut short is followed by the next frame, whose start may have been taken for a segment's payload)."""
        self.skipped += 2
        del self._buf[:2]
        self._pos, self._state = 0, _SEEK

    def _segment(self) -> bool | None:
        """Read the marker at _pos: True at EOI (_pos past it), False to go on, None for more data."""
        buf, pos = self._buf, self._pos
        while pos < len(buf) and buf[pos] == 0xFF and pos + 1 < len(buf) and buf[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 2 > len(buf):
            self._pos = pos
            return None
        if buf[pos] != 0xFF:
            self._pos = pos
            self._resync()
            return False
        marker = buf[pos + 1]
        if marker == 0xD9:
            self._pos = pos + 2
            return True
        if marker == 0xD8:  # a new SOI inside a frame: the previous one was cut short
            self._pos = pos
            self._resync()
            return False
        if marker in _STANDALONE:
            self._pos = pos + 2
            return False
        if pos + 4 > len(buf):
            self._pos = pos
            return None
        length = (buf[pos + 2] << 8) | buf[pos + 3]
        if length < 2:
            self._pos = pos + 2
            self._resync()
            return False
        if pos + 2 + length > len(buf):
            self._pos = pos
            return None
        self._pos = pos + 2 + length
        if marker == SOS:
            self._state = _ENTROPY
        return False

    def _entropy(self) -> bool:
        """Scan entropy-coded data for the next marker.  False: need more data."""
        buf = self._buf
        pos = self._pos
        while True:
            at = buf.find(b"\xff", pos)
            if at < 0 or at + 1 >= len(buf):
                self._pos = len(buf) if at < 0 else at
                return False
            nxt = buf[at + 1]
            if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                pos = at + 2  # a stuffed 0xFF or a restart marker: still data
            elif nxt == 0xFF:
                pos = at + 1  # fill: the marker starts at the next 0xFF
            else:
                self._pos, self._state = at, _SEGMENTS
                return True


def is_jpeg(frame: bytes) -> bool:
    """Whether *frame* is one whole JPEG as the splitter returns them (SOI first, EOI last)."""
    return len(frame) >= 4 and frame.startswith(SOI) and frame.endswith(EOI)
