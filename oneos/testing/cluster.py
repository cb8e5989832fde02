"""Many real OneOS runtimes in one process, on an in-memory network and one fake clock.

Why: the election, the lease, failure detection and failover are timing
rules between processes.  Testing them with real processes costs seconds
of wall time per scenario and is never quite deterministic; testing them
with fakes of the membership tests the fakes.  Here every runtime is the
real :class:`oneos.runtime.service.RuntimeService` (membership, election,
kernel, scheduler, store, RPC, the MQTT client protocol unchanged), the
broker is :class:`oneos.testing.membroker.MemBroker` speaking real MQTT
bytes, and the only fakes are the sockets and the clock:

* :class:`SimClock` -- the one clock every host's reactor reads;
* :class:`Network` -- in-memory TCP between hosts: bytes arrive in order
  and in zero simulated time, a connection's end reaches the peer as a FIN
  or a reset, a dead host's sockets reset, and a partitioned host's bytes
  wait (both ways) until it is healed;
* :class:`NodeReactor` -- one per host (the broker's, each runtime's): a
  ``MemoryReactorClock`` whose time is the shared clock and whose
  ``connectTCP``/``listenTCP`` go through the network.  A host keeps track
  of its own timers, so killing it stops exactly that runtime;
* :class:`Cluster` -- builds configurations and runtimes, advances time
  (``run``, ``run_until``, ``settle``) and injects faults (``kill``,
  ``partition``/``heal``, ``restart``, ``restart_broker``).

Time only moves when the cluster is told to run, and it jumps from one
scheduled call to the next, delivering every byte in flight (and running
every zero-delay call) in between, so a failover that takes 2.5 simulated
seconds takes milliseconds, and two runs of one scenario do the same
thing.

What is not the production path, and why:

* the ``fs`` role's SQLite store runs its statements inline instead of on
  its worker thread (:class:`InlineFileSystemService`): a fake clock cannot
  wait for a real thread, and a thread left behind by a killed runtime
  would keep the test process alive;
* each runtime's ``started_at`` is the simulated time it was started, and
  its reconnect jitter comes from a seeded generator, so ranks and backoffs
  do not depend on the wall clock or on chance;
* the shell's front door is off unless asked for (``ssh=True``): it only
  needs the file system, and 200 front doors would each fetch the host key.

The psutil probes and the interpreter search of a starting runtime stay
real: about a millisecond per runtime at start and a quarter of one per
status it publishes, nothing beside the cost of 200 runtimes hearing each
other (see tests/cluster/test_scale.py).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import random
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IConnector, IDelayedCall, IListeningPort, ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from oneos.config import Config, load_config
from oneos.fs import service as fs_service
from oneos.fs.service import FileSystemService
from oneos.fs.sqlite_store import SQLiteStore
from oneos.fs.urls import parse_store_url
from oneos.runtime.host import HostSample
from oneos.runtime.service import RuntimeService
from oneos.testing.membroker import MemBroker

log = Logger()

#: Where simulated time starts: a plausible epoch time, since some code dates things with the reactor's clock.
START_TIME = 1_750_000_000.0
BROKER_IP = "10.0.0.1"
BROKER_PORT = 1883
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: TCP's first SYN retransmission timeout (Linux: 1 s, doubling): how soon a connection attempt made
#: while cut off gets through once the network is back
SYN_RTO = 1.0


class ClusterTimeout(AssertionError):
    """A condition did not hold within the simulated time allowed."""


# -- the clock ------------------------------------------------------------------------------------


class SimClock(Clock):
    """The one fake clock of a simulated network.

    A heap instead of ``Clock``'s list sorted on every call: a cluster of
    200 runtimes has thousands of pending timers.  A cancelled call stays in
    the heap and is skipped when it comes up.  An exception from a timed
    call is logged and kept in :attr:`errors` (a real reactor logs it and
    goes on; a simulation of many hosts must not stop for one).
    """

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self.rightNow = start
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._seq = itertools.count()
        #: failures raised by timed calls and by protocols fed by the network
        self.errors: list[Failure] = []

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> DelayedCall:
        call = DelayedCall(self.rightNow + delay, callable, args, kw, _skip_later, self._reset, self.seconds)
        heapq.heappush(self._heap, (call.time, next(self._seq), call))
        return call

    def _reset(self, call: DelayedCall) -> None:
        """A call moved earlier (``reset``): queue it at its new time; the old entry is skipped."""
        heapq.heappush(self._heap, (call.getTime(), next(self._seq), call))

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return list({id(c): c for _, _, c in self._heap if c.active()}.values())

    def next_time(self) -> float | None:
        """When the next pending call is due (None: nothing is pending)."""
        heap = self._heap
        while heap:
            when, _, call = heap[0]
            if call.cancelled or call.called:
                heapq.heappop(heap)
            elif call.getTime() != when:
                heapq.heappop(heap)
                if call.getTime() > when:  # delayed (``delay``/``reset`` later): queue it again, later
                    call.activate_delay()
                    heapq.heappush(heap, (call.time, next(self._seq), call))
            else:
                return when
        return None

    def advance(self, amount: float) -> None:
        self.advance_to(self.rightNow + amount)

    def advance_to(self, when: float) -> int:
        """Move time to *when* (never back) and run every call due by then, in order; returns how many ran."""
        self.rightNow = max(self.rightNow, when)
        ran = 0
        while (due := self.next_time()) is not None and due <= self.rightNow:
            _, _, call = heapq.heappop(self._heap)
            call.called = 1
            ran += 1
            try:
                call.func(*call.args, **call.kw)
            except Exception:
                self._failed("a timed call failed")
        return ran

    def _failed(self, what: str) -> None:
        failure = Failure()
        self.errors.append(failure)
        log.failure(what, failure)


def _describe_call(call: IDelayedCall) -> str:
    """A pending call as a line: what it calls and when (a cancelled call forgets what it called)."""
    func = getattr(call, "func", None)
    name = getattr(func, "__qualname__", repr(func))
    return f"{name} in {call.getTime() - call.seconds():g}s" if hasattr(call, "seconds") else name


def _skip_later(call: DelayedCall) -> None:
    """A cancelled call is left in the heap: ``next_time`` drops it when it comes up."""


# -- the network ---------------------------------------------------------------------------------

_FIN, _RST = "FIN", "RST"


class _Pipe:
    """One direction of a connection: what *src* wrote and *dst* has not received yet."""

    __slots__ = ("src", "dst", "items")

    def __init__(self, src: _Endpoint, dst: _Endpoint) -> None:
        self.src = src
        self.dst = dst
        self.items: deque[bytes | str] = deque()


@implementer(ITCPTransport)
class _Endpoint:
    """One side of an in-memory TCP connection: the transport its protocol writes to."""

    def __init__(self, network: Network, reactor: NodeReactor, host: IPv4Address, peer: IPv4Address) -> None:
        self.network = network
        self.reactor = reactor
        self.host = host
        self.peer = peer
        self.protocol: Any = None
        self.out: _Pipe | None = None  # set by Network._attempt
        self.connector: _Connector | None = None
        self.producer: Any = None
        self.connected = 1
        self.disconnecting = False
        self.disconnected = 0
        self.closed = False
        #: pauseProducing(): the protocol reads nothing until resumeProducing()
        self.reading = True
        self.nodelay = False
        #: this side's own close, due in a moment (loseConnection, abortConnection)
        self._closing: IDelayedCall | None = None

    # -- ITransport ---------------------------------------------------------
    def write(self, data: bytes) -> None:
        if data and not self.closed and not self.disconnecting:
            self.network._send(self, bytes(data))

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close after what was written (the peer sees a FIN); this side's protocol hears it in a moment."""
        if not self.closed and not self.disconnecting:
            self.disconnecting = True
            self.network._send(self, _FIN)
            self._closing = self.reactor.callLater(0, self._close, error.ConnectionDone("closed cleanly"))

    def abortConnection(self) -> None:
        """Close now (the peer sees a reset; this side's protocol hears it in a moment)."""
        if not self.closed:
            self.disconnecting = True
            self.network._send(self, _RST)
            self._closing = self.reactor.callLater(0, self._close, error.ConnectionAborted("aborted"))

    def loseWriteConnection(self) -> None:
        self.loseConnection()

    def getPeer(self) -> IPv4Address:
        return self.peer

    def getHost(self) -> IPv4Address:
        return self.host

    def getTcpNoDelay(self) -> bool:
        return self.nodelay

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return False

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    # -- producers ----------------------------------------------------------
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        # The network buffers without limit, so a streaming producer is never paused; pull producers
        # (streaming=False) are not supported: nothing in OneOS uses one on a socket.
        if not streaming:
            raise NotImplementedError("the simulated network supports streaming producers only")
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True  # what waits for this side is still queued: the next pump delivers it

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- the end ------------------------------------------------------------
    def _close(self, reason: Exception) -> None:
        if self.closed:
            return
        if self._closing is not None and self._closing.active():
            self._closing.cancel()  # the peer's FIN or reset came first
        self.closed = True
        self.connected = 0
        self.disconnected = 1
        self.reactor.endpoints.pop(self, None)
        if not self.reactor.alive:
            return
        producer, self.producer = self.producer, None
        with self.network._guard("a protocol failed as its connection closed"):
            if producer is not None:
                producer.stopProducing()
            self.protocol.connectionLost(Failure(reason))
        if self.connector is not None:
            with self.network._guard("a client factory failed as its connection closed"):
                self.connector._lost(reason)

    def _crash(self) -> None:
        """The host died: its kernel resets the connection; its protocol hears nothing."""
        if not self.closed:
            self.closed = True
            self.connected = 0
            self.network._send(self, _RST)


