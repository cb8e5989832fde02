"""Naming and configuring devices: the --device flag, config merging, what crosses the wire
(DeviceInfo, the runtime status's devices), options, addresses, and the CLI's table."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from oneos.cli.devices import format_devices, rows_from_statuses
from oneos.cli.status import devices_cell, format_table
from oneos.config import (
    USER_NAME_PATTERN,
    ConfigError,
    Device,
    check_known_drivers,
    load_config,
    merge_devices,
    parse_device_mode,
    parse_device_spec,
)
from oneos.devices.base import LineSplitter
from oneos.devices.errors import DeviceError
from oneos.devices.info import DeviceInfo, format_mode, mode_string, parse_device_address
from oneos.devices.options import Options
from oneos.devices.service import DeviceService
from oneos.runtime import tap
from oneos.runtime.status import DeviceStatus, RuntimeStatus

CAM = "cam0:in:video:format=lavfi,input=testsrc=size=320x240:rate=10"


def parsed(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def test_spec_options_keep_colons_and_equals_in_values():
    d = parse_device_spec(CAM)
    assert d == Device("cam0", "in", "video", {"format": "lavfi", "input": "testsrc=size=320x240:rate=10"})
    assert parse_device_spec(d.spec) == d
    assert parse_device_spec("led:out:gpio:pin=17,mock=1").options == {"pin": "17", "mock": "1"}


def test_the_device_flag_is_repeatable_and_joins_the_config_files_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path))
    (tmp_path / "config.json").write_text(
        json.dumps({"devices": ["rnd:in:random:size=8", {"name": "led", "direction": "out", "driver": "gpio"}]})
    )
    options = parsed("--device", CAM, "--device", "rnd:in:random:size=64")
    assert options.overrides()["devices"] == [CAM, "rnd:in:random:size=64"]
    devices = options.config.devices
    assert [d.name for d in devices] == ["led", "cam0", "rnd"]  # the flag's rnd replaces the file's
    assert devices[2].options == {"size": "64"}
    assert "devices" not in parsed().overrides() and parsed().config.devices[0].name == "rnd"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "cam0"], "--device cam0: 'cam0' is not NAME:in|out:DRIVER[:KEY=VALUE,...]"),
        (["--device", "x:in:u/sb"], "--device x:in:u/sb: 'u/sb' is not a driver name (one of video, gpio,"),
        (["--device", "x:up:random"], "--device x:up:random: 'up' is not in or out"),
        (["--device", "x:in:random", "--device", "x:in:dump"], "'devices[1].name': 'x' is already the name"),
    ],
)
def test_a_bad_device_flag_is_a_usage_error_naming_it(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path))
    with pytest.raises(usage.UsageError) as e:
        parsed(*args)
    assert message in str(e.value)


def test_an_unknown_driver_starts_the_runtime_and_fails_only_that_device(tmp_path, monkeypatch):
    """The issue's bad input: an unknown driver marks the device failed with the reason; the runtime runs on."""
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path))
    devices = parsed("--device", "x:in:usb", "--device", "rnd:in:random").config.devices
    assert [(d.name, d.driver) for d in devices] == [("x", "usb"), ("rnd", "random")]
    service = DeviceService("rt-1", Clock(), None, devices)
    states = {d["name"]: (d["state"], d.get("reason", "")) for d in service.list_devices()}
    assert states["x"][0] == "failed" and "unknown driver 'usb'" in states["x"][1]
    assert states["rnd"][0] == "ok"
    with pytest.raises(ConfigError, match=r"devices\[0\]\.driver.*'usb' is not one of"):
        check_known_drivers(devices)  # what oneos configure asks while the user answers


def test_merging_keeps_malformed_settings_for_validation_to_name(tmp_path):
    assert merge_devices("nonsense", ["a:in:random"]) == "nonsense"
    assert merge_devices([], "x") == "x"
    assert merge_devices([{"name": "a"}, "b:in:random", 3], ["a:in:random"]) == ["b:in:random", 3, "a:in:random"]
    with pytest.raises(ConfigError, match=r"devices\[1\]"):
        load_config(tmp_path, {"devices": ["a:in:random", 3]})


