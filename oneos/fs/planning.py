"""Write and read planning: the pure content logic both backends share.

No I/O.  A file's content is a list of *segments* ``(content, offset,
length)`` over chunks of ``chunk_size`` bytes (see docs/filesystem.md,
"Content: chunks, segments, commit").  This module decides which chunk
pieces a read needs (:func:`plan_read`, :func:`batch_pieces`), what an append
copies so segment lists stay short (:func:`plan_append`), and which segment
list a commit installs (:class:`CommitPlan`, :func:`commit_segments`).
The store (:mod:`oneos.fs.store`) and the backends act on these answers;
``tests/unit/test_fs_planning.py`` checks them against byte models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

#: An append whose file already has this many segments rewrites it into one.
MAX_SEGMENTS = 64


@dataclass(frozen=True)
class Segment:
    """``length`` bytes of content ``content`` starting at byte ``offset`` of it."""

    content: Any
    offset: int
    length: int


@dataclass(frozen=True)
class Piece:
    """Bytes ``[lo, hi)`` of chunk ``n`` of ``content``: one step of a read."""

    content: Any
    n: int
    lo: int
    hi: int


def plan_read(
    segments: Sequence[Segment], chunk_size: int, offset: int = 0, length: int | None = None
) -> Iterator[Piece]:
    """The chunk pieces that make up bytes ``[offset, offset+length)`` of a file."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError("offset and length must not be negative")
    remaining = None if length is None else length
    start = 0  # file offset of the current segment
    for seg in segments:
        end = start + seg.length
        if end <= offset:
            start = end
            continue
        pos = max(offset, start)  # file position
        while pos < end and (remaining is None or remaining > 0):
            content_pos = seg.offset + (pos - start)
            n, lo = divmod(content_pos, chunk_size)
            hi = min(chunk_size, lo + (end - pos))
            if remaining is not None:
                hi = min(hi, lo + remaining)
                remaining -= hi - lo
            yield Piece(seg.content, n, lo, hi)
            pos += hi - lo
        if remaining is not None and remaining <= 0:
            return
        start = end


def batch_pieces(pieces: Iterator[Piece], batch: int) -> Iterator[list[Piece]]:
    """Group pieces into runs of consecutive chunks of one content, ``batch`` at most."""
    run: list[Piece] = []
    for piece in pieces:
        if run and (len(run) >= batch or piece.content != run[-1].content or piece.n != run[-1].n + 1):
            yield run
            run = []
        run.append(piece)
    if run:
        yield run


def plan_append(
    segments: Sequence[Segment], chunk_size: int, max_segments: int = MAX_SEGMENTS
) -> tuple[tuple[Segment, ...], tuple[Segment, ...]]:
    """Split a file's segments into ``(keep, absorb)`` for an append.

    The appender copies the *absorbed* tail into its own new content before
    its data, so many small appends do not leave one tiny segment each: the
    tail absorbed is at most one chunk long.  A file with ``max_segments``
    segments or more is absorbed whole (rewritten into one segment), which
    bounds the list whatever the pattern of appends.
    """
    segs = tuple(segments)
    if len(segs) >= max_segments:
        return (), segs
    absorbed = 0
    cut = len(segs)
    while cut > 0 and absorbed + segs[cut - 1].length <= chunk_size:
        absorbed += segs[cut - 1].length
        cut -= 1
    return segs[:cut], segs[cut:]


@dataclass(frozen=True)
class CommitPlan:
    """What a writer hands its backend at commit time.

    ``size`` bytes were written under ``content``; the first ``skip`` of them
    are a copy of the file's absorbed tail (``base`` minus ``keep``), which
    only counts if the file still has exactly the segments ``base`` it had
    when the writer opened.  Otherwise another writer committed in between
    and this append goes after whatever is there now.
    """

    path: str
    content: Any
    size: int
    append: bool
    base: tuple[Segment, ...] | None
    keep: tuple[Segment, ...]
    skip: int
    owner: str
    perm: int


def commit_segments(current: tuple[Segment, ...] | None, plan: CommitPlan) -> tuple[Segment, ...]:
    """The segment list a commit installs, given the file's *current* segments (None: no file)."""
    if not plan.append:
        return (Segment(plan.content, 0, plan.size),) if plan.size else ()
    tail = plan.size - plan.skip
    tail_seg = (Segment(plan.content, plan.skip, tail),) if tail else ()
    if current is None:
        return tail_seg
    if plan.base is not None and current == plan.base:
        return plan.keep + ((Segment(plan.content, 0, plan.size),) if plan.size else ())
    return current + tail_seg


def contents_of(segments: Sequence[Segment]) -> set[Any]:
    return {seg.content for seg in segments}


__all__ = [
    "MAX_SEGMENTS",
    "CommitPlan",
    "Piece",
    "Segment",
    "batch_pieces",
    "commit_segments",
    "contents_of",
    "plan_append",
    "plan_read",
]
