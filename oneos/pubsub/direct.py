"""Kernel calls in one hop: RPC over one persistent TCP connection, beside the bus.

Why: over the bus every call crosses the broker twice (the request to the
server, the answer back) and the broker checks its topic rules on both, so
a ``stat`` costs two broker hops.  A client that calls one target often
(the file system) talks to the server of that target directly instead,
over one TCP connection, carrying the same request and answer bodies as
the bus does.

Finding the server and proving who asks stay the bus's job:

1. the client calls the built-in method ``rpc_ticket`` of the target over
   the bus.  The server answers it, to the caller identity the broker
   authenticated, with where it listens (host, port, TLS or not) and a
   one-time *ticket* bound to that identity (usable once, within
   :data:`TICKET_TTL` seconds), as a stream token is;
2. the client connects (with TLS when the answer says so, checking the
   server against the network's CA as streams do), sends the ticket as its
   first line, and waits for ``rpc.ready``; the server binds the connection
   to the ticket's identity.  Nothing said on the connection itself names
   an identity: every request on it is authorised exactly as that
   identity's bus requests are (:meth:`oneos.pubsub.rpc.RPCServer.handle`:
   the same handlers, client rules, guard and deadline);
3. then frames ``length (4 bytes, big-endian) | JSON``: ``rpc.request``
   ``{id, method, args, meta}`` and ``rpc.reply`` ``{id, ok, result |
   error}``, the bus's bodies without the reply topic, at most
   :data:`MAX_FRAME` bytes each (the bus's limit).  Requests are
   pipelined: many may be outstanding; each is answered when it finishes.
   A server with :data:`MAX_IN_FLIGHT` requests of one connection at work
   stops reading that connection until some are answered.

The bus stays the way to find the server, and the fallback; in doubt a call
goes over the bus (:class:`DirectRoute`):

* until a channel is open (the first calls, a ticket refused, a connection
  refused, a TLS failure, a server without ``rpc_ticket``), calls go over
  the bus and the client tries again later, waiting longer after each
  failure;
* a server that must not answer (its guard: the lease lapsed, the role is
  being given up) answers ``Unanswered`` on the channel instead of staying
  silent: the call is sent over the bus, where the current server answers
  it, and the channel takes no new calls (it closes once its calls are
  answered);
* a call that times out fails as on the bus (:class:`RPCTimeout`) and the
  channel takes no new calls;
* a connection that breaks with calls outstanding: those that only read
  (the target's *retry_safe* methods) are sent again over the bus; the
  others fail with :class:`DirectLost`, since they may or may not have been
  done (over the bus such a call would have timed out);
* a server that stops closes its channels once their calls are answered
  (at most :data:`CLOSE_GRACE` seconds); calls arriving meanwhile are
  answered ``Unanswered``, so they go over the bus.

So a fenced-off server is refused on the channel exactly as over the bus,
and after a failover the next ``rpc_ticket``, over the bus, reaches the new
server.
"""

from __future__ import annotations

import itertools
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, cast
from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, serverFromString, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from oneos import transfer
from oneos.errors import OneOSError, RPCError, RPCTimeout, rebuild_error
from oneos.pubsub import messages

log = Logger()

#: the built-in method every target with a direct channel answers over the bus (RPCServer.handle)
TICKET_METHOD = "rpc_ticket"
#: the error kind a channel answers with where the bus would stay silent: "ask the bus instead"
UNANSWERED = "Unanswered"
#: frame header: the JSON body's length
LENGTH = struct.Struct("!I")
#: largest frame either side accepts: the bus's largest message
MAX_FRAME = messages.MAX_MESSAGE
#: seconds a ticket may be used in, once
TICKET_TTL = 30.0
TICKET_BYTES = 16
#: tickets kept at most (the oldest go first): a caller asking for tickets it never uses costs bounded memory
MAX_TICKETS = 10_000
#: seconds a connection may take to send its ticket line
LINE_TIMEOUT = 10.0
#: requests of one connection at work at once before the server stops reading it
MAX_IN_FLIGHT = 256
#: seconds a stopping server waits for a channel's calls to be answered before it cuts the connection
CLOSE_GRACE = 5.0
#: seconds between checks of the server's guard while channels are open: once it would not answer (its
#: lease lapsed), every channel is cut, so a request still on its way is never answered after a lapse
WATCH_INTERVAL = 0.25
#: seconds a client waits for a TCP connection, then for ``rpc.ready``
CONNECT_TIMEOUT = 5.0
#: a client asks for its first channel after this many calls over the bus (see DirectRoute)
OPEN_AFTER = 2
#: seconds a client waits for the answer to ``rpc_ticket`` (over the bus)
TICKET_TIMEOUT = 5.0
#: a client waits this long before trying a channel again after a failure, doubling up to RETRY_MAX
RETRY_MIN = 0.5
RETRY_MAX = 60.0
#: ... and this long when the server has no direct channel at all (an older one, or none listening)
NO_CHANNEL_RETRY = 300.0