@implementer(IListeningPort)
class _Port:
    """A listening port of one host."""

    def __init__(self, reactor: NodeReactor, port: int, factory: Any, interface: str) -> None:
        self.reactor = reactor
        self.port = port
        self.factory = factory
        self.interface = interface

    def startListening(self) -> None:
        self.factory.doStart()

    def stopListening(self) -> defer.Deferred:
        if self.reactor.ports.get(self.port) is self:
            del self.reactor.ports[self.port]
            self.factory.doStop()
        return defer.succeed(None)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", self.interface or "0.0.0.0", self.port)


@implementer(IConnector)
class _Connector:
    """An outgoing connection attempt (``connectTCP``'s answer)."""

    def __init__(self, reactor: NodeReactor, host: str, port: int, factory: Any, timeout: float) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.factory = factory
        self.timeout = timeout
        self.state = "connecting"
        self.transport: _Endpoint | None = None

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, self.port)

    def connect(self) -> None:
        if self.state == "disconnected":
            self.state = "connecting"
            self.factory.doStart()
            self.factory.startedConnecting(self)
            self.reactor.network._connect(self)

    def stopConnecting(self) -> None:
        if self.state == "connecting":
            self._failed(error.UserError())

    def disconnect(self) -> None:
        if self.state == "connecting":
            self.stopConnecting()
        elif self.transport is not None:
            self.transport.loseConnection()

    def _failed(self, reason: Exception) -> None:
        if self.state != "connecting":
            return
        self.state = "disconnected"
        self.factory.clientConnectionFailed(self, Failure(reason))
        self.factory.doStop()

    def _lost(self, reason: Exception) -> None:
        self.state = "disconnected"
        self.transport = None
        self.factory.clientConnectionLost(self, Failure(reason))
        self.factory.doStop()


