"""Running an ``oneos`` command in a child process that also says whether it loaded Twisted.

Why: the commands that only read the network's statuses (``oneos status``,
the ``oneos devices`` table) start fast because they never import Twisted
(oneos/cli/statusreader.py).  A test that runs them through this helper
checks both what they print and that they took that path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: runs ``oneos ARGS`` in-process, then says on stderr's last line whether Twisted was loaded
_CHILD = (
    "import sys\n"
    "from oneos.cli.main import main\n"
    "rc = main(sys.argv[1:])\n"
    "sys.stdout.flush()\n"
    "print('twisted loaded:', any(m.partition('.')[0] == 'twisted' for m in sys.modules), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


@dataclass(frozen=True)
class Ran:
    """What an ``oneos`` command did: its status, output, error output, and whether it loaded Twisted."""

    code: int
    out: str
    err: str
    twisted: bool


def run_oneos(home: Path, *args: str, timeout: float = 60) -> Ran:
    """``oneos ARGS`` with ``ONEOS_HOME=home``, in a child process that reports the Twisted import."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, ONEOS_HOME=str(home)),
    )
    *err, last = result.stderr.splitlines() or [""]
    if not last.startswith("twisted loaded: "):
        raise AssertionError(
            f"oneos {' '.join(args)} ended before it could say (status {result.returncode}):\n{result.stderr}"
        )
    return Ran(result.returncode, result.stdout, "\n".join(err), last.endswith("True"))
