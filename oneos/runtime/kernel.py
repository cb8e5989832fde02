"""Kernel services: hosted only by the elected leader runtime.

Later parts of OneOS (file system, scheduler, shell, desktop) register a
factory here; the leader builds and starts them when it takes over and stops
them when it steps down, so exactly one copy runs in the network.  The
kernel always answers a few RPCs itself on the ``kernel`` target so callers
can find and query the leader.
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

log = Logger()

#: name -> factory(runtime) returning a service to run on the leader.
KernelFactory = Callable[[Any], service.IService]
_REGISTRY: dict[str, KernelFactory] = {}


def register_kernel_service(name: str, factory: KernelFactory) -> None:
    """Make *factory* run on whichever runtime leads the kernel."""
    _REGISTRY[name] = factory


def registered_kernel_services() -> dict[str, KernelFactory]:
    return dict(_REGISTRY)


class KernelHost(service.MultiService):
    """The kernel services of one runtime, present only while it leads."""

    name = "kernel"

    def __init__(self, runtime: Any, factories: dict[str, KernelFactory] | None = None) -> None:
        super().__init__()
        self.runtime = runtime
        self.factories = registered_kernel_services() if factories is None else factories
        self.rpc: RPCServer | None = None

    @defer.inlineCallbacks
    def take_over(self) -> Any:
        """Start the kernel RPC target and every registered kernel service."""
        membership = self.runtime.membership
        self.rpc = RPCServer(
            self.runtime.client,
            topics.KERNEL,
            {
                "ping": lambda: {"leader": membership.id, "instance": membership.instance},
                "runtimes": lambda: [asdict(s) for s in membership.statuses()],
            },
        )
        yield self.rpc.start()
        for name, factory in self.factories.items():
            try:
                child = factory(self.runtime)
                child.setName(name)
                child.setServiceParent(self)
            except Exception:
                log.failure("kernel service {name} failed to start", name=name)
        if not self.running:
            self.startService()
        log.info("kernel services started here: {names}", names=", ".join(["rpc", *self.factories]) )

    @defer.inlineCallbacks
    def step_down(self) -> Any:
        """Stop every kernel service here (another runtime leads now)."""
        if self.rpc is not None:
            yield self.rpc.stop()
            self.rpc = None
        if self.running:
            yield self.stopService()
        for child in list(self):
            yield defer.maybeDeferred(child.disownServiceParent)
        log.info("kernel services stopped here")