class Unanswered(Exception):
    """Raised by a server's guard: this server must not answer (another one may).

    (Re-exported by :mod:`oneos.pubsub.rpc`, where guards are given.)
    """


class DirectError(OneOSError):
    """The direct channel broke its protocol (an oversized or garbled frame)."""


class DirectLost(RPCError):
    """The channel closed while a call that changes something was outstanding: it may or may not have been done."""

    def __init__(self, target: str, method: str, why: str) -> None:
        super().__init__(
            f"the connection to {target!r} closed before it answered {method!r} ({why}); "
            "it may or may not have been done",
            kind="ECONNRESET",
        )


class NoChannel(RPCError):
    """This server offers no direct channel (it is not listening for one)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="NoDirectChannel")


# -- deadlines ---------------------------------------------------------------------------------------


class Deadlines:
    """Calls *expire(key)* for each key whose deadline passed, with one timer rather than one per key.

    Why: a timer per call (armed, then cancelled when the answer comes)
    costs more than the rest of a direct call's bookkeeping.  Deadlines
    mostly come in the order their keys are added (one caller, one
    timeout), so one timer at the earliest deadline known is re-armed only
    when it fires or an earlier deadline comes; a key answered in time is
    just forgotten.
    """

    def __init__(self, clock: Any, expire: Callable[[Any], Any]) -> None:
        self.clock = clock
        self.expire = expire
        self._due: dict[Any, float] = {}
        self._timer: IDelayedCall | None = None
        self._at = 0.0

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: Any, deadline: float) -> None:
        self._due[key] = deadline
        if self._timer is None or deadline < self._at:
            self._arm(deadline)

    def discard(self, key: Any) -> None:
        self._due.pop(key, None)
        if not self._due:
            self.stop()

    def stop(self) -> None:
        """Forget every key; no timer is left."""
        self._due.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm(self, at: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._at = at
        self._timer = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        due = [key for key, deadline in self._due.items() if deadline <= now]
        for key in due:
            del self._due[key]
        if self._due and self._timer is None:
            self._arm(min(self._due.values()))
        for key in due:
            self.expire(key)


# -- frames ------------------------------------------------------------------------------------------


def encode_frame(body: bytes) -> bytes:
    """One frame: the body's length, then the body."""
    if len(body) > MAX_FRAME:
        raise DirectError(f"a frame of {len(body)} bytes is larger than {MAX_FRAME}")
    return LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies; refuses a frame larger than *limit* before buffering it."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        out: list[bytes] = []
        pos, end = 0, len(buffer)
        while end - pos >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buffer, pos)
            if length > self.limit:
                raise DirectError(f"a frame of {length} bytes is larger than {self.limit}")
            start = pos + LENGTH.size
            if end - start < length:
                break
            out.append(bytes(buffer[start : start + length]))
            pos = start + length
        if pos:
            del buffer[:pos]
        return out


def reply_body(corr: str, fields: dict[str, Any]) -> bytes:
    """An ``rpc.reply`` body; a result that cannot be sent becomes an error saying why (as on the bus)."""
    try:
        body = messages.encode("rpc.reply", id=corr, **fields)
    except (TypeError, ValueError) as e:
        body = messages.encode(
            "rpc.reply", id=corr, ok=False, error={"kind": "RPCError", "message": f"unserialisable result: {e}"}
        )
    if len(body) > MAX_FRAME:
        body = messages.encode(
            "rpc.reply",
            id=corr,
            ok=False,
            error={"kind": "RPCError", "message": f"the answer ({len(body)} bytes) is larger than {MAX_FRAME} bytes"},
        )
    return body


def _tcp_of(protocol: Protocol) -> ITCPTransport:
    assert protocol.transport is not None, "not connected yet"
    return cast(ITCPTransport, protocol.transport)  # Twisted types it ITransport: TCP or TLS over TCP here


def _tune(protocol: Protocol) -> None:
    """No Nagle (a small answer must not wait for an ACK) and the stream's keepalive timers (oneos.transfer)."""
    tcp = transfer._tcp(protocol.transport)
    no_delay = getattr(tcp, "setTcpNoDelay", None)  # a test's StringTransport has none
    if no_delay is not None:
        no_delay(True)
    transfer._keep_alive(tcp)


