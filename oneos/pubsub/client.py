"""The reconnecting MQTT client every runtime and CLI tool uses.

A runtime must survive its broker coming and going: this service connects,
retries with capped exponential backoff while the broker is unreachable
(logging a plain reason each time), re-subscribes and resends unacknowledged
QoS 1 messages after a reconnect, and keeps the connection alive with
PINGREQ so a dead broker (or a dead us) is noticed within 1.5 keepalives.
Time comes from the injected reactor so all of this is testable with
``task.Clock``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from oneos.errors import OneOSError, PubSubUnavailable
from oneos.pubsub import mqtt, topics
from oneos.pubsub.address import parse_broker_url
from oneos.pubsub.messages import MAX_MESSAGE

#: Bytes a PUBLISH may hold besides its payload (topic of up to 65535 bytes, its length, a packet id).
PUBLISH_OVERHEAD = 2 + 0xFFFF + 2

log = Logger()


class MessageTooLarge(OneOSError, ValueError):
    """A message is larger than the client's ``max_message``: refused, never sent."""


@dataclass(frozen=True)
class Message:
    """A message delivered to a subscription callback."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 0


MessageCallback = Callable[[Message], Any]


class Subscription:
    """A registered interest in a topic filter; ``cancel()`` ends it."""

    def __init__(self, client: PubSubClient, topic_filter: str, callback: MessageCallback, qos: int) -> None:
        self.client = client
        self.topic_filter = topic_filter
        self.callback = callback
        self.qos = qos

    def cancel(self) -> defer.Deferred:
        """Stop delivering to this callback; unsubscribe at the broker if it was the last."""
        return self.client._remove_subscription(self)


def _handler_failed(failure: Failure, topic: str) -> None:
    log.failure("handler for {topic} failed", failure, topic=topic)


class _Connection(Protocol):
    """One TCP connection to the broker, speaking MQTT 3.1.1."""

    def __init__(self, client: PubSubClient) -> None:
        self.client = client
        # Larger messages are skipped as they arrive (and logged), never buffered: dropping the
        # connection instead would bring a retained one straight back after the reconnect.
        self.parser = mqtt.PacketParser(client.max_message + PUBLISH_OVERHEAD, skip_oversize=True)
        self.accepted = False
        self._timer: IDelayedCall | None = None
        self._ping_outstanding = False
        self._ping_sent = 0.0
        #: when the outstanding ping was first sent (its PINGRESP renews the lease from then)
        self._ping_answered_from = 0.0
        self._last_bytes = 0.0
        self._last_sent = 0.0
        #: when CONNECT went out (its CONNACK is the first round trip)
        self.connect_sent = 0.0
        self._closing = False

    def _transport(self) -> ITCPTransport:
        """The transport, there from ``makeConnection`` on.

        Twisted types ``Protocol.transport`` as ``ITransport | None``; ours is
        TCP or TLS over TCP, and both provide ITCPTransport.
        """
        assert self.transport is not None, "not connected yet"
        return cast(ITCPTransport, self.transport)  # Twisted's typing: ITransport, too general here

    def close(self, abort: bool = False) -> None:
        """Drop the connection; packets already received are not handled."""
        self._closing = True
        if abort:
            self._transport().abortConnection()
        else:
            self._transport().loseConnection()

    # -- plumbing ---------------------------------------------------------
    def send(self, data: bytes) -> None:
        self._last_sent = self.client.reactor.seconds()
        self._transport().write(data)

    def _arm(self, delay: float, fn: Callable[[], None]) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.client.reactor.callLater(delay, fn)

    def connectionMade(self) -> None:
        c = self.client
        # Requests and replies are small packets: without NODELAY, Nagle's
        # algorithm meets delayed ACKs and every RPC waits ~40 ms per hop.
        self._transport().setTcpNoDelay(True)
        self.connect_sent = c.reactor.seconds()
        self.send(
            mqtt.encode_connect(
                c.client_id,
                c.keepalive,
                will=c.will,
                username=c.address.username,
                password=c.address.password,
            )
        )
        self._arm(c.connect_timeout, self._connack_timeout)

    def _connack_timeout(self) -> None:
        log.warn(
            "broker at {url} did not answer CONNECT within {t}s",
            url=self.client.address.url,
            t=self.client.connect_timeout,
        )
        self.close(abort=True)

    def _keepalive_tick(self) -> None:
        """Ping every half keepalive; give up on a broker that does not answer a ping.

        Pinging even while busy (not only when idle) matters twice: a runtime
        publishing its status often would otherwise never notice a silent
        broker, and an answered ping is what renews a leader's lease
        (``PubSubClient.last_heard`` is the time the answered ping was *sent*,
        so bytes that waited in a socket buffer while we were frozen renew
        nothing).
        """
        keepalive = self.client.keepalive
        if self._ping_outstanding:
            if self._last_bytes <= self._ping_sent:
                log.warn("broker at {url} stopped answering pings; reconnecting", url=self.client.address.url)
                self.close(abort=True)
                return
            # Bytes keep coming (a large message ahead of the PINGRESP): the broker is there;
            # more must come before the next tick.
            self._ping_sent = self.client.reactor.seconds()
            self._arm(keepalive * 0.5, self._keepalive_tick)
            return
        self._ping_outstanding = True
        self._ping_sent = self._ping_answered_from = self.client.reactor.seconds()
        self.send(mqtt.encode_simple(mqtt.PINGREQ))
        self._arm(keepalive * 0.5, self._keepalive_tick)

    def dataReceived(self, data: bytes) -> None:
        self._last_bytes = self.client.reactor.seconds()
        try:
            packets = self.parser.feed(data)
        except mqtt.MalformedPacket as e:
            log.error(
                "malformed data from broker at {url}: {error}; dropping connection",
                url=self.client.address.url,
                error=str(e),
            )
            self.close(abort=True)
            return
        for packet in packets:
            if self._closing:
                return
            self._handle(packet)

    def _handle(self, p: mqtt.Packet) -> None:
        c = self.client
        if p.type == mqtt.CONNACK:
            if p.return_code != 0:
                reason = mqtt.CONNACK_REASONS.get(p.return_code, f"code {p.return_code}")
                log.error("broker at {url} refused the connection: {reason}", url=c.address.url, reason=reason)
                c._last_refusal = reason
                self.close()
                return
            self.accepted = True
            if c.keepalive:
                self._arm(c.keepalive * 0.5, self._keepalive_tick)
            elif self._timer is not None and self._timer.active():
                self._timer.cancel()
            c._on_accepted(self)
        elif not self.accepted:
            log.warn("broker sent packet type {type} before CONNACK; dropping connection", type=p.type)
            self.close(abort=True)
        elif p.type == mqtt.PUBLISH:
            if p.qos == 1 and p.packet_id is not None:
                self.send(mqtt.encode_ack(mqtt.PUBACK, p.packet_id))
            elif p.qos == 2 and p.packet_id is not None:
                self.send(mqtt.encode_ack(mqtt.PUBREC, p.packet_id))
            if p.oversize or len(p.payload) > c.max_message:
                log.warn(
                    "dropped a {size}-byte message on {topic!r}: larger than the {limit}-byte message limit",
                    size=p.oversize or len(p.payload),
                    topic=p.topic,
                    limit=c.max_message,
                )
                return
            c._deliver(Message(p.topic, p.payload, p.retain, p.qos))
        elif p.type == mqtt.PUBREL and p.packet_id is not None:
            self.send(mqtt.encode_ack(mqtt.PUBCOMP, p.packet_id))
        elif p.type == mqtt.PINGRESP:
            self._ping_outstanding = False
            c.last_heard = max(c.last_heard, self._ping_answered_from)  # a round trip that began then
        elif p.type in (mqtt.PUBACK, mqtt.SUBACK, mqtt.UNSUBACK) and p.packet_id is not None:
            c._on_ack(p)
        else:
            log.debug("ignoring MQTT packet type {type}", type=p.type)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.client._on_lost(self, reason)


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, client: PubSubClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self.client)


class PubSubClient(service.Service):
    """A reconnecting MQTT client as a Twisted service.

    ``publish`` and ``subscribe`` may be called at any time: while the broker
    is unreachable, publishes wait in a bounded queue and subscriptions are
    made as soon as the connection is accepted.
    """

    def __init__(
        self,
        url: str,
        reactor: Any,
        *,
        client_id: str | None = None,
        keepalive: int = 2,
        will: mqtt.Will | None = None,
        connect_timeout: float = 5.0,
        initial_delay: float = 0.2,
        max_delay: float = 5.0,
        max_queue: int = 10_000,
        rng: random.Random | None = None,
        max_message: int = MAX_MESSAGE,
        ca: str | Path | None = None,
    ) -> None:
        self.address = parse_broker_url(url)
        #: for an mqtts:// URL, the CA certificate the broker's is checked against when the file exists
        #: (None: $ONEOS_HOME/tls/ca.pem); with no such file, the system's trust store
        self.ca = Path(ca) if ca is not None else None
        self.reactor = reactor
        self.client_id = client_id or f"oneos-{uuid.uuid4().hex[:16]}"
        self.keepalive = keepalive
        self.will = will
        self.connect_timeout = connect_timeout
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.max_queue = max_queue
        #: largest payload published or delivered; larger ones are refused or dropped (and logged)
        self.max_message = max_message
        self._rng = rng or random.Random()
        self._conn: _Connection | None = None
        self._attempts = 0
        self._retry: IDelayedCall | None = None
        self._connecting: defer.Deferred | None = None
        self._queue: list[tuple[str, bytes, int, bool, defer.Deferred]] = []
        self._inflight: dict[int, tuple[str, bytes, bool, defer.Deferred]] = {}
        self._acks: dict[int, defer.Deferred] = {}
        self._next_id = 0
        self._subs: list[Subscription] = []
        self._waiting_subs: list[tuple[Subscription, defer.Deferred]] = []
        self._connected_waiters: list[defer.Deferred] = []
        self._stopped_waiters: list[defer.Deferred] = []
        self._listeners: list[tuple[Callable[[], Any] | None, Callable[[], Any] | None]] = []
        self._last_refusal: str | None = None
        self._trust_source = ""
        self.last_error: str | None = None
        #: reactor time of the last bytes from the broker: a leader's lease is renewed by them
        self.last_heard = float("-inf")
        #: reactor time the current connection was accepted (-inf while disconnected)
        self.connected_since = float("-inf")
        #: publishes that must not go out after a reactor time (requests whose caller gave up)
        self._expires: dict[defer.Deferred, float] = {}

    # -- public API -------------------------------------------------------
    @property
    def identity(self) -> str:
        """The bus identity this client connects as (the caller level of its request and reply topics)."""
        return self.address.username or topics.ANONYMOUS

    @property
    def connected(self) -> bool:
        """True while a broker connection is established and accepted."""
        return self._conn is not None

    def whenConnected(self) -> defer.Deferred:
        """A Deferred that fires once the broker has accepted us."""
        if self._conn is not None:
            return defer.succeed(self)
        d: defer.Deferred = defer.Deferred()
        self._connected_waiters.append(d)
        return d

    def add_listener(
        self, on_connect: Callable[[], Any] | None = None, on_disconnect: Callable[[], Any] | None = None
    ) -> None:
        """Call *on_connect* after every accepted (re)connection, *on_disconnect* after every loss."""
        self._listeners.append((on_connect, on_disconnect))

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, expires: float | None = None
    ) -> defer.Deferred:
        """Publish; the Deferred fires when written (QoS 0) or acknowledged (QoS 1).

        *expires* (a reactor time): if the message is still queued (broker
        unreachable) or unacknowledged at a reconnect after that time, it is
        dropped instead of sent late, and the Deferred fails.  A payload larger
        than ``max_message`` fails with :class:`MessageTooLarge`.
        """
        mqtt.validate_topic(topic)
        if qos not in (0, 1):
            return defer.fail(ValueError("only QoS 0 and 1 are supported"))
        if len(payload) > self.max_message:
            return defer.fail(
                MessageTooLarge(
                    f"message of {len(payload)} bytes for {topic} is larger than the {self.max_message}-byte limit"
                )
            )
        d: defer.Deferred = defer.Deferred()
        if expires is not None:
            self._expires[d] = expires
            d.addBoth(lambda r: (self._expires.pop(d, None), r)[1])
        if self._conn is None:
            if len(self._queue) >= self.max_queue:
                return defer.fail(
                    PubSubUnavailable(
                        f"broker at {self.address.url} unreachable and {self.max_queue} messages already wait"
                    )
                )
            self._queue.append((topic, payload, qos, retain, d))
            return d
        self._send_publish(topic, payload, qos, retain, d)
        return d

    def subscribe(self, topic_filter: str, callback: MessageCallback, qos: int = 1) -> defer.Deferred:
        """Deliver messages matching *topic_filter* to *callback*.

        Fires with a :class:`Subscription` once the broker granted it.
        Retained messages arrive (with ``retain=True``) right after.
        """
        mqtt.validate_filter(topic_filter)
        sub = Subscription(self, topic_filter, callback, min(qos, 1))
        self._subs.append(sub)
        d: defer.Deferred = defer.Deferred()
        if self._conn is None:
            self._waiting_subs.append((sub, d))
        else:
            self._send_subscribe([sub], [d])
        return d

    def barrier(self) -> defer.Deferred:
        """Fire once everything the broker owed us before now has arrived.

        Publishes a marker to a private topic and waits for it to come back;
        brokers deliver in order on one connection, so retained messages of
        earlier subscriptions are in by then.  Membership uses this to know
        it has seen every runtime's retained status before it elects.
        """
        topic = topics.barrier(self.identity, self.client_id)
        marker = uuid.uuid4().hex.encode()
        done: defer.Deferred = defer.Deferred()
        holder: list[Subscription] = []

        def seen(message: Message) -> None:
            if message.payload == marker and not done.called:
                if holder:
                    holder[0].cancel()
                done.callback(None)

        def subscribed(sub: Subscription) -> defer.Deferred:
            holder.append(sub)
            return self.publish(topic, marker, qos=1)

        def failed(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)

        self.subscribe(topic, seen).addCallback(subscribed).addErrback(failed)
        return done

    # -- service ----------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._attempts = 0
        self._connect()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
        error = PubSubUnavailable("pubsub client stopped")
        for *_, d in self._queue:
            d.errback(error)
        self._queue.clear()
        for *_, d in list(self._inflight.values()):
            d.errback(error)
        self._inflight.clear()
        for _, d in self._waiting_subs:
            d.errback(error)
        self._waiting_subs.clear()
        conn = self._conn
        if conn is None:
            return defer.succeed(None)
        stopped: defer.Deferred = defer.Deferred()
        self._stopped_waiters.append(stopped)
        conn.send(mqtt.encode_simple(mqtt.DISCONNECT))
        conn.close()
        return stopped

    # -- connection management --------------------------------------------
    def _tls_creator(self) -> Any:
        """The TLS client connection creator for the broker (mqtts://): its certificate and name are checked."""
        from twisted.internet.ssl import optionsForClientTLS

        from oneos.security import tls

        ca = self.ca if self.ca is not None else tls.ca_path(tls.default_home())
        if ca.exists():
            self._trust_source = str(ca)
            return tls.Trust.from_file(ca).client_creator(self.address.host)
        self._trust_source = "the system's trust store"
        return optionsForClientTLS(self.address.host)

    def _connect(self) -> None:
        self._retry = None
        a = self.address
        host = a.host.replace(":", "\\:")
        endpoint = clientFromString(self.reactor, f"tcp:host={host}:port={a.port}:timeout={self.connect_timeout:g}")
        if a.tls:
            try:
                endpoint = wrapClientTLS(self._tls_creator(), endpoint)
            except OneOSError as e:
                self._schedule_retry(str(e))
                return
        self._connecting = endpoint.connect(_ConnectionFactory(self))

        def connected(_: Any) -> None:
            self._connecting = None

        def failed(reason: Failure) -> None:
            self._connecting = None
            if reason.check(defer.CancelledError) or not self.running:
                return
            self._schedule_retry(reason.getErrorMessage())

        self._connecting.addCallbacks(connected, failed)

    def _schedule_retry(self, why: str) -> None:
        delay = min(self.max_delay, self.initial_delay * (2**self._attempts))
        delay *= 0.8 + 0.4 * self._rng.random()
        self._attempts += 1
        self.last_error = why
        log.warn(
            "cannot reach the pubsub broker at {url}: {why}; retrying in {delay:.1f}s",
            url=self.address.url,
            why=why,
            delay=delay,
        )
        self._retry = self.reactor.callLater(delay, self._connect)

    def _expired(self, d: defer.Deferred) -> bool:
        """Fail *d* and say so if its message is past its expiry (never sent late)."""
        when = self._expires.get(d)
        if when is None or self.reactor.seconds() < when:
            return False
        d.errback(PubSubUnavailable("dropped a message that waited past its deadline for the broker"))
        return True

    def _on_accepted(self, conn: _Connection) -> None:
        self._conn = conn
        self.connected_since = self.reactor.seconds()
        self.last_heard = conn.connect_sent
        self._attempts = 0
        self.last_error = None
        log.info("connected to pubsub broker at {url} as {id}", url=self.address.url, id=self.client_id)
        # Subscriptions first, so replies to queued requests are not missed.
        subs = list(dict.fromkeys(s for s in self._subs))
        waiting = dict((id(s), d) for s, d in self._waiting_subs)
        self._waiting_subs.clear()
        if subs:
            self._send_subscribe(subs, [waiting.get(id(s)) for s in subs])
        for pid, (topic, payload, retain, d) in sorted(self._inflight.items()):
            if self._expired(d):
                del self._inflight[pid]
                continue
            conn.send(mqtt.encode_publish(topic, payload, 1, retain, pid, dup=True))
        queue, self._queue = self._queue, []
        for topic, payload, qos, retain, d in queue:
            if not self._expired(d):
                self._send_publish(topic, payload, qos, retain, d)
        waiters, self._connected_waiters = self._connected_waiters, []
        for d in waiters:
            d.callback(self)
        for on_connect, _ in list(self._listeners):
            if on_connect is not None:
                self._safely(on_connect)

    def _on_lost(self, conn: _Connection, reason: Failure | None) -> None:
        was_accepted = self._conn is conn
        self._conn = None
        self.connected_since = float("-inf")
        for d in list(self._acks.values()):
            d.errback(PubSubUnavailable("connection to broker lost before it answered"))
        self._acks.clear()
        if was_accepted:
            for _, on_disconnect in list(self._listeners):
                if on_disconnect is not None:
                    self._safely(on_disconnect)
        if not self.running:
            waiters, self._stopped_waiters = self._stopped_waiters, []
            for d in waiters:
                d.callback(None)
            return
        why = self._last_refusal or (reason.getErrorMessage() if reason is not None else "connection lost")
        if self.address.tls and reason is not None and not was_accepted and not self._last_refusal:
            from oneos.security.tls import describe_tls_failure

            why = describe_tls_failure(reason, "the broker's", self._trust_source) or why
        elif not was_accepted and not self._last_refusal and reason is not None and reason.check(ConnectionDone):
            why = "the broker closed the connection before answering CONNECT (if it serves TLS: an mqtts:// URL)"
        self._last_refusal = None
        if was_accepted:
            log.warn("lost the pubsub broker at {url}: {why}", url=self.address.url, why=why)
        self._schedule_retry(why)

    @staticmethod
    def _safely(fn: Callable[[], Any]) -> None:
        try:
            result = fn()
            if isinstance(result, defer.Deferred):
                result.addErrback(lambda f: log.failure("pubsub listener failed", f))
        except Exception:
            log.failure("pubsub listener failed")

    # -- packets ------------------------------------------------------------
    def _packet_id(self) -> int:
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._inflight and self._next_id not in self._acks:
                return self._next_id
        raise PubSubUnavailable("too many unacknowledged MQTT packets")

    def _send_publish(self, topic: str, payload: bytes, qos: int, retain: bool, d: defer.Deferred) -> None:
        assert self._conn is not None
        if qos == 0:
            self._conn.send(mqtt.encode_publish(topic, payload, 0, retain))
            d.callback(None)
            return
        pid = self._packet_id()
        self._inflight[pid] = (topic, payload, retain, d)
        self._conn.send(mqtt.encode_publish(topic, payload, 1, retain, pid))

    def _send_subscribe(self, subs: list[Subscription], waiters: list[defer.Deferred | None]) -> None:
        assert self._conn is not None
        pid = self._packet_id()
        ack: defer.Deferred = defer.Deferred()
        self._acks[pid] = ack
        self._conn.send(mqtt.encode_subscribe(pid, [(s.topic_filter, s.qos) for s in subs]))

        def granted(packet: mqtt.Packet) -> None:
            for i, (sub, d) in enumerate(zip(subs, waiters, strict=False)):
                code = packet.granted[i] if i < len(packet.granted) else 0x80
                if d is None:
                    continue
                if code == 0x80:
                    if sub in self._subs:
                        self._subs.remove(sub)
                    d.errback(PubSubUnavailable(f"broker refused subscription to {sub.topic_filter!r}"))
                else:
                    d.callback(sub)

        def lost(f: Failure) -> None:
            # Keep the waiters: the subscriptions are redone after reconnect.
            for sub, d in zip(subs, waiters, strict=False):
                if d is not None:
                    self._waiting_subs.append((sub, d))

        ack.addCallbacks(granted, lost)

    def _on_ack(self, packet: mqtt.Packet) -> None:
        pid = packet.packet_id
        assert pid is not None
        if packet.type == mqtt.PUBACK:
            entry = self._inflight.pop(pid, None)
            if entry is not None:
                entry[3].callback(None)
            return
        d = self._acks.pop(pid, None)
        if d is not None:
            d.callback(packet)

    def _remove_subscription(self, sub: Subscription) -> defer.Deferred:
        if sub not in self._subs:
            return defer.succeed(None)
        self._subs.remove(sub)
        if any(s.topic_filter == sub.topic_filter for s in self._subs) or self._conn is None:
            return defer.succeed(None)
        pid = self._packet_id()
        d: defer.Deferred = defer.Deferred()
        self._acks[pid] = d
        self._conn.send(mqtt.encode_unsubscribe(pid, [sub.topic_filter]))
        d.addErrback(lambda f: None)  # a lost connection unsubscribes anyway
        return d

    def _deliver(self, message: Message) -> None:
        seen: list[MessageCallback] = []
        for sub in list(self._subs):
            if sub.callback in seen or not mqtt.topic_matches(sub.topic_filter, message.topic):
                continue
            seen.append(sub.callback)
            try:
                result = sub.callback(message)
                if isinstance(result, defer.Deferred):
                    result.addErrback(_handler_failed, message.topic)
            except Exception:
                log.failure("handler for {topic} failed", topic=message.topic)
