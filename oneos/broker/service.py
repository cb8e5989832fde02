"""The MQTT broker as a Twisted service (amqtt on the shared asyncio loop).

Runtimes meet on an MQTT 3.1.1 broker.  Any standard one works (Mosquitto,
EMQX); this one lets a single machine run OneOS with nothing else installed
and backs ``twistd oneospsd``.  It accepts only the network's credentials
(oneos/broker/auth.py; anonymous clients only when asked to), keeps retained
messages in memory only (no files are written), and publishes a client's
last will when its connection drops without DISCONNECT, which is how OneOS
notices a dead runtime.

amqtt 0.12 gets a few things OneOS relies on wrong (keep-alive is never
enforced, a client-id take-over leaves the old connection open, retained
messages leak to clients that never subscribed to them, IPv6 binds fail, a
broadcast is cut short when clients subscribe while it is being sent)
and has no limits (a connection that never sends CONNECT is held forever, a
PUBLISH of any size is read whole, stored if retained and sent on);
:class:`_FixedBroker` corrects them.  docs/notes-amqtt.md has the details.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import re
import struct
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.utils import gen_client_id
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from oneos.broker.auth import TopicACLPlugin, plugins_config
from oneos.errors import OneOSError
from oneos.security import acl
from oneos.security.credentials import Credentials

log = Logger()

#: Default largest PUBLISH payload the broker accepts (bytes); larger ones are dropped and logged.
MAX_MESSAGE = 1024 * 1024
#: Default seconds a new connection may take to send its CONNECT before it is closed.
CONNECT_TIMEOUT = 10.0


class BrokerError(OneOSError):
    """The broker could not start (bad listen address, port in use, ...)."""


# --------------------------------------------------------------------------
# listen endpoints

_TCP_OPTIONS = {"port", "interface"}


def parse_listen(endpoint: str) -> tuple[str, int]:
    """Turn a Twisted ``tcp:PORT[:interface=ADDR]`` server endpoint string into (address, port).

    amqtt binds its own sockets, so only plain TCP endpoints (``tcp``/``tcp6``,
    Twisted's syntax: ``:`` separates fields, ``\\:`` is a literal colon as in
    ``interface=\\:\\:1``) are accepted; anything else is a clear error rather
    than a silently different listener.
    """
    fields = [f.replace("\\:", ":") for f in re.split(r"(?<!\\):", endpoint)]
    kind = fields[0]
    if kind not in ("tcp", "tcp6") or len(fields) < 2:
        raise BrokerError(
            f"broker listen endpoint {endpoint!r}: only 'tcp:PORT[:interface=ADDR]' (or tcp6) is supported"
        )
    positional = [f for f in fields[1:] if "=" not in f]
    options = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
    unknown = set(options) - _TCP_OPTIONS
    if unknown:
        raise BrokerError(f"broker listen endpoint {endpoint!r}: unsupported option {sorted(unknown)[0]!r}")
    if len(positional) + ("port" in options) != 1:
        raise BrokerError(
            f"broker listen endpoint {endpoint!r}: expected exactly one port "
            "(write ':' inside an address as '\\:', e.g. interface=\\:\\:1)"
        )
    port_text = options.get("port") or positional[0]
    try:
        port = int(port_text)
    except ValueError:
        raise BrokerError(f"broker listen endpoint {endpoint!r}: {port_text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise BrokerError(f"broker listen endpoint {endpoint!r}: port {port} is out of range 0..65535")
    interface = options.get("interface", "::" if kind == "tcp6" else "0.0.0.0")
    return interface, port


def _bind(interface: str, port: int) -> str:
    """amqtt's ``bind`` syntax: ``ADDR:PORT``, IPv6 addresses in brackets."""
    return f"[{interface}]:{port}" if ":" in interface else f"{interface}:{port}"


# --------------------------------------------------------------------------
# amqtt fixes


def _abort(writer: Any) -> None:
    """Drop a client's connection at once.

    ``abort`` rather than amqtt's ``close``: close first drains the send
    buffer, which never empties when the peer has vanished.
    """
    inner = getattr(writer, "_writer", None) or getattr(writer, "_protocol", None)  # stream / websocket adapter
    transport = getattr(inner, "transport", None)
    if transport is not None:
        transport.abort()
    elif writer is not None:
        asyncio.ensure_future(writer.close())


