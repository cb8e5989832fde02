"""Services a runtime runs only while it holds a role.

Two roles move between runtimes: the *kernel leader* (scheduler, the
``kernel`` RPC target) and the *file-system server* (the runtime that serves
the network's store, see :mod:`oneos.runtime.netstore`).  A :class:`RoleHost`
is the named node of the service tree under which that role's services
live: it builds them from the factories :func:`oneos.runtime.app.build_runtime`
declares when the role is taken, and removes them when it is given up, so
exactly one copy of each runs in the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from oneos.pubsub import topics
from oneos.pubsub.rpc import RPCServer
from oneos.runtime.client import KernelPing

log = Logger()

#: Builds one service of a role; called each time the role is taken.
Factory = Callable[[], service.IService]


class RoleHost(service.MultiService):
    """The services of one role on this runtime: present only while the role is held."""

    def __init__(
        self, name: str, factories: dict[str, Factory], on_change: Callable[[bool], Any] | None = None
    ) -> None:
        super().__init__()
        self.setName(name)
        self.factories = dict(factories)
        self.on_change = on_change
        self.holding = False
        #: bumped by every take_over and step_down: a take-over that waited for its target finds
        #: out whether the role was given up (or taken again) meanwhile
        self._term = 0

    @defer.inlineCallbacks
    def take_over(self) -> Any:
        """Build and start every service of the role."""
        if self.holding:
            return
        self.holding = True
        self._term += 1
        term = self._term
        yield self._before_start()
        if term != self._term:
            # given up while the target was being subscribed (a lease lapsing right after the claim):
            # no service of the role may run here, and the later step_down already stopped the target
            log.info("{role} given up before its services started; none started", role=self.name)
            return
        for name, factory in self.factories.items():
            try:
                child = factory()
                child.setName(name)
                child.setServiceParent(self)  # started at once when this host is running
            except Exception:
                log.failure("{role} service {name} failed to start", role=self.name, name=name)
        log.info("{role} services started here: {names}", role=self.name, names=", ".join(self.factories) or "-")
        if self.on_change is not None:
            self.on_change(True)

    @defer.inlineCallbacks
    def step_down(self) -> Any:
        """Stop and remove every service of the role (another runtime holds it now)."""
        if not self.holding:
            return
        self.holding = False
        self._term += 1
        for child in list(self):
            yield defer.maybeDeferred(child.disownServiceParent)
        yield self._after_stop()
        log.info("{role} services stopped here", role=self.name)
        if self.on_change is not None:
            self.on_change(False)

    def _before_start(self) -> Any:
        return None

    def _after_stop(self) -> Any:
        return None

    def stopService(self) -> defer.Deferred:
        d = defer.maybeDeferred(super().stopService)
        return d.addCallback(lambda _: self.step_down())


class KernelHost(RoleHost):
    """The kernel leader's services, plus the ``kernel`` RPC target callers use to find the leader.

    Its client is :class:`oneos.runtime.client.KernelClient`.
    """

    def __init__(self, client: Any, membership: Any, factories: dict[str, Factory], guard: Any = None) -> None:
        super().__init__("kernel", factories)
        self.client = client
        self.membership = membership
        #: the election's lease check, so a lapsed leader never answers
        self.guard = guard
        self.rpc: RPCServer | None = None

    def _before_start(self) -> Any:
        membership = self.membership
        self.rpc = RPCServer(
            self.client,
            topics.KERNEL,
            {
                "ping": lambda: KernelPing(membership.id, membership.instance, membership.epoch).encode(),
                "runtimes": lambda: [asdict(s) for s in membership.statuses()],
            },
            guard=self.guard,
            clients=("ping", "runtimes"),
        )
        return self.rpc.start()

    def _after_stop(self) -> Any:
        rpc, self.rpc = self.rpc, None
        return rpc.stop() if rpc is not None else None