class Network:
    """In-memory TCP between the hosts of a simulation.

    Bytes written are queued on their connection and delivered by
    :meth:`pump`, in order, coalesced as TCP may coalesce them.  A host in
    :attr:`blocked` (partitioned) neither sends nor receives: what it and
    its peers write waits until it is healed; a connection attempt to or
    from it resends its SYN as TCP does (1 s, 2 s, 4 s...) and fails at the
    attempt's timeout if none got through.
    """

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        #: IP address -> the host's reactor (the current incarnation)
        self.hosts: dict[str, NodeReactor] = {}
        #: IP addresses of partitioned hosts
        self.blocked: set[str] = set()
        #: pipes with something to deliver, in the order they got it
        self._pending: dict[_Pipe, None] = {}
        #: bytes delivered so far (to tell where a simulation's time goes)
        self.delivered = 0

    def add_host(self, ip: str, name: str = "") -> NodeReactor:
        """A new host (or a new incarnation of one: its old reactor is forgotten, dead or not)."""
        reactor = NodeReactor(self, ip, name or ip)
        self.hosts[ip] = reactor
        return reactor

    def partition(self, ip: str) -> None:
        self.blocked.add(ip)

    def heal(self, ip: str) -> None:
        self.blocked.discard(ip)

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Run a protocol's code as a reactor would: an exception is logged (and kept), never raised."""
        try:
            yield
        except Exception:
            self.clock._failed(what)

    # -- moving bytes --------------------------------------------------------
    def _send(self, src: _Endpoint, item: bytes | str) -> None:
        pipe = src.out
        if pipe is not None:
            pipe.items.append(item)
            self._pending[pipe] = None

    def _blocked(self, pipe: _Pipe) -> bool:
        return pipe.src.reactor.ip in self.blocked or pipe.dst.reactor.ip in self.blocked or not pipe.dst.reading

    def pump(self) -> bool:
        """Deliver everything deliverable now; True if anything moved."""
        moved = False
        while self._pending:
            progressed = False
            for pipe in list(self._pending):
                if self._blocked(pipe):
                    continue
                del self._pending[pipe]
                self._deliver(pipe)
                moved = progressed = True
            if not progressed:
                break
        return moved

    def _deliver(self, pipe: _Pipe) -> None:
        dst, items = pipe.dst, pipe.items
        while items and dst.reading:
            item = items.popleft()
            if isinstance(item, str):
                if not dst.closed:
                    dst._close(error.ConnectionDone("closed") if item == _FIN else error.ConnectionLost("reset"))
                continue
            chunks = [item]
            while items and isinstance(items[0], bytes):
                chunks.append(items.popleft())  # type: ignore[arg-type]  # just checked: bytes
            data = b"".join(chunks)
            if dst.closed or dst.disconnecting:
                # bytes for a closed socket: its kernel answers with a reset
                if not pipe.src.closed and not pipe.src.disconnecting:
                    pipe.src._close(error.ConnectionLost("reset by peer"))
                continue
            self.delivered += len(data)
            with self._guard("a protocol failed on data received"):
                try:
                    dst.protocol.dataReceived(data)
                except Exception:
                    dst.abortConnection()  # as a real reactor does with a protocol that raised
                    raise
        if items:
            self._pending[pipe] = None  # the reader paused: the rest waits

    # -- connecting ------------------------------------------------------------
    def _listen(self, reactor: NodeReactor, port: int, factory: Any, interface: str) -> _Port:
        if port == 0:
            port = reactor._ephemeral()
        if port in reactor.ports:
            raise error.CannotListenError(interface, port, OSError("address already in use"))
        listening = _Port(reactor, port, factory, interface)
        reactor.ports[port] = listening
        listening.startListening()
        return listening

    def _connect(self, connector: _Connector) -> None:
        connector.reactor.callLater(0, self._attempt, connector)

    def _attempt(self, connector: _Connector, started: float | None = None, rto: float = SYN_RTO) -> None:
        if connector.state != "connecting":
            return
        src = connector.reactor
        now = self.clock.seconds()
        started = now if started is None else started
        dst = src if connector.host in LOOPBACK else self.hosts.get(connector.host)
        if dst is None or src.ip in self.blocked or dst.ip in self.blocked:
            # the SYN is lost: TCP sends it again after 1 s, 2 s, 4 s... until the attempt's timeout
            deadline = started + connector.timeout
            if now + rto < deadline:
                src.callLater(rto, self._attempt, connector, started, 2 * rto)
            else:
                src.callLater(max(0.0, deadline - now), connector._failed, error.TCPTimedOutError())
            return
        listening = dst.ports.get(connector.port) if dst.alive else None
        if listening is None:
            connector._failed(error.ConnectionRefusedError(f"{connector.host}:{connector.port}"))
            return
        dst_ip = "127.0.0.1" if dst is src and connector.host in LOOPBACK else dst.ip
        src_ip = "127.0.0.1" if dst_ip == "127.0.0.1" else src.ip
        client_addr = IPv4Address("TCP", src_ip, src._ephemeral())
        server_addr = IPv4Address("TCP", dst_ip, connector.port)
        server_proto = listening.factory.buildProtocol(client_addr)
        if server_proto is None:
            connector._failed(error.ConnectionRefusedError("the server refused the connection"))
            return
        client_proto = connector.factory.buildProtocol(server_addr)
        if client_proto is None:
            return  # the factory said no (an endpoint's factory fails its Deferred itself)
        client = _Endpoint(self, src, client_addr, server_addr)
        server = _Endpoint(self, dst, server_addr, client_addr)
        client.out, server.out = _Pipe(client, server), _Pipe(server, client)
        client.protocol, server.protocol = client_proto, server_proto
        client.connector = connector
        src.endpoints[client] = None
        dst.endpoints[server] = None
        connector.state = "connected"
        connector.transport = client
        with self._guard("a server protocol failed on connection"):
            server_proto.makeConnection(server)
        with self._guard("a client protocol failed on connection"):
            client_proto.makeConnection(client)


