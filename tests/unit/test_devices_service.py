"""The runtime's devices service (oneos/devices/service.py): states, errors, readers and writers.

Drivers are the real ones where they need no hardware (random, dump) and
fakes otherwise; streams are a fake transfer server whose offers the test
consumes as the pump would; time is a task.Clock.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task

from oneos.config import DEVICE_DRIVERS, Device
from oneos.devices.base import InputDriver, OutputDriver
from oneos.devices.drivers import DRIVERS
from oneos.devices.errors import DeviceError
from oneos.devices.info import DeviceInfo
from oneos.devices.service import DeviceService, ServedDevice
from oneos.errors import error_kind, rebuild_error
from test_devices_fanout import Consumer


class FakeTransfer:
    """Records offers; the test plays the peer."""

    def __init__(self) -> None:
        self.offers: dict[str, tuple[Any, Any, defer.Deferred]] = {}

    def offer(self, source: Any = None, sink: Any = None) -> tuple[str, defer.Deferred]:
        token = f"t{len(self.offers)}"
        done: defer.Deferred = defer.Deferred()
        self.offers[token] = (source, sink, done)
        return token, done

    def where(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": 7000}


#: the OS account the tests' runtime "runs as" (owner of devices configured without owner=)
RUNTIME_ACCOUNT = "op"


def service(*specs: Device, clock: Any = None, changes: list | None = None) -> tuple[DeviceService, FakeTransfer]:
    transfer = FakeTransfer()
    svc = DeviceService(
        "rt-1",
        clock or task.Clock(),
        transfer,
        specs,
        on_change=(lambda: changes.append(1)) if changes is not None else None,
        owner=RUNTIME_ACCOUNT,
    )
    svc.startService()
    return svc, transfer


def status_of(svc: DeviceService, name: str) -> dict[str, str]:
    return next(s for s in svc.status() if s["name"] == name)


def test_the_driver_table_is_the_configs_and_each_class_says_what_it_is():
    assert set(DRIVERS) == set(DEVICE_DRIVERS)
    for name, sides in DRIVERS.items():
        for direction, cls in sides.items():
            assert cls.driver == name
            assert issubclass(cls, InputDriver if direction == "in" else OutputDriver)


@pytest.mark.parametrize(
    "device, reason",
    [
        (Device("x", "in", "usb"), "unknown driver 'usb' (known: command, dump, gpio, random, video)"),
        (Device("x", "out", "random"), "the random driver has no 'out' side (it is an input)"),
        (Device("x", "in", "dump"), "the dump driver has no 'in' side (it is an output)"),
        (Device("x", "in", "random", {"rate": "fast"}), "option rate=fast: expected a number"),
        (Device("x", "in", "random", {"rat": "1"}), "unknown option rat for the random driver (known: slow, queue"),
        (Device("x", "in", "random", {"slow": "maybe"}), "option slow=maybe: expected one of drop, block"),
        (Device("x", "in", "gpio", {"pin": "17", "slow": "block"}), "the gpio driver cannot pause, only drop"),
        (Device("x", "in", "command"), "option cmd is needed"),
        (Device("x", "in", "command", {"cmd": "'unbalanced"}), "option cmd='unbalanced: No closing quotation"),
        (Device("x", "in", "command", {"cmd": "/no/such/program"}), "/no/such/program not found"),
        (Device("x", "in", "video", {"ffmpeg": "/no/ffmpeg"}), "ffmpeg /no/ffmpeg not found (or not executable)"),
        (Device("x", "in", "video", {"ffmpeg": "/bin/sh", "input": "/dev/video99"}), "no camera at /dev/video99"),
        (Device("x", "in", "video", {"size": "big"}), "option size=big: expected WIDTHxHEIGHT"),
        (Device("x", "out", "gpio", {"pin": "17", "mock_wire": "27"}), "mock_wire is for mock pins only"),
        (Device("x", "out", "dump", {"file": "/no/such/dir/f"}), "cannot append to /no/such/dir/f: no folder"),
    ],
)
def test_a_device_that_cannot_work_is_failed_with_the_reason_and_the_rest_work(device, reason):
    svc, _ = service(device, Device("rnd", "in", "random"))
    entry = status_of(svc, "x")
    assert entry["state"] == "failed" and reason in entry["reason"], entry
    assert status_of(svc, "rnd") == {
        "name": "rnd",
        "direction": "in",
        "driver": "random",
        "state": "ok",
        "reason": "",
        "owner": RUNTIME_ACCOUNT,
        "mode": 0o600,
    }
    use = svc.read if device.direction == "in" else svc.write
    with pytest.raises(DeviceError) as e:
        use("x")
    assert e.value.kind == "ENODEV" and reason in str(e.value) and "device x on rt-1 failed" in str(e.value)
    assert svc.read("rnd")["token"]  # the others are served


def test_errors_have_their_kinds_and_cross_the_wire_with_them():
    svc, _ = service(Device("rnd", "in", "random"), Device("sink", "out", "dump"))
    cases = [
        (lambda: svc.read("nope"), "ENOENT", "no device 'nope' on runtime rt-1"),
        (lambda: svc.write("nope"), "ENOENT", "no device 'nope' on runtime rt-1"),
        (lambda: svc.read("sink"), "EACCES", "device sink on rt-1 is an output device: it can be written, not read"),
        (lambda: svc.write("rnd"), "EACCES", "device rnd on rt-1 is an input device: it can be read, not written"),
        (lambda: svc.pipe_out("sink", "h", 1, "t"), "EACCES", "is an output device"),
    ]
    for call, kind, message in cases:
        with pytest.raises(DeviceError) as e:
            call()
        assert error_kind(e.value) == kind and message in str(e.value)
        rebuilt = rebuild_error(kind, str(e.value))  # what the caller gets
        assert error_kind(rebuilt) == kind and str(rebuilt) == str(e.value)
    failed = rebuild_error("ENODEV", "device cam0 on rt-2 failed: gone")
    assert isinstance(failed, DeviceError) and failed.kind == "ENODEV"


def test_random_on_demand_readers_share_one_stream_and_it_stops_after_the_linger():
    clock = task.Clock()
    svc, transfer = service(Device("rnd", "in", "random", {"seed": "7", "size": "16", "rate": "160"}), clock=clock)
    dev = svc.devices["rnd"]
    assert not dev.running
    where = svc.read("rnd")
    assert where == {"host": "127.0.0.1", "port": 7000, "token": "t0"}
    reader, _, done = transfer.offers["t0"]
    other, _, other_done = transfer.offers[svc.read("rnd")["token"]]
    a, b = Consumer(clock, reader).start(), Consumer(clock, other).start()
    assert dev.running
    clock.advance(0.1)
    clock.advance(0.1)
    assert len(a.data) == len(b.data) == 32 and a.data == b.data
    import random

    assert a.data == random.Random(7).randbytes(16) + random.Random(7).randbytes(32)[16:]
    info = dev.info()
    assert (info.readers, info.running, info.units, info.slow, info.unit) == (2, True, 2, "block", "chunk")
    done.callback(None)
    other_done.errback(DeviceError("the receiver went away", "EPIPE"))
    assert dev.running  # lingering for a quick next reader
    clock.advance(2.0)
    assert not dev.running and dev.info().readers == 0


def test_random_blocks_on_a_stalled_reader():
    clock = task.Clock()
    svc, transfer = service(Device("rnd", "in", "random", {"size": "10", "queue": "3", "rate": "100"}), clock=clock)
    fast = Consumer(clock, transfer.offers[svc.read("rnd")["token"]][0]).start()
    stalled = Consumer(clock, transfer.offers[svc.read("rnd")["token"]][0]).start()
    stalled.stall()
    clock.pump([0.1] * 20)
    assert len(fast.data) == 40 and svc.devices["rnd"].hub.paused  # 1 in flight + 3 queued, then paused
    stalled.go()
    clock.pump([0.1] * 3)
    assert len(stalled.data) >= 40 and stalled.data[:40] == fast.data[:40]


def test_a_rate_limited_random_source_and_a_unit_limit():
    clock = task.Clock()
    svc, transfer = service(Device("rnd", "in", "random", {"size": "100", "rate": "1000"}), clock=clock)
    c = Consumer(clock, transfer.offers[svc.read("rnd", units=5)["token"]][0]).start()
    clock.pump([0.1] * 3)
    assert len(c.data) == 300  # one chunk per 0.1 s
    clock.pump([0.1] * 5)
    assert len(c.data) == 500 and c.ended == "eof"


def test_dump_takes_what_writers_send_and_appends_to_its_file(tmp_path):
    out = tmp_path / "dump.bin"
    svc, transfer = service(Device("sink", "out", "dump", {"file": str(out)}), Device("null", "out", "dump"))
    for name in ("sink", "null"):
        _, writer, _ = transfer.offers[svc.write(name)["token"]]
        writer.write(b"hello ")
        writer.write(b"world")
        assert writer.finish().result == {"bytes": 11, "device": name}
    assert out.read_bytes() == b"hello world"
    info = svc.devices["sink"].info()
    assert (info.bytes, info.units, info.writers, info.running) == (11, 2, 0, True)
    _, aborted, _ = transfer.offers[svc.write("sink")["token"]]
    aborted.abort()
    assert svc.devices["sink"].info().writers == 0


def test_stopping_the_service_ends_readers_with_a_clear_error():
    clock = task.Clock()
    svc, transfer = service(Device("rnd", "in", "random"), clock=clock)
    c = Consumer(clock, transfer.offers[svc.read("rnd")["token"]][0]).start()
    c.stall()
    clock.advance(0)
    svc.stopService()
    c.go()
    assert isinstance(c.ended, DeviceError) and "runtime is stopping" in str(c.ended)
    assert not svc.devices["rnd"].running


def test_a_state_change_is_reported_and_the_list_is_typed():
    changes: list = []
    svc, _ = service(Device("cam", "in", "video", {"ffmpeg": "/no/ffmpeg"}), changes=changes)
    assert changes == [1]  # failed at its check when the service started
    rows = svc.list_devices()
    info = DeviceInfo.decode(rows[0])
    assert (info.address, info.path, info.state, info.unit, info.slow) == (
        "rt-1/cam",
        "/dev/rt-1/cam",
        "failed",
        "frame",
        "drop",
    )
    assert set(svc.handlers()) == {"device_list", "device_read", "device_write", "device_pipe_out"}


def test_a_served_device_built_alone_needs_no_io():
    dev = ServedDevice("rt-1", task.Clock(), Device("rnd", "in", "random"), lambda: None)
    assert dev.state == "ok" and not dev.running and dev.info().readers == 0


def test_a_bad_unit_count_is_refused():
    svc, _ = service(Device("rnd", "in", "random"))
    for bad in (-1, "3", True, 1.5):
        with pytest.raises(DeviceError) as e:
            svc.read("rnd", units=bad)
        assert e.value.kind == "EINVAL"


def test_nothing_starts_again_once_the_runtime_is_stopping():
    clock = task.Clock()
    svc, transfer = service(Device("rnd", "in", "random", {"rate": "100"}), Device("sink", "out", "dump"), clock=clock)
    offered = transfer.offers[svc.read("rnd")["token"]][0]  # offered, not yet claimed
    _, writer, _ = transfer.offers[svc.write("sink")["token"]]
    svc.stopService()
    late = Consumer(clock, offered).start()  # its consumer connects while the transfer server still listens
    assert "runtime is stopping" in str(late.ended) and not svc.devices["rnd"].running
    failure: list = []
    writer.write(b"x").addErrback(failure.append)
    assert failure and "runtime is stopping" in failure[0].getErrorMessage()
    with pytest.raises(DeviceError, match="runtime is stopping"):
        svc.read("rnd")


# -- who may use a device ------------------------------------------------------------


def test_a_device_belongs_to_the_runtimes_account_with_mode_0600_unless_configured(monkeypatch):
    import getpass

    monkeypatch.setattr(getpass, "getuser", lambda: "pi")
    svc = DeviceService(
        "rt-1",
        task.Clock(),
        FakeTransfer(),
        [Device("rnd", "in", "random"), Device("open", "in", "random", {"owner": "alice", "mode": "0644"})],
    )
    assert (svc.devices["rnd"].owner, svc.devices["rnd"].mode) == ("pi", 0o600)
    assert (svc.devices["open"].owner, svc.devices["open"].mode) == ("alice", 0o644)
    assert svc.devices["open"].state == "ok"  # owner and mode are the service's options, not the driver's

    def nameless() -> str:
        raise OSError("no user name")

    monkeypatch.setattr(getpass, "getuser", nameless)
    assert service_owner() == "root"  # an account without a name: the admin's alone, still nobody else's


def service_owner() -> str:
    return DeviceService("rt-1", task.Clock(), FakeTransfer(), [Device("rnd", "in", "random")]).devices["rnd"].owner


def test_reading_needs_r_and_writing_needs_w_the_admin_and_the_runtime_need_nothing():
    svc, transfer = service(
        Device("rnd", "in", "random"),  # op's, 0600
        Device("shared", "in", "random", {"owner": "alice", "mode": "644"}),
        Device("sink", "out", "dump", {"owner": "alice", "mode": "0640"}),
        Device("board", "out", "dump", {"owner": "alice", "mode": "0o402"}),
    )
    allowed = [
        ("read", "rnd", RUNTIME_ACCOUNT),
        ("read", "rnd", "root"),
        ("read", "rnd", None),
        ("read", "shared", "bob"),
        ("read", "shared", "alice"),
        ("write", "sink", "alice"),
        ("write", "sink", "root"),
        ("write", "board", "bob"),
    ]
    for verb, name, user in allowed:
        call = svc.read if verb == "read" else svc.write
        assert call(name, user=user)["token"], (verb, name, user)
    refused = [
        (
            "read",
            "rnd",
            "bob",
            "device rnd on rt-1: permission denied: user bob may not read it (owner op, mode 0600)",
        ),
        (
            "write",
            "sink",
            "bob",
            "device sink on rt-1: permission denied: user bob may not write it (owner alice, mode 0640)",
        ),
        ("write", "board", "alice", "user alice may not write it (owner alice, mode 0402)"),  # owner bits, as files
    ]
    for verb, name, user, message in refused:
        call = svc.read if verb == "read" else svc.write
        offers = len(transfer.offers)
        with pytest.raises(DeviceError) as e:
            call(name, user=user)
        assert error_kind(e.value) == "EACCES" and message in str(e.value)
        assert len(transfer.offers) == offers  # nothing offered
        rebuilt = rebuild_error("EACCES", str(e.value))
        assert error_kind(rebuilt) == "EACCES" and str(rebuilt) == str(e.value)
    # the wrong direction is said first: it is what the user can fix
    with pytest.raises(DeviceError, match="is an output device"):
        svc.read("sink", user="bob")


def test_a_refused_user_starts_no_driver_and_no_stream(monkeypatch):
    import oneos.devices.service as service_module

    sent: list = []
    monkeypatch.setattr(service_module, "send", lambda *a, **k: sent.append(a) or defer.Deferred())
    changes: list = []
    svc, transfer = service(
        Device("rnd", "in", "random"), Device("cam", "in", "video", {"ffmpeg": "/no/ffmpeg"}), changes=changes
    )
    with pytest.raises(DeviceError) as e:
        svc.pipe_out("rnd", "127.0.0.1", 7001, "tok", user="bob")
    assert e.value.kind == "EACCES" and "user bob may not read it" in str(e.value)
    assert sent == [] and not svc.devices["rnd"].running and not svc.devices["rnd"].readers
    # a failed device is not checked again (no driver probe) for someone who may not use it
    before = list(changes)
    with pytest.raises(DeviceError) as e:
        svc.read("cam", user="bob")
    assert e.value.kind == "EACCES" and changes == before
    assert svc.pipe_out("rnd", "127.0.0.1", 7001, "tok", user=RUNTIME_ACCOUNT) == {"ok": True} and len(sent) == 1
    assert transfer.offers == {}


def test_everyone_sees_every_device_with_its_owner_and_mode():
    svc, _ = service(Device("rnd", "in", "random"), Device("led", "out", "dump", {"owner": "alice", "mode": "0620"}))
    rows = [DeviceInfo.decode(r) for r in svc.list_devices(user="bob")]
    assert [(i.name, i.owner, i.mode, i.mode_text) for i in rows] == [
        ("rnd", RUNTIME_ACCOUNT, 0o600, "0600"),
        ("led", "alice", 0o620, "0620"),
    ]


def test_a_bad_mode_in_a_device_built_without_the_configuration_fails_it_closed():
    svc, _ = service(Device("x", "in", "random", {"mode": "rw-r--r--"}))
    entry = status_of(svc, "x")
    assert entry["state"] == "failed" and "option mode=rw-r--r--: not an octal mode" in entry["reason"]
    assert entry["mode"] == 0o600  # the default, never something wider
    with pytest.raises(DeviceError) as e:
        svc.read("x", user="bob")
    assert e.value.kind == "EACCES"


def test_the_client_names_the_user_it_acts_for():
    from oneos.devices.client import DevicesClient

    class RPC:
        def __init__(self) -> None:
            self.calls: list = []

        def call(self, target: str, method: str, timeout: Any = None, **args: Any) -> defer.Deferred:
            self.calls.append((target, method, args))
            return defer.succeed({"host": "h", "port": 1, "token": "t"} if method != "device_list" else [])

    rpc = RPC()
    client = DevicesClient(rpc, timeout=3)
    client.read("rt-2", "rnd")
    client.as_user("bob").read("rt-2", "rnd", units=2)
    DevicesClient(rpc, user="alice").write("rt-2", "led")
    assert rpc.calls == [
        ("rt-2", "device_read", {"name": "rnd"}),
        ("rt-2", "device_read", {"name": "rnd", "units": 2, "user": "bob"}),
        ("rt-2", "device_write", {"name": "led", "user": "alice"}),
    ]
    assert client.as_user("bob").timeout == 3
