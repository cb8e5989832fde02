"""Membership: who is out there, and are they alive.

Each runtime keeps a retained status on its own topic.  It samples its
status every ``interval`` seconds and publishes it only when it changed
(:func:`significant_change`: any field but the load figures, or a load
figure moved by more than :data:`LOAD_POINTS` points), plus a heartbeat:
at least every :data:`HEARTBEAT_SAMPLES` samples the status goes out even
if nothing changed.  Events (a leader claim, a device failing, the file
system moving) publish at once.  Why: every status reaches every runtime,
so a network of N runtimes sending each status every sample costs N²
deliveries per interval; an idle one now costs N² per heartbeat.  The
status's ``interval`` field carries the heartbeat, so every reader judges
staleness by the sender's own rate.  In a network of more than
:data:`NETWORK_HEARTBEATS` x heartbeat runtimes (60 at the default 2 s
sample) the heartbeat doubles until the network as a whole sends about
:data:`NETWORK_HEARTBEATS` a second (it halves again only when the network
has shrunk to half of that, so a size near a threshold does not make it
flip): an idle network's deliveries then grow as N, not N².  Load changes
get the same treatment: a status whose only news is a load figure waits
until N / :data:`NETWORK_LOAD_STATUSES` seconds (at least one sample) have
passed since our last status, so however busy the machines are the network
sends about that many a second (with 200 runtimes on two busy cores the
loads moved by more than the threshold on most samples: 28 statuses a
second, 10 with the budget).  Any other change still goes out at the next
sample.  Detecting a dead runtime does not wait for heartbeats
(the broker's will does that), so only the second line below gets slower.

Its MQTT last will is the same status with ``state=dead``, so when a
runtime is killed the broker tells everyone at once (when the TCP
connection drops, or after 1.5 keepalives for a silent network).  As a
second line, a status not refreshed for :data:`STALE_HEARTBEATS` of its
sender's heartbeats counts as dead locally.  A clean stop publishes
``state=left``.

Receiving is incremental: a status received changes one entry of the view,
and the listeners of :meth:`Membership.on_change` are told only when that
entry's place in the live set or its leader claim changed (an O(1) check,
not a pass over the view); staleness is checked over the whole view once
per sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

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

#: a status goes out at least every this many samples, changed or not (the heartbeat of a small network)
HEARTBEAT_SAMPLES = 6
#: in a larger network the heartbeat doubles until the whole network sends about this many a second
NETWORK_HEARTBEATS = 5.0
#: a load figure (CPU %, memory in points of its whole) must move by more than this to be a change
LOAD_POINTS = 5.0
#: statuses whose only news is the load: the whole network sends about this many a second at most
NETWORK_LOAD_STATUSES = 10.0
#: a live status not refreshed for this many of its sender's heartbeats counts as dead
STALE_HEARTBEATS = 3
#: the figures that change all the time: compared by :data:`LOAD_POINTS`, not exactly
_LOAD_FIELDS = frozenset({"cpu_percent", "memory_used_mb", "rss_mb", "agents_memory_mb", "updated_at"})
_EXACT_FIELDS = tuple(f.name for f in dataclasses.fields(RuntimeStatus) if f.name not in _LOAD_FIELDS)

#: "on-change": statuses when they change plus a heartbeat; "periodic": every sample (the old wire
#: behaviour, kept for benchmarks/bench_membership_sim.py's comparison; not a setting)
Mode = Literal["on-change", "periodic"]


def _points(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole > 0 else 0.0


def load_points(status: RuntimeStatus) -> tuple[float, float, float, float]:
    """The load figures in points: CPU %, memory and the runtime's RSS in % of the machine's memory,
    the agents' memory in % of the runtime's limit (of the machine's memory without a limit)."""
    total = status.memory_total_mb
    return (
        status.cpu_percent,
        _points(status.memory_used_mb, total),
        _points(status.rss_mb, total),
        _points(status.agents_memory_mb, status.memory_limit_mb or total),
    )


def exact_change(old: RuntimeStatus | None, new: RuntimeStatus) -> bool:
    """Whether a field other than the load figures differs (or nothing was published yet)."""
    return old is None or any(getattr(old, name) != getattr(new, name) for name in _EXACT_FIELDS)


def load_moved(old: RuntimeStatus, new: RuntimeStatus) -> bool:
    """Whether a load figure moved by more than :data:`LOAD_POINTS` points."""
    return any(abs(a - b) > LOAD_POINTS for a, b in zip(load_points(old), load_points(new), strict=True))


def significant_change(old: RuntimeStatus | None, new: RuntimeStatus) -> bool:
    """Whether *new* differs from the *old* published status enough to be news: any field but the
    load figures differs, or a load figure moved by more than :data:`LOAD_POINTS` points."""
    return exact_change(old, new) or (old is not None and load_moved(old, new))


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
        mode: Mode = "on-change",
    ) -> None:
        self.client = client
        self.rpc = rpc
        self.reactor = reactor
        self.describe = describe
        #: seconds between samples of our own status
        self.interval = interval
        self.mode: Mode = mode
        self._dead_after = dead_after
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
        #: what the listeners were last told, per runtime: its leader claim while live, absent otherwise
        self._told: dict[str, tuple[bool, int]] = {}
        self._told_synced = False
        #: the status we last published (compared with each sample) and samples since
        self._published: RuntimeStatus | None = None
        self._quiet_samples = 0
        #: samples per heartbeat now (HEARTBEAT_SAMPLES, doubled for a large network: heartbeat_samples)
        self._heartbeat_samples = HEARTBEAT_SAMPLES
        self._loop: task.LoopingCall | None = None
        first = describe()
        self.id = first.id
        self.instance = first.instance
        # The will must be in place before the client first connects.
        client.will = mqtt.Will(
            topics.status(self.id), first.with_(state=DEAD, leader=False).encode(), qos=1, retain=True
        )

    @property
    def heartbeat(self) -> float:
        """Seconds between statuses when nothing changes (every sample in "periodic" mode)."""
        return self.interval * (self._heartbeat_samples if self.mode == "on-change" else 1)

    def _fit_heartbeat(self) -> None:
        """Stretch or shrink the heartbeat to the number of live runtimes (see the module docstring)."""
        live = max(len(self._told), 1)

        def rate(samples: int) -> float:
            return live / (samples * self.interval)

        samples = self._heartbeat_samples
        while rate(samples) > NETWORK_HEARTBEATS:
            samples *= 2
        while samples > HEARTBEAT_SAMPLES and rate(samples // 2) <= NETWORK_HEARTBEATS / 2:
            samples //= 2
        self._heartbeat_samples = samples

    @property
    def load_gap(self) -> float:
        """Seconds a load-only change waits after our last status: N / NETWORK_LOAD_STATUSES, at least a sample."""
        return max(self.interval, len(self._told) / NETWORK_LOAD_STATUSES)

    @property
    def dead_after(self) -> float:
        """The least time a status counts as fresh, whatever its sender's heartbeat (3 of ours by default)."""
        return self._dead_after if self._dead_after is not None else STALE_HEARTBEATS * self.heartbeat

    # -- queries ----------------------------------------------------------
    def statuses(self) -> list[RuntimeStatus]:
        """Every runtime ever seen, with state as this runtime judges it now.

        A status not refreshed for ``dead_after`` counts as dead only while
        we ourselves have been connected (and in step with the broker) that
        long: a runtime that was cut off, or whose broker restarted, heard
        nothing because of its own trouble, and must not judge everyone
        dead (and elect itself, or restart their programs) on that.
        """
        now, can_judge = self._judging()
        out = []
        for status, seen in self._view.values():
            if status.alive and self._stale(status, seen, now, can_judge):
                status = status.with_(state=DEAD)
            out.append(status)
        return sorted(out, key=lambda s: s.id)

    def _judging(self) -> tuple[float, bool]:
        """(now, whether we may judge anyone stale now): see :meth:`statuses`."""
        now = self.reactor.seconds()
        return now, self.synced and now - self.client.connected_since > self.dead_after

    def _stale(self, status: RuntimeStatus, seen: float, now: float, can_judge: bool) -> bool:
        """A status not refreshed for STALE_HEARTBEATS of its sender's heartbeats (and at least dead_after)."""
        if not can_judge or status.instance == self.instance:
            return False
        return now - seen > max(self.dead_after, STALE_HEARTBEATS * status.interval)

    def _claim(self, rid: str, now: float, can_judge: bool) -> tuple[bool, int] | None:
        """What the listeners hear of *rid*: its leader claim and term while it is live, else None."""
        entry = self._view.get(rid)
        if entry is None:
            return None
        status, seen = entry
        if not status.alive or self._stale(status, seen, now, can_judge):
            return None
        return (status.leader, status.epoch if status.leader else 0)

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

    def _sample(self) -> RuntimeStatus:
        """Our status as we would publish it now."""
        # A claim carries only our own term: a leader on its way down (epoch already 0) claims nothing,
        # never the newer term it has heard of, which would tie with the real leader.
        leading = self.leader and self.epoch > 0
        return self.describe().with_(
            leader=leading,
            epoch=self.epoch if leading else self.max_epoch,
            state=ALIVE,
            updated_at=self.reactor.seconds(),
            interval=self.heartbeat,
        )

    def publish(self, status: RuntimeStatus | None = None) -> defer.Deferred:
        """Publish our current status (retained) now: an event others should hear of at once."""
        status = status or self._sample()
        self._published, self._quiet_samples = status, 0
        self._record(status)
        return self.client.publish(topics.status(self.id), status.encode(), qos=1, retain=True).addErrback(
            lambda f: log.warn("could not publish status: {error}", error=f.getErrorMessage())
        )

    def set_leader(self, leader: bool) -> defer.Deferred:
        """Claim or drop the kernel leadership, and tell everyone at once."""
        self.leader = leader
        return self.publish()

    def _tick(self) -> None:
        """A sample: publish it if it changed or a heartbeat is due; judge everyone's staleness."""
        self._fit_heartbeat()
        status = self._sample()
        self._quiet_samples += 1
        last = self._published
        if (
            self.mode == "periodic"
            or self._quiet_samples >= self._heartbeat_samples
            or exact_change(last, status)
            or (last is not None and self._quiet_samples * self.interval >= self.load_gap and load_moved(last, status))
        ):
            self.publish(status)
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
            self._notify_if_changed(rid=rid)
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
        self._notify_if_changed(rid=rid)

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

    def _notify_if_changed(self, force: bool = False, rid: str | None = None) -> None:
        """Tell the listeners if the live set, a live runtime's leader claim or our being in step changed.

        With *rid* (a status of that runtime arrived) only its entry is
        looked at: O(1) per status received.  Without, the whole view is
        (once per sample, and when our connection changes), which is where
        a runtime going stale is noticed.
        """
        now, can_judge = self._judging()
        if rid is not None and not force:
            claim = self._claim(rid, now, can_judge)
            if claim == self._told.get(rid):
                return
            if claim is None:
                del self._told[rid]
            else:
                self._told[rid] = claim
        else:
            told = {r: c for r in self._view if (c := self._claim(r, now, can_judge)) is not None}
            if told == self._told and self.synced == self._told_synced and not force:
                return
            self._told, self._told_synced = told, self.synced
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.failure("membership listener failed")
