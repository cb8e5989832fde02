"""``oneos status`` reads the statuses without Twisted (oneos/cli/statusreader.py), against real brokers.

Each test runs the real command in a child process that also reports
whether anything of Twisted was imported, so it checks both that the
runtime is listed and that the new path listed it: through our broker,
Mosquitto, and our broker over TLS (mqtts://, the network's CA).  The
packet logic is in tests/unit/test_cli_statusreader.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from oneos.security import tls
from oneos.testing.brokers import start_oneospsd
from oneos.testing.cli import run_oneos
from oneos.testing.runtimes import wait_for


def status(home: Path, *args: str) -> tuple[int, str, str, bool]:
    """``oneos status ARGS`` with *home*: exit status, stdout, stderr (without the last line), Twisted loaded."""
    ran = run_oneos(home, "status", *args)
    return ran.code, ran.out, ran.err, ran.twisted


def listed(home: Path, url: str, rid: str) -> list[dict[str, Any]] | None:
    """``oneos status --json``'s entries once *rid* is among them, alive and leading, else None."""
    code, out, err, _ = status(home, "--json", "--pubsub", url)
    assert code == 0, err
    entries = json.loads(out)
    return entries if any(e["id"] == rid and e["state"] == "alive" and e["leader"] for e in entries) else None


def check_lists(home: Path, url: str, rid: str, logs: Any) -> None:
    entries = wait_for(f"oneos status to list {rid}", lambda: listed(home, url, rid), 60, logs)
    assert [e["id"] for e in entries] == [rid]
    code, out, err, twisted = status(home, "--pubsub", url)
    assert (code, err, twisted) == (0, "", False), err
    assert out.splitlines()[1].split()[0] == rid and out.rstrip().endswith(f"kernel leader: {rid}"), out


def test_status_lists_a_runtime_through_our_broker_without_twisted(amqtt_broker, runtimes, tmp_path):
    rt = runtimes("rt-ours", amqtt_broker.url)
    check_lists(tmp_path / "client", amqtt_broker.url, "rt-ours", rt.log)


def test_status_lists_a_runtime_through_mosquitto_without_twisted(mosquitto_broker, runtimes, tmp_path):
    rt = runtimes("rt-mosq", mosquitto_broker.url)
    check_lists(tmp_path / "client", mosquitto_broker.url, "rt-mosq", rt.log)


def test_status_over_mqtts_checks_the_broker_against_the_networks_ca(runtimes, tmp_path):
    home = tmp_path / "net"
    tls.create_ca(home)
    tls.issue_own(home, ["127.0.0.1"], loopback=False)  # not "localhost": see the name check below
    broker = start_oneospsd(tmp_path / "broker", env=dict(os.environ, ONEOS_HOME=str(home)), extra=["--tls"])
    try:
        url = f"mqtts://127.0.0.1:{broker.port}"
        rt_home = tmp_path / "homes" / "rt-tls"  # the runtimes fixture's home for it: trusts the network's CA
        (rt_home / "tls").mkdir(parents=True)
        shutil.copy(tls.ca_path(home), tls.ca_path(rt_home))
        rt = runtimes("rt-tls", url)
        check_lists(home, url, "rt-tls", lambda: rt.log() + broker.log())
        # another network's CA: refused with the Twisted path's words and hint, and no Twisted loaded
        other = tmp_path / "other"
        tls.create_ca(other)
        code, out, err, twisted = status(other, "--pubsub", url, "--timeout", "1")
        assert (code, out, twisted) == (1, "", False), err
        assert f"cannot reach the broker at {url}: the broker's certificate did not verify against" in err
        assert str(tls.ca_path(other)) in err and "docs/security.md" in err
        # a name the certificate does not carry (the same broker, dialled by another name)
        code, _, err, _ = status(home, "--pubsub", f"mqtts://localhost:{broker.port}", "--timeout", "1")
        assert code == 1 and "certificate is not valid for localhost (it names other hosts)" in err, err
    finally:
        broker.stop()
