"""End-to-end: real runtime processes on a real broker (ours and Mosquitto)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from oneos.testing.brokers import free_port
from oneos.testing.runtimes import leaders, live, oneos, statuses, statuses_or_none, twistd, wait_for


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker_url(request):
    """The same tests run against our broker and against Mosquitto."""
    return request.getfixturevalue(f"{request.param}_broker").url


def all_logs(runtimes):
    return lambda: "\n".join(f"== {rt.id}\n{rt.log()[-3000:]}" for rt in runtimes.all)


def test_three_runtimes_meet_and_elect_one_leader(broker_url, runtimes):
    for i in (1, 2, 3):
        runtimes(f"rt-{i}", broker_url)
    view = wait_for(
        "3 live runtimes and one leader",
        lambda: (v := statuses(broker_url)) and len(live(v)) == 3 and len(leaders(v)) == 1 and v,
        logs=all_logs(runtimes),
    )
    for s in view.values():
        assert s["kernel"] and s["address"] and s["memory_limit_mb"] == 1024
        assert "sh" in s["interpreters"]
        assert s["memory_total_mb"] > 0 and s["rss_mb"] > 0


def test_sigkilled_leader_is_seen_dead_and_another_takes_over(broker_url, runtimes):
    procs = {i: runtimes(f"rt-{i}", broker_url) for i in (1, 2, 3)}
    view = wait_for(
        "one leader among 3",
        lambda: (v := statuses(broker_url)) and len(live(v)) == 3 and len(leaders(v)) == 1 and v,
        logs=all_logs(runtimes),
    )
    [old] = leaders(view)
    next(p for p in procs.values() if p.id == old).kill(signal.SIGKILL)
    view = wait_for(
        "the killed leader dead and a new leader",
        lambda: (v := statuses(broker_url)) and v[old]["state"] == "dead" and len(leaders(v)) == 1 and v,
        logs=all_logs(runtimes),
    )
    [new] = leaders(view)
    assert new != old and len(live(view)) == 2


def test_clean_stop_says_left(broker_url, runtimes):
    a = runtimes("rt-a", broker_url)
    runtimes("rt-b", broker_url)
    wait_for("2 live", lambda: len(live(statuses(broker_url))) == 2, logs=all_logs(runtimes))
    a.stop()
    # twistd re-raises the signal that stopped it, after a clean shutdown
    assert a.process.returncode in (0, -signal.SIGTERM)
    assert "Server Shut Down" in a.log()
    wait_for(
        "rt-a left and rt-b leading",
        lambda: (v := statuses(broker_url))["rt-a"]["state"] == "left" and leaders(v) == ["rt-b"],
    )


def test_non_kernel_runtime_never_leads(broker_url, runtimes):
    runtimes("worker", broker_url, "--no-kernel")
    view = wait_for("worker live", lambda: (v := statuses(broker_url)) and live(v) and v)
    assert leaders(view) == [] and view["worker"]["kernel"] is False
    runtimes("kern", broker_url)
    wait_for("kern leads", lambda: leaders(statuses(broker_url)) == ["kern"], logs=all_logs(runtimes))


def test_duplicate_id_is_refused(amqtt_broker, runtimes):
    url = amqtt_broker.url
    runtimes("same", url)
    wait_for("first live", lambda: live(statuses(url)))
    second = runtimes("same", url)
    second.home = second.home  # same id, its own process
    code = second.process.wait(timeout=60)
    assert code == 1
    assert "already in use" in second.log()
    view = statuses(url)
    assert view["same"]["state"] == "alive"


def test_runtime_waits_for_an_unreachable_broker(tmp_path, runtimes):
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    rt = runtimes("patient", url)
    wait_for("a retry message", lambda: "cannot reach the pubsub broker" in rt.log())
    assert rt.process.poll() is None
    broker = subprocess.Popen(
        twistd("oneospsd", "--port", str(port), "--interface", "127.0.0.1", "--allow-anonymous"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("the runtime to join once the broker is up", lambda: live(statuses(url)).get("patient"), logs=rt.log)
    finally:
        broker.terminate()
        broker.wait(timeout=30)


def test_malformed_and_foreign_messages_are_dropped(amqtt_broker, runtimes):
    url = amqtt_broker.url
    rt = runtimes("sturdy", url)
    wait_for("live", lambda: live(statuses(url)))
    junk = [
        ("oneos/v1/runtimes/ghost/status", b"not json at all"),
        ("oneos/v1/runtimes/ghost2/status", b'{"v": 1, "type": "runtime.status"}'),
        ("oneos/v1/runtimes/ghost3/status", b'{"v": 7, "type": "runtime.status", "id": "ghost3"}'),
        ("oneos/v1/rpc/sturdy/x", b"\xff\xfe\x00garbage"),
        ("oneos/v1/rpc/kernel/x", b'{"v":1,"type":"rpc.request","id":"x","method":"ping","reply_to":"evil/topic"}'),
    ]
    script = (
        "import asyncio, sys\n"
        "from amqtt.client import MQTTClient\n"
        "async def main():\n"
        "    c = MQTTClient()\n"
        f"    await c.connect({url!r})\n"
        f"    for topic, payload in {junk!r}:\n"
        "        await c.publish(topic, payload, qos=1, retain=topic.endswith('status'))\n"
        "    await c.disconnect()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, capture_output=True)
    wait_for("the drops to be logged", lambda: rt.log().count("dropped malformed") >= 3, logs=rt.log)
    assert rt.process.poll() is None
    view = statuses(url)
    assert set(view) == {"sturdy"} and view["sturdy"]["state"] == "alive"


def test_embedded_default_hosts_its_own_broker(tmp_path):
    """No config file: the runtime brings its own broker on loopback and leads."""
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    home = tmp_path / "fresh"
    home.mkdir()
    log = open(tmp_path / "embedded.log", "wb")
    env = dict(os.environ, ONEOS_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(twistd("oneosd", "--pubsub", url), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home)
    try:
        mine = {"ONEOS_HOME": str(home)}  # its owner: the home holds the network it created
        view = wait_for(
            "the embedded runtime to lead",
            lambda: (v := statuses_or_none(url, mine)) and len(leaders(v)) == 1 and v,
            logs=lambda: (tmp_path / "embedded.log").read_text(),
        )
        assert len(view) == 1
        text = (tmp_path / "embedded.log").read_text()
        assert "embedded default" in text and "embedded broker listening" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_status_with_no_broker_is_a_plain_error():
    result = oneos("status", "--pubsub", f"mqtt://127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.returncode == 1
    assert "cannot reach the broker" in result.stderr
    assert "Traceback" not in result.stderr


def test_grid_starts_and_stops_everything(tmp_path):
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    out = open(tmp_path / "grid.log", "wb")
    grid = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oneos.cli.main",
            "grid",
            "--runtimes",
            "3",
            "--port",
            str(port),
            "--dir",
            str(tmp_path / "grid"),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1", ONEOS_HOME=str(tmp_path / "me")),
    )
    mine = {"ONEOS_HOME": str(tmp_path / "me")}  # the grid's network secret is in the home it ran from
    try:
        wait_for(
            "3 live runtimes and a leader",
            lambda: (v := statuses_or_none(url, mine)) and len(live(v)) == 3 and len(leaders(v)) == 1,
            logs=lambda: (tmp_path / "grid.log").read_text(),
        )
    finally:
        grid.send_signal(signal.SIGTERM)
        code = grid.wait(timeout=60)
        out.close()
    text = (tmp_path / "grid.log").read_text()
    assert code == 0
    for name in ("psd", "rt-1", "rt-2", "rt-3"):
        assert f"{name} exited" in text
    assert "\nrt-2 | " in text and "runtime rt-2 joined" in text  # each child's lines carry its name
