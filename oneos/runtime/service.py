"""The runtime service: one per machine, the root of a runtime's tree.

It connects to the pubsub network, joins the membership (refusing a
duplicate id), answers RPCs addressed to this runtime, and takes part in the
kernel election.  ``makeService`` only builds it; all I/O starts in
``startService``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from oneos import __version__
from oneos.agents.host import AgentHost
from oneos.config import Config
from oneos.errors import OneOSError, describe
from oneos.pubsub.client import PubSubClient
from oneos.pubsub.rpc import RPCClient, RPCServer
from oneos.runtime.election import Election
from oneos.runtime.host import HostStats, find_interpreters, guess_address
from oneos.runtime.kernel import KernelHost
from oneos.runtime.membership import Membership
from oneos.runtime.status import RuntimeStatus
from oneos.transfer import TransferServer

log = Logger()


def _default_fatal(error: BaseException) -> None:
    log.critical("runtime cannot go on: {error}", error=describe(error))


class RuntimeService(service.MultiService):
    """A OneOS runtime."""

    name = "runtime"

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        on_fatal: Callable[[BaseException], Any] = _default_fatal,
        settle: float = 0.5,
        kernel_factories: dict | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.on_fatal = on_fatal
        self.instance = uuid.uuid4().hex
        self.started_at = time.time()
        self.address = config.address
        self.agents = 0
        self._stats: HostStats | None = None
        self._interpreters: tuple[str, ...] = ()
        self.transfer = TransferServer(reactor, config.listen.get("pipe") or "tcp:0:interface=127.0.0.1")
        self.client = PubSubClient(config.pubsub, reactor, keepalive=config.keepalive)
        #: fires when the broker may be tried (the embedded one is up)
        self.broker_ready: defer.Deferred | None = None
        self.rpc = RPCClient(self.client, reactor)
        self.agent_host = AgentHost(self)
        self.membership = Membership(self.client, self.rpc, reactor, self.describe, interval=config.stats_interval)
        self.kernel = KernelHost(self, kernel_factories)
        self.election = Election(self.membership, self.kernel, reactor, is_kernel=config.kernel, settle=settle)
        self.server = RPCServer(
            self.client,
            config.id,
            {"ping": self._ping, "status": self._status, "members": self._members, **self.agent_host.handlers()},
        )
        self.ready: defer.Deferred = defer.Deferred()

    @property
    def id(self) -> str:
        return self.config.id

    def describe(self) -> RuntimeStatus:
        """This runtime's status as of now (stats sampled on every call)."""
        stats = self._stats.sample() if self._stats is not None else {}
        return RuntimeStatus(
            id=self.config.id,
            instance=self.instance,
            address=self.address,
            kernel=self.config.kernel,
            memory_limit_mb=self.config.memory_mb,
            tags=self.config.tags,
            interpreters=self._interpreters,
            agents=self.agents,
            agents_memory_mb=self.agent_host.agents_memory_mb(),
            started_at=self.started_at,
            interval=self.config.stats_interval,
            services=self._services(),
            **stats,
        )

    def _services(self) -> dict[str, str]:
        out = {"version": __version__}
        if self.transfer.port is not None:
            out["transfer"] = str(self.transfer.address[1])
        return out

    def _ping(self) -> dict[str, Any]:
        return {"id": self.id, "instance": self.instance}

    def _members(self) -> list[str]:
        """The runtimes this one sees alive (benchmarks ask every runtime)."""
        return [s.id for s in self.membership.live()]

    def _status(self) -> dict[str, Any]:
        return {"status": self.describe().encode().decode(), "leading": self.election.leading}

    def startService(self) -> None:
        self._stats = HostStats()
        self._interpreters = find_interpreters()
        if not self.address:
            self.address = guess_address(self.client.address.host)
        super().startService()
        self.transfer.startService()
        self.agent_host.start(self.config.stats_interval)
        d = self.transfer.listen()

        def cannot_listen(f: Failure) -> None:
            raise OneOSError(f"cannot listen for streams on {self.transfer.endpoint}: {f.getErrorMessage()}")

        d.addErrback(cannot_listen)
        if self.broker_ready is not None:
            d.addCallback(lambda _: self.broker_ready)
        d.addCallback(lambda _: self.client.startService())
        d.addCallback(lambda _: self.client.whenConnected())
        d.addCallback(lambda _: self._join()).addErrback(self._fatal)

    @defer.inlineCallbacks
    def _join(self) -> Any:
        yield self.membership.join()
        self.membership.on_conflict(self._fatal)
        yield self.server.start()
        self.election.start()
        log.info(
            "runtime {id} joined the network at {url} ({n} live runtime(s))",
            id=self.id,
            url=self.client.address.url,
            n=len(self.membership.live()),
        )
        self.ready.callback(self)

    def _fatal(self, error: Any) -> None:
        value = error.value if isinstance(error, Failure) else error
        if isinstance(error, Failure) and not isinstance(value, OneOSError):
            log.failure("runtime failed", error)
        self.on_fatal(value)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        yield self.election.stop()
        yield self.server.stop()
        self.rpc.cancel_all()
        # Membership says 'left' while the client is still connected.
        yield self.agent_host.stop()
        yield self.membership.stopService()
        yield self.transfer.stopService()
        if self.client.running:
            yield self.client.stopService()
        yield super().stopService()
