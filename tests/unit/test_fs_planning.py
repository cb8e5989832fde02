"""Pure content planning shared by the backends (oneos.fs.planning), against byte models; store URLs (oneos.fs.urls)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oneos.fs.errors import InvalidStoreURL
from oneos.fs.planning import CommitPlan, Segment, batch_pieces, commit_segments, plan_append, plan_read
from oneos.fs.store import Stat
from oneos.fs.urls import parse_store_url, redact

CS = 8


def _materialise(segments, contents):
    return b"".join(contents[s.content][s.offset : s.offset + s.length] for s in segments)


def _read(segments, contents, offset, length):
    out = []
    for p in plan_read(segments, CS, offset, length):
        assert 0 <= p.lo < p.hi <= CS
        chunk = contents[p.content][p.n * CS : (p.n + 1) * CS]
        out.append(chunk[p.lo : p.hi])
    return b"".join(out)


@st.composite
def _files(draw):
    contents = {}
    segments = []
    for i in range(draw(st.integers(0, 6))):
        data = bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=40)))
        contents[i] = data
        offset = draw(st.integers(0, len(data) - 1))
        length = draw(st.integers(1, len(data) - offset))
        segments.append(Segment(i, offset, length))
    return segments, contents


@settings(max_examples=300, deadline=None)
@given(_files(), st.integers(0, 120), st.one_of(st.none(), st.integers(0, 120)))
def test_plan_read_matches_the_model(file, offset, length):
    segments, contents = file
    whole = _materialise(segments, contents)
    want = whole[offset:] if length is None else whole[offset : offset + length]
    assert _read(segments, contents, offset, length) == want


def test_plan_read_rejects_negative_ranges():
    with pytest.raises(ValueError):
        list(plan_read([], CS, -1))


def test_batches_are_runs_of_consecutive_chunks_of_one_content():
    pieces = list(plan_read([Segment("a", 0, 5 * CS), Segment("b", 3, 2 * CS)], CS))
    runs = list(batch_pieces(iter(pieces), 2))
    assert [[(p.content, p.n) for p in run] for run in runs] == [
        [("a", 0), ("a", 1)],
        [("a", 2), ("a", 3)],
        [("a", 4)],
        [("b", 0), ("b", 1)],
        [("b", 2)],
    ]


def test_plan_append_absorbs_a_small_tail_only():
    big, small = Segment("x", 0, 3 * CS), Segment("y", 0, 3)
    assert plan_append([], CS) == ((), ())
    assert plan_append([big], CS) == ((big,), ())
    assert plan_append([big, small], CS) == ((big,), (small,))
    assert plan_append([small, small], CS) == ((), (small, small))
    many = [big] * 10
    assert plan_append(many, CS, max_segments=10) == ((), tuple(many))


def _plan(content, size, append, base, keep, skip):
    return CommitPlan("/f", content, size, append, base, keep, skip, "root", 0o644)


def test_commit_segments_cases():
    old = (Segment("a", 0, 20), Segment("b", 0, 3))
    # truncate: just the new content
    assert commit_segments(old, _plan("n", 5, False, None, (), 0)) == (Segment("n", 0, 5),)
    assert commit_segments(old, _plan("n", 0, False, None, (), 0)) == ()
    # append, nothing changed since open: the absorbed tail is part of the new content
    assert commit_segments(old, _plan("n", 7, True, old, old[:1], 3)) == (Segment("a", 0, 20), Segment("n", 0, 7))
    # append, someone committed meanwhile: only our own bytes go after what is there now
    now = (Segment("z", 0, 9),)
    assert commit_segments(now, _plan("n", 7, True, old, old[:1], 3)) == (Segment("z", 0, 9), Segment("n", 3, 4))
    # append, file removed meanwhile: recreated with our own bytes
    assert commit_segments(None, _plan("n", 7, True, old, old[:1], 3)) == (Segment("n", 3, 4),)
    # empty append changes nothing
    assert commit_segments(now, _plan("n", 0, True, now, now, 0)) == now


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * CS), st.booleans()), max_size=40))
def test_append_sequences_match_the_model(steps):
    """Appends (some racing another commit) through plan_append/commit_segments stay exact and short."""
    contents: dict[int, bytes] = {}
    segments: tuple[Segment, ...] = ()
    model = b""
    for i, (size, race) in enumerate(steps):
        data = bytes([i % 251]) * size
        keep, absorb = plan_append(segments, CS, max_segments=6)
        absorbed = _materialise(absorb, contents)
        contents[i] = absorbed + data
        base = segments
        if race:  # another appender commits first
            contents[1000 + i] = b"R"
            segments = segments + (Segment(1000 + i, 0, 1),)
            model += b"R"
        segments = commit_segments(segments, _plan(i, len(contents[i]), True, base, keep, len(absorbed)))
        model += data
        assert _materialise(segments, contents) == model
        if not race:  # a race may add segments; the next plain append compacts again
            assert len(segments) <= 6
        assert all(s.length > 0 for s in segments)


def test_stat_dict_round_trip():
    s = Stat("/a", "file", 3, 0o644, "root", 1.5, 2.5)
    assert Stat.from_dict(s.to_dict()) == s and s.name == "a" and s.is_file and not s.is_dir


@pytest.mark.parametrize(
    "url, scheme, target",
    [
        ("sqlite:///var/lib/oneos/fs.db", "sqlite", "/var/lib/oneos/fs.db"),
        ("sqlite:///:memory:", "sqlite", ":memory:"),
        ("mongodb://127.0.0.1:27017/oneos", "mongodb", "oneos"),
        ("mongodb://h1,h2:27018/grid?replicaSet=rs0", "mongodb", "grid"),
        ("mongodb://user:pw@h/db", "mongodb", "db"),
        ("mongodb://h", "mongodb", "oneos"),
    ],
)
def test_store_urls(url, scheme, target):
    parsed = parse_store_url(url)
    assert (parsed.scheme, parsed.target) == (scheme, target)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "sqlite:relative.db",
        "sqlite://relative.db",
        "sqlite:///",
        "postgres://h/db",
        "mongodb:///db",
        "mongodb://h/a.b",
    ],
)
def test_bad_store_urls(url):
    with pytest.raises(InvalidStoreURL):
        parse_store_url(url)


def test_passwords_are_redacted():
    assert redact("mongodb://user:secret@h:1/db") == "mongodb://user:***@h:1/db"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(InvalidStoreURL) as info:
        parse_store_url("mongodb://user:secret@h/a.b")
    assert "secret" not in str(info.value)