# -- the server --------------------------------------------------------------------------------------


class Dispatcher(TypingProtocol):
    """What a direct server asks of the RPC server it shadows (:class:`oneos.pubsub.rpc.RPCServer`)."""

    target: str
    direct: Any
    guard: Callable[[str, dict[str, Any]], None] | None

    def handle(self, caller: str, method: str, args: dict[str, Any], meta: dict[str, Any]) -> defer.Deferred: ...


class Tickets:
    """One-time tickets, each bound to the caller identity it was issued to over the bus.

    All tickets live equally long, so the oldest expire first: expired ones
    are dropped from the front as new ones are issued, with no timer.
    """

    def __init__(self, clock: Any, ttl: float = TICKET_TTL, limit: int = MAX_TICKETS) -> None:
        self.clock = clock
        self.ttl = ttl
        self.limit = limit
        self._issued: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._issued)

    def issue(self, caller: str) -> str:
        now = self.clock.seconds()
        while self._issued:
            oldest = next(iter(self._issued.values()))
            if oldest[1] >= now and len(self._issued) < self.limit:
                break
            self._issued.popitem(last=False)
        ticket = secrets.token_hex(TICKET_BYTES)
        self._issued[ticket] = (caller, now + self.ttl)
        return ticket

    def redeem(self, ticket: str) -> str | None:
        """The identity *ticket* was issued to, once; None for a ticket unknown, used or expired."""
        entry = self._issued.pop(ticket, None)
        if entry is None:
            return None
        caller, deadline = entry
        return caller if self.clock.seconds() <= deadline else None


class _ServerChannel(Protocol):
    """One client's connection: the ticket line, then requests answered as they finish."""

    def __init__(self, server: DirectServer) -> None:
        self.server = server
        #: the identity the ticket was issued to; None until the ticket line is in
        self.caller: str | None = None
        self._line = b""
        self.decoder = FrameDecoder()
        self.in_flight = 0
        self.paused = False
        #: the server is stopping: no new work, close once the calls at work are answered
        self.closing = False
        #: cut off (the guard said no): not another byte is written
        self.aborted = False
        self.gone = False
        self._line_timer: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None
        self._waiting: list[defer.Deferred] = []

    def connectionMade(self) -> None:
        self.server._opened(self)
        _tune(self)
        if self.server.line_timeout:
            self._line_timer = self.server.clock.callLater(self.server.line_timeout, self._no_line)

    def _no_line(self) -> None:
        self._line_timer = None
        log.info("closing a direct connection from {peer}: no ticket line in time", peer=self._peer())
        self.aborted = True
        _tcp_of(self).abortConnection()

    def _peer(self) -> str:
        peer = _tcp_of(self).getPeer()
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"

    def _cancel_timer(self, timer: IDelayedCall | None) -> None:
        if timer is not None and timer.active():
            timer.cancel()

    def dataReceived(self, data: bytes) -> None:
        if self.gone or self.aborted:
            return  # refused or cut off: whatever still arrives (another ticket line too) is ignored
        if self.caller is None:
            self._line += data
            if b"\n" not in self._line:
                if len(self._line) > 128:
                    self._refuse("no ticket line")
                return
            line, data = self._line.split(b"\n", 1)
            self._line = b""
            self._cancel_timer(self._line_timer)
            self._line_timer = None
            caller = self.server.tickets.redeem(line.decode("ascii", "replace").strip())
            if caller is None or self.closing:
                self._refuse("unknown, expired or used ticket" if caller is None else "the server is stopping")
                return
            self.caller = caller
            self._write(messages.encode("rpc.ready", caller=caller, target=self.server.rpc.target))
            if not data:
                return
        try:
            bodies = self.decoder.feed(data)
        except DirectError as e:
            log.warn("closing the direct connection of {caller}: {error}", caller=self.caller, error=str(e))
            _tcp_of(self).abortConnection()
            return
        for body in bodies:
            self._request(body)

    def _refuse(self, why: str) -> None:
        """Say why in one frame and close (the client sends nothing before it hears ``rpc.ready``)."""
        log.info("refused a direct connection from {peer}: {why}", peer=self._peer(), why=why)
        self._write(messages.encode("rpc.reply", id="", ok=False, error={"kind": "EACCES", "message": why}))
        self.aborted = True
        _tcp_of(self).loseConnection()

    def _write(self, body: bytes) -> None:
        _tcp_of(self).write(LENGTH.pack(len(body)) + body)

    def _producer(self) -> Any:
        """The transport as a producer (TCP and TLS both are; ITCPTransport does not say so)."""
        return self.transport

    def _request(self, payload: bytes) -> None:
        assert self.caller is not None
        try:
            body = messages.decode(payload, "rpc.request")
            corr = messages.require(body, "id", str)
            method = messages.require(body, "method", str)
            args = body.get("args") or {}
            given = body.get("meta")
            if not isinstance(args, dict):
                raise messages.MalformedMessage("args must be an object")
        except messages.MalformedMessage as e:
            log.warn("dropped a malformed request from {caller}: {error}", caller=self.caller, error=str(e))
            return
        meta: dict[str, Any] = given if isinstance(given, dict) else {}
        self.in_flight += 1
        if self.in_flight >= self.server.max_in_flight and not self.paused:
            self.paused = True
            self._producer().pauseProducing()
        work = defer.succeed(None) if self.closing else self.server.rpc.handle(self.caller, method, args, meta)
        work.addCallback(self._answer, corr)
        work.addErrback(lambda f: log.failure("answering {method} on a direct channel", f, method=method))

    def _answer(self, fields: dict[str, Any] | None, corr: str) -> None:
        self.in_flight -= 1
        if self.gone or self.aborted:
            return
        if fields is None:  # where the bus stays silent, say so: the client asks the bus
            fields = {"ok": False, "error": {"kind": UNANSWERED, "message": "this server does not answer now"}}
        self._write(reply_body(corr, fields))
        if self.paused and self.in_flight < self.server.max_in_flight // 2:
            self.paused = False
            self._producer().resumeProducing()
        if self.closing and not self.in_flight:
            _tcp_of(self).loseConnection()

    def stop(self, grace: float) -> defer.Deferred:
        """Close once the calls at work are answered (within *grace* seconds); fires once gone."""
        if not self.gone:
            self.closing = True
            if not self.in_flight or self.caller is None:
                _tcp_of(self).loseConnection()
            elif self._close_timer is None:
                self._close_timer = self.server.clock.callLater(grace, _tcp_of(self).abortConnection)
        return self.closed()

    def cut(self) -> None:
        """Close now, answering nothing more (the server must not answer any longer)."""
        self.closing = self.aborted = True
        if not self.gone:
            _tcp_of(self).abortConnection()

    def closed(self) -> defer.Deferred:
        if self.gone:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.gone = True
        self._cancel_timer(self._line_timer)
        self._cancel_timer(self._close_timer)
        self._line_timer = self._close_timer = None
        self.server._connections.discard(self)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)


