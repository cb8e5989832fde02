"""The network's one store: which store a runtime uses, who serves it, what callers are told.

Pure functions of oneos.runtime.netstore, no I/O.
"""

from __future__ import annotations

import pytest

from oneos.config import resolve_listen
from oneos.errors import KernelUnavailable
from oneos.fs.errors import FileSystemUnavailable
from oneos.runtime.netstore import (
    StoreConflict,
    StoreRecord,
    decide,
    fs_server,
    recall,
    remember,
    route_check,
    unavailable_reason,
)
from oneos.runtime.status import RuntimeStatus

MACHINE_A, MACHINE_B = "a" * 16, "b" * 16
SQLITE_A = "sqlite:////home/a/.oneos/fs.sqlite3"
MONGO = "mongodb://db:27017/oneos"


def choose(configured: str = "", retained=None, remembered=None, me="rt-a", machine=MACHINE_A, kernel=True):
    return decide(
        configured,
        retained,
        remembered,
        me=me,
        machine=machine,
        kernel=kernel,
        local_store=f"sqlite:////home/{me}/fs.sqlite3",
        now=100.0,
    )


def test_first_kernel_runtime_creates_the_tree_in_its_home():
    d = choose()
    assert d.publish and d.eligible
    assert d.record == StoreRecord(
        url="sqlite:////home/rt-a/fs.sqlite3", host="rt-a", machine=MACHINE_A, claimed_at=100.0
    )


def test_a_runtime_without_a_setting_uses_the_networks_tree():
    record = StoreRecord(SQLITE_A, "rt-a", MACHINE_A)
    d = choose(retained=record, me="rt-b", machine=MACHINE_B)
    assert d.record == record and not d.publish and not d.eligible


def test_no_kernel_runtime_never_starts_a_tree_of_its_own():
    d = choose(kernel=False)
    assert d.record is None and not d.publish


def test_a_different_store_setting_is_refused_with_both_named():
    record = StoreRecord(SQLITE_A, "rt-a", MACHINE_A)
    with pytest.raises(StoreConflict) as e:
        choose("sqlite:////elsewhere/fs.sqlite3", retained=record, me="rt-b", machine=MACHINE_B)
    assert "rt-a" in str(e.value) and "/elsewhere/fs.sqlite3" in str(e.value)


def test_the_same_sqlite_url_on_another_machine_is_another_file():
    record = StoreRecord(SQLITE_A, "rt-a", MACHINE_A)
    with pytest.raises(StoreConflict, match="cannot open it"):
        choose(SQLITE_A, retained=record, me="rt-b", machine=MACHINE_B)


def test_runtimes_of_one_machine_configured_with_one_file_can_all_serve_it():
    record = StoreRecord(SQLITE_A, "rt-a", MACHINE_A)
    assert choose(SQLITE_A, retained=record, me="rt-b", machine=MACHINE_A).eligible


def test_the_store_host_restarting_serves_its_store_again():
    record = StoreRecord(SQLITE_A, "rt-a", MACHINE_A)
    assert choose(retained=record, me="rt-a").eligible


def test_a_remembered_store_is_announced_again_after_a_broker_restart():
    record = StoreRecord(SQLITE_A, "rt-a", MACHINE_A)
    d = choose(remembered=record, me="rt-b", machine=MACHINE_B)
    assert d.record == record and d.publish and not d.eligible


def test_a_shared_store_can_be_served_by_every_kernel_runtime():
    record = StoreRecord(MONGO, "rt-a")
    assert choose(retained=record, me="rt-b", machine=MACHINE_B).eligible
    assert not choose(retained=record, me="rt-c", machine=MACHINE_B, kernel=False).eligible
    assert choose(MONGO, retained=record, me="rt-b").eligible


def status(rid: str, *, leader=False, eligible=False, alive=True, started=0.0, kernel=True) -> RuntimeStatus:
    return RuntimeStatus(
        id=rid,
        instance=rid,
        state="alive" if alive else "dead",
        leader=leader,
        kernel=kernel,
        fs_eligible=eligible,
        started_at=started,
    )


def test_the_leader_serves_when_it_can_open_the_store():
    assert (
        fs_server([status("rt-a", eligible=True, started=1), status("rt-b", leader=True, eligible=True, started=2)])
        == "rt-b"
    )


def test_of_two_leader_claims_the_newer_term_serves():
    """An old leader's stale claim (better ranked, older epoch) must not take the tree from the new leader."""
    old = RuntimeStatus(id="rt-a", instance="a", leader=True, kernel=True, fs_eligible=True, started_at=1, epoch=1)
    new = RuntimeStatus(id="rt-b", instance="b", leader=True, kernel=True, fs_eligible=True, started_at=2, epoch=2)
    assert fs_server([old, new]) == "rt-b" and fs_server([new, old]) == "rt-b"


def test_the_store_host_serves_whoever_leads():
    view = [status("rt-a", eligible=True, started=1), status("rt-b", leader=True, started=2)]
    assert fs_server(view) == "rt-a"


def test_nobody_serves_when_the_store_host_is_dead_and_the_reason_names_it():
    record = StoreRecord(SQLITE_A, "rt-a", MACHINE_A)
    view = [status("rt-a", eligible=True, alive=False), status("rt-b", leader=True)]
    assert fs_server(view) is None
    assert unavailable_reason(record, view).startswith("file system unavailable: store host rt-a is down")
    with pytest.raises(FileSystemUnavailable, match="store host rt-a is down"):
        route_check("fs", view, record)
    route_check("scheduler", view, record)  # the kernel is fine


def test_no_leader_means_a_clear_kernel_error():
    view = [status("rt-a", eligible=True)]
    with pytest.raises(KernelUnavailable, match="election"):
        route_check("scheduler", view, None)
    with pytest.raises(KernelUnavailable, match="no kernel runtime is alive"):
        route_check("kernel", [status("rt-a", kernel=False)], None)
    route_check("rt-a", view, None)  # a runtime's own target is not judged here


def test_record_codec_and_memory(tmp_path):
    record = StoreRecord(MONGO, "rt-a", "", 5.0)
    assert StoreRecord.decode(record.encode()) == record
    assert recall(tmp_path) is None
    remember(tmp_path, record)
    assert recall(tmp_path) == record


def test_auto_listeners_stay_on_loopback_until_the_network_spans_machines():
    listen = {"pipe": "auto", "ssh": "auto", "telnet": "", "desktop": "tcp:3000"}
    local = resolve_listen(listen, "mqtt://127.0.0.1:1883", "127.0.0.1")
    assert local == {
        "pipe": "tcp:0:interface=127.0.0.1",
        "ssh": "tcp:2222:interface=127.0.0.1",
        "telnet": "",
        "desktop": "tcp:3000",
    }
    wide = resolve_listen(listen, "mqtt://10.1.2.3:1883", "10.1.2.7")
    assert wide["pipe"] == "tcp:0:interface=10.1.2.7" and wide["ssh"] == "tcp:2222:interface=10.1.2.7"
    named = resolve_listen(listen, "mqtt://broker.lan:1883", "me.lan")
    assert named["ssh"] == "tcp:2222:interface=0.0.0.0"
