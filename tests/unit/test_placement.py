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


# --- near a device ("@dev:NAME", "oneos run --near NAME") ------------------------------------------


def with_devices(status, *devices):
    from oneos.runtime.status import DeviceStatus

    return status.with_(
        devices=tuple(DeviceStatus(*d) if isinstance(d, tuple) else DeviceStatus(d, "in", "random") for d in devices)
    )


def test_near_picks_the_only_runtime_with_the_device():
    statuses = [rt("rt-1", cpu=0), with_devices(rt("rt-2", cpu=90, agents=9), "cam0"), rt("rt-3", cpu=0)]
    verdict = place(statuses, Needs(near=("cam0",)))
    assert verdict.runtime == "rt-2"
    assert verdict.reasons[0] == "has device cam0"


def test_near_with_several_runtimes_lets_the_score_pick():
    statuses = [with_devices(rt("busy", cpu=90), "cam0"), with_devices(rt("idle", cpu=5), "cam0"), rt("other", cpu=0)]
    assert place(statuses, Needs(near=("cam0",))).runtime == "idle"


def test_near_needs_every_device_and_each_ok():
    failed = ("cam0", "in", "video", "failed", "ffmpeg is not installed")
    statuses = [
        with_devices(rt("rt-1", cpu=0), failed, "mic"),
        with_devices(rt("rt-2"), "cam0"),
        with_devices(rt("rt-3", cpu=50), "cam0", "mic"),
    ]
    assert place(statuses, Needs(near=("cam0", "mic"))).runtime == "rt-3"
    verdicts = {v.runtime: v for v in rank(statuses, Needs(near=("cam0", "mic")))}
    assert verdicts["rt-1"].reasons == ("device cam0 failed: ffmpeg is not installed",)
    assert verdicts["rt-2"].reasons == ("no device mic",)
    assert verdicts["rt-3"].reasons[:2] == ("has device cam0", "has device mic")


def test_near_a_device_no_live_runtime_has_names_it():
    statuses = [rt("rt-1"), with_devices(rt("rt-2", state="dead"), "cam0")]
    with pytest.raises(NoFittingRuntime) as e:
        place(statuses, Needs(near=("cam0",)))
    assert "no live runtime has device cam0 ready" in str(e.value)
    assert "rt-1: no device cam0" in str(e.value)


def test_near_with_another_constraint_failing_says_so():
    statuses = [with_devices(rt("rt-1", tags=("gpu",)), "cam0"), with_devices(rt("rt-2"), "cam0")]
    assert place(statuses, Needs(near=("cam0",), tags=("gpu",))).runtime == "rt-1"
    with pytest.raises(NoFittingRuntime, match="no runtime fits") as e:
        place(statuses, Needs(near=("cam0",), runtime="rt-2", tags=("gpu",)))
    assert "rt-2: lacks tag gpu" in str(e.value)


def test_explain_says_which_runtimes_have_the_device():
    statuses = [rt("rt-1"), with_devices(rt("rt-2"), "cam0")]
    text = explain(statuses, Needs(near=("cam0",))).splitlines()
    assert text[0].startswith("-> rt-2") and "has device cam0" in text[0]
    assert text[1].lstrip().startswith("rt-1") and "unfit" in text[1] and "no device cam0" in text[1]


def test_pipeline_syntax_dev_placement():
    from oneos.scheduler.pipeline import PipelineSyntaxError, parse_pipeline

    first, second = parse_pipeline("cat @dev:cam0 @tag:x | wc -c @rt-1 @dev:a @dev:b")
    assert (first.program, first.tags, first.near) == ("cat", ("x",), ("cam0",))
    assert (second.runtime, second.near) == ("rt-1", ("a", "b"))
    with pytest.raises(PipelineSyntaxError, match="@dev:DEVICE"):
        parse_pipeline("cat @dev:")


def test_the_scheduler_places_spawns_and_pipeline_stages_near_their_device():
    """Through the service: ``near`` (spawn) and a StageSpec's ``near`` (pipeline) reach placement."""
    from twisted.internet import defer
    from twisted.internet.testing import MemoryReactorClock

    from oneos.scheduler.client import StageSpec
    from oneos.scheduler.service import SchedulerService

    class RPC:
        def __init__(self):
            self.calls = []

        def call(self, target, method, timeout=None, meta=None, **args):
            self.calls.append((target, method))
            return defer.Deferred()

    class Membership:
        epoch, interval = 1, 2.0

        def live(self):
            return [rt("rt-1", cpu=0), with_devices(rt("rt-2", cpu=90), "cam0"), rt("rt-3", cpu=0)]

    rpc = RPC()
    scheduler = SchedulerService(None, rpc, Membership(), MemoryReactorClock())
    scheduler.spawn("sh", ["-c", "true"], near=["cam0"])
    scheduler.pipeline([StageSpec("cat", near=("cam0",)).encode()])
    assert [target for target, method in rpc.calls] == ["rt-2", "rt-2"]
    failed = scheduler.spawn("sh", near=["nosuch"])
    with pytest.raises(NoFittingRuntime, match="no live runtime has device nosuch"):
        failed.result.raiseException()
    failed.addErrback(lambda f: None)
    assert "has device cam0" in scheduler.explain("sh", near=["cam0"]).splitlines()[0]