class _ServerFactory(Factory):
    noisy = False

    def __init__(self, server: DirectServer) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> _ServerChannel:
        return _ServerChannel(self.server)


class DirectServer:
    """Serves one RPC target's requests on TCP, beside the bus (module docstring).

    Built beside an :class:`~oneos.pubsub.rpc.RPCServer` (*rpc*), whose
    ``rpc_ticket`` it answers from then on and whose ``handle`` runs every
    request.  *tls*: this machine's TLS (its ``server`` context), as the
    runtime's transfer server has it; None for plain TCP.
    """

    def __init__(
        self,
        reactor: Any,
        rpc: Dispatcher,
        *,
        tls: Any = None,
        clock: Any = None,
        ticket_ttl: float = TICKET_TTL,
        line_timeout: float | None = LINE_TIMEOUT,
        max_in_flight: int = MAX_IN_FLIGHT,
        close_grace: float = CLOSE_GRACE,
    ) -> None:
        self.reactor = reactor
        self.clock = clock or reactor
        self.rpc = rpc
        rpc.direct = self
        self.tls = tls
        self.tickets = Tickets(self.clock, ticket_ttl)
        self.line_timeout = line_timeout
        self.max_in_flight = max_in_flight
        self.close_grace = close_grace
        self.port: Any = None
        #: the host clients are told to connect to when the port listens on every interface
        self.advertise = ""
        self._connections: set[_ServerChannel] = set()
        #: checks the guard while channels are open (see WATCH_INTERVAL)
        self.watch_interval = WATCH_INTERVAL
        self._watch: IDelayedCall | None = None
        self._stopped = False

    @defer.inlineCallbacks
    def listen(self, endpoint: str, advertise: str = "") -> Any:
        """Listen on *endpoint* (a Twisted server endpoint string); fires with ``host:port`` as clients dial it."""
        factory: Any = _ServerFactory(self)
        if self.tls is not None:
            factory = TLSMemoryBIOFactory(self.tls.server, False, factory)
            factory.noisy = False
        port = yield serverFromString(self.reactor, endpoint).listen(factory)
        if self._stopped:  # stopped while the port was being opened: leave nothing listening
            yield port.stopListening()
            raise NoChannel(f"{self.rpc.target!r} stopped before its direct channel listened")
        self.port = port
        self.advertise = advertise
        where = self.where()
        return f"{where['host']}:{where['port']}"

    def listen_beside(self, transfer: Any) -> defer.Deferred:
        """Listen on the interface *transfer* (the runtime's stream server) listens on; never fails.

        Every service that serves a target in one hop listens there and
        advertises the streams' host, so a channel reaches whoever reaches
        the streams.  A channel that cannot listen is logged and its callers
        keep using the bus (they fall back by themselves, as do clients that
        cannot reach the port: a firewall that opens only the stream port).
        """
        port = getattr(transfer, "port", None)
        if port is None:
            return defer.succeed(None)
        interface = port.getHost().host.replace(":", "\\:")
        target = self.rpc.target
        return self.listen(f"tcp:0:interface={interface}", transfer.where()["host"]).addCallbacks(
            lambda address: log.info(
                "{target} calls are served in one hop on {address}", target=target, address=address
            ),
            lambda f: log.warn(
                "no direct channel for {target} calls ({error}); they go over the bus",
                target=target,
                error=f.getErrorMessage(),
            ),
        )

    def where(self) -> dict[str, Any]:
        """Host and port clients connect to, and ``tls: true`` when they must use TLS."""
        if self.port is None:
            raise NoChannel(f"{self.rpc.target!r} has no direct channel here")
        address = self.port.getHost()
        host = address.host
        if host in ("0.0.0.0", "::", "") and self.advertise:
            host = self.advertise
        out: dict[str, Any] = {"host": host, "port": address.port}
        if self.tls is not None:
            out["tls"] = True
        return out

    def ticket(self, caller: str) -> dict[str, Any]:
        """The answer to ``rpc_ticket`` from *caller* (the identity the broker authenticated)."""
        where = self.where()
        return {**where, "ticket": self.tickets.issue(caller), "ttl": self.tickets.ttl}

    def _opened(self, channel: _ServerChannel) -> None:
        self._connections.add(channel)
        if self._watch is None and self.rpc.guard is not None and self.port is not None:
            self._watch = self.clock.callLater(self.watch_interval, self._check)

    def _check(self) -> None:
        """The fencing, on the channels: once the guard would stay silent, no channel of this term stays open.

        Over the bus, a server cut off from the broker hears nothing, and a
        request its caller gave up on is never delivered late.  A TCP
        connection has no such rule: bytes sent to a server that was cut off
        arrive when the network heals, perhaps after it hears the broker
        again and before it has handed the role over.  So the channels are
        cut as soon as the guard says no (the lease lapsed): what was still
        on its way meets a closed socket, and the clients ask the bus, which
        leads them to the current server.
        """
        self._watch = None
        if not self._connections or self.rpc.guard is None:
            return
        try:
            self.rpc.guard(TICKET_METHOD, {})
        except Unanswered as e:
            log.warn(
                "closing {n} direct channel(s) of {target}: {why}",
                n=len(self._connections),
                target=self.rpc.target,
                why=str(e),
            )
            for channel in list(self._connections):
                channel.cut()
            return
        except Exception:
            pass  # a refusal of that one request, not a lapse
        self._watch = self.clock.callLater(self.watch_interval, self._check)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def stop_beside(self, server_stopped: defer.Deferred) -> defer.Deferred:
        """Stop now, beside the bus's server stopping (*server_stopped*); fires once both are done.

        The services that serve a target on the bus and here stop both at
        once: the channel's calls at work are answered, calls arriving
        meanwhile are told to use the bus (where the next server answers).
        """
        closing = self.stop()
        return server_stopped.addCallback(lambda _: closing)

    def stop(self) -> defer.Deferred:
        """Stop listening; close every channel once its calls are answered; fires once all are gone."""
        self._stopped = True
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None
        port, self.port = self.port, None
        stopped = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        gone = defer.DeferredList([c.stop(self.close_grace) for c in list(self._connections)])
        return stopped.addCallback(lambda _: gone).addCallback(lambda _: None)


