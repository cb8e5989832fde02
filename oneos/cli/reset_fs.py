"""``oneos reset-fs [URL] [--force]``: initialise a file store with the standard tree.

Registered in :data:`oneos.cli.main.COMMANDS` as ``reset-fs``.  Without a
URL it uses the store of this machine's configuration (by default the
embedded SQLite store under ``$ONEOS_HOME``).  Failures - an unreachable
store, a non-empty store without ``--force``, a bad URL - are printed as one
plain line, never a traceback.  The work itself is
:func:`oneos.fs.reset.reset_fs`; this is the command around it, kept with
the other commands because choosing the default store reads the runtime's
record of the network (:mod:`oneos.runtime.netstore`), which the file-system
layer must not import (``tests/unit/test_layers.py``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from oneos.errors import OneOSError, describe

SUMMARY = "create the initial file tree in a store (sqlite:///PATH or mongodb://HOST:PORT/DB); --force wipes"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneos reset-fs",
        description=(
            "Initialise a OneOS file store: create the database if it does not exist and the "
            "standard directories (/bin /data /etc /home /tmp /usr /var). Idempotent. A store that "
            "holds anything else is left alone unless --force is given, which wipes it first."
        ),
    )
    parser.add_argument(
        "url",
        nargs="?",
        help="sqlite:///ABSOLUTE/PATH.db or mongodb://HOST:PORT/DATABASE (default: the configured store, "
        "else the network's as this machine last saw it, else $ONEOS_HOME/fs.sqlite3)",
    )
    parser.add_argument("--force", action="store_true", help="wipe a store that holds files before initialising it")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the store to answer (default 10)"
    )
    return parser


def _configured_store() -> str:
    """The store setting; else the network's store as this home last saw it; else this home's SQLite file."""
    from oneos.config import load_config
    from oneos.runtime.netstore import recall

    config = load_config()
    remembered = recall(config.home)
    return config.store or (remembered.url if remembered is not None else config.local_store)


def _run_reactor(job: Any) -> Any:
    """Run ``job(reactor)`` (a Deferred-returning callable) to completion on the asyncio reactor."""
    from oneos.reactor import install_asyncio_reactor

    install_asyncio_reactor()
    from twisted.internet import defer, reactor
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def start() -> None:
        d = defer.maybeDeferred(job, reactor)

        def done(result: Any) -> None:
            outcome.append(result)
            reactor.stop()

        d.addBoth(done)

    reactor.callWhenRunning(start)
    reactor.run()  # with signal handlers (the default): Ctrl-C and SIGTERM stop it
    result = outcome[0] if outcome else None
    if isinstance(result, Failure):
        result.raiseException()
    return result


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        url = args.url or _configured_store()
        from oneos.fs.reset import reset_fs

        result = _run_reactor(lambda reactor: reset_fs(url, args.force, reactor, connect_timeout=args.timeout))
    except OneOSError as e:
        print(f"oneos reset-fs: {describe(e)}", file=sys.stderr)
        return 1
    print(result.describe())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(sys.argv[1:]))