def test_runtime_status_carries_devices_and_old_statuses_have_none():
    entry = DeviceStatus("cam0", "in", "video", "failed", "ffmpeg not found")
    status = RuntimeStatus(id="rt-1", instance="i", devices=(entry, DeviceStatus("rnd", "in", "random")))
    body = json.loads(status.encode())
    assert body["devices"][0] == {
        "name": "cam0",
        "direction": "in",
        "driver": "video",
        "state": "failed",
        "reason": "ffmpeg not found",
        "owner": "",
        "mode": None,
    }
    assert RuntimeStatus.decode(status.encode()) == status
    owned = status.with_(devices=(DeviceStatus("cam0", "in", "video", owner="alice", mode=0o640),))
    assert RuntimeStatus.decode(owned.encode()) == owned
    # a runtime older than device permissions says neither; a garbled mode is "not said", never a wider one
    old_entry = {"name": "cam0", "direction": "in", "driver": "video", "state": "ok", "reason": ""}
    assert DeviceStatus.from_dict(old_entry) == DeviceStatus("cam0", "in", "video")
    assert DeviceStatus.from_dict({**old_entry, "mode": "0777"}).mode is None
    older = {k: v for k, v in body.items() if k != "devices"}
    assert RuntimeStatus.from_dict(older).devices == ()
    from oneos.pubsub.messages import MalformedMessage

    with pytest.raises(MalformedMessage):
        RuntimeStatus.from_dict({**body, "devices": [{"state": "ok"}]})
    assert devices_cell(status) == "2 (1 failed)" and devices_cell(RuntimeStatus(id="x", instance="i")) == "0"
    assert "DEVICES" in format_table([status.with_(updated_at=100.0)], 100.0)


def test_device_info_round_trips_and_keeps_a_newer_peers_keys():
    info = DeviceInfo("rt-2", "cam0", "in", "video", "ok", "", {"fps": "10"}, "drop", "frame", True, 3, 0, 99, 9, 2)
    assert DeviceInfo.decode(info.encode()) == info
    newer = DeviceInfo.decode({**info.encode(), "fps_now": 9.5})
    assert newer.extra == {"fps_now": 9.5} and newer.encode()["fps_now"] == 9.5
    assert info.status_entry() == {
        "name": "cam0",
        "direction": "in",
        "driver": "video",
        "state": "ok",
        "reason": "",
        "owner": "",
        "mode": None,
    }
    owned = DeviceInfo("rt-2", "led", "out", "gpio", owner="alice", mode=0o620)
    assert DeviceInfo.decode(owned.encode()) == owned and owned.encode()["mode"] == 0o620
    assert (owned.status_entry()["owner"], owned.status_entry()["mode"], owned.mode_text) == ("alice", 0o620, "0620")
    assert (info.address, info.path) == ("rt-2/cam0", "/dev/rt-2/cam0")
    minimal = DeviceInfo.decode({"runtime": "r", "name": "n", "direction": "out", "driver": "dump"})
    assert (minimal.state, minimal.readers, minimal.value, minimal.unit) == ("ok", 0, None, "chunk")
    assert (minimal.owner, minimal.mode, minimal.mode_text) == ("", None, "?")  # from a runtime before permissions


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"runtime": "r", "name": "n", "direction": "in"},
        {"runtime": "r", "name": "n", "direction": "in", "driver": "d", "state": "broken"},
        {"runtime": "r", "name": "n", "direction": "in", "driver": "d", "readers": -1},
        {"runtime": "r", "name": "n", "direction": "in", "driver": "d", "bytes": "lots"},
        {"runtime": "r", "name": "n", "direction": "in", "driver": "d", "options": []},
        {"runtime": "r", "name": "n", "direction": "in", "driver": "d", "owner": 3},
        {"runtime": "r", "name": "n", "direction": "in", "driver": "d", "mode": "0644"},
        {"runtime": "r", "name": "n", "direction": "in", "driver": "d", "mode": 0o1777},
        {"runtime": "r", "name": "n", "direction": "in", "driver": "d", "mode": True},
    ],
)
def test_a_malformed_device_record_is_a_typed_error(bad):
    with pytest.raises(DeviceError) as e:
        DeviceInfo.decode(bad)
    assert e.value.kind == "EINVAL"


def test_device_addresses():
    assert parse_device_address("rt-2/cam0") == ("rt-2", "cam0")
    assert parse_device_address("/dev/rt-2/cam0") == ("rt-2", "cam0")
    for bad in ("cam0", "/dev/cam0", "rt-2/cam0/x", "rt 2/cam0", "/rt-2/cam0", ""):
        with pytest.raises(DeviceError):
            parse_device_address(bad)


def test_options_convert_check_and_refuse_leftovers():
    o = Options({"n": "3", "f": "0.5", "b": "yes", "c": "drop", "t": "x", "extra": "1"})
    got = (o.integer("n", 0, 0, 5), o.number("f", 0, 0, 1), o.flag("b"), o.choice("c", "block", ("drop", "block")))
    assert got == (3, 0.5, True, "drop")
    assert o.text("t") == "x" and o.text("missing", "d") == "d" and not o.has("absent")
    with pytest.raises(DeviceError, match=r"unknown option extra for the test driver \(known: n, f, b, c, t"):
        o.finish("test")
    for given, read in [
        ({"n": "9"}, lambda o: o.integer("n", 0, 0, 5)),
        ({"n": "x"}, lambda o: o.integer("n", 0, 0, 5)),
        ({"f": "2"}, lambda o: o.number("f", 0, 0, 1)),
        ({"b": "maybe"}, lambda o: o.flag("b")),
        ({}, lambda o: o.required("pin", "the pin")),
    ]:
        with pytest.raises(DeviceError) as e:
            read(Options(given))
        assert e.value.kind == "EINVAL"