# -- the client --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """The answer to ``rpc_ticket``: where the server listens, whether with TLS, and the one-time ticket."""

    host: str
    port: int
    ticket: str
    tls: bool = False

    @classmethod
    def decode(cls, body: object) -> Ticket:
        if not isinstance(body, dict):
            raise messages.MalformedMessage(f"a ticket answer is an object, not {type(body).__name__}")
        port = body.get("port")
        if isinstance(port, bool) or not isinstance(port, int):
            raise messages.MalformedMessage("a ticket answer needs 'port' (an integer)")
        return cls(
            messages.require(body, "host", str), port, messages.require(body, "ticket", str), bool(body.get("tls"))
        )

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: ``connect(host, port, tls, protocol)`` -> Deferred firing once *protocol* is connected
Connector = Callable[[str, int, bool, Protocol], defer.Deferred]
#: ``bus(method, args, meta, timeout)`` -> the call's Deferred, over the bus
BusCall = Callable[[str, dict[str, Any], dict[str, Any], float], defer.Deferred]


def tcp_connector(reactor: Any) -> Connector:
    """Connects over TCP, with TLS checked against the network's CA when asked (as streams do)."""

    def connect(host: str, port: int, tls: bool, protocol: Protocol) -> defer.Deferred:
        h = host.replace(":", "\\:")
        endpoint: Any = clientFromString(reactor, f"tcp:host={h}:port={port}:timeout={CONNECT_TIMEOUT:g}")
        if tls:
            endpoint = wrapClientTLS(transfer._trust(True).client_creator(host), endpoint)
        return endpoint.connect(Factory.forProtocol(lambda: protocol))

    return connect


