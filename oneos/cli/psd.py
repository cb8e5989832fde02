"""``oneos psd``: the original's name for starting the broker.

Same as ``twistd -n oneospsd [options]``: the process is replaced by twistd
running the plugin, so signals, exit status and ``--help`` (the plugin's own
options) are exactly twistd's.  Not ``python -m twisted``: that is the
``twist`` runner, which has no ``-n``.
"""

from __future__ import annotations

import os
import sys

from oneos.twistd import twistd_command

SUMMARY = "run the pubsub broker in the foreground (same as 'twistd -n oneospsd')"


def run(argv: list[str]) -> int:
    """Exec ``python -m oneos.twistd --nodaemon --pidfile= oneospsd ARGV``; does not return."""
    args = twistd_command("oneospsd", *argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(args[0], args)
    return 0  # pragma: no cover  (execv does not return)
