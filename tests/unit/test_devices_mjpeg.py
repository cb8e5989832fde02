"""The MJPEG frame splitter (oneos/devices/mjpeg.py): whole frames out, whatever the chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oneos.devices.mjpeg import EOI, SOI, FrameSplitter, MJPEGError, is_jpeg


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def entropy(data: bytes, restarts: int = 0) -> bytes:
    """Entropy-coded bytes as a JPEG holds them: each 0xFF stuffed with 0x00, restart markers between runs."""
    out = data.replace(b"\xff", b"\xff\x00")
    for i in range(restarts):
        out += bytes([0xFF, 0xD0 + i % 8]) + b"\x12\x34"
    return out


def jpeg(app: bytes = b"JFIF\x00", scan: bytes = b"\x01\x02\x03", restarts: int = 0, thumbnail: bool = False) -> bytes:
    """A frame with a JPEG's structure: SOI, segments (one may hold a whole JPEG thumbnail), SOS, data, EOI."""
    parts = [SOI, segment(0xE0, app)]
    if thumbnail:  # an EXIF thumbnail: SOI..EOI inside APP1, which must not end the frame
        parts.append(segment(0xE1, b"Exif\x00\x00" + SOI + b"\x00\xff\xd9junk" + EOI))
    parts += [segment(0xDB, bytes(range(65))), segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")]
    parts += [entropy(scan, restarts), EOI]
    return b"".join(parts)


frames_strategy = st.lists(
    st.builds(
        jpeg,
        app=st.binary(max_size=40),
        scan=st.binary(min_size=1, max_size=300),
        restarts=st.integers(0, 3),
        thumbnail=st.booleans(),
    ),
    min_size=1,
    max_size=6,
)


def split_all(stream: bytes, cuts: list[int], splitter: FrameSplitter | None = None) -> list[bytes]:
    splitter = splitter or FrameSplitter()
    out: list[bytes] = []
    last = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        out += splitter.feed(stream[last:cut])
        last = cut
    return out


@settings(max_examples=60, deadline=None)
@given(frames=frames_strategy, data=st.data())
def test_any_chunking_gives_back_the_frames_whole(frames, data):
    stream = b"".join(frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    got = split_all(stream, cuts)
    assert got == frames
    assert all(is_jpeg(f) for f in got)


@settings(max_examples=30, deadline=None)
@given(frames=frames_strategy, garbage=st.binary(max_size=50), data=st.data())
def test_garbage_before_a_frame_is_skipped(frames, garbage, data):
    garbage = garbage.replace(b"\xff", b"\x00")  # no SOI in the garbage
    stream = garbage + b"".join(frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    splitter = FrameSplitter()
    assert split_all(stream, cuts, splitter) == frames
    assert splitter.skipped == len(garbage) and splitter.frames == len(frames)


def test_one_byte_at_a_time():
    frames = [jpeg(thumbnail=True, restarts=2), jpeg(scan=b"\xff\xff\xd9\xff")]
    splitter = FrameSplitter()
    got = [f for byte in b"".join(frames) for f in splitter.feed(bytes([byte]))]
    assert got == frames and splitter.pending == 0


def test_a_frame_cut_short_is_dropped_at_the_next_soi():
    whole = jpeg()
    cut = whole[: len(whole) // 2]
    splitter = FrameSplitter()
    assert splitter.feed(cut + whole) == [whole]
    assert splitter.skipped == len(cut)


def test_a_frame_that_never_ends_is_an_error_not_unbounded_memory():
    splitter = FrameSplitter(max_frame=1000)
    head = SOI + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    with pytest.raises(MJPEGError, match="1000 bytes"):
        splitter.feed(head + b"\x00" * 2000)
    assert splitter.pending == 0
    assert splitter.feed(jpeg()) == [jpeg()]  # and it goes on with the next frame


def test_fill_bytes_and_a_trailing_ff_wait_for_more():
    frame = jpeg()
    splitter = FrameSplitter()
    assert splitter.feed(b"\x00\xff") == []  # maybe the start of an SOI
    assert splitter.feed(frame[1:]) == [frame]
    assert is_jpeg(frame) and not is_jpeg(frame[:-1]) and not is_jpeg(b"\xff\xd8")