class NodeReactor(MemoryReactorClock):
    """One host's reactor: the shared clock's time, the network's sockets.

    Every timer it hands out is remembered, so :meth:`crash` can stop them
    all: a killed runtime's timers never fire again.  ``callFromThread`` is
    a zero-delay call (nothing here runs in threads).
    """

    def __init__(self, network: Network, ip: str, name: str) -> None:
        super().__init__()
        self.network = network
        self.ip = ip
        self.name = name
        self.alive = True
        self.ports: dict[int, _Port] = {}
        self.endpoints: dict[_Endpoint, None] = {}
        self._timers: weakref.WeakSet[DelayedCall] = weakref.WeakSet()
        self._next_port = 40000

    def __repr__(self) -> str:
        return f"<NodeReactor {self.name} {self.ip}{'' if self.alive else ' dead'}>"

    def _ephemeral(self) -> int:
        self._next_port += 1
        return self._next_port

    # -- time: the network's clock ------------------------------------------
    def seconds(self) -> float:
        return self.network.clock.seconds()

    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> DelayedCall:
        if not self.alive:
            # a dead host runs nothing: a call that stays pending for ever (cancelling it is harmless)
            return DelayedCall(self.seconds() + delay, callable, args, kw, _skip_later, _skip_later, self.seconds)
        call = self.network.clock.callLater(delay, callable, *args, **kw)
        self._timers.add(call)
        return call

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return [c for c in self._timers if c.active()]

    def advance(self, amount: float) -> None:
        raise RuntimeError("one host's clock cannot move alone: advance the cluster (Cluster.run)")

    def callFromThread(self, f: Callable[..., object], *args: object, **kw: object) -> None:
        self.callLater(0, f, *args, **kw)

    # -- sockets: the network's ------------------------------------------------
    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> _Port:
        self.tcpServers.append((port, factory, backlog, interface))
        return self.network._listen(self, port, factory, interface)

    def connectTCP(
        self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: str | None = None
    ) -> _Connector:
        self.tcpClients.append((host, port, factory, int(timeout), bindAddress))
        connector = _Connector(self, host, port, factory, timeout)
        self.connectors.append(connector)
        factory.doStart()
        factory.startedConnecting(connector)
        self.network._connect(connector)
        return connector

    # -- death ---------------------------------------------------------------------
    def crash(self) -> None:
        """The host's process dies: its timers stop, its connections reset, its ports close. Nothing it runs
        is told."""
        self.alive = False
        for call in list(self._timers):
            if call.active():
                call.cancel()
        for endpoint in list(self.endpoints):
            endpoint._crash()
        self.endpoints.clear()
        self.ports.clear()


