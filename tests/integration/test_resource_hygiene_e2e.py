"""Resource hygiene end to end (issue 9 item 5): real runtimes, real brokers, the real CLI.

* A full disk recovers once the failed put is gone: a 30 MB ``oneos fs put``
  onto a 24 MB tmpfs holding the SQLite store fails with a clear error, its
  upload's space is given back, and a 5 MB put then succeeds, no restart.
* A 17 MiB retained message published by a plain MQTT client leaves a
  3-runtime grid stable: no reconnects, the same leader, on our broker
  (which drops it) and on Mosquitto without a limit (every client drops it)
  and with ``message_size_limit`` (Mosquitto drops it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from oneos.pubsub import mqtt
from oneos.testing.brokers import (
    START_DEADLINE,
    BrokerProcess,
    _accepts,
    _spawn,
    _wait_until,
    free_port,
    mosquitto_binary,
)
from oneos.testing.runtimes import leaders, live, statuses, wait_for

MiB = 1024 * 1024


# -- the full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs (needs root); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a 24 MB tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_a_full_disk_recovers_once_the_failed_put_is_gone(small_disk, embedded_runtime, tmp_path):
    rt = embedded_runtime("--store", f"sqlite://{small_disk}/fs.sqlite3")
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(os.urandom(30 * MiB))
    small.write_bytes(os.urandom(5 * MiB))
    wait_for("the file system to serve", lambda: rt.oneos("fs", "ls", "/").returncode == 0, logs=rt.log)
    baseline = used(small_disk)

    failed = rt.oneos("fs", "put", str(big), "/big.bin", timeout=120)
    assert failed.returncode != 0, failed.stdout
    assert "no space left on the file store" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr

    # the failed put's chunks go at once, and the space shows as free again
    wait_for(
        "the disk usage to come back down",
        lambda: used(small_disk) < baseline + 2 * MiB,
        deadline=30,
        logs=lambda: f"used {used(small_disk)} (baseline {baseline})\n{rt.log()[-3000:]}",
    )
    put = rt.oneos("fs", "put", str(small), "/small.bin", timeout=120)
    assert put.returncode == 0, put.stderr
    listing = rt.oneos("fs", "ls", "-l", "/")
    assert "small.bin" in listing.stdout and "big.bin" not in listing.stdout
    assert str(5 * MiB) in listing.stdout
    assert "Traceback" not in rt.log()


def test_the_file_system_works_again_once_another_program_frees_the_disk(small_disk, embedded_runtime, tmp_path):
    rt = embedded_runtime("--store", f"sqlite://{small_disk}/fs.sqlite3")
    wait_for("the file system to serve", lambda: rt.oneos("fs", "ls", "/").returncode == 0, logs=rt.log)
    ballast = small_disk / "ballast"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    with open(ballast, "wb") as f:
        f.write(b"\0" * (free - 3 * MiB))  # someone else's file leaves 3 MiB
    one = tmp_path / "one.bin"
    one.write_bytes(os.urandom(1 * MiB))
    refused = rt.oneos("fs", "put", str(one), "/one.bin", timeout=120)
    assert refused.returncode != 0 and "no space left on the file store" in refused.stderr, refused.stderr
    assert rt.oneos("fs", "mkdir", "/still-works").returncode == 0  # metadata is not refused
    ballast.unlink()
    put = rt.oneos("fs", "put", str(one), "/one.bin", timeout=120)  # no restart
    assert put.returncode == 0, put.stderr


# -- a 17 MiB retained message -----------------------------------------------------------------


def raw_publish(host: str, port: int, topic: str, payload: bytes, retain: bool = True) -> None:
    """Publish like any plain MQTT client would (QoS 1), and wait for the broker's PUBACK."""
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(mqtt.encode_connect(f"big-publisher-{os.getpid()}", 60))
        parser = mqtt.PacketParser()
        packets: list[mqtt.Packet] = []

        def expect(ptype: int) -> mqtt.Packet:
            while True:
                for p in packets:
                    if p.type == ptype:
                        packets.remove(p)
                        return p
                data = s.recv(65536)
                assert data, "the broker closed the publisher's connection"
                packets.extend(parser.feed(data))

        assert expect(mqtt.CONNACK).return_code == 0
        s.sendall(mqtt.encode_publish(topic, payload, qos=1, retain=retain, packet_id=17))
        assert expect(mqtt.PUBACK).packet_id == 17
        s.sendall(mqtt.encode_simple(mqtt.DISCONNECT))


def connects(log: str) -> int:
    return log.count("connected to pubsub broker")


def assert_stable_after_a_huge_retained_message(url: str, host: str, port: int, runtimes) -> None:
    for i in (1, 2, 3):
        runtimes(f"rt-{i}", url)
    logs = lambda: "\n".join(f"== {rt.id}\n{rt.log()[-4000:]}" for rt in runtimes.all)  # noqa: E731
    view = wait_for(
        "3 live runtimes and one leader",
        lambda: (v := statuses(url)) and len(live(v)) == 3 and len(leaders(v)) == 1 and v,
        logs=logs,
    )
    [leader] = leaders(view)
    before = {rt.id: connects(rt.log()) for rt in runtimes.all}

    raw_publish(host, port, "oneos/v1/runtimes/huge/status", os.urandom(17 * MiB))

    end = time.monotonic() + 12
    while time.monotonic() < end:
        view = statuses(url)  # `oneos status` itself subscribes to every status: it must cope too
        assert len(live(view)) == 3, (view, logs())
        assert leaders(view) == [leader], (view, logs())
        time.sleep(0.5)
    for rt in runtimes.all:
        text = rt.log()
        assert connects(text) == before[rt.id], f"{rt.id} reconnected:\n{text[-4000:]}"
        assert "lost the pubsub broker" not in text, text[-4000:]


def test_a_17_mib_retained_message_leaves_the_grid_stable_on_our_broker(amqtt_broker, runtimes):
    assert_stable_after_a_huge_retained_message(amqtt_broker.url, amqtt_broker.host, amqtt_broker.port, runtimes)
    assert "dropped a" in amqtt_broker.log() and "--max-message" in amqtt_broker.log()


def test_a_17_mib_retained_message_leaves_the_grid_stable_on_mosquitto_without_a_limit(mosquitto_broker, runtimes):
    # Mosquitto forwards it (and replays it to every new subscriber): each client drops it.
    assert_stable_after_a_huge_retained_message(
        mosquitto_broker.url, mosquitto_broker.host, mosquitto_broker.port, runtimes
    )
    assert any("dropped a" in rt.log() and "huge/status" in rt.log() for rt in runtimes.all)


@pytest.fixture
def limited_mosquitto(tmp_path):
    """Mosquitto configured as docs/operations.md recommends: message_size_limit 1 MiB."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    directory = tmp_path / "mosquitto-limited"
    directory.mkdir()
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmessage_size_limit 1048576\n")
    log_path = directory / "mosquitto.log"
    argv = [binary, "-c", str(conf)]
    broker = BrokerProcess(_spawn(argv, log_path), "127.0.0.1", port, log_path, argv)
    _wait_until("mosquitto", lambda: _accepts("127.0.0.1", port), START_DEADLINE, broker)
    yield broker
    broker.stop()


def test_a_17_mib_retained_message_leaves_the_grid_stable_on_mosquitto_with_message_size_limit(
    limited_mosquitto, runtimes
):
    assert_stable_after_a_huge_retained_message(
        limited_mosquitto.url, limited_mosquitto.host, limited_mosquitto.port, runtimes
    )
    assert not any("dropped a" in rt.log() for rt in runtimes.all)  # the broker never sent it on
