"""Run twistd with the current interpreter: ``python -m oneos.twistd ...``.

``python -m twisted`` is the ``twist`` runner, not ``twistd``, and the
``twistd`` script may not be on PATH (a venv not activated); child processes
started by OneOS (grid, psd, tests) use this so they always run the same
Python and the same installed OneOS as their parent.
"""

from __future__ import annotations

import sys


def twistd_command(*args: str) -> list[str]:
    """argv for a foreground twistd with no pid file (many may share a directory)."""
    return [sys.executable, "-m", "oneos.twistd", "--nodaemon", "--pidfile=", *args]


def main() -> None:
    from twisted.scripts.twistd import run

    sys.argv[0] = "twistd"
    run()


if __name__ == "__main__":
    main()
