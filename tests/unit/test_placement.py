"""Placement is pure: statuses in, a choice and its reasons out."""

import pytest

from oneos.runtime.status import RuntimeStatus
from oneos.scheduler.placement import Needs, NoFittingRuntime, explain, place, rank


def rt(
    rid,
    cpu=10.0,
    used=1000.0,
    total=8000.0,
    agents=0,
    interpreters=("python3", "sh"),
    tags=(),
    state="alive",
    limit=1024,
    agents_mb=0.0,
):
    return RuntimeStatus(
        id=rid,
        instance=rid,
        state=state,
        cpu_percent=cpu,
        memory_used_mb=used,
        memory_total_mb=total,
        agents=agents,
        interpreters=interpreters,
        tags=tags,
        memory_limit_mb=limit,
        agents_memory_mb=agents_mb,
    )


def test_idle_runtime_beats_busy_one():
    assert place([rt("busy", cpu=90, agents=5), rt("idle", cpu=5)], Needs()).runtime == "idle"


def test_interpreter_must_be_present():
    v = place(
        [rt("a", cpu=0, interpreters=("sh",)), rt("b", cpu=80, interpreters=("node", "sh"))], Needs(interpreter="node")
    )
    assert v.runtime == "b"


def test_named_runtime_tags_and_exclusions():
    group = [rt("a", tags=("gpu",)), rt("b"), rt("c", tags=("gpu", "arm"))]
    assert place(group, Needs(runtime="b")).runtime == "b"
    assert place(group, Needs(tags=("gpu", "arm"))).runtime == "c"
    assert place(group, Needs(tags=("gpu",), exclude=("a",))).runtime == "c"


def test_memory_headroom_is_respected():
    group = [rt("full", limit=1024, agents_mb=1000), rt("roomy", cpu=90, limit=1024)]
    assert place(group, Needs(memory_mb=200)).runtime == "roomy"


def test_nothing_fits_explains_every_refusal():
    with pytest.raises(NoFittingRuntime) as e:
        place([rt("a", interpreters=("sh",)), rt("b", state="dead")], Needs(interpreter="node"))
    assert "a: has no node" in str(e.value) and "b: dead" in str(e.value)
    with pytest.raises(NoFittingRuntime, match="no live runtime"):
        place([], Needs())


def test_ties_are_broken_by_id_and_explain_marks_the_choice():
    group = [rt("b"), rt("a")]
    assert [v.runtime for v in rank(group, Needs())] == ["a", "b"]
    text = explain(group, Needs())
    assert text.splitlines()[0].startswith("-> a")
