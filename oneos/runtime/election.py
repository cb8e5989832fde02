"""Leader election among live kernel runtimes: a lease on the broker, with a fencing epoch.

No votes and no consensus algorithm of our own: the broker is the arbiter.

* The choice is :func:`oneos.runtime.status.elect` over the membership view,
  the same answer on every runtime.
* Leading is a *lease* renewed by hearing from the broker: a leader that has
  heard nothing from it for ``lease`` seconds (cut off, frozen, or the
  broker gone) stops its kernel services at once; kernel requests are also
  refused while the lease has lapsed, so even a leader that wakes from
  SIGSTOP never answers one.
* The others take over only ``lease + margin`` after the leader vanished
  from their view (its will).  The broker publishes the will no earlier
  than 1.5 keepalives after it last heard the leader, and the leader stops
  at most one lease after it last heard the broker, so the old leader has
  stopped before the new one starts.
* Each term has an *epoch*, one more than the highest seen anywhere (and
  kept in ``$ONEOS_HOME/network.json`` across restarts of everything).  The
  scheduler's commands carry it and runtimes refuse older ones; a stale or
  older claim never unseats the current leader.
* A runtime whose view is not current (disconnected, or just reconnected and
  still receiving the retained statuses) never takes over.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from oneos.pubsub.rpc import Unanswered
from oneos.runtime.kernel import KernelHost
from oneos.runtime.membership import Membership
from oneos.runtime.status import elect

log = Logger()


class Election(service.Service):
    """Decides whether this runtime hosts the kernel, and acts on it."""

    name = "election"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        membership: Membership,
        kernel: KernelHost,
        reactor: Any,
        *,
        is_kernel: bool,
        settle: float = 0.5,
        lease: float = 2.0,
        margin: float = 0.5,
    ) -> None:
        self.membership = membership
        self.kernel = kernel
        self.reactor = reactor
        self.is_kernel = is_kernel
        self.settle = settle
        self.lease = lease
        self.margin = margin
        self.leading = False
        self.leader_id: str | None = None
        self._pending: IDelayedCall | None = None
        self._stopped = False
        self._loop: task.LoopingCall | None = None
        self._had_claimant = False
        #: when the last claimant vanished from our view (a takeover waits lease + margin after it)
        self._gone_at = float("-inf")
        #: when this runtime first found itself the one to elect, with nobody claiming
        self._candidate_since: float | None = None

    # -- the lease ------------------------------------------------------------------------
    def lease_valid(self) -> bool:
        """Whether we heard from the broker within the lease (a leader may act only then)."""
        return self.reactor.seconds() - self.membership.client.last_heard <= self.lease

    def guard(self, method: str, meta: dict[str, Any]) -> None:
        """For the kernel's RPC targets: stay silent unless we lead under a live lease."""
        if not self.leading:
            raise Unanswered("not the kernel leader")
        if not self.lease_valid():
            self._step_down("no word from the broker within the lease")
            raise Unanswered("the leadership lease lapsed")

    def _check_lease(self) -> None:
        if self.leading and not self.lease_valid():
            self._step_down(f"no word from the broker for over {self.lease:g}s (lease)")

    # -- lifecycle --------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        if any(not s.alive and s.kernel for s in self.membership.statuses()):
            # A leader may have died just before we came: wait a lease as if we had seen it go.
            self._gone_at = self.reactor.seconds()
        self.membership.on_change(self.evaluate)
        self._loop = task.LoopingCall(self._check_lease)
        self._loop.clock = self.reactor
        self._loop.start(self.lease / 4, now=False).addErrback(lambda f: log.failure("lease check failed", f))
        self.evaluate()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._cancel_pending()
        if self.leading:
            self.leading = False
            self.membership.epoch = 0
            return self.kernel.step_down()
        return defer.succeed(None)

    # -- deciding ---------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Recompute the leader and take over or step down as needed."""
        if self._stopped:
            return
        self._check_lease()
        now = self.reactor.seconds()
        live = self.membership.live()
        me = self.membership.id
        claimants = [s for s in live if s.leader and s.kernel and s.id != me]
        if claimants or self.leading:
            self._had_claimant = True
        elif self._had_claimant:
            self._had_claimant = False
            self._gone_at = now
        leader = elect(live)
        claimed = any(s.id == leader and s.leader for s in live)
        if leader != self.leader_id and (claimed or leader is None):
            log.info("kernel leader is now {leader}", leader=leader or "nobody (no live kernel runtime)")
        if claimed or leader is None:
            self.leader_id = leader
        if leader == me and not self.leading and self.is_kernel and not claimants:
            if not self.membership.synced or not self.lease_valid():
                return  # a runtime cut off from the broker never elects itself
            if self._candidate_since is None:
                self._candidate_since = now
            at = max(self._candidate_since + self.settle, self._gone_at + self.lease + self.margin)
            if at <= now and self.settle <= 0:
                self._become_leader()
            elif self._pending is None:
                self._pending = self.reactor.callLater(max(0.0, at - now), self._settled)
        else:
            self._candidate_since = None
            self._cancel_pending()
            if self.leading and leader != me:
                self._step_down(f"{leader} leads the kernel")

    def _cancel_pending(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def _settled(self) -> None:
        self._pending = None
        if self._stopped or self.leading:
            return
        now = self.reactor.seconds()
        if self._candidate_since is not None and now < self._gone_at + self.lease + self.margin:
            self.evaluate()
            return
        live = self.membership.live()
        if (
            elect(live) == self.membership.id
            and self.membership.synced
            and self.lease_valid()
            and not any(s.leader and s.id != self.membership.id for s in live)
        ):
            self._become_leader()
        else:
            self.evaluate()

    def _become_leader(self) -> None:
        self.leading = True
        self._candidate_since = None
        epoch = self.membership.max_epoch + 1
        self.membership.note_epoch(epoch)
        self.membership.epoch = epoch
        log.info("this runtime ({id}) now leads the kernel (epoch {epoch})", id=self.membership.id, epoch=epoch)
        self.leader_id = self.membership.id
        d = self.membership.set_leader(True)
        d.addCallback(lambda _: self.kernel.take_over() if self.leading else None)
        d.addErrback(lambda f: log.failure("taking over the kernel failed", f))

    def _step_down(self, why: str) -> None:
        if not self.leading:
            return
        self.leading = False
        self.membership.epoch = 0
        self.membership.leader = False  # from now on every status we publish says so
        log.info("stepping down from the kernel: {why}", why=why)
        d = self.kernel.step_down()
        d.addCallback(lambda _: self.membership.set_leader(False))
        d.addErrback(lambda f: log.failure("stepping down failed", f))