_PUBLISH, _PUBREL, _CONNECT = 3, 6, 1
#: Bytes a packet other than PUBLISH may exceed the message limit by (a CONNECT carries a will
#: message and strings; a SUBSCRIBE, filters) before the connection is taken to be hostile.
_OTHER_SLACK = 256 * 1024
#: Piece size while discarding an oversized PUBLISH.
_SKIP_PIECE = 64 * 1024


class _LimitedReader:
    """A client's byte stream as amqtt reads it, with oversized PUBLISH packets cut out.

    amqtt reads every packet whole before looking at it, so a 17 MiB publish
    was held in memory, retained, and sent on to every subscriber (and a
    client with a smaller limit dropped its connection, reconnected, got the
    retained message again...).  This adapter sits between the socket and
    amqtt and follows the MQTT framing: a PUBLISH whose payload is larger
    than *limit* is read in small pieces and discarded (only its topic and
    packet id are kept, to log it and acknowledge it as Mosquitto does);
    amqtt never sees it.  Any other packet far larger than the limit closes
    the connection.

    Its state lives on the object, not in the coroutine: amqtt's reader wraps
    a read in ``wait_for`` (the keep-alive) and may cancel it half-way.
    """

    def __init__(self, inner: Any, writer: Any, limit: int) -> None:
        self.inner = inner
        self.writer = writer
        self.limit = limit
        self.client_id = "?"
        #: asyncio loop time of the last bytes from the client (the keep-alive check uses it)
        self.last_read = asyncio.get_running_loop().time()
        self._header = bytearray()  # the fixed header being read
        self._pending = bytearray()  # bytes read ahead, to hand to amqtt first
        self._left = 0  # bytes of the current packet amqtt has still to read
        self._skip = 0  # bytes of a dropped PUBLISH still to discard
        self._head = bytearray()  # the start of a dropped PUBLISH: topic and packet id
        self._head_size = 0
        self._skip_type = 0
        self._skip_flags = 0
        self._skip_header = b""
        self._skip_length = 0
        self._pubrec: set[int] = set()  # QoS 2 ids we answered PUBREC for (amqtt never saw them)

    async def _inner_read(self, n: int) -> bytes:
        data = await self.inner.read(n)
        if data:
            self.last_read = asyncio.get_running_loop().time()
        return data

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            return await self.inner.read(n)
        out = bytearray()
        while len(out) < n:
            if self._pending:
                take = min(n - len(out), len(self._pending))
                out += self._pending[:take]
                del self._pending[:take]
                self._left -= take
                continue
            if self._left > 0:
                data = await self._inner_read(min(self._left, n - len(out)))
                if not data:
                    break
                out += data
                self._left -= len(data)
                continue
            if not await self._next_packet():
                break
        return bytes(out)

    def feed_eof(self) -> None:
        self.inner.feed_eof()

    async def _next_packet(self) -> bool:
        """Read the next fixed header; queue the packet for amqtt, or discard it.  False at EOF."""
        while True:
            if self._skip:
                if not await self._discard():
                    return False
                if self._pending:  # not dropped after all: amqtt reads it
                    return True
                continue
            while not (len(self._header) >= 2 and not self._header[-1] & 0x80):
                if len(self._header) >= 5:  # malformed length: let amqtt see it and fail
                    self._pending, self._header = self._header, bytearray()
                    self._left = len(self._pending)
                    return True
                data = await self._inner_read(1)
                if not data:
                    return False
                self._header += data
            header, self._header = bytes(self._header), bytearray()
            length, multiplier = 0, 1
            for byte in header[1:]:
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
            ptype = header[0] >> 4
            if ptype == _PUBLISH and length > self.limit:  # its payload may be over: look at the topic
                self._skip, self._skip_type, self._skip_length = length, _PUBLISH, length
                self._head, self._head_size = bytearray(), min(2, length)
                self._skip_flags, self._skip_header = header[0] & 0x0F, header
                continue
            if ptype == _PUBREL and length == 2 and self._pubrec:
                self._skip, self._skip_type = length, _PUBREL
                self._head, self._head_size = bytearray(), 2
                continue
            if ptype != _PUBLISH and length > self.limit + _OTHER_SLACK:
                log.warn(
                    "broker: closing the connection of {id}: a packet (type {t}) of {n} bytes is far over "
                    "the {limit}-byte message limit",
                    id=self.client_id,
                    t=ptype,
                    n=length,
                    limit=self.limit,
                )
                _abort(self.writer)
                return False
            self._pending = bytearray(header)
            self._left = len(header) + length
            return True

    async def _discard(self) -> bool:
        """Consume some of the packet being dropped; at its end, log and acknowledge it."""
        if len(self._head) < self._head_size:
            data = await self._inner_read(min(self._head_size - len(self._head), self._skip))
            if not data:
                return False
            self._head += data
            self._skip -= len(data)
            if self._skip_type == _PUBLISH and len(self._head) == 2:
                qos = (self._skip_flags >> 1) & 3
                variable = 2 + struct.unpack("!H", self._head)[0] + (2 if qos else 0)
                if len(self._head) + self._skip - variable <= self.limit:
                    # a long topic, not a large payload: amqtt gets it after all
                    self._pending = bytearray(self._skip_header) + self._head
                    self._left = len(self._pending) + self._skip
                    self._skip, self._head = 0, bytearray()
                    return True
                self._head_size = min(variable, len(self._head) + self._skip)
        elif self._skip:
            data = await self._inner_read(min(_SKIP_PIECE, self._skip))
            if not data:
                return False
            self._skip -= len(data)
        if not self._skip:
            self._dropped()
        return True

    def _dropped(self) -> None:
        head = bytes(self._head)
        if self._skip_type == _PUBREL:
            (packet_id,) = struct.unpack("!H", head)
            if packet_id in self._pubrec:
                self._pubrec.discard(packet_id)
                self.writer.write(bytes([0x70, 2]) + head)  # PUBCOMP
                return
            # not ours: give it to amqtt after all
            self._pending, self._left = bytearray(bytes([0x62, 2]) + head), 4
            return
        qos = (self._skip_flags >> 1) & 3
        topic, packet_id = "?", None
        if len(head) >= 2:
            n = struct.unpack_from("!H", head)[0]
            topic = head[2 : 2 + n].decode("utf-8", "replace")
            if qos and len(head) >= 4 + n:
                (packet_id,) = struct.unpack_from("!H", head, 2 + n)
        size = len(self._skip_header) + self._skip_length
        log.warn(
            "broker: dropped a {size}-byte PUBLISH from {id} on {topic!r}: its payload is over the "
            "{limit}-byte message limit (--max-message)",
            size=size,
            id=self.client_id,
            topic=topic,
            limit=self.limit,
        )
        if packet_id is not None and qos == 1:
            self.writer.write(bytes([0x40, 2]) + struct.pack("!H", packet_id))  # PUBACK
        elif packet_id is not None and qos == 2:
            self._pubrec.add(packet_id)
            self.writer.write(bytes([0x50, 2]) + struct.pack("!H", packet_id))  # PUBREC


