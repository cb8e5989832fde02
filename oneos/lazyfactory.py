"""A listening port's factory that builds the real one on the first connection.

Why: every runtime opens its front doors (the shell's SSH and telnet, the
web desktop) at start, but most runtimes of a large network never see a
login.  The code behind a door is the biggest part of a runtime's start-up
imports (conch's SSH transport and the shell interpreter, twisted.web and
Autobahn: over a quarter of its start-up CPU), and with hundreds of
runtimes starting on a few cores that CPU is what delays everyone's
joining.  So the port is opened at start (its address is known and
advertised as before) with a :class:`LazyFactory`, and the real factory
is made, and its modules imported, when someone first connects: that
connection waits for it once (tens of milliseconds), later ones do not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger

log = Logger()


class LazyFactory(protocol.Factory):
    """Makes its real factory (any IProtocolFactory) with *make* on the first connection, then serves through it.

    The real factory is started (``doStart``) when made and stopped when
    this one stops, so its ``startFactory``/``stopFactory`` run as if it
    had been listening all along.  If *make* fails, the connection is closed
    and the error logged with *what*; the next connection tries again.
    """

    noisy = False

    def __init__(self, make: Callable[[], Any], what: str) -> None:
        self._make = make
        #: what the door serves, for the log
        self.what = what
        #: the real factory (an IProtocolFactory), once the first connection made it
        self.real: Any = None

    def built(self) -> Any:
        """The real factory, made (and started) now if no connection has come before."""
        if self.real is None:
            real = self._make()
            real.doStart()
            self.real = real
        return self.real

    def buildProtocol(self, addr: Any) -> Any:
        try:
            real = self.built()
        except Exception:
            log.failure("{what} cannot serve a connection", what=self.what)
            return None  # the port closes this connection
        return real.buildProtocol(addr)

    def stopFactory(self) -> None:
        real, self.real = self.real, None
        if real is not None:
            real.doStop()
