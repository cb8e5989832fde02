"""The MQTT broker as a Twisted service (amqtt on the shared asyncio loop).

Runtimes meet on an MQTT 3.1.1 broker.  Any standard one works (Mosquitto,
EMQX); this one lets a single machine run OneOS with nothing else installed
and backs ``twistd oneospsd``.  It keeps retained messages in memory only,
allows anonymous clients, and publishes a client's last will when its
connection drops without DISCONNECT, which is how OneOS notices a dead
runtime.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from oneos.errors import OneOSError

log = Logger()


class BrokerError(OneOSError):
    """The broker could not start (bad listen address, port in use, ...)."""


def parse_listen(endpoint: str) -> tuple[str, int]:
    """Turn a ``tcp:PORT[:interface=ADDR]`` endpoint string into (address, port).

    amqtt binds its own sockets, so only plain TCP endpoints are accepted;
    anything else is a clear error rather than a silently different listener.
    """
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", endpoint)]
    kind = parts[0]
    if kind not in ("tcp", "tcp6") or len(parts) < 2:
        raise BrokerError(f"broker listen endpoint {endpoint!r}: only tcp:PORT[:interface=ADDR] is supported")
    positional = [p for p in parts[1:] if "=" not in p]
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    unknown = set(options) - {"port", "interface"}
    if unknown:
        raise BrokerError(f"broker listen endpoint {endpoint!r}: unsupported option {sorted(unknown)[0]!r}")
    port_text = options.get("port") or (positional[0] if positional else "")
    try:
        port = int(port_text)
    except ValueError:
        raise BrokerError(f"broker listen endpoint {endpoint!r}: {port_text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise BrokerError(f"broker listen endpoint {endpoint!r}: port {port} out of range")
    interface = options.get("interface", "::" if kind == "tcp6" else "0.0.0.0")
    return interface, port


#: amqtt reports these at warning/error level, but for a broker they are
#: routine: a port probe that connects and closes, a client that was killed.
_ROUTINE = ("No data from", "Failed to initialize client session", "No data to decode", "Connection lost", "disconnected")


class _ToTwistedLog(logging.Handler):
    """Forward amqtt's stdlib logging (warnings and worse) to twisted.logger."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        if any(marker in text for marker in _ROUTINE):
            log.debug("amqtt: {text}", text=text)
            return
        level = "error" if record.levelno >= logging.ERROR else "warn"
        getattr(log, level)("amqtt: {text}", text=text)


def _route_amqtt_logging() -> None:
    logger = logging.getLogger("amqtt")
    if not any(isinstance(h, _ToTwistedLog) for h in logger.handlers):
        logger.addHandler(_ToTwistedLog())
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    # Keepalive timeouts and dropped clients are routine for a broker whose
    # clients may be SIGKILLed; they are not operator-worthy warnings.
    for noisy in ("amqtt.mqtt.protocol.handler", "amqtt.broker.plugins.packet_logger_plugin"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


class BrokerService(service.Service):
    """An amqtt MQTT 3.1.1 broker listening on one TCP endpoint (port 0 = any free port)."""

    name = "broker"

    def __init__(self, listen: str = "tcp:1883:interface=0.0.0.0", websocket: str | None = None) -> None:
        self.interface, self.port = parse_listen(listen)
        self.ws = parse_listen(websocket) if websocket else None
        self.address: tuple[str, int] | None = None
        self._broker: Any = None
        self._listening: list[defer.Deferred] = []
        self._failure: BaseException | None = None
        self._started: defer.Deferred | None = None

    def _config(self) -> dict[str, Any]:
        listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": f"{self._bind(self.interface)}:{self.port}"}}
        if self.ws is not None:
            listeners["ws"] = {"type": "ws", "bind": f"{self._bind(self.ws[0])}:{self.ws[1]}"}
        return {
            "listeners": listeners,
            "timeout_disconnect_delay": 0,
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

    @staticmethod
    def _bind(interface: str) -> str:
        return f"[{interface}]" if ":" in interface else interface

    def whenListening(self) -> defer.Deferred:
        """Fires with (interface, port) once accepting connections, or fails with BrokerError."""
        if self.address is not None:
            return defer.succeed(self.address)
        if self._failure is not None:
            return defer.fail(self._failure)
        d: defer.Deferred = defer.Deferred()
        self._listening.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        _route_amqtt_logging()
        self._started = defer.Deferred.fromFuture(asyncio.ensure_future(self._start()))
        self._started.addCallbacks(self._up, self._failed)

    async def _start(self) -> tuple[str, int]:
        from amqtt.broker import Broker

        self._broker = Broker(self._config())
        await self._broker.start()
        server = self._broker._servers["default"].instance
        host, port = server.sockets[0].getsockname()[:2]
        return host, port

    def _up(self, address: tuple[str, int]) -> None:
        self.address = address
        log.info("MQTT broker listening on {host}:{port}", host=address[0], port=address[1])
        waiters, self._listening = self._listening, []
        for d in waiters:
            d.callback(address)

    def _failed(self, failure: Any) -> None:
        cause = failure.value
        while cause.__cause__ is not None:
            cause = cause.__cause__
        reason = getattr(cause, "strerror", None) or str(cause)
        self._failure = BrokerError(f"the MQTT broker could not listen on {self.interface}:{self.port}: {reason}")
        log.error("{error}", error=str(self._failure))
        self._broker = None
        waiters, self._listening = self._listening, []
        for d in waiters:
            d.errback(self._failure)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        broker, self._broker = self._broker, None
        self.address = None
        if broker is None:
            return defer.succeed(None)
        d = defer.Deferred.fromFuture(asyncio.ensure_future(broker.shutdown()))
        return d.addErrback(lambda f: log.warn("broker shutdown: {error}", error=f.getErrorMessage()))
