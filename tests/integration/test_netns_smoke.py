"""The namespace harness itself, and OneOS across real (simulated) machines.

Real processes and real kernel networking, no mocks: hosts are network
namespaces on one bridge (see :mod:`oneos.testing.netns`).  Waiting is always
"until a condition holds, or a deadline", never a fixed sleep.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from oneos.testing.hosts import BROKER_PORT, HostProcess, start_broker_in, start_runtime_in, statuses_in
from oneos.testing.netns import NetnsError, Network, available, connects, wait_port
from oneos.testing.runtimes import leaders, live, wait_for

#: a TCP server on every address of its host, which first forks a grandchild
#: the harness never sees (to prove close() kills what it did not start)
SERVER = """\
import socket, subprocess, sys
subprocess.Popen(["sleep", "1000"])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
while True:
    s.accept()[0].close()
"""
PORT = 7000


def gone(proc: psutil.Process) -> bool:
    """True once *proc* has exited (a zombie waiting for an init that may never reap it counts)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_hosts_reach_each_other_and_close_leaves_nothing(netns: Callable[..., Network]) -> None:
    net = netns(hosts=2)
    h1, h2 = net.hosts
    assert h1.addr != h2.addr and h1.name != h2.name
    servers = {h: h.popen([sys.executable, "-c", SERVER, str(PORT)]) for h in (h1, h2)}
    wait_port(h2, h1.addr, PORT, process=servers[h1])  # h2 -> h1 across the bridge
    wait_port(h1, h2.addr, PORT, process=servers[h2])  # and back
    assert connects(h1, "127.0.0.1", PORT)  # lo is up inside the host

    # the root namespace holds none of it: no address of ours, no interface of ours
    root = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert f" {h1.addr}/" not in root and f" {h2.addr}/" not in root

    pids = h1.pids() + h2.pids()
    assert {servers[h1].pid, servers[h2].pid} <= set(pids)
    assert len(pids) >= 4, f"expected each server and its grandchild, found {pids}"
    procs = [psutil.Process(pid) for pid in pids]
    names = net.namespaces

    net.close()

    assert all(gone(p) for p in procs), [p for p in procs if not gone(p)]
    assert all(s.returncode is not None for s in servers.values())
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [n for n in names if n in listed.split()], listed
    net.close()  # idempotent
    with pytest.raises(NetnsError):
        h1.popen(["true"])


def test_packet_drop_faults(netns: Callable[..., Network]) -> None:
    reason = available(iptables=True)
    if reason is not None:
        pytest.skip(reason)
    net = netns(hosts=3)
    h1, h2, h3 = net.hosts
    server = h1.popen([sys.executable, "-c", SERVER, str(PORT)])
    wait_port(h2, h1.addr, PORT, process=server)
    wait_port(h3, h1.addr, PORT, process=server)

    h1.drop_from(h2)
    assert not connects(h2, h1.addr, PORT, timeout=0.5)
    assert connects(h3, h1.addr, PORT)  # only h2 is dropped
    h1.undrop(h2)
    assert connects(h2, h1.addr, PORT)

    h1.cut()
    assert not connects(h2, h1.addr, PORT, timeout=0.5)
    assert not connects(h3, h1.addr, PORT, timeout=0.5)
    assert connects(h1, "127.0.0.1", PORT)  # lo still works
    h1.heal()
    assert connects(h2, h1.addr, PORT) and connects(h3, h1.addr, PORT)


# -- OneOS across hosts ----------------------------------------------------------

RUNTIME_IDS = ("rt-a", "rt-b", "rt-c")  # rt-a in h1 (beside the broker), rt-b in h2, rt-c in h3


@dataclass
class Grid:
    """Our broker in h1 and one runtime per host, observed from h3."""

    net: Network
    broker: HostProcess
    runtimes: dict[str, HostProcess]
    url: str
    cli_home: Path

    def view(self) -> dict[str, dict[str, Any]]:
        """``oneos status --json`` as h3 sees it."""
        return statuses_in(self.net.hosts[2], self.url, home=self.cli_home)

    def logs(self) -> str:
        parts = [f"== broker\n{self.broker.log()[-3000:]}"]
        parts += [f"== {rid} (running={rt.running()})\n{rt.log()[-3000:]}" for rid, rt in self.runtimes.items()]
        return "\n".join(parts)


def healthy(view: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """*view* if all three runtimes are alive with exactly one leader, else None."""
    return view if set(live(view)) == set(RUNTIME_IDS) and len(leaders(view)) == 1 else None


def start_grid(netns: Callable[..., Network], tmp_path: Path) -> tuple[Grid, dict[str, dict[str, Any]]]:
    net = netns(hosts=3)
    h1, _, h3 = net.hosts
    broker = start_broker_in(h1, tmp_path / "broker")
    url = f"mqtt://{h1.addr}:{BROKER_PORT}"
    wait_port(h3, h1.addr, BROKER_PORT, process=broker.process)  # reachable across the switch
    runtimes = {
        rid: start_runtime_in(host, rid, url, tmp_path / "homes")
        for rid, host in zip(RUNTIME_IDS, net.hosts, strict=False)
    }
    grid = Grid(net, broker, runtimes, url, tmp_path / "cli")
    view = wait_for(
        "3 live runtimes and one leader, seen from h3", lambda: healthy(grid.view()), deadline=90, logs=grid.logs
    )
    return grid, view


def test_runtimes_on_three_hosts_meet(netns: Callable[..., Network], tmp_path: Path) -> None:
    grid, view = start_grid(netns, tmp_path)
    for rid, host in zip(RUNTIME_IDS, grid.net.hosts, strict=False):
        # each runtime found its own host's address and is the process we started there
        assert view[rid]["address"] == host.addr, (rid, view[rid]["address"], host)
        assert view[rid]["pid"] == grid.runtimes[rid].process.pid
    assert grid.broker.running()


def test_link_down_is_seen_dead_and_link_up_brings_it_back(netns: Callable[..., Network], tmp_path: Path) -> None:
    grid, before = start_grid(netns, tmp_path)
    h2 = grid.net.hosts[1]

    h2.link_down()
    t0 = time.monotonic()
    wait_for(
        "rt-b dead from h3's point of view, the others alive with one leader",
        lambda: (
            (v := grid.view())["rt-b"]["state"] == "dead" and set(live(v)) == {"rt-a", "rt-c"} and len(leaders(v)) == 1
        ),
        deadline=30,
        logs=grid.logs,
    )
    seen_dead = time.monotonic() - t0

    h2.link_up()
    after = wait_for("rt-b alive again and one leader", lambda: healthy(grid.view()), deadline=60, logs=grid.logs)
    # the same process reconnected: it never crashed or restarted
    assert grid.runtimes["rt-b"].running(), grid.logs()
    assert after["rt-b"]["instance"] == before["rt-b"]["instance"]
    assert after["rt-b"]["pid"] == grid.runtimes["rt-b"].process.pid
    print(f"rt-b seen dead {seen_dead:.1f}s after link down")
