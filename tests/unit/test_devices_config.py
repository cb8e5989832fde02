"""Naming and configuring devices: the --device flag, config merging, what crosses the wire
(DeviceInfo, the runtime status's devices), options, addresses, and the CLI's table."""

from __future__ import annotations

import json

import pytest
from twisted.python import usage

from oneos.cli.devices import format_devices, rows_from_statuses
from oneos.cli.status import devices_cell, format_table
from oneos.config import ConfigError, Device, load_config, merge_devices, parse_device_spec
from oneos.devices.base import LineSplitter
from oneos.devices.errors import DeviceError
from oneos.devices.info import DeviceInfo, parse_device_address
from oneos.devices.options import Options
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
        (["--device", "x:in:usb"], "--device x:in:usb: 'usb' is not one of video, gpio, command, random, dump"),
        (["--device", "x:up:random"], "--device x:up:random: 'up' is not in or out"),
        (["--device", "x:in:random", "--device", "x:in:dump"], "'devices[1].name': 'x' is already the name"),
    ],
)
def test_a_bad_device_flag_is_a_usage_error_naming_it(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("ONEOS_HOME", str(tmp_path))
    with pytest.raises(usage.UsageError) as e:
        parsed(*args)
    assert message in str(e.value)


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
    }
    assert RuntimeStatus.decode(status.encode()) == status
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
    assert info.status_entry() == {"name": "cam0", "direction": "in", "driver": "video", "state": "ok", "reason": ""}
    assert (info.address, info.path) == ("rt-2/cam0", "/dev/rt-2/cam0")
    minimal = DeviceInfo.decode({"runtime": "r", "name": "n", "direction": "out", "driver": "dump"})
    assert (minimal.state, minimal.readers, minimal.value, minimal.unit) == ("ok", 0, None, "chunk")


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
        devices=(DeviceStatus("cam0", "in", "video"), DeviceStatus("bad", "in", "video", "failed", "no ffmpeg")),
    )
    dead = RuntimeStatus(id="rt-3", instance="j", state="dead", devices=(DeviceStatus("led", "out", "gpio"),))
    rows = rows_from_statuses([dead, live], 100.0)
    assert [(r["runtime"], r["name"]) for r in rows] == [("rt-2", "cam0"), ("rt-2", "bad")]
    table = format_devices(rows).splitlines()
    assert table[0].split() == ["RUNTIME", "NAME", "DIRECTION", "DRIVER", "STATE", "REASON"]
    assert table[1].split() == ["rt-2", "cam0", "in", "video", "ok", "-"]
    assert table[2].split()[4:] == ["failed", "no", "ffmpeg"]
    detail = format_devices([{**rows[1], "readers": 2, "units": 5, "value": None}], detail=True)
    assert "READERS" in detail and "rt-2/bad: no ffmpeg" in detail
    assert format_devices([]).startswith("no devices")