def test_line_splitter():
    s = LineSplitter(max_line=4)
    assert s.feed(b"1\n0") == [b"1\n"]
    assert s.feed(b"\n123456") == [b"0\n", b"1234"]
    assert s.rest() == b"56" and s.rest() == b""


def test_the_devices_table_from_live_statuses():
    live = RuntimeStatus(
        id="rt-2",
        instance="i",
        updated_at=100.0,
        devices=(
            DeviceStatus("cam0", "in", "video", owner="alice", mode=0o644),
            DeviceStatus("bad", "in", "video", "failed", "no ffmpeg"),
        ),
    )
    dead = RuntimeStatus(id="rt-3", instance="j", state="dead", devices=(DeviceStatus("led", "out", "gpio"),))
    rows = rows_from_statuses([dead, live], 100.0)
    assert [(r["runtime"], r["name"]) for r in rows] == [("rt-2", "cam0"), ("rt-2", "bad")]
    table = format_devices(rows).splitlines()
    assert table[0].split() == ["RUNTIME", "NAME", "DIRECTION", "DRIVER", "OWNER", "MODE", "STATE", "REASON"]
    assert table[1].split() == ["rt-2", "cam0", "in", "video", "alice", "0644", "ok", "-"]
    assert table[2].split()[4:] == ["?", "?", "failed", "no", "ffmpeg"]  # a runtime that did not say
    assert (rows[0]["owner"], rows[0]["mode"]) == ("alice", 0o644)  # --json: the wire's values
    detail = format_devices([{**rows[0], "readers": 2, "units": 5, "value": None}], detail=True).splitlines()
    assert detail[0].split()[4:7] == ["OWNER", "MODE", "STATE"] and detail[1].split()[4:8] == [
        "alice",
        "0644",
        "ok",
        "2",
    ]
    assert "rt-2/bad: no ffmpeg" in format_devices([{**rows[1], "readers": 2}], detail=True)
    assert format_devices([]).startswith("no devices")


# -- who may use a device: owner= and mode= ------------------------------------------


def test_owner_and_mode_are_options_every_device_takes():
    d = parse_device_spec("rnd:in:random:owner=alice,mode=0644,size=8")
    assert (d.owner, d.mode, d.driver_options) == ("alice", 0o644, {"size": "8"})
    plain = parse_device_spec("rnd:in:random")
    assert (plain.owner, plain.mode) == ("", 0o600)  # the runtime's account owns it; only it
    assert [parse_device_mode(m) for m in ("600", "0640", "0o604", "7", "0")] == [0o600, 0o640, 0o604, 0o7, 0]


def test_the_user_name_rule_is_the_shells():
    from oneos.shell.users import NAME_PATTERN

    assert USER_NAME_PATTERN.pattern == NAME_PATTERN.pattern


@pytest.mark.parametrize(
    "device, field, problem",
    [
        ({"options": {"mode": "rw-r--r--"}}, "devices[0].options.mode", "mode=rw-r--r--: not an octal mode like 0600"),
        ({"options": {"mode": "0999"}}, "devices[0].options.mode", "mode=0999: not an octal mode"),
        (
            {"options": {"mode": "4755"}},
            "devices[0].options.mode",
            "mode=4755: a device's mode is rwx bits only, 0000 to 0777",
        ),
        ({"options": {"mode": ""}}, "devices[0].options.mode", "mode=: not an octal mode"),
        ({"options": {"owner": "Bob!"}}, "devices[0].options.owner", "owner=Bob!: not a OneOS user name"),
        ({"options": {"owner": ""}}, "devices[0].options.owner", "owner=: not a OneOS user name"),
    ],
)
def test_a_bad_owner_or_mode_stops_the_start_naming_the_field(tmp_path, device, field, problem):
    raw = {"name": "rnd", "direction": "in", "driver": "random", **device}
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path, {"devices": [raw]})
    assert e.value.field == field and problem in str(e.value)


def test_a_bad_mode_flag_is_a_usage_error_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path))
    with pytest.raises(usage.UsageError) as e:
        parsed("--device", "rnd:in:random", "--device", "cam:in:video:owner=alice,mode=rw")
    assert str(e.value) == "--device cam:in:video:owner=alice,mode=rw: mode=rw: not an octal mode like 0600 or 0644"
    ok = parsed("--device", "rnd:in:random:owner=alice,mode=0644").config.devices[0]
    assert (ok.owner, ok.mode) == ("alice", 0o644)


def test_mode_strings():
    assert mode_string(0o600) == "crw-------"
    assert mode_string(0o644) == "crw-r--r--"
    assert mode_string(0o062) == "c---rw--w-"
    assert mode_string(None) == "c?????????"
    assert (format_mode(0o600), format_mode(0), format_mode(None)) == ("0600", "0000", "?")