#: Topic names whose matching filters _FixedBroker remembers (beyond that, it starts over).
_MATCHED_TOPICS = 10_000


class _FilterTable(dict[str, list[Any]]):
    """amqtt's subscription table (topic filter -> [(session, QoS)]) counting changes to its set of filters.

    A subclass of dict so amqtt keeps using it as before; adding or
    removing a filter (item assignment, ``del``, ``clear``, ``pop``...; not
    ``|=``, which amqtt does not use) bumps :attr:`generation`, which tells
    :meth:`_FixedBroker._recipients` its remembered matches are stale.
    (The recipients' lists change in place and are read afresh each time.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generation = 0

    def __setitem__(self, key: str, value: list[Any]) -> None:
        self.generation += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.generation += 1
        super().__delitem__(key)

    def clear(self) -> None:
        self.generation += 1
        super().clear()

    def pop(self, *args: Any) -> Any:
        self.generation += 1
        return super().pop(*args)

    def popitem(self) -> tuple[str, list[Any]]:
        self.generation += 1
        return super().popitem()

    def setdefault(self, key: str, default: Any = None) -> Any:
        self.generation += 1
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.generation += 1
        super().update(*args, **kwargs)


class _FixedBroker(Broker):
    """amqtt's broker with the MQTT 3.1.1 behaviour OneOS depends on restored."""

    #: largest PUBLISH payload accepted; None: no limit
    max_message: int | None = MAX_MESSAGE
    #: seconds a connection may take to send CONNECT; None: wait forever
    connect_timeout: float | None = CONNECT_TIMEOUT
    #: identities and topic rules are on (oneos/security/acl.py)
    identities: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = _FilterTable()
        #: topic name -> the filters matching it, valid while the filters are those of _matched_generation
        self._matched: dict[str, list[str]] = {}
        self._matched_generation = -1
        topic_plugins = [p for p in self.plugins_manager.plugins if isinstance(p, BaseTopicPlugin)]
        #: deliveries are checked with acl.may_receive directly (see _may_receive)
        self._acl_receive = bool(topic_plugins) and all(type(p) is TopicACLPlugin for p in topic_plugins)

    async def _client_connected(self, listener_name: str, reader: Any, writer: Any) -> None:
        if self.max_message is not None:
            reader = _LimitedReader(reader, writer, self.max_message)
        timer = None
        if self.connect_timeout is not None:
            peer = writer.get_peer_info()
            where = f"{peer[0]}:{peer[1]}" if peer else "?"

            def no_connect() -> None:
                # amqtt waits for the first packet forever: an idle socket (a port scan, a
                # stuck client) held a connection and its task without end.
                log.info(
                    "broker: closing the connection from {peer}: no CONNECT within {t:g}s",
                    peer=where,
                    t=self.connect_timeout,
                )
                _abort(writer)

            timer = asyncio.get_running_loop().call_later(self.connect_timeout, no_connect)
        reader.connect_timer = timer
        try:
            await super()._client_connected(listener_name, reader, writer)
        finally:
            if timer is not None:
                timer.cancel()

    @classmethod
    def _split_bindaddr_port(cls, port_str: str, default_port: int) -> tuple[str | None, int]:
        # amqtt keeps the brackets of "[::1]:1883", which asyncio cannot resolve.
        address, port = super()._split_bindaddr_port(port_str, default_port)
        if address and address.startswith("[") and address.endswith("]"):
            address = address[1:-1]
        return address, port

    async def _authenticated_connect(self, reader: Any, writer: Any, remote_address: str, remote_port: int) -> Any:
        """amqtt's ``_initialize_client_session`` with the credentials checked first.

        amqtt reads CONNECT, then deletes (clean session) or takes over the
        session of the same client id, and only later authenticates: an
        anonymous CONNECT with a runtime's client id knocked that runtime off
        and published its last will.  Here a client that fails authentication
        gets CONNACK "bad user name or password" and is dropped before its
        client id touches any session.
        """
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError as exc:
            await writer.close()
            raise MQTTError(exc) from exc
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        if not await self._authenticate(session, None):
            log.warn("refused MQTT client from {host}: bad credentials", host=remote_address)
            writer.write(bytes([0x20, 2, 0, 4]))  # CONNACK: bad user name or password
            try:
                await writer.drain()
            except Exception:
                pass
            _abort(writer)
            raise AMQTTError(f"client from {remote_address} refused: bad credentials")
        refusal = self._identity_refusal(session)
        if refusal is not None:
            log.warn(
                "refused MQTT client {name!r} from {host}: {why}",
                name=session.username,
                host=remote_address,
                why=refusal,
            )
            writer.write(bytes([0x20, 2, 0, 5]))  # CONNACK: not authorised
            try:
                await writer.drain()
            except Exception:
                pass
            _abort(writer)
            raise AMQTTError(f"client from {remote_address} refused: {refusal}")
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif session.client_id in self._sessions:
            existing, _ = self._sessions[session.client_id]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive", "username", "password"):
                setattr(existing, name, getattr(session, name))
            session = existing
            session.parent = 1
        else:
            session.parent = 0
        return handler, session

    def _identity_refusal(self, session: Any) -> str | None:
        """Why an authenticated identity may not connect like this (None: it may).

        With identities on: a last will goes through the same
        topic rules as a publish (a client's will on a runtime's status
        would be a forged "dead" message), and a client id in use by another
        identity is not taken over (that would disconnect its owner and
        publish its will).
        """
        if not self.identities:
            return None
        name = getattr(session, "username", None)
        if session.will_flag and not acl.may_publish(name, session.will_topic or ""):
            return f"a last will on {session.will_topic}, which it may not publish"
        existing = self._sessions.get(session.client_id, (None, None))[0] if session.client_id else None
        if existing is not None and getattr(existing, "username", None) != name:
            return f"client id {session.client_id!r} belongs to another identity"
        return None

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str, remote_port: int) -> Any:
        try:
            handler, session = await self._authenticated_connect(reader, writer, remote_address, remote_port)
        finally:
            timer = getattr(reader, "connect_timer", None)
            if timer is not None:
                timer.cancel()  # CONNECT arrived (or the connection failed): no more waiting for it
        if isinstance(reader, _LimitedReader):
            reader.client_id = session.client_id
        if session.keep_alive > 0:
            # amqtt's reader times out after keep_alive seconds of silence and
            # then does nothing, so a half-open connection (machine unplugged)
            # lived forever and its will was never sent.  MQTT-3.1.2-24: drop
            # the client after 1.5 keep-alives; the drop publishes the will.
            session.keep_alive = math.ceil(session.keep_alive * 1.5)

            def silent() -> None:
                if isinstance(reader, _LimitedReader):
                    # the read that timed out may have been busy discarding an oversized publish
                    quiet = asyncio.get_running_loop().time() - reader.last_read
                    if quiet < session.keep_alive:
                        return
                log.info(
                    "client {id} silent for {s}s (1.5 keep-alives); dropping it",
                    id=session.client_id,
                    s=session.keep_alive,
                )
                _abort(writer)

            handler.handle_read_timeout = silent
        return handler, session

    async def _delete_session(self, client_id: str) -> None:
        # A clean-session CONNECT reusing a connected client id: amqtt forgot
        # the old session but left its connection open, and published its
        # will whenever that connection finally died, possibly long after the
        # new one announced itself.  MQTT-3.1.4-2 says to disconnect the old
        # client; like Mosquitto we publish its will first, before the new
        # client is acknowledged, so the order on the wire stays causal.
        old, handler = self._sessions.get(client_id, (None, None))
        if old is not None and handler is not None and old.transitions.state == "connected":
            if old.will_flag:
                old.will_flag = False
                await self._broadcast_message(old, old.will_topic, old.will_message, old.will_qos)
                if old.will_retain:
                    await self.retain_message(old, old.will_topic, old.will_message, old.will_qos)
            _abort(handler.writer)
        await super()._delete_session(client_id)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Any) -> None:
        # On every CONNECT amqtt replays retained messages for every filter
        # *any* client subscribed to; a client must only get those matching
        # its own subscriptions (MQTT-3.3.1-6).
        topic_filter = subscription[0]
        if any(s.client_id == session.client_id for s, _ in self._subscriptions.get(topic_filter, ())):
            await super()._publish_retained_messages_for_subscription(subscription, session)

    # -- broadcasting ----------------------------------------------------------------------

    async def _run_broadcast(self, running_tasks: Any) -> None:
        """Send the next queued message to every client whose subscription matches it.

        amqtt walks the live subscription table (and each filter's list of
        recipients) while awaiting each recipient's topic check; with
        identities on, that check is a plugin call that yields to the loop,
        so clients subscribe and unsubscribe in the middle of the walk.  A
        new filter grew the table and the walk died with "dictionary changed
        size during iteration": recipients of filters further on never got
        the message (200 runtimes joining together broke off ~100 broadcasts).  An
        unsubscribe from the filter being walked shifted its list under the
        iterator and skipped the next recipient.  Here the recipients are
        copied out before the first await and the walk is over that copy:
        the message goes to the subscriptions that existed when it was taken
        from the queue.  A client that unsubscribes during the walk may
        still get it (MQTT allows delivering what was already under way);
        one that subscribes during it does not.  The rest is amqtt's: the
        subscription's QoS (or the forced one, for wills), the receive check,
        messages kept for a disconnected persistent session, and no delivery
        to a client that is not connected.
        """
        broadcast = await self._broadcast_queue.get()
        topic, data = broadcast["topic"], broadcast["data"]
        for session, granted in self._recipients(topic):
            qos = broadcast.get("qos", granted)
            if not await self._may_receive(session, topic):
                continue
            if session.transitions.state != "connected":
                if not session.clean_session and qos in (QOS_1, QOS_2) and not session.is_anonymous:
                    await self._retain_broadcast_message(broadcast, qos, session)
                continue
            handler = self._get_handler(session)
            if handler is not None:
                running_tasks.append(asyncio.ensure_future(handler.mqtt_publish(topic, data, qos, retain=False)))

    def _recipients(self, topic: str) -> list[tuple[Any, int]]:
        """A copy of the (session, QoS) of every subscription matching *topic*, in amqtt's order.

        Which filters match a topic is remembered until the set of filters
        changes (:class:`_FilterTable` counts that), so a publish costs a
        dictionary lookup rather than a match against every filter held.
        """
        table = self._subscriptions
        assert isinstance(table, _FilterTable)  # set in __init__; amqtt only ever changes it in place
        if self._matched_generation != table.generation:
            self._matched.clear()
            self._matched_generation = table.generation
        filters = self._matched.get(topic)
        if filters is None:
            filters = [f for f in table if self._matches(topic, f)]
            if len(self._matched) >= _MATCHED_TOPICS:
                self._matched.clear()
            self._matched[topic] = filters
        return [entry for f in filters for entry in table.get(f, ())]

    async def _may_receive(self, session: Any, topic: str) -> bool:
        """amqtt's RECEIVE topic check, without its detour when OneOS's ACL is the only rule.

        amqtt asks every topic plugin in a task of its own and gathers them:
        a task and a turn of the loop per recipient of every message.  When
        :class:`TopicACLPlugin` is the only topic plugin, its answer for a
        delivery is :func:`acl.may_receive`, asked here directly.
        """
        if self._acl_receive:
            return acl.may_receive(getattr(session, "username", None), topic)
        return await self._topic_filtering(session, topic, Action.RECEIVE)