class _Call:
    """One call outstanding on a channel."""

    __slots__ = ("method", "args", "meta", "timeout", "deadline", "result")

    def __init__(self, method: str, args: dict[str, Any], meta: dict[str, Any], timeout: float, now: float) -> None:
        self.method = method
        self.args = args
        self.meta = meta
        self.timeout = timeout
        self.deadline = now + timeout
        self.result: defer.Deferred = defer.Deferred()


class _ClientChannel(Protocol):
    """The client's side of one channel: the ticket line, ``rpc.ready``, then calls matched to answers by id."""

    def __init__(self, route: DirectRoute, ticket: Ticket) -> None:
        self.route = route
        self.ticket = ticket
        self.decoder = FrameDecoder()
        #: fires with this channel once the server accepted the ticket
        self.ready: defer.Deferred = defer.Deferred()
        self.caller = ""
        self.pending: dict[str, _Call] = {}
        self.deadlines = Deadlines(route.clock, self._expired)
        #: takes no new calls; closes once the outstanding ones are answered
        self.retiring = False
        self.gone = False
        self._ids = itertools.count(1)
        self._ready_timer: IDelayedCall | None = None
        self._closed: list[defer.Deferred] = []

    def connectionMade(self) -> None:
        _tune(self)
        self._ready_timer = self.route.clock.callLater(CONNECT_TIMEOUT, self._not_ready)
        _tcp_of(self).write(self.ticket.ticket.encode("ascii") + b"\n")

    def _not_ready(self) -> None:
        self._ready_timer = None
        if not self.ready.called:
            self.ready.errback(NoChannel(f"no answer to the ticket from {self.ticket.address}"))
        _tcp_of(self).abortConnection()

    def request(self, method: str, args: dict[str, Any], meta: dict[str, Any], timeout: float) -> defer.Deferred:
        corr = str(next(self._ids))
        try:
            body = encode_frame(
                messages.encode("rpc.request", id=corr, method=method, args=args, meta={**meta, "timeout": timeout})
            )
        except (TypeError, ValueError, DirectError) as e:
            return defer.fail(RPCError(f"cannot send {method!r} to {self.route.target!r}: {e}", kind="EINVAL"))
        call = _Call(method, args, meta, timeout, self.route.clock.seconds())
        self.deadlines.add(corr, call.deadline)
        self.pending[corr] = call
        _tcp_of(self).write(body)
        return call.result

    def _expired(self, corr: str) -> None:
        call = self.pending.pop(corr, None)
        if call is None:
            return
        call.result.errback(RPCTimeout(self.route.target, call.method, call.timeout))
        self.route._doubt(self, f"{call.method} got no answer within {call.timeout:g}s")

    def dataReceived(self, data: bytes) -> None:
        try:
            bodies = self.decoder.feed(data)
        except DirectError as e:
            self.route._doubt(self, str(e))
            _tcp_of(self).abortConnection()
            return
        for payload in bodies:
            try:
                body = messages.decode(payload, "rpc.ready", "rpc.reply")
            except messages.MalformedMessage as e:
                self.route._doubt(self, f"malformed answer: {e}")
                _tcp_of(self).abortConnection()
                return
            if not self.ready.called:
                self._cancel_ready_timer()
                if body["type"] == "rpc.ready":
                    self.caller = str(body.get("caller", ""))
                    self.ready.callback(self)
                    continue
                given = body.get("error")
                error: dict[str, Any] = given if isinstance(given, dict) else {}
                self.ready.errback(NoChannel(f"{self.ticket.address} refused the ticket: {error.get('message')}"))
                _tcp_of(self).abortConnection()
                return
            self._reply(body)
        if self.retiring and not self.pending and self.transport is not None:
            _tcp_of(self).loseConnection()

    def _reply(self, body: dict[str, Any]) -> None:
        corr = str(body.get("id"))
        call = self.pending.pop(corr, None)
        if call is None:
            return  # answered after its timeout
        self.deadlines.discard(corr)
        if body.get("ok") is True:
            call.result.callback(body.get("result"))
            return
        given = body.get("error")
        error: dict[str, Any] = given if isinstance(given, dict) else {}
        kind = str(error.get("kind", "RPCError"))
        if kind == UNANSWERED:
            self.route._unanswered(self, call)
            return
        call.result.errback(rebuild_error(kind, str(error.get("message", "remote call failed"))))

    def retire(self) -> None:
        """Take no new calls; close once the outstanding ones are answered."""
        self.retiring = True
        if not self.pending and self.transport is not None and not self.gone:
            _tcp_of(self).loseConnection()

    def _cancel_ready_timer(self) -> None:
        if self._ready_timer is not None and self._ready_timer.active():
            self._ready_timer.cancel()
        self._ready_timer = None

    def closed(self) -> defer.Deferred:
        if self.gone:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._closed.append(d)
        return d

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.gone = True
        self._cancel_ready_timer()
        why = reason.getErrorMessage() if reason is not None else "closed"
        if self.ticket.tls and reason is not None:
            from oneos.security.tls import describe_tls_failure  # late: OpenSSL only for TLS channels

            why = describe_tls_failure(reason, "its") or why
        if not self.ready.called:
            self.ready.errback(NoChannel(f"{self.ticket.address} closed the connection ({why})"))
        pending, self.pending = self.pending, {}
        self.deadlines.stop()
        for call in pending.values():
            self.route._orphaned(call, why)
        self.route._lost(self, why)
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)


