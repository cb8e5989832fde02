"""The embedded broker: a one-machine OneOS needs no separate broker.

When the runtime's broker is on loopback and nobody answers there, this
service starts an in-process broker on that address; when one already
answers (another runtime's, or a system Mosquitto), it stays out of the way.
The probe happens in ``startService`` (never in ``makeService``).

The broker accepts only the network's credentials: the runtime's
``$ONEOS_HOME/credentials.json``, created on the first start (so a first
start needs no setup, and the broker is never open to the machine's other
users).  ``credentials`` holds them once started; the runtime connects with them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from oneos.errors import OneOSError, describe
from oneos.security import credentials
from oneos.security.credentials import Credentials

log = Logger()


class EmbeddedBroker(service.MultiService):
    """Starts an in-process broker on *host*:*port* unless one answers there."""

    name = "embedded-broker"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(self, host: str, port: int, reactor: Any, home: Path | None = None, name: str = "") -> None:
        super().__init__()
        #: the runtime's id: its identity's name in a network created here
        self.identity_name = name
        self.host = host
        self.port = port
        self.reactor = reactor
        #: the runtime's $ONEOS_HOME, where the network's credentials live (None: broker open to anyone)
        self.home = home
        self.credentials: Credentials | None = None
        self.hosting = False
        self.ready: defer.Deferred = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        if self.home is not None:
            try:
                self.credentials, created = credentials.create(self.home, self.identity_name)
            except OneOSError as e:
                log.error("cannot set up the network's credentials: {error}", error=describe(e))
                self.ready.callback(None)
                return
            if created:
                log.info(
                    "created this network's credentials in {path}; 'oneos invite' prints the token that "
                    "joins another machine",
                    path=str(credentials.path(self.home)),
                )
        self._probe().addCallback(self._decide).addErrback(self._failed)

    def _probe(self) -> defer.Deferred:
        cls = TCP6ClientEndpoint if ":" in self.host else TCP4ClientEndpoint
        endpoint = cls(self.reactor, self.host, self.port, timeout=2)
        factory = Factory.forProtocol(Protocol)
        factory.noisy = False
        d = endpoint.connect(factory)

        def answered(protocol: Protocol) -> bool:
            assert protocol.transport is not None  # connect() fires once the protocol is connected
            protocol.transport.loseConnection()
            return True

        return d.addCallbacks(answered, lambda f: False)

    def _decide(self, answered: bool) -> Any:
        if answered:
            log.info("a broker already answers at {host}:{port}; using it", host=self.host, port=self.port)
            self.ready.callback(None)
            return None
        from oneos.broker.service import BrokerService

        iface = self.host if self.host != "localhost" else "127.0.0.1"
        escaped = iface.replace(":", "\\:")  # endpoint syntax escapes IPv6 colons
        broker = BrokerService(f"tcp:{self.port}:interface={escaped}", credentials=self.credentials)
        broker.setServiceParent(self)
        self.hosting = True
        return broker.whenListening().addCallback(self._listening)

    def _listening(self, where: Any) -> None:
        log.info("embedded broker listening on {host}:{port}", host=self.host, port=self.port)
        self.ready.callback(None)

    def _failed(self, failure: Any) -> None:
        log.error("could not start the embedded broker: {error}", error=describe(failure.value))
        if not self.ready.called:
            self.ready.callback(None)
