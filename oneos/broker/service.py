"""The MQTT broker as a Twisted service (amqtt on the shared asyncio loop).

Runtimes meet on an MQTT 3.1.1 broker.  Any standard one works (Mosquitto,
EMQX); this one lets a single machine run OneOS with nothing else installed
and backs ``twistd oneospsd``.  It allows anonymous clients, keeps retained
messages in memory only (no files are written), and publishes a client's
last will when its connection drops without DISCONNECT, which is how OneOS
notices a dead runtime.

amqtt 0.12 gets a few things OneOS relies on wrong (keep-alive is never
enforced, a client-id take-over leaves the old connection open, retained
messages leak to clients that never subscribed to them, IPv6 binds fail);
:class:`_FixedBroker` corrects them.  docs/notes-amqtt.md has the details.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import re
from typing import Any

from amqtt.broker import Broker
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from oneos.errors import OneOSError

log = Logger()


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


class _FixedBroker(Broker):
    """amqtt's broker with the MQTT 3.1.1 behaviour OneOS depends on restored."""

    @classmethod
    def _split_bindaddr_port(cls, port_str: str, default_port: int) -> tuple[str | None, int]:
        # amqtt keeps the brackets of "[::1]:1883", which asyncio cannot resolve.
        address, port = super()._split_bindaddr_port(port_str, default_port)
        if address and address.startswith("[") and address.endswith("]"):
            address = address[1:-1]
        return address, port

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str, remote_port: int) -> Any:
        handler, session = await super()._initialize_client_session(reader, writer, remote_address, remote_port)
        if session.keep_alive > 0:
            # amqtt's reader times out after keep_alive seconds of silence and
            # then does nothing, so a half-open connection (machine unplugged)
            # lived forever and its will was never sent.  MQTT-3.1.2-24: drop
            # the client after 1.5 keep-alives; the drop publishes the will.
            session.keep_alive = math.ceil(session.keep_alive * 1.5)

            def silent() -> None:
                log.info("client {id} silent for {s}s (1.5 keep-alives); dropping it", id=session.client_id,
                         s=session.keep_alive)
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
    served over websockets (for browsers).
    """

    name = "broker"

    def __init__(self, listen: str = "tcp:1883:interface=0.0.0.0", websocket: str | None = None) -> None:
        self.interface, self.port = parse_listen(listen)
        self.ws = parse_listen(websocket) if websocket else None
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
        if self.ws is not None:
            listeners["ws"] = {"type": "ws", "bind": _bind(*self.ws)}
        return {
            "listeners": listeners,
            # _FixedBroker applies the spec's 1.5 x keep-alive itself
            "timeout_disconnect_delay": 0,
            # Only this plugin: no $SYS publisher, packet logger or persistence.
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
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
            log.info("MQTT over websockets on {host}:{port}", host=self.websocket_address[0],
                     port=self.websocket_address[1])
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