class DirectRoute:
    """A client's way to one target: its direct channel when one is open, else the bus (module docstring).

    *ticket* asks the target for a ticket over the bus; *bus* makes one call
    over the bus.  *retry_safe*: the methods that may be sent again over
    the bus when the channel breaks before answering them (they change
    nothing).  :meth:`call` answers None when the call should go over the
    bus now, and then starts opening a channel if it is time to.
    """

    IDLE, OPENING, OPEN, WAITING, CLOSED = "idle", "opening", "open", "waiting", "closed"

    def __init__(
        self,
        reactor: Any,
        target: str,
        ticket: Callable[[], defer.Deferred],
        bus: BusCall,
        *,
        retry_safe: Collection[str] = (),
        connect: Connector | None = None,
        clock: Any = None,
        open_after: int = OPEN_AFTER,
    ) -> None:
        self.reactor = reactor
        self.clock = clock or reactor
        self.target = target
        self._ticket = ticket
        self._bus = bus
        self.retry_safe = frozenset(retry_safe)
        self._connect = connect or tcp_connector(reactor)
        self.state = self.IDLE
        #: a first channel is asked for once this many calls went over the bus (a one-shot command's
        #: single call is not worth a ticket and a connection)
        self.open_after = open_after
        self._over_bus = 0
        self.channel: _ClientChannel | None = None
        #: channels still open (the current one, retiring ones finishing their calls)
        self._channels: set[_ClientChannel] = set()
        #: the connection attempt under way, cancelled by close()
        self._connecting: defer.Deferred | None = None
        self._delay = RETRY_MIN
        self._retry_at = 0.0
        #: what the last attempt said (for logs and status)
        self.last_error = ""
        #: counts, for tests and benchmarks: calls sent on a channel, and channels opened
        self.sent = 0
        self.opened = 0

    @property
    def server(self) -> str:
        """``host:port`` of the open channel ('' when none)."""
        return self.channel.ticket.address if self.channel is not None else ""

    @property
    def ready(self) -> bool:
        """Whether a call now would take the channel."""
        return self.state == self.OPEN and self.channel is not None and not self.channel.retiring

    def call(self, method: str, args: dict[str, Any], meta: dict[str, Any], timeout: float) -> defer.Deferred | None:
        """Send the call on the open channel; None: send it over the bus (a channel is opened if it is time)."""
        channel = self.channel
        if self.ready and channel is not None:
            self.sent += 1
            return channel.request(method, args, meta, timeout)
        self.kick()
        return None

    def kick(self) -> None:
        """A call went over the bus: start opening a channel if there is none and it is time to try."""
        self._over_bus += 1
        if self.state == self.IDLE:
            if self._over_bus >= self.open_after:
                self._open()
        elif self.state == self.WAITING and self.clock.seconds() >= self._retry_at:
            self._open()

    def _open(self) -> None:
        self.state = self.OPENING
        d = defer.maybeDeferred(self._ticket)
        d.addCallback(Ticket.decode)
        d.addCallback(self._dial)
        d.addCallbacks(self._opened, self._failed)

    def _dial(self, ticket: Ticket) -> defer.Deferred:
        if self.state == self.CLOSED:
            raise NoChannel("the client is closing")
        channel = _ClientChannel(self, ticket)
        self._channels.add(channel)

        def connected(_: Any) -> defer.Deferred:
            self._connecting = None
            return channel.ready

        def not_connected(failure: Failure) -> Failure:
            self._connecting = None
            self._channels.discard(channel)
            return failure

        self._connecting = self._connect(ticket.host, ticket.port, ticket.tls, channel)
        return self._connecting.addCallbacks(connected, not_connected)

    def _opened(self, channel: _ClientChannel) -> None:
        if self.state == self.CLOSED or channel.gone:
            if not channel.gone:
                channel.retire()
            return
        self.channel = channel
        self.state = self.OPEN
        self._delay = RETRY_MIN
        self.opened += 1
        self.last_error = ""
        log.info(
            "calls to {target} go straight to {address} (as {caller})",
            target=self.target,
            address=channel.ticket.address,
            caller=channel.caller,
        )

    def _failed(self, failure: Failure) -> None:
        if self.state == self.CLOSED:
            return
        error = failure.value
        if isinstance(error, RPCError) and error.kind in ("NoSuchMethod", "NotPermitted", "NoDirectChannel"):
            # this server has no channel to offer (an older one does not know rpc_ticket, and refuses it to a
            # client identity as a method not opened to clients): do not ask it again soon
            delay = NO_CHANNEL_RETRY
        else:
            delay = self._delay
            self._delay = min(RETRY_MAX, self._delay * 2)
        self._wait(delay, str(error) if isinstance(error, OneOSError) else failure.getErrorMessage())

    def _wait(self, delay: float, why: str) -> None:
        self.state = self.WAITING
        self._retry_at = self.clock.seconds() + delay
        self.last_error = why
        log.info(
            "calls to {target} go over the bus: {why} (a direct channel is tried again in {delay:g}s)",
            target=self.target,
            why=why,
            delay=delay,
        )

    def _drop(self, channel: _ClientChannel, why: str) -> None:
        """*channel* takes no more calls; the next call after a pause tries for a new one (over the bus)."""
        if channel is self.channel:
            self.channel = None
            if self.state == self.OPEN:
                delay = self._delay
                self._delay = min(RETRY_MAX, self._delay * 2)
                self._wait(delay, why)

    def _doubt(self, channel: _ClientChannel, why: str) -> None:
        self._drop(channel, why)
        channel.retire()

    def _unanswered(self, channel: _ClientChannel, call: _Call) -> None:
        """The server must not answer now (guard, stopping): the call was not done; ask the bus."""
        self._doubt(channel, "the server did not answer on its direct channel")
        self._resend(call)

    def _orphaned(self, call: _Call, why: str) -> None:
        """The connection broke before *call* was answered."""
        if call.method in self.retry_safe:
            self._resend(call)
        else:
            call.result.errback(DirectLost(self.target, call.method, why))

    def _resend(self, call: _Call) -> None:
        left = call.deadline - self.clock.seconds()
        if left <= 0:
            call.result.errback(RPCTimeout(self.target, call.method, call.timeout))
            return
        if self.state == self.CLOSED:
            call.result.errback(RPCError("caller shut down", kind="Cancelled"))
            return
        self._bus(call.method, call.args, call.meta, left).chainDeferred(call.result)

    def _lost(self, channel: _ClientChannel, why: str) -> None:
        self._channels.discard(channel)
        self._drop(channel, f"the connection closed ({why})")

    def close(self) -> defer.Deferred:
        """For good: fail the outstanding calls, close every channel; fires once they are closed."""
        self.state = self.CLOSED
        self.channel = None
        if self._connecting is not None:
            self._connecting.cancel()
        channels = list(self._channels)
        for channel in channels:
            pending, channel.pending = channel.pending, {}
            channel.deadlines.stop()
            for call in pending.values():
                call.result.errback(RPCError("caller shut down", kind="Cancelled"))
            if channel.transport is not None and not channel.gone:
                _tcp_of(channel).loseConnection()
        return defer.DeferredList([c.closed() for c in channels if c.transport is not None]).addCallback(lambda _: None)
