"""A small in-memory MQTT 3.1.1 broker for the cluster test tier.

Why it exists: the cluster tier (:mod:`oneos.testing.cluster`) runs many
real runtimes in one process on one fake clock.  Their MQTT client
(:mod:`oneos.pubsub.client`) must run unchanged, so this broker is a
Twisted protocol that reads and writes real MQTT bytes with the project's
own codec (:mod:`oneos.pubsub.mqtt`); only the sockets are fake.  It is
driven entirely by the reactor it is given (its keep-alive checks are
``callLater`` calls), so the fake clock decides when a silent client is
dropped.

What it models, because OneOS relies on it:

* CONNECT/CONNACK, with optional credentials (``credentials`` maps user
  names to passwords; a wrong pair gets return code 4, like our broker);
  a second connection with a client id already connected takes over (the
  older one is dropped, and its will published, as Mosquitto does);
* SUBSCRIBE with ``+`` and ``#``, SUBACK, then the retained messages that
  match; UNSUBSCRIBE/UNSUBACK;
* PUBLISH at QoS 0 and 1 (PUBACK), delivered once per client at the lower
  of the published and granted QoS; retained messages (an empty retained
  payload clears the topic);
* the last will, published when a connection ends without DISCONNECT: the
  peer vanished, or it stayed silent for 1.5 keep-alives;
* PINGREQ/PINGRESP and DISCONNECT.

Not modelled: QoS 2 (our client never asks for it; a request is granted
QoS 1), persistent sessions (every session is clean), redelivery of
unacknowledged QoS 1 messages, topic rules (ACLs).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from oneos.pubsub import mqtt

log = Logger()

#: CONNACK return codes used here (MQTT 3.1.1 section 3.2.2.3).
ACCEPTED, BAD_PROTOCOL, BAD_CREDENTIALS = 0, 1, 4
#: A SUBACK return code refusing one filter.
SUBSCRIPTION_REFUSED = 0x80


@dataclass(frozen=True)
class ConnectRequest:
    """What a CONNECT packet asked for (the codec hands a broker its body undecoded)."""

    protocol: str
    level: int
    client_id: str
    keepalive: int
    clean_session: bool
    will: mqtt.Will | None
    username: str | None
    password: str | None


def _read_string(body: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(body):
        raise mqtt.MalformedPacket("truncated field")
    (n,) = struct.unpack_from("!H", body, pos)
    end = pos + 2 + n
    if end > len(body):
        raise mqtt.MalformedPacket("truncated field")
    return body[pos + 2 : end], end


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise mqtt.MalformedPacket("string is not UTF-8") from e


def parse_connect(body: bytes) -> ConnectRequest:
    """Decode a CONNECT body (MQTT 3.1.1 section 3.1); :class:`~oneos.pubsub.mqtt.MalformedPacket` if broken."""
    name, pos = _read_string(body, 0)
    if pos + 4 > len(body):
        raise mqtt.MalformedPacket("truncated CONNECT header")
    level, flags = body[pos], body[pos + 1]
    (keepalive,) = struct.unpack_from("!H", body, pos + 2)
    pos += 4
    client_id, pos = _read_string(body, pos)
    will = None
    if flags & 0x04:
        topic, pos = _read_string(body, pos)
        payload, pos = _read_string(body, pos)
        will = mqtt.Will(_text(topic), payload, qos=(flags >> 3) & 0x03, retain=bool(flags & 0x20))
    username = password = None
    if flags & 0x80:
        raw, pos = _read_string(body, pos)
        username = _text(raw)
    if flags & 0x40:
        raw, pos = _read_string(body, pos)
        password = _text(raw)
    return ConnectRequest(
        protocol=_text(name),
        level=level,
        client_id=_text(client_id),
        keepalive=keepalive,
        clean_session=bool(flags & 0x02),
        will=will,
        username=username,
        password=password,
    )


def parse_subscribe(payload: bytes) -> list[tuple[str, int]]:
    """The (filter, requested QoS) pairs of a SUBSCRIBE (the codec keeps them raw, after the packet id)."""
    out, pos = [], 0
    while pos < len(payload):
        raw, pos = _read_string(payload, pos)
        if pos >= len(payload):
            raise mqtt.MalformedPacket("SUBSCRIBE filter without QoS")
        out.append((_text(raw), payload[pos]))
        pos += 1
    if not out:
        raise mqtt.MalformedPacket("SUBSCRIBE without filters")
    return out


def parse_unsubscribe(payload: bytes) -> list[str]:
    """The filters of an UNSUBSCRIBE."""
    out, pos = [], 0
    while pos < len(payload):
        raw, pos = _read_string(payload, pos)
        out.append(_text(raw))
    return out


def _is_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


class BrokerConnection(protocol.Protocol):
    """The broker's side of one client connection."""

    def __init__(self, broker: MemBroker) -> None:
        self.broker = broker
        self.parser = mqtt.PacketParser()
        self.client_id: str | None = None
        self.will: mqtt.Will | None = None
        self.keepalive = 0
        #: filter -> granted QoS
        self.subscriptions: dict[str, int] = {}
        self.last_heard = 0.0
        #: a DISCONNECT arrived: the will is discarded
        self.clean_exit = False
        self._next_id = 0
        self._timer: IDelayedCall | None = None
        self._closing = False

    # -- plumbing ---------------------------------------------------------
    def send(self, data: bytes) -> None:
        if not self._closing and self.transport is not None:
            self.transport.write(data)

    def drop(self) -> None:
        """Close the connection at once (the will is published unless the client said DISCONNECT)."""
        if not self._closing and self.transport is not None:
            self._closing = True
            self.transport.abortConnection()  # type: ignore[attr-defined]  # a TCP transport has it

    def connectionMade(self) -> None:
        self.last_heard = self.broker.reactor.seconds()

    def dataReceived(self, data: bytes) -> None:
        self.last_heard = self.broker.reactor.seconds()
        try:
            packets = self.parser.feed(data)
            for packet in packets:
                if self._closing:
                    return
                self._handle(packet)
        except mqtt.MalformedPacket as e:
            log.warn("membroker: malformed data from {id}: {error}; dropping", id=self.client_id, error=str(e))
            self.drop()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._closing = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.broker._lost(self)

    # -- keep-alive ---------------------------------------------------------
    def _arm(self) -> None:
        """Drop the client once it has been silent for 1.5 keep-alives (MQTT 3.1.1 section 3.1.2.10)."""
        grace = self.keepalive * self.broker.keepalive_grace
        delay = max(0.0, self.last_heard + grace - self.broker.reactor.seconds())
        self._timer = self.broker.reactor.callLater(delay, self._check_alive)

    def _check_alive(self) -> None:
        grace = self.keepalive * self.broker.keepalive_grace
        if self.broker.reactor.seconds() - self.last_heard >= grace:
            log.info("membroker: {id} silent for {grace:g}s; dropping it", id=self.client_id, grace=grace)
            self.drop()
        else:
            self._arm()

    # -- packets ------------------------------------------------------------
    def _handle(self, p: mqtt.Packet) -> None:
        if self.client_id is None:
            if p.type != mqtt.CONNECT:
                raise mqtt.MalformedPacket(f"packet type {p.type} before CONNECT")
            self._connect(parse_connect(p.payload))
        elif p.type == mqtt.PUBLISH:
            try:
                mqtt.validate_topic(p.topic)
            except ValueError as e:
                raise mqtt.MalformedPacket(str(e)) from None  # a wildcard in a topic name: a protocol error
            if p.qos == 1 and p.packet_id is not None:
                self.send(mqtt.encode_ack(mqtt.PUBACK, p.packet_id))
            self.broker.publish(p.topic, p.payload, qos=min(p.qos, 1), retain=p.retain)
        elif p.type == mqtt.SUBSCRIBE and p.packet_id is not None:
            self._subscribe(p.packet_id, parse_subscribe(p.payload))
        elif p.type == mqtt.UNSUBSCRIBE and p.packet_id is not None:
            for topic_filter in parse_unsubscribe(p.payload):
                if self.subscriptions.pop(topic_filter, None) is not None:
                    self.broker._unsubscribed(self, topic_filter)
            self.send(mqtt.encode_ack(mqtt.UNSUBACK, p.packet_id))
        elif p.type == mqtt.PINGREQ:
            self.send(mqtt.encode_simple(mqtt.PINGRESP))
        elif p.type == mqtt.DISCONNECT:
            self.clean_exit = True
            self._closing = True
            if self.transport is not None:
                self.transport.loseConnection()
        elif p.type == mqtt.CONNECT:
            raise mqtt.MalformedPacket("second CONNECT")
        # PUBACK (for our QoS 1 deliveries) and anything else: nothing to do

    def _connect(self, request: ConnectRequest) -> None:
        if request.protocol != "MQTT" or request.level != 4:
            self.send(mqtt.encode_connack(BAD_PROTOCOL))
            self.drop()
            return
        if not self.broker.accepts(request.username, request.password):
            self.send(mqtt.encode_connack(BAD_CREDENTIALS))
            self.drop()
            return
        self.client_id = request.client_id or f"membroker-{id(self):x}"
        self.will = request.will
        self.keepalive = request.keepalive
        self.broker._connected(self)
        self.send(mqtt.encode_connack(ACCEPTED))
        if self.keepalive:
            self._arm()

    def _subscribe(self, packet_id: int, filters: list[tuple[str, int]]) -> None:
        granted, accepted = [], []
        for topic_filter, qos in filters:
            try:
                mqtt.validate_filter(topic_filter)
            except ValueError:
                granted.append(SUBSCRIPTION_REFUSED)
                continue
            qos = min(qos, 1)
            self.subscriptions[topic_filter] = qos
            self.broker._subscribed(self, topic_filter)
            granted.append(qos)
            accepted.append((topic_filter, qos))
        self.send(mqtt.encode_suback(packet_id, granted))
        for topic_filter, qos in accepted:
            for topic, (payload, retained_qos) in self.broker.retained_matching(topic_filter):
                self.deliver(topic, payload, min(qos, retained_qos), retain=True)

    def deliver(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        """Send one PUBLISH to this client."""
        if qos:
            self._next_id = self._next_id % 0xFFFF + 1
            self.send(mqtt.encode_publish(topic, payload, 1, retain, self._next_id))
        else:
            self.send(mqtt.encode_publish(topic, payload, 0, retain))
        self.broker.delivered += 1


class _BrokerFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, broker: MemBroker) -> None:
        self.broker = broker

    def buildProtocol(self, addr: Any) -> BrokerConnection:
        connection = BrokerConnection(self.broker)
        self.broker.connections[connection] = None
        return connection


