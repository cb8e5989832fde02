"""Make sure Twisted runs on the asyncio reactor.

amqtt (our broker) is asyncio code.  Twisted's AsyncioSelectorReactor runs
Twisted and asyncio on one event loop, so the broker, the runtime and the
tools share one thread and can await each other (``Deferred.fromFuture``).
The choice must be made before anything imports ``twisted.internet.reactor``
(which installs the platform default), so twistd plugins call this at the
top of ``makeService`` and commands call it before importing the reactor.

Under ``twistd`` this works because twistd only installs a reactor when
``--reactor`` is given; otherwise the first import after ``makeService``
decides, and by then this function has installed the asyncio one.
"""

from __future__ import annotations

import sys

from oneos.errors import OneOSError


def install_asyncio_reactor() -> None:
    """Install Twisted's asyncio reactor, or check that it is the one installed.

    Raises :class:`OneOSError` saying what to do if another reactor already
    runs (e.g. ``twistd --reactor=epoll``): amqtt cannot run on it.
    """
    from twisted.internet import asyncioreactor

    if "twisted.internet.reactor" not in sys.modules:
        asyncioreactor.install()
        return
    from twisted.internet import reactor

    if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
        name = type(reactor).__name__
        raise OneOSError(
            f"OneOS needs Twisted's asyncio reactor but {name} is already installed; "
            "run twistd with '--reactor=asyncio' or without '--reactor' (OneOS installs it itself)"
        )