# --------------------------------------------------------------------------
# logging

#: amqtt reports these at warning/error level, but for a broker they are
#: routine (a port probe that connects and closes, a client that was killed)
#: or said better by BrokerService itself (a start-up failure).
_ROUTINE = (
    "No data from",
    "Failed to initialize client session",
    "No data to decode",
    "Connection lost",
    "disconnected",
    "Broker startup failed",
    "messages not broadcasted",
)


class _ToTwistedLog(logging.Handler):
    """Forward amqtt's stdlib logging (warnings and worse) to twisted.logger."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if any(marker in text for marker in _ROUTINE):
            return  # twistd shows even debug events; these carry nothing to act on
        level = LogLevel.error if record.levelno >= logging.ERROR else LogLevel.warn
        log.emit(level, "amqtt: {text}", text=text, amqtt_logger=record.name)


def _route_amqtt_logging() -> None:
    """amqtt logs every connection at INFO; keep WARNING and up, in our log."""
    logger = logging.getLogger("amqtt")
    if not any(isinstance(h, _ToTwistedLog) for h in logger.handlers):
        logger.addHandler(_ToTwistedLog())
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    # Keep-alive timeouts and dropped clients are routine for a broker whose
    # clients may be SIGKILLed; they are not operator-worthy warnings.
    logging.getLogger("amqtt.mqtt.protocol.handler").setLevel(logging.ERROR)


# --------------------------------------------------------------------------
# the service


class BrokerService(service.Service):
    """An amqtt MQTT 3.1.1 broker on a TCP endpoint (port 0 = any free port).

    *websocket*, if given, is a second TCP endpoint string where MQTT is also
    served over websockets (for browsers).  *credentials*: the only
    username/password accepted (anonymous and wrong ones are refused); None
    lets anyone in (tests, ``--allow-anonymous``).  *tls*: (certfile,
    keyfile), PEM files: the listener speaks MQTT over TLS only (mqtts://;
    the websocket listener, if any, becomes wss://); None: plain TCP.
    """

    name = "broker"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        listen: str = "tcp:1883:interface=0.0.0.0",
        websocket: str | None = None,
        *,
        max_message: int | None = MAX_MESSAGE,
        connect_timeout: float | None = CONNECT_TIMEOUT,
        credentials: Credentials | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        if max_message is not None and max_message < 1:
            raise BrokerError(f"the message size limit must be positive, not {max_message}")
        if connect_timeout is not None and connect_timeout <= 0:
            raise BrokerError(f"the CONNECT timeout must be positive, not {connect_timeout}")
        self.interface, self.port = parse_listen(listen)
        #: largest PUBLISH payload accepted (bytes; None: no limit): larger ones are dropped and logged
        self.max_message = max_message
        #: seconds a new connection may take to send CONNECT before it is closed (None: no limit)
        self.connect_timeout = connect_timeout
        self.ws = parse_listen(websocket) if websocket else None
        if tls is not None:
            for kind, path in zip(("certificate", "key"), tls, strict=False):
                if not os.path.isfile(path):
                    raise BrokerError(f"no TLS {kind} file at {path} (for this machine's own: 'oneos tls init')")
        #: (certfile, keyfile) when the listeners speak TLS
        self.tls = (str(tls[0]), str(tls[1])) if tls is not None else None
        #: the accepted username/password; None: anonymous clients allowed
        self.credentials = credentials
        #: (host, port) actually bound, once listening
        self.address: tuple[str, int] | None = None
        #: (host, port) of the websocket listener, once listening (None if off)
        self.websocket_address: tuple[str, int] | None = None
        self._broker: _FixedBroker | None = None
        self._task: asyncio.Future[Any] | None = None
        self._failure: BrokerError | None = None
        self._waiting: list[defer.Deferred[tuple[str, int]]] = []

    def _config(self) -> dict[str, Any]:
        listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": _bind(self.interface, self.port)}}
        if self.tls is not None:  # amqtt applies the default listener's ssl settings to the websocket one too
            listeners["default"].update(ssl=True, certfile=self.tls[0], keyfile=self.tls[1])
        if self.ws is not None:
            listeners["ws"] = {"type": "ws", "bind": _bind(*self.ws)}
        return {
            "listeners": listeners,
            # _FixedBroker applies the spec's 1.5 x keep-alive itself
            "timeout_disconnect_delay": 0,
            # Only the authentication plugin: no $SYS publisher, packet logger or persistence.
            "plugins": plugins_config(self.credentials),
        }

    def whenListening(self) -> defer.Deferred[tuple[str, int]]:
        """Fire with the bound (host, port) once accepting connections; fail with BrokerError if it cannot."""
        if self.address is not None:
            return defer.succeed(self.address)
        if self._failure is not None:
            return defer.fail(self._failure)
        d: defer.Deferred[tuple[str, int]] = defer.Deferred()
        self._waiting.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        _route_amqtt_logging()
        self.address = self.websocket_address = None
        self._failure = None
        # Under twistd this runs before the loop does; the task starts with it.
        self._task = asyncio.ensure_future(self._start())
        defer.Deferred.fromFuture(self._task).addCallbacks(self._up, self._failed)

    async def _start(self) -> tuple[str, int]:
        broker = _FixedBroker(self._config())
        broker.max_message = self.max_message
        broker.connect_timeout = self.connect_timeout
        broker.identities = self.credentials is not None
        try:
            await broker.start()
        except BaseException:
            # amqtt leaves listeners it already opened (tcp, when websockets
            # fail) listening after a failed start.
            for server in broker._servers.values():
                await server.close_instance()
            raise
        self._broker = broker
        if self.ws is not None:
            self.websocket_address = self._bound("ws")
        return self._bound("default")

    def _bound(self, listener: str) -> tuple[str, int]:
        assert self._broker is not None
        sockets = self._broker._servers[listener].instance.sockets
        host, port = sockets[0].getsockname()[:2]
        return host, port

    def _up(self, address: tuple[str, int]) -> None:
        self.address = address
        log.info("MQTT broker listening on {host}:{port}", host=address[0], port=address[1])
        if self.websocket_address:
            log.info(
                "MQTT over websockets on {host}:{port}", host=self.websocket_address[0], port=self.websocket_address[1]
            )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(address)

    def _failed(self, failure: Failure) -> None:
        cause: BaseException = failure.value
        while cause.__cause__ is not None:
            cause = cause.__cause__
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        where = f"{self.interface}:{self.port}"
        # asyncio: "error while attempting to bind on address ('h', p): address already in use"
        bind = re.match(r"error while attempting to bind on address \('?([^',]*)'?, (\d+).*?\): (.*)", reason)
        if bind:
            where, reason = f"{bind[1]}:{bind[2]}", bind[3]
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            reason += " (is another broker running there?)"
        self._failure = BrokerError(f"the MQTT broker could not listen on {where}: {reason}")
        log.error("{error}", error=str(self._failure))
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(self._failure)

    def stopService(self) -> defer.Deferred[None]:
        """Shut amqtt down (closing client connections); fires when it is done."""
        super().stopService()
        task, self._task = self._task, None
        self.address = self.websocket_address = None
        if task is None:
            return defer.succeed(None)
        return defer.Deferred.fromFuture(asyncio.ensure_future(self._stop(task)))

    async def _stop(self, task: asyncio.Future[Any]) -> None:
        try:
            await task  # a stop during start-up waits for the start to finish
        except BaseException:
            return  # never started; _failed reported why
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await broker.shutdown()
        except Exception as e:
            log.warn("MQTT broker shutdown: {error}", error=str(e) or type(e).__name__)
        else:
            log.info("MQTT broker stopped")