class MemBroker:
    """The broker's state: connected sessions, their subscriptions, retained messages.

    Listen with ``reactor.listenTCP(port, broker.factory())`` on a reactor
    whose connections are in memory (:class:`oneos.testing.cluster.NodeReactor`),
    or hand :meth:`factory`'s protocols any transport.
    """

    def __init__(
        self, reactor: Any, *, credentials: dict[str, str] | None = None, keepalive_grace: float = 1.5
    ) -> None:
        self.reactor = reactor
        #: user name -> password; None lets anyone in (anonymous included)
        self.credentials = credentials
        #: a client silent for this many keep-alives is dropped (and its will published)
        self.keepalive_grace = keepalive_grace
        #: every open connection, accepted or not (dicts, not sets, here and below: delivery order
        #: must not depend on object addresses, or two runs of one simulation would differ)
        self.connections: dict[BrokerConnection, None] = {}
        #: client id -> its accepted connection
        self.sessions: dict[str, BrokerConnection] = {}
        #: topic -> (payload, qos)
        self.retained: dict[str, tuple[bytes, int]] = {}
        #: counters, for tests and for telling where a simulation's time goes
        self.published = 0
        self.delivered = 0
        # filter -> subscribed connections; wildcard filters are matched once per topic and cached
        # (a fan-out to hundreds of runtimes must not test every filter against every topic)
        self._exact: dict[str, dict[BrokerConnection, None]] = {}
        self._wild: dict[str, dict[BrokerConnection, None]] = {}
        self._wild_cache: dict[str, tuple[str, ...]] = {}

    def factory(self) -> protocol.ServerFactory:
        """A server factory whose protocols serve this broker."""
        return _BrokerFactory(self)

    def accepts(self, username: str | None, password: str | None) -> bool:
        """Whether these credentials may connect."""
        if self.credentials is None:
            return True
        return username is not None and self.credentials.get(username) == password

    # -- publishing ----------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        """Route a message as if a client had published it; returns how many clients it went to."""
        self.published += 1
        if retain:
            if payload:
                self.retained[topic] = (payload, qos)
            else:
                self.retained.pop(topic, None)
        # one delivery per client, at the highest QoS any of its matching subscriptions was granted
        targets: dict[BrokerConnection, int] = {}
        for connection in self._exact.get(topic, ()):
            targets[connection] = connection.subscriptions[topic]
        for topic_filter in self._wild_matches(topic):
            for connection in self._wild[topic_filter]:
                targets[connection] = max(targets.get(connection, 0), connection.subscriptions[topic_filter])
        for connection, granted in targets.items():
            connection.deliver(topic, payload, min(qos, granted))
        return len(targets)

    def retained_matching(self, topic_filter: str) -> list[tuple[str, tuple[bytes, int]]]:
        """Retained messages a new subscription to *topic_filter* receives, in topic order."""
        return sorted((t, v) for t, v in self.retained.items() if mqtt.topic_matches(topic_filter, t))

    def forget_retained(self) -> None:
        """Drop every retained message (a broker restarted without persistence)."""
        self.retained.clear()

    def _wild_matches(self, topic: str) -> tuple[str, ...]:
        found = self._wild_cache.get(topic)
        if found is None:
            if len(self._wild_cache) > 100_000:
                self._wild_cache.clear()  # many short-lived topics: start again rather than grow
            found = tuple(f for f in self._wild if mqtt.topic_matches(f, topic))
            self._wild_cache[topic] = found
        return found

    # -- sessions and subscriptions ----------------------------------------------
    def _connected(self, connection: BrokerConnection) -> None:
        assert connection.client_id is not None
        older = self.sessions.get(connection.client_id)
        self.sessions[connection.client_id] = connection
        if older is not None and older is not connection:
            log.info("membroker: client id {id} taken over; dropping the older connection", id=connection.client_id)
            older.drop()

    def _subscribed(self, connection: BrokerConnection, topic_filter: str) -> None:
        if _is_wildcard(topic_filter):
            if topic_filter not in self._wild:
                self._wild[topic_filter] = {}
                self._wild_cache.clear()
            self._wild[topic_filter][connection] = None
        else:
            self._exact.setdefault(topic_filter, {})[connection] = None

    def _unsubscribed(self, connection: BrokerConnection, topic_filter: str) -> None:
        table = self._wild if _is_wildcard(topic_filter) else self._exact
        subscribers = table.get(topic_filter)
        if subscribers is None:
            return
        subscribers.pop(connection, None)
        if not subscribers:
            del table[topic_filter]
            if table is self._wild:
                self._wild_cache.clear()

    def _lost(self, connection: BrokerConnection) -> None:
        self.connections.pop(connection, None)
        for topic_filter in list(connection.subscriptions):
            self._unsubscribed(connection, topic_filter)
        connection.subscriptions.clear()
        if connection.client_id is not None and self.sessions.get(connection.client_id) is connection:
            del self.sessions[connection.client_id]
        will, connection.will = connection.will, None
        if will is not None and connection.client_id is not None and not connection.clean_exit:
            self.publish(will.topic, will.payload, qos=min(will.qos, 1), retain=will.retain)
