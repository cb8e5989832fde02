"""Facts about the host machine a runtime reports: stats, interpreters, address."""

from __future__ import annotations

import shutil
import socket
from typing import TypedDict

import psutil

#: Interpreters a runtime advertises when found on PATH, so the scheduler
#: can place ``.py``/``.js``/``.sh`` programs where they can run.
INTERPRETERS = ("python3", "node", "sh", "bash", "perl", "ruby")


def find_interpreters(names: tuple[str, ...] = INTERPRETERS) -> tuple[str, ...]:
    """The interpreters of *names* present on this host's PATH."""
    return tuple(n for n in names if shutil.which(n))


def guess_address(broker_host: str) -> str:
    """The local address other machines can reach us on.

    Asks the kernel which source address it would use towards the broker (a
    UDP ``connect`` sends no packet), so a runtime on a multi-homed machine
    advertises the interface that faces the grid.
    """
    try:
        family = socket.AF_INET6 if ":" in broker_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((broker_host, 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


class HostSample(TypedDict):
    """One reading of :class:`HostStats`: the RuntimeStatus fields of the same names."""

    cpu_percent: float
    memory_used_mb: float
    memory_total_mb: float
    rss_mb: float


class HostStats:
    """CPU and memory figures from psutil, cheap enough to take every tick."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        psutil.cpu_percent(interval=None)  # prime: the first reading is meaningless

    def sample(self) -> HostSample:
        vm = psutil.virtual_memory()
        return {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "memory_used_mb": round((vm.total - vm.available) / 2**20, 1),
            "memory_total_mb": round(vm.total / 2**20, 1),
            "rss_mb": round(self.process.memory_info().rss / 2**20, 1),
        }
