"""``oneos psd``: the original's name for starting the broker.

Same as ``twistd -n oneospsd [options]``; ``oneos psd --help`` shows the
plugin's own options.
"""

from __future__ import annotations

import os
import sys

from oneos.twistd import twistd_command

SUMMARY = "run the pubsub broker in the foreground (same as 'twistd -n oneospsd')"


def run(argv: list[str]) -> int:
    args = twistd_command("oneospsd", *argv)
    os.execv(args[0], args)
    return 0  # pragma: no cover  (execv does not return)
