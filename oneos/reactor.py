"""Make sure Twisted runs on the asyncio reactor.

amqtt (our broker) is asyncio code; Twisted's AsyncioSelectorReactor runs
Twisted and asyncio on one event loop, so the broker, the runtime and the
tools share one thread.  This must happen before anything imports
``twisted.internet.reactor``, so plugins and commands call it first.
"""

from __future__ import annotations

import sys

from oneos.errors import OneOSError


def install_asyncio_reactor() -> None:
    """Install the asyncio reactor, or check the installed one is it."""
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
        return
    from twisted.internet import reactor

    if type(reactor).__name__ != "AsyncioSelectorReactor":
        raise OneOSError(
            f"OneOS needs Twisted's asyncio reactor but {type(reactor).__name__} is already installed; "
            "run twistd with '--reactor=asyncio' or without '--reactor'"
        )