# -- the file system without threads ---------------------------------------------------------------


_R = TypeVar("_R")
_P = ParamSpec("_P")


class _InlinePool(ThreadPool):
    """A "thread pool" that runs each job at once, on the reactor's thread (the only one here)."""

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False
        self.joined = True

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, _R], object] | None,
        func: Callable[_P, _R],
        *args: _P.args,
        **kw: _P.kwargs,
    ) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            if onResult is not None:
                onResult(False, cast(_R, Failure()))  # as ThreadPool does: the failure in the result's place
            return
        if onResult is not None:
            onResult(True, result)


class InlineSQLiteStore(SQLiteStore):
    """The real SQLite store, with its statements run inline instead of on its worker thread."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._pool = _InlinePool(minthreads=0, maxthreads=1, name=f"inline:{self.target}")


#: the opener FileSystemService uses; InlineFileSystemService puts it back after each swap
_real_open_store = fs_service.open_store


def _open_inline(url: str, reactor: Any = None, **options: Any) -> defer.Deferred:
    """``open_store`` for SQLite URLs, with an :class:`InlineSQLiteStore` (other kinds: the real one)."""
    parsed = parse_store_url(url)
    if parsed.scheme != "sqlite":
        return _real_open_store(url, reactor, **options)
    for network_only in ("connect_timeout", "op_timeout"):  # open_store's MongoDB options
        options.pop(network_only, None)
    return InlineSQLiteStore.open(parsed, reactor, **options)


class InlineFileSystemService(FileSystemService):
    """The real file-system service, whose SQLite store runs without a thread.

    ``FileSystemService`` opens its store with the module-level
    ``open_store`` and has no seam to give it another opener; this
    subclass swaps that name for the duration of the (synchronous) call
    that opens the store, so everything else, retries included, is the
    production code.  (A ``FileSystemService(opener=...)`` parameter would
    make this unnecessary.)
    """

    def _open(self) -> None:
        assert fs_service.open_store is _real_open_store, "open_store already swapped (nested _open?)"
        fs_service.open_store = _open_inline  # type: ignore[assignment]  # same call signature
        try:
            super()._open()
        finally:
            fs_service.open_store = _real_open_store

    @classmethod
    def twin(cls, real: Any) -> InlineFileSystemService:
        """An inline service configured exactly as *real* (built by the runtime's own ``fs`` factory)."""
        assert isinstance(real, FileSystemService), f"the fs role's factory built {real!r}"
        return cls(
            real.url,
            real.client,
            real.transfer,
            real.reactor,
            real.retry_max,
            real.server.guard,
            upload_timeout=real.upload_timeout,
            gc_interval=real.gc_interval,
            stale_upload=real.stale_upload,
            open_options=real.open_options,
        )


# -- the cluster ----------------------------------------------------------------------------------


@dataclass
class SimRuntime:
    """One runtime of a cluster: its configuration, its host and the real service."""

    id: str
    ip: str
    config: Config
    reactor: NodeReactor
    service: RuntimeService
    #: after a clean stop (:meth:`Cluster.stop`): what the stopped tree left pending (should be nothing)
    exited: dict[str, list[Any]] | None = None

    @property
    def alive(self) -> bool:
        """Its process runs (it may still be partitioned)."""
        return self.reactor.alive

    @property
    def joined(self) -> bool:
        """It finished starting: it announced itself and runs its election."""
        return self.alive and self.service.ready.called

    @property
    def leading(self) -> bool:
        """It runs the kernel services now."""
        return self.alive and self.service.election.leading

    @property
    def epoch(self) -> int:
        """The term it leads (0 when it does not)."""
        return self.service.membership.epoch

    @property
    def max_epoch(self) -> int:
        """The newest term it has seen."""
        return self.service.membership.max_epoch

    def lease_valid(self) -> bool:
        return self.service.election.lease_valid()

    def leader_seen(self) -> str | None:
        """The leader by this runtime's view."""
        return self.service.election.leader_id

    def live_ids(self) -> list[str]:
        """The runtimes this one sees alive."""
        return [s.id for s in self.service.membership.live()]

    def __repr__(self) -> str:
        state = "leading" if self.leading else "joined" if self.joined else "alive" if self.alive else "dead"
        return f"<SimRuntime {self.id} {self.ip} {state} epoch={self.epoch}/{self.max_epoch}>"


class SteadyStats:
    """A host's CPU and memory figures that never move: a status then changes only with what the
    runtime does, so a scenario publishes the same messages every run (psutil's figures of the
    machine running the simulation would not)."""

    def sample(self) -> HostSample:
        return {"cpu_percent": 5.0, "memory_used_mb": 1024.0, "memory_total_mb": 4096.0, "rss_mb": 64.0}


class Cluster:
    """A broker and any number of real runtimes on one in-memory network and one fake clock.

    *root* holds one home directory per runtime (``root/<id>``) and, with
    *shared_store*, the network's one SQLite file, configured on every
    runtime as ``oneos grid`` does, so the file tree follows the leader.
    """

    def __init__(
        self,
        root: Path,
        *,
        keepalive: int = 2,
        stats_interval: float = 2.0,
        settle: float = 0.5,
        shared_store: bool = True,
        ssh: bool = False,
        start_time: float = START_TIME,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.keepalive = keepalive
        self.stats_interval = stats_interval
        self.settle_time = settle
        self.store = f"sqlite:///{self.root / 'store.sqlite3'}" if shared_store else ""
        self.ssh = ssh
        self.seed = seed
        self.start_time = start_time
        self.clock = SimClock(start_time)
        #: (runtime id, error) for each runtime that gave up (its on_fatal was called)
        self.fatal: list[tuple[str, BaseException]] = []
        self.network = Network(self.clock)
        self.runtimes: dict[str, SimRuntime] = {}
        self._hosts = itertools.count(1)
        self.broker_reactor = self.network.add_host(BROKER_IP, "broker")
        self.broker = MemBroker(self.broker_reactor)
        self.broker_reactor.listenTCP(BROKER_PORT, self.broker.factory(), interface=BROKER_IP)

    # -- time --------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.clock.seconds()

    @property
    def errors(self) -> list[Failure]:
        """Exceptions raised by timed calls and protocols so far (a real reactor would have logged them)."""
        return self.clock.errors

    def settle(self, max_rounds: int = 100_000) -> None:
        """Deliver every byte in flight and run every call due now, until nothing moves (no time passes)."""
        for _ in range(max_rounds):
            moved = self.network.pump()
            ran = self.clock.advance_to(self.clock.seconds())
            if not moved and not ran:
                return
        raise RuntimeError(f"the cluster did not settle in {max_rounds} rounds: zero-delay work keeps coming")

    def run(self, seconds: float) -> None:
        """Let *seconds* of simulated time pass."""
        self._advance(self.now + seconds, None)

    def run_until(self, condition: Callable[[], bool], timeout: float, what: str = "the condition") -> float:
        """Run until *condition* holds; return the simulated seconds that took.

        The condition is checked after every instant at which something
        happened, so the time returned is exact.  Raises
        :class:`ClusterTimeout` (with a picture of the cluster) if it does
        not hold within *timeout* simulated seconds.
        """
        start = self.now
        if self._advance(start + timeout, condition):
            return self.now - start
        raise ClusterTimeout(f"{what}: not within {timeout:g}s of simulated time\n{self.describe()}")

    def _advance(self, deadline: float, condition: Callable[[], bool] | None) -> bool:
        self.settle()
        if condition is not None and condition():
            return True
        while (due := self.clock.next_time()) is not None and due <= deadline:
            self.clock.advance_to(due)
            self.settle()
            if condition is not None and condition():
                return True
        self.clock.advance_to(deadline)
        self.settle()
        return condition is not None and condition()

    # -- runtimes ------------------------------------------------------------------------------
    def config_for(self, rid: str, ip: str, **settings: Any) -> Config:
        """A validated configuration for runtime *rid* on host *ip*; *settings* override config.json fields."""
        listen = {"pipe": f"tcp:0:interface={ip}", "ssh": f"tcp:2222:interface={ip}" if self.ssh else ""}
        listen.update({"telnet": "", "desktop": ""})
        raw: dict[str, Any] = {
            "id": rid,
            "pubsub": f"mqtt://{BROKER_IP}:{BROKER_PORT}",
            "broker": "external",
            "store": self.store,
            "address": ip,
            "keepalive": self.keepalive,
            "stats_interval": self.stats_interval,
            "listen": listen,
        }
        raw.update(settings)
        home = self.root / rid
        home.mkdir(parents=True, exist_ok=True)
        return load_config(home, raw)

    def add_runtime(self, rid: str | None = None, *, start: bool = True, **settings: Any) -> SimRuntime:
        """A new runtime on a new host (started at once unless *start* is false)."""
        n = next(self._hosts)
        rid = rid or f"rt-{n:03d}"
        if rid in self.runtimes:
            raise ValueError(f"runtime {rid} already exists (restart it instead)")
        ip = f"10.1.{n // 250}.{n % 250 + 1}"
        runtime = self._build(rid, ip, self.config_for(rid, ip, **settings))
        if start:
            self.start(rid)
        return runtime

    def add_runtimes(self, n: int, *, start: bool = True, **settings: Any) -> list[SimRuntime]:
        return [self.add_runtime(start=start, **settings) for _ in range(n)]

    def _build(self, rid: str, ip: str, config: Config) -> SimRuntime:
        reactor = self.network.add_host(ip, rid)
        svc = RuntimeService(
            config, reactor, on_fatal=self._fatal_for(rid), settle=self.settle_time, stats=SteadyStats()
        )
        # the simulated clock says when it started, so ranks (earliest first, then id) never depend on wall time
        svc.started_at = self.clock.seconds()
        # reconnect jitter from a seeded generator: a broker restart plays out the same way every run
        svc.client._rng = random.Random(f"{self.seed}:{rid}:{self.clock.seconds()}")
        real_fs = svc.fs_role.factories["fs"]
        svc.fs_role.factories["fs"] = lambda: InlineFileSystemService.twin(real_fs())
        runtime = SimRuntime(rid, ip, config, reactor, svc)
        self.runtimes[rid] = runtime
        return runtime

    def _fatal_for(self, rid: str) -> Callable[[BaseException], None]:
        def fatal(error: BaseException) -> None:
            log.critical("runtime {id} cannot go on: {error}", id=rid, error=error)
            self.fatal.append((rid, error))

        return fatal

    def __getitem__(self, rid: str) -> SimRuntime:
        return self.runtimes[rid]

    def start(self, rid: str) -> None:
        self.runtimes[rid].service.startService()

    # -- faults ---------------------------------------------------------------------------------
    def kill(self, rid: str, *, silently: bool = False) -> None:
        """SIGKILL: the runtime's timers stop and its connections reset, so the broker publishes its will.

        *silently*: the machine vanished instead (power cut, cable pulled): nothing more leaves it, not
        even the reset, so the broker only notices by its keep-alive.  The host stays cut off until
        :meth:`heal`.
        """
        runtime = self.runtimes[rid]
        if silently:
            self.network.partition(runtime.ip)
        runtime.reactor.crash()

    def partition(self, rid: str) -> None:
        """Cut the runtime off: nothing it sends arrives and nothing reaches it, until :meth:`heal`."""
        self.network.partition(self.runtimes[rid].ip)

    def heal(self, rid: str) -> None:
        self.network.heal(self.runtimes[rid].ip)

    def stop(self, rid: str) -> defer.Deferred:
        """A clean stop (SIGTERM): the runtime says it left and disconnects; then its process exits.

        The Deferred fires when the service tree has stopped (run the cluster for that to happen).
        Whatever the stop left behind (a timer, a socket) is then found in the host's reactor:
        ``getDelayedCalls()``, ``endpoints``, ``ports``, before the exit clears them.
        """
        runtime = self.runtimes[rid]
        stopped = defer.maybeDeferred(runtime.service.stopService)

        def exit(result: Any) -> Any:
            runtime.exited = {
                "timers": [_describe_call(c) for c in runtime.reactor.getDelayedCalls()],
                "connections": list(runtime.reactor.endpoints),
                "ports": list(runtime.reactor.ports.values()),
            }
            runtime.reactor.crash()
            return result

        return stopped.addBoth(exit)

    def restart(self, rid: str) -> SimRuntime:
        """Kill the runtime if it runs, and start a new process with the same id, home and address."""
        old = self.runtimes[rid]
        if old.alive:
            old.reactor.crash()
        runtime = self._build(rid, old.ip, old.config)
        self.start(rid)
        return runtime

    def restart_broker(self, down: float = 0.0, keep_retained: bool = False) -> None:
        """The broker process dies (every connection resets, no will is published) and starts again.

        *down*: simulated seconds before the new one listens.  *keep_retained*:
        the new broker starts with the old one's retained messages (a broker
        that persists them); by default it starts empty, as ours does.
        """
        old = self.broker
        self.broker_reactor.crash()
        self.broker_reactor = self.network.add_host(BROKER_IP, "broker")
        self.broker = MemBroker(self.broker_reactor)
        if keep_retained:
            self.broker.retained = dict(old.retained)
        factory = self.broker.factory()
        self.broker_reactor.callLater(down, self.broker_reactor.listenTCP, BROKER_PORT, factory, interface=BROKER_IP)

    def close(self) -> None:
        """Stop every host at once (no goodbyes): nothing of this cluster runs afterwards."""
        for runtime in self.runtimes.values():
            if runtime.alive:
                runtime.reactor.crash()
        self.broker_reactor.crash()

    # -- looking at it ----------------------------------------------------------------------------
    def alive(self) -> list[SimRuntime]:
        return [r for r in self.runtimes.values() if r.alive]

    def leaders(self) -> list[SimRuntime]:
        """The runtimes running the kernel services now."""
        return [r for r in self.runtimes.values() if r.leading]

    def converged(self, among: Sequence[SimRuntime] | None = None) -> bool:
        """Exactly one leader in the whole cluster, one of *among* (default: every live runtime), and every
        runtime of *among* is connected, in step with the broker (its view is not a stale one from before a
        disconnection), sees that leader, and sees exactly *among* alive."""
        group = list(among) if among is not None else self.alive()
        leaders = [r for r in group if r.leading]
        if len(leaders) != 1 or len(self.leaders()) != 1:
            return False
        leader = leaders[0].id
        for r in group:
            if not (r.joined and r.service.client.connected and r.service.membership.synced):
                return False
            if r.leader_seen() != leader:
                return False
        expected = sorted(r.id for r in group)
        return all(r.live_ids() == expected for r in group)

    def describe(self) -> str:
        """A picture of the cluster, for failure messages."""
        lines = [f"t={self.now - self.start_time:.3f}s broker: {len(self.broker.sessions)} sessions"]
        for r in self.runtimes.values():
            cut = " partitioned" if r.ip in self.network.blocked else ""
            if not r.alive:
                lines.append(f"  {r.id}: dead")
                continue
            lines.append(
                f"  {r.id}:{cut} {'LEADER ' if r.leading else ''}sees leader={r.leader_seen()} "
                f"epoch={r.epoch}/{r.max_epoch} lease={'ok' if r.lease_valid() else 'lapsed'} "
                f"connected={r.service.client.connected} live={len(r.live_ids())}"
            )
        return "\n".join(lines)
