"""Leader election among live kernel runtimes.

Runs :func:`oneos.runtime.status.elect` over the membership view on every
change.  A runtime that finds itself elected with nobody claiming the
leadership waits ``settle`` seconds and checks again before claiming, so
runtimes that start together see each other first and agree; an existing
claimant is never displaced by a newcomer.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from oneos.runtime.kernel import KernelHost
from oneos.runtime.membership import Membership
from oneos.runtime.status import elect

log = Logger()


class Election(service.Service):
    """Decides whether this runtime hosts the kernel, and acts on it."""

    name = "election"

    def __init__(self, membership: Membership, kernel: KernelHost, reactor: Any, *, is_kernel: bool, settle: float = 0.5) -> None:
        self.membership = membership
        self.kernel = kernel
        self.reactor = reactor
        self.is_kernel = is_kernel
        self.settle = settle
        self.leading = False
        self.leader_id: str | None = None
        self._pending: IDelayedCall | None = None
        self._busy: defer.Deferred | None = None
        self._stopped = False

    def startService(self) -> None:
        super().startService()
        self.membership.on_change(self.evaluate)
        self.evaluate()

    def evaluate(self) -> None:
        """Recompute the leader and take over or step down as needed."""
        if self._stopped:
            return
        live = self.membership.live()
        leader = elect(live)
        claimed = any(s.id == leader and s.leader for s in live)
        if leader != self.leader_id and (claimed or leader is None):
            log.info("kernel leader is now {leader}", leader=leader or "nobody (no live kernel runtime)")
        if claimed or leader is None:
            self.leader_id = leader
        me = self.membership.id
        if leader == me and not self.leading and self.is_kernel:
            claimed = any(s.leader for s in live if s.id != me)
            if claimed or self.settle <= 0:
                self._become_leader()
            elif self._pending is None:
                self._pending = self.reactor.callLater(self.settle, self._settled)
        elif leader != me and self.leading:
            self._step_down()

    def _settled(self) -> None:
        self._pending = None
        if self._stopped or self.leading:
            return
        if elect(self.membership.live()) == self.membership.id:
            self._become_leader()

    def _become_leader(self) -> None:
        self.leading = True
        log.info("this runtime ({id}) now leads the kernel", id=self.membership.id)
        self.leader_id = self.membership.id
        d = self.membership.set_leader(True)
        d.addCallback(lambda _: self.kernel.take_over())
        d.addErrback(lambda f: log.failure("taking over the kernel failed", f))

    def _step_down(self) -> None:
        self.leading = False
        log.info("stepping down: {leader} leads the kernel", leader=self.leader_id)
        d = self.kernel.step_down()
        d.addCallback(lambda _: self.membership.set_leader(False))
        d.addErrback(lambda f: log.failure("stepping down failed", f))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self._stopped = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        if self.leading:
            self.leading = False
            return self.kernel.step_down()
        return defer.succeed(None)
