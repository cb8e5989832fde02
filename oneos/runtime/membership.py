"""Membership: who is out there, and are they alive.

Each runtime keeps a retained status on its own topic and refreshes it every
``interval`` seconds with fresh CPU/memory figures.  Its MQTT last will is
the same status with ``state=dead``, so when a runtime is killed the broker
tells everyone at once (when the TCP connection drops, or after 1.5
keepalives for a silent network).  As a second line, a status not refreshed
for ``dead_after`` seconds counts as dead locally.  A clean stop publishes
``state=left``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from oneos.errors import DuplicateRuntimeId, RPCTimeout
from oneos.pubsub import mqtt, topics
from oneos.pubsub.client import Message, PubSubClient
from oneos.pubsub.messages import MalformedMessage
from oneos.pubsub.rpc import RPCClient
from oneos.runtime.status import ALIVE, DEAD, LEFT, RuntimeStatus

log = Logger()

Listener = Callable[[], Any]


class Membership(service.Service):
    """Publishes this runtime's status and keeps a view of everyone's."""

    name = "membership"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        client: PubSubClient,
        rpc: RPCClient,
        reactor: Any,
        describe: Callable[[], RuntimeStatus],
        *,
        interval: float = 2.0,
        dead_after: float | None = None,
        probe_timeout: float = 1.0,
    ) -> None:
        self.client = client
        self.rpc = rpc
        self.reactor = reactor
        self.describe = describe
        self.interval = interval
        self.dead_after = dead_after if dead_after is not None else 3 * interval
        self.probe_timeout = probe_timeout
        self.leader = False
        self.joined = False
        #: our view is current: every retained status has arrived since the last (re)connection
        self.synced = False
        #: the leadership term this runtime leads, or 0
        self.epoch = 0
        #: the highest term seen anywhere (statuses, fenced commands): commands of older terms are refused
        self.max_epoch = 0
        self._view: dict[str, tuple[RuntimeStatus, float]] = {}
        self._listeners: list[Listener] = []
        self._conflict_listeners: list[Callable[[DuplicateRuntimeId], Any]] = []
        self._epoch_listeners: list[Callable[[int], Any]] = []
        self._live_ids: frozenset[str] = frozenset()
        self._loop: task.LoopingCall | None = None
        first = describe()
        self.id = first.id
        self.instance = first.instance
        # The will must be in place before the client first connects.
        client.will = mqtt.Will(
            topics.status(self.id), first.with_(state=DEAD, leader=False).encode(), qos=1, retain=True
        )

    # -- queries ----------------------------------------------------------
    def statuses(self) -> list[RuntimeStatus]:
        """Every runtime ever seen, with state as this runtime judges it now.

        A status not refreshed for ``dead_after`` counts as dead only while
        we ourselves have been connected (and in step with the broker) that
        long: a runtime that was cut off, or whose broker restarted, heard
        nothing because of its own trouble, and must not judge everyone
        dead (and elect itself, or restart their programs) on that.
        """
        now = self.reactor.seconds()
        can_judge = self.synced and now - self.client.connected_since > self.dead_after
        out = []
        for status, seen in self._view.values():
            if can_judge and status.alive and now - seen > self.dead_after and status.instance != self.instance:
                status = status.with_(state=DEAD)
            out.append(status)
        return sorted(out, key=lambda s: s.id)

    def live(self) -> list[RuntimeStatus]:
        """The runtimes alive now."""
        return [s for s in self.statuses() if s.alive]

    def on_change(self, listener: Listener) -> None:
        """Call *listener* whenever the live set or a leader claim changes."""
        self._listeners.append(listener)

    def on_conflict(self, listener: Callable[[DuplicateRuntimeId], Any]) -> None:
        """Call *listener* if another live runtime turns out to share our id."""
        self._conflict_listeners.append(listener)

    # -- lifecycle --------------------------------------------------------
    @defer.inlineCallbacks
    def join(self) -> Any:
        """Learn who is there, refuse a duplicate id, then announce ourselves."""
        service.Service.startService(self)
        yield self.client.subscribe(topics.ALL_STATUS, self._on_status)
        yield self.client.barrier()
        yield self._check_duplicate()
        self.joined = True
        self.synced = True
        self.client.add_listener(on_connect=self._on_reconnect, on_disconnect=self._on_disconnect)
        yield self.publish()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False).addErrback(lambda f: log.failure("membership loop failed", f))
        self._notify_if_changed(force=True)

    @defer.inlineCallbacks
    def _check_duplicate(self) -> Any:
        entry = self._view.get(self.id)
        if entry is None or not entry[0].alive or entry[0].instance == self.instance:
            return
        other = entry[0]
        try:
            answer = yield self.rpc.call(self.id, "ping", timeout=self.probe_timeout)
        except RPCTimeout:
            log.info("runtime id {id} has a stale 'alive' status (no answer); taking it over", id=self.id)
            return
        if isinstance(answer, dict) and answer.get("instance") != self.instance:
            raise DuplicateRuntimeId(
                f"runtime id {self.id!r} is already in use by a live runtime at "
                f"{other.address or 'an unknown address'}; start this one with another id (--id NAME)"
            )

    def _on_disconnect(self) -> None:
        self.synced = False
        self._notify_if_changed(force=True)

    def _on_reconnect(self) -> None:
        # Our will may have fired while we were away: say we are alive again, and only act on the view
        # again once every retained status has arrived (the barrier).
        if not (self.joined and self.running):
            return
        self.publish()

        def synced(_: Any) -> None:
            self.synced = self.client.connected
            self._notify_if_changed(force=True)

        self.client.barrier().addCallbacks(synced, lambda f: None)

    def publish(self) -> defer.Deferred:
        """Publish our current status (retained)."""
        # A claim carries only our own term: a leader on its way down (epoch already 0) claims nothing,
        # never the newer term it has heard of, which would tie with the real leader.
        leading = self.leader and self.epoch > 0
        status = self.describe().with_(
            leader=leading,
            epoch=self.epoch if leading else self.max_epoch,
            state=ALIVE,
            updated_at=self.reactor.seconds(),
        )
        self._record(status)
        return self.client.publish(topics.status(self.id), status.encode(), qos=1, retain=True).addErrback(
            lambda f: log.warn("could not publish status: {error}", error=f.getErrorMessage())
        )

    def set_leader(self, leader: bool) -> defer.Deferred:
        """Claim or drop the kernel leadership, and tell everyone at once."""
        self.leader = leader
        return self.publish()

    def _tick(self) -> None:
        self.publish()
        self._notify_if_changed()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if not self.joined or not self.client.connected:
            return defer.succeed(None)
        self.joined = False
        status = self.describe().with_(state=LEFT, leader=False, updated_at=self.reactor.seconds())
        return self.client.publish(topics.status(self.id), status.encode(), qos=1, retain=True).addErrback(
            lambda f: None
        )

    # -- incoming ---------------------------------------------------------
    def _on_status(self, message: Message) -> None:
        rid = topics.runtime_from_status_topic(message.topic)
        if rid is None:
            return
        if not message.payload:
            self._view.pop(rid, None)  # retained status cleared
            self._notify_if_changed()
            return
        try:
            status = RuntimeStatus.decode(message.payload)
        except MalformedMessage as e:
            log.warn("dropped malformed status on {topic}: {error}", topic=message.topic, error=str(e))
            return
        if status.id != rid:
            log.warn("dropped status for {id} published on {topic}", id=status.id, topic=message.topic)
            return
        if rid == self.id and status.instance != self.instance:
            self._on_same_id(status)
        if (
            rid == self.id
            and status.instance == self.instance
            and status.state != ALIVE
            and self.joined
            and self.running
        ):
            # Our own will (e.g. after a dropped connection): correct it.
            self.publish()
            return
        self._record(status)
        self._notify_if_changed()

    def _on_same_id(self, other: RuntimeStatus) -> None:
        if not self.joined or not other.alive:
            self._record(other)
            return
        mine = self.describe()
        if (other.started_at, other.instance) < (mine.started_at, mine.instance):
            error = DuplicateRuntimeId(
                f"runtime id {self.id!r} is also used by a runtime at {other.address or 'an unknown address'} "
                "that started earlier; stopping this one (choose another id with --id NAME)"
            )
            for listener in list(self._conflict_listeners):
                listener(error)
        else:
            self.publish()  # we were first: reclaim the retained status

    def note_epoch(self, epoch: int) -> bool:
        """Remember a term seen; True if it is the newest yet."""
        if epoch > self.max_epoch:
            self.max_epoch = epoch
            for listener in list(self._epoch_listeners):
                listener(epoch)
            return True
        return False

    def on_epoch(self, listener: Callable[[int], Any]) -> None:
        """Call *listener* with each newer term seen (to keep it across restarts)."""
        self._epoch_listeners.append(listener)

    def _record(self, status: RuntimeStatus) -> None:
        if status.leader and status.alive:
            self.note_epoch(status.epoch)
        old = self._view.get(status.id)
        if (
            old is not None
            and old[0].instance != status.instance
            and status.instance != self.instance
            and old[0].alive
            and not status.alive
        ):
            # A will from an older incarnation must not kill its successor.
            if old[0].started_at > status.started_at:
                return
        self._view[status.id] = (status, self.reactor.seconds())

    def _notify_if_changed(self, force: bool = False) -> None:
        live = frozenset(f"{s.id}:{int(s.leader)}:{s.epoch if s.leader else 0}" for s in self.live()) | {
            f"synced:{self.synced}"
        }
        if live == self._live_ids and not force:
            return
        self._live_ids = live
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.failure("membership listener failed")
