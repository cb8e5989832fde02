"""What every benchmark script does the same way: stop cleanly on a signal, and say how busy the machine was.

Benchmarks print wall times, so other work on the cores shows in them: each
prints the load average beside its figures.  Each one also starts processes
or temporary trees it must remove on the way out; turning SIGTERM and SIGHUP
into KeyboardInterrupt lets the ``finally`` blocks that handle Ctrl-C handle
those too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any


def interrupt_on_signals(*signums: int) -> None:
    """Raise KeyboardInterrupt on SIGTERM and SIGHUP (or *signums*), as on Ctrl-C, so cleanup runs."""

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in signums or (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)


def load_average() -> str:
    """The machine's load average over 1 and 5 minutes, and its cores."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def stop_processes(processes: list[subprocess.Popen], grace: float = 60.0) -> None:
    """SIGTERM each live one (by its pid), wait up to *grace* seconds in all, then SIGKILL the rest."""
    for p in processes:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    end = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
