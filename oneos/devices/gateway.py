"""The device gateway: how a program a runtime runs opens a device of the grid by name.

A program cannot speak the runtime's RPC (it has no bus identity and may
not even be Python with Twisted), so each runtime runs this small service,
listening on loopback only (default ``tcp:0:interface=127.0.0.1``, an
ephemeral port).  When the agent manager starts a program it asks
:meth:`DeviceGateway.grant` for the program's environment:

* ``ONEOS_DEVICES=127.0.0.1:PORT``: where the gateway listens;
* ``ONEOS_AGENT_TOKEN``: a random secret of this program alone (revoked when
  it ends, :meth:`DeviceGateway.revoke`); the gateway maps it to the agent
  and to its OneOS owner;
* ``PYTHONPATH``: a folder holding ``oneos_device.py``, the stdlib-only
  client (``oneos/devices/program/``; copied to a private temporary folder
  readable by every account when the installed one is not, since programs
  may run as ``nobody``).

One connection is one device stream.  The program sends one line, ``OPEN
<token> <r|w> <path> <units>``; nothing else from the socket is trusted
until the token is known.  The gateway resolves *path* (``/dev/RT/NAME``,
``RT/NAME``, or a bare ``NAME`` looked up in the live runtimes' statuses:
unknown is ``ENOENT``, on several runtimes ``ENOTUNIQ``), asks the device's
runtime over the devices RPC *as the program's owner* (so the device's owner
and mode apply), answers ``OK RT/NAME`` or ``ERR KIND message``, and relays:

* reading: ``DevicesClient.read`` then :func:`oneos.transfer.receive` into a
  sink that writes ``D`` frames to the program's socket; the gateway is a
  push producer of that socket, so a program that reads slowly makes the
  sink wait, the transfer stop reading, and the device's runtime hold or
  drop units as the device's ``slow`` setting says.  Its end is an ``E``
  frame, a failure an ``X`` frame with the kind and reason;
* writing: ``DevicesClient.write`` then :func:`oneos.transfer.send` from a
  source fed by the program's bytes (raw); the socket is paused while more
  than :data:`HIGH_WATER` bytes wait.  The program's half-close ends the
  stream; the device's verdict comes back as one ``E`` or ``X`` frame.  An
  error while the program still writes is sent and the socket closed
  *lingering* (half-close, drop what arrives, abort after ``linger``), so a
  RST cannot destroy the reason (as in oneos/transfer.py).

Frames are those of :mod:`oneos.transfer` (``kind | length | payload``), so
a stream that breaks never looks like a clean end of file.  A request line
that is malformed, too long or too slow is logged and dropped (``ERR
EPROTO`` then close); an unknown token is refused (``ERR EACCES``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oneos import transfer
from oneos.devices.client import DevicesClient
from oneos.devices.info import parse_device_address
from oneos.errors import RPCTimeout, describe

log = Logger()

#: where the gateway listens unless told otherwise: loopback, an ephemeral port
DEFAULT_ENDPOINT = "tcp:0:interface=127.0.0.1"
#: the environment variables a program gets (oneos_device.py reads them)
ENV_ADDRESS = "ONEOS_DEVICES"
ENV_TOKEN = "ONEOS_AGENT_TOKEN"
#: the folder shipped with the package that holds oneos_device.py
PROGRAM_DIR = Path(__file__).resolve().parent / "program"
PROGRAM_MODULE = "oneos_device.py"
#: longest request line accepted (a token, a mode, a path of at most ~140 characters, a count)
MAX_REQUEST = 512
#: seconds a connection may take to send its request line
REQUEST_TIMEOUT = 10.0
#: connections still sending their request line, at most (a flood is refused, not queued)
MAX_PENDING = 64
#: seconds the devices RPC may take to answer
RPC_TIMEOUT = 10.0
#: bytes a writing program may have waiting in the gateway before its socket is paused
HIGH_WATER = 256 * 1024
#: seconds a failed writer's connection waits for the program to close before it is aborted
LINGER = 5.0

_TOKEN = re.compile(r"^[0-9a-f]{16,128}$")
_KIND = re.compile(r"^E[A-Z0-9]{1,15}$")


class GatewayError(Exception):
    """A request the gateway refuses: *kind* is the errno name the program's OSError gets."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Grant:
    """What a token stands for: one agent of this runtime and its OneOS owner."""

    agent_id: str
    user: str
    #: its connections that have presented the token
    connections: set[_Connection] = field(default_factory=set)


def _digest(token: str) -> bytes:
    """Tokens are kept (and looked up) by hash: the lookup's timing says nothing about a token."""
    return hashlib.sha256(token.encode()).digest()


def error_kind(error: BaseException) -> str:
    """The errno name a program sees for *error* (a device's, an RPC's, a stream's)."""
    kind = getattr(error, "kind", None) or getattr(error, "code", None)
    if isinstance(kind, str) and _KIND.match(kind):
        return kind
    if isinstance(error, RPCTimeout):
        return "ETIMEDOUT"
    return "EIO"


def _line(text: str) -> str:
    """*text* on one line (an answer line must not be cut by a newline in a message)."""
    return " ".join(text.split())


def _open_to_all(path: Path) -> bool:
    """Whether every account can read *path* (o+r) and search every folder above it (o+x)."""
    try:
        if not path.stat().st_mode & stat.S_IROTH:
            return False
        for folder in path.parents:
            if not folder.stat().st_mode & stat.S_IXOTH:
                return False
    except OSError:
        return False
    return True


class DeviceGateway(service.Service):
    """The runtime's device gateway (see the module docstring)."""

    name = "gateway"  # type: ignore[assignment]  # Twisted: Service.name = None, so mypy infers type None

    def __init__(
        self,
        reactor: Any,
        runtime_id: str,
        rpc: Any,
        live: Callable[[], Iterable[Any]],
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        clock: Any = None,
        request_timeout: float = REQUEST_TIMEOUT,
        linger: float = LINGER,
        receive: Callable[..., defer.Deferred] | None = None,
        send: Callable[..., defer.Deferred] | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock or reactor
        self.runtime_id = runtime_id
        #: the runtime's RPC client: device calls go through DevicesClient, as the program's owner
        self.rpc = rpc
        #: the live runtimes' statuses (``.id``, ``.devices`` with ``.name``): finds a device by its bare name
        self.live = live
        self.endpoint = endpoint
        self.request_timeout = request_timeout
        self.linger = linger
        #: the stream functions (tests replace them)
        self.receive = receive or transfer.receive
        self.send = send or transfer.send
        self.port: Any = None
        #: the folder put on programs' PYTHONPATH (set when listening)
        self.program_dir = ""
        self._temp_dir: str | None = None
        self._grants: dict[bytes, Grant] = {}
        self._by_agent: dict[str, bytes] = {}
        self._connections: set[_Connection] = set()

    # -- listening -----------------------------------------------------------------------
    @property
    def address(self) -> str:
        """``HOST:PORT`` programs connect to ('' before listening)."""
        if self.port is None:
            return ""
        host = self.port.getHost()
        return f"{host.host}:{host.port}"

    @defer.inlineCallbacks
    def listen(self) -> Any:
        """Listen on the endpoint and make ``oneos_device.py`` readable by programs; fires with the address."""
        self.program_dir = self._program_dir()
        factory = Factory.forProtocol(lambda: _Connection(self))
        factory.noisy = False
        self.port = yield serverFromString(self.reactor, self.endpoint).listen(factory)
        log.info("device gateway for programs at {address}", address=self.address)
        return self.address

    def _program_dir(self) -> str:
        """The shipped folder if every account can read it, else a private copy that they can.

        Programs may run as another account (``nobody``) than the runtime's,
        and a package installed under a private home would be out of their
        reach.  The copy is made in a new folder of our own (mkdtemp: nobody
        else can have prepared it with another ``oneos_device.py``).
        """
        shipped = PROGRAM_DIR / PROGRAM_MODULE
        if _open_to_all(shipped):
            return str(PROGRAM_DIR)
        folder = tempfile.mkdtemp(prefix=f"oneos-python-{self.runtime_id}-")
        shutil.copyfile(shipped, os.path.join(folder, PROGRAM_MODULE))
        os.chmod(os.path.join(folder, PROGRAM_MODULE), 0o644)
        os.chmod(folder, 0o755)
        self._temp_dir = folder
        return folder

    def stopService(self) -> defer.Deferred:
        """Stop listening, end every connection, forget every token."""
        super().stopService()
        for connection in list(self._connections):
            connection.abort()
        self._grants.clear()
        self._by_agent.clear()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)

    # -- tokens ------------------------------------------------------------------------------
    def grant(self, agent_id: str, user: str) -> dict[str, str]:
        """A new token for agent *agent_id* of OneOS user *user*: the variables its environment gets.

        While the gateway does not listen both are empty (overriding any the
        runtime inherited): the program's ``oneos_device.open`` then says
        there is no gateway.
        """
        if self.port is None:
            return {ENV_ADDRESS: "", ENV_TOKEN: ""}
        self.revoke(agent_id)
        token = secrets.token_hex(32)
        digest = _digest(token)
        self._grants[digest] = Grant(agent_id, user)
        self._by_agent[agent_id] = digest
        env = {ENV_ADDRESS: self.address, ENV_TOKEN: token}
        if self.program_dir:
            env["PYTHONPATH"] = self.program_dir
        return env

    def revoke(self, agent_id: str) -> None:
        """The agent ended: its token opens nothing more, and its opens still under way stop.

        Streams already flowing end when the program's socket closes (the
        agent's process group is gone with it): a writer's last bytes still
        reach the device.
        """
        digest = self._by_agent.pop(agent_id, None)
        grant = self._grants.pop(digest, None) if digest is not None else None
        if grant is None:
            return
        for connection in list(grant.connections):
            if not connection.streaming:
                connection.abort()

    def _granted(self, token: str) -> Grant | None:
        return self._grants.get(_digest(token))

    # -- finding a device ---------------------------------------------------------------------
    def locate(self, path: str) -> tuple[str, str]:
        """``(runtime, name)`` of *path*; GatewayError ENOENT / ENOTUNIQ / EINVAL with a plain reason."""
        live = {status.id: status for status in self.live()}
        if "/" not in path:
            where = sorted(rid for rid, status in live.items() if any(d.name == path for d in status.devices))
            if not where:
                raise GatewayError("ENOENT", f"no device {path!r} on any live runtime")
            if len(where) > 1:
                raise GatewayError(
                    "ENOTUNIQ",
                    f"device {path!r} is on several runtimes ({', '.join(where)}): open /dev/RUNTIME/{path}",
                )
            return where[0], path
        try:
            runtime, name = parse_device_address(path)
        except Exception as e:
            raise GatewayError("EINVAL", describe(e)) from None
        if runtime not in live:
            raise GatewayError("ENOENT", f"no device {path} (runtime {runtime} is not running)")
        return runtime, name

    def devices_for(self, user: str) -> DevicesClient:
        """The devices RPC acting for *user* (the device's runtime checks its owner and mode against them)."""
        return DevicesClient(self.rpc, timeout=RPC_TIMEOUT, user=user)


@implementer(IHalfCloseableProtocol)
class _Connection(Protocol):
    """One program's connection: its request line, then one device stream (see the module docstring)."""

    def __init__(self, gateway: DeviceGateway) -> None:
        self.gateway = gateway
        self.buffer = b""
        #: request (waiting for the line), opening (asking the device's runtime), streaming, done
        self.state = "request"
        self.mode = ""
        self.grant: Grant | None = None
        self.label = ""
        self.gone = False
        #: the program half-closed its side (a writer's end)
        self.input_ended = False
        #: the transfer with the device's runtime, once started
        self.transfer: defer.Deferred | None = None
        self._timer: IDelayedCall | None = None
        self._linger: IDelayedCall | None = None
        # reading: the program's socket is full
        self.paused = False
        self._room: list[defer.Deferred] = []
        # writing: the program's bytes waiting for the transfer
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._reading_paused = False
        self._waiter: defer.Deferred | None = None
        self._broken: BaseException | None = None

    @property
    def streaming(self) -> bool:
        return self.state == "streaming"

    def _tcp(self) -> Any:
        """The program's TCP connection (a consumer and producer too: Twisted's ITransport says neither)."""
        assert self.transport is not None, "not connected yet"
        return self.transport

    def _peer(self) -> str:
        peer = self._tcp().getPeer()
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"

    # -- the request line ------------------------------------------------------------------------
    def connectionMade(self) -> None:
        pending = sum(1 for c in self.gateway._connections if c.state == "request")
        self.gateway._connections.add(self)
        if pending >= MAX_PENDING:
            log.warn(
                "device gateway: refused a connection from {peer}: {n} others have not sent their request yet",
                peer=self._peer(),
                n=pending,
            )
            self.state = "done"
            self._tcp().abortConnection()
            return
        try:
            self._tcp().setTcpNoDelay(True)  # the answer line and the small frames should not wait
        except Exception:
            pass  # not a TCP socket (a test's transport)
        self._timer = self.gateway.clock.callLater(self.gateway.request_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        self._drop(f"no request line within {self.gateway.request_timeout:g}s")

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _drop(self, why: str) -> None:
        """A malformed request: log it, answer EPROTO, close."""
        log.warn("device gateway: dropped a malformed request from {peer}: {why}", peer=self._peer(), why=why)
        self._refuse("EPROTO", "malformed request")

    def _refuse(self, kind: str, message: str) -> None:
        self._stop_timer()
        self.state = "done"
        if not self.gone:
            self._tcp().write(f"ERR {kind} {_line(message)}\n".encode())
            self._tcp().loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.state == "request":
            self.buffer += data
            if b"\n" not in self.buffer:
                if len(self.buffer) > MAX_REQUEST:
                    self._drop(f"no end of line within {MAX_REQUEST} bytes")
                return
            line, rest = self.buffer.split(b"\n", 1)
            self.buffer = b""
            self._stop_timer()
            self._request(line, rest)
        elif self.mode == "w" and self.state in ("opening", "streaming"):
            self._feed(data)
        # anything else (a reader sending bytes, a writer after its stream's end) is dropped

    def _request(self, line: bytes, rest: bytes) -> None:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            self._drop("not ASCII")
            return
        fields = text.rstrip("\r").split(" ")
        if len(fields) != 5 or fields[0] != "OPEN":
            self._drop(f"expected 'OPEN TOKEN r|w PATH UNITS', got {len(fields)} field(s)")
            return
        _, token, mode, path, units_text = fields
        if not _TOKEN.match(token):
            self._drop("the token is not a token")
            return
        if mode not in ("r", "w"):
            self._drop(f"mode {mode[:8]!r} is neither r nor w")
            return
        if not path or not path.isprintable() or not units_text.isdigit() or len(units_text) > 12:
            self._drop("a bad path or unit count")
            return
        grant = self.gateway._granted(token)
        if grant is None:
            log.info("device gateway: refused {peer}: unknown or expired agent token", peer=self._peer())
            self._refuse("EACCES", "unknown or expired agent token (the program has ended?)")
            return
        if not grant.user:
            self._refuse("EACCES", f"agent {grant.agent_id} has no OneOS owner to use devices as")
            return
        units = int(units_text)
        if mode == "w" and units:
            self._refuse("EINVAL", "units are for reading")
            return
        self.grant, self.mode, self.state = grant, mode, "opening"
        grant.connections.add(self)
        if mode == "w":
            self._tcp().pauseProducing()  # nothing is read from a writer before its stream exists
            if rest:
                self._feed(rest)
        defer.Deferred.fromCoroutine(self._open(path, units)).addErrback(self._open_failed, path)

    # -- opening ----------------------------------------------------------------------------------
    async def _open(self, path: str, units: int) -> None:
        gateway, grant = self.gateway, self.grant
        assert grant is not None
        runtime, name = gateway.locate(path)
        devices = gateway.devices_for(grant.user)
        self.label = f"{runtime}/{name}"
        if self.mode == "r":
            where = await devices.read(runtime, name, units)
        else:
            where = await devices.write(runtime, name)
        if self.gone or self.state != "opening":
            # the program left (or its agent ended) meanwhile: claim the offer and end it at once,
            # so the device's runtime sees its reader or writer leave rather than wait for a timeout
            self._broken = self._broken or transfer.TransferError("the program left before its stream opened", "EPIPE")
        else:
            log.info(
                "device gateway: agent {agent} ({user}) opened {device} for {how}",
                agent=grant.agent_id,
                user=grant.user,
                device=self.label,
                how="reading" if self.mode == "r" else "writing",
            )
            self.state = "streaming"
            self._tcp().write(f"OK {self.label}\n".encode())
        if self.mode == "r":
            if not self.gone:
                self._tcp().registerProducer(self, True)
            self.transfer = gateway.receive(
                gateway.reactor, where.host, where.port, where.token, _ProgramSink(self), **where.options()
            )
        else:
            if not self.gone:
                self._tcp().resumeProducing()
            self.transfer = gateway.send(
                gateway.reactor, where.host, where.port, where.token, _ProgramSource(self), **where.options()
            )
        self.transfer.addCallbacks(self._ended, self._failed)
        if self.gone and self.mode == "r" and not self.transfer.called:
            self.transfer.cancel()

    def _open_failed(self, failure: Failure, path: str) -> None:
        error = failure.value
        kind = error.kind if isinstance(error, GatewayError) else error_kind(error)
        message = str(error) if isinstance(error, GatewayError) else describe(error)
        grant = self.grant
        log.info(
            "device gateway: agent {agent} could not open {path}: {why}",
            agent=grant.agent_id if grant else "?",
            path=path,
            why=message,
        )
        if self.grant is not None:
            self.grant.connections.discard(self)
        self._refuse(kind, message)

    # -- the stream's end -------------------------------------------------------------------------
    def _ended(self, status: Any) -> None:
        """The device's side ended cleanly: the end frame, then close."""
        self.state = "done"
        if self.gone:
            return
        payload = json.dumps(status if isinstance(status, dict) else {}).encode()
        self._unregister()
        self._tcp().write(transfer.frame(transfer.END, payload))
        self._tcp().loseConnection()

    def _failed(self, failure: Failure) -> None:
        """The stream failed (the device, its runtime, or the program leaving): the reason, then close."""
        self.state = "done"
        if self.gone:
            return
        error = failure.value
        log.info(
            "device gateway: {device} for agent {agent} ended: {why}",
            device=self.label,
            agent=self.grant.agent_id if self.grant else "?",
            why=describe(error),
        )
        body = {"kind": error_kind(error), "message": describe(error)}
        self._unregister()
        self._tcp().write(transfer.frame(transfer.ERROR, json.dumps(body).encode()))
        if self.mode == "w" and not self.input_ended:
            # the program may still be writing: half-close, drop what it sends, wait for its close
            self._tcp().resumeProducing()
            self._tcp().loseWriteConnection()
            self._linger = self.gateway.clock.callLater(self.gateway.linger, self.abort)
        else:
            self._tcp().loseConnection()

    def _unregister(self) -> None:
        """A reader's stream is over: the socket may close (Twisted waits for a paused producer)."""
        if self.mode == "r" and getattr(self._tcp(), "producer", None) is self:
            self._tcp().unregisterProducer()

    # -- reading: the device's bytes to the program (IPushProducer of the program's socket) -------
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        room, self._room = self._room, []
        for d in room:
            d.callback(None)

    def stopProducing(self) -> None:
        self._gone_now(transfer.TransferError("the program closed the device", "EPIPE"))

    def _write_data(self, data: bytes) -> defer.Deferred:
        if self.gone:
            return defer.fail(self._broken or transfer.TransferError("the program closed the device", "EPIPE"))
        for i in range(0, len(data), transfer.MAX_FRAME):
            self._tcp().write(transfer.frame(transfer.DATA, data[i : i + transfer.MAX_FRAME]))
        if not self.paused:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._room.append(d)
        return d

    # -- writing: the program's bytes to the device (its socket paused above HIGH_WATER) -----------
    def _feed(self, data: bytes) -> None:
        if self.state == "done" or not data:
            return
        if self._waiter is not None:
            d, self._waiter = self._waiter, None
            d.callback(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self._tcp().pauseProducing()

    def _next(self) -> defer.Deferred:
        if self._chunks:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            if self._reading_paused and not self.gone:
                self._reading_paused = False
                self._tcp().resumeProducing()
            return defer.succeed(data)
        if self._broken is not None:
            return defer.fail(self._broken)
        if self.input_ended:
            return defer.succeed(b"")
        self._waiter = defer.Deferred()
        return self._waiter

    # -- the program's side closing ----------------------------------------------------------------
    def readConnectionLost(self) -> None:
        """The program half-closed: a writer's end of stream; a reader (which never does) has left."""
        self.input_ended = True
        if self.state == "request":
            if self.buffer:
                self._drop("the connection ended before its request line")
            else:
                self._stop_timer()
                self.state = "done"
                self._tcp().abortConnection()  # connected and left, said nothing (a port scan)
            return
        if self.mode == "w" and self.state in ("opening", "streaming"):
            if self._waiter is not None and not self._chunks:
                d, self._waiter = self._waiter, None
                d.callback(b"")
            return
        if self._linger is not None or self.state == "done":
            self._tcp().loseConnection()  # it has our last frame
            return
        self._tcp().abortConnection()

    def writeConnectionLost(self) -> None:
        """Our side ended after an error frame; the program's close, or the linger timer, ends the rest."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._stop_timer()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        self.gateway._connections.discard(self)
        if self.grant is not None:
            self.grant.connections.discard(self)
        self._gone_now(transfer.TransferError("the program's connection closed before the stream's end", "EPIPE"))

    def _gone_now(self, error: BaseException) -> None:
        """The program's side is gone: stop the device's stream (its runtime sees its reader or writer leave)."""
        if self.gone:
            return
        self.gone = True
        if self.state == "opening":
            self.state = "done"
        if self._broken is None and not (self.mode == "w" and self.input_ended):
            self._broken = error
        room, self._room = self._room, []
        for d in room:
            d.errback(error)
        if self._waiter is not None:
            d, self._waiter = self._waiter, None
            if self._broken is not None:
                d.errback(self._broken)
            else:
                d.callback(b"")
        if self.transfer is not None and not self.transfer.called and self.mode == "r":
            self.transfer.cancel()

    def abort(self) -> None:
        """End the connection now (a stopping gateway, a revoked token, a linger that ran out)."""
        self._linger = None
        self.state = "done"
        if self.transport is not None and not self.gone:
            self._tcp().abortConnection()


class _ProgramSink:
    """The transfer Sink of a reading program: ``D`` frames on its socket, at its pace."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection

    def write(self, data: bytes) -> defer.Deferred:
        return self.connection._write_data(data)

    def finish(self) -> defer.Deferred:
        return defer.succeed({})

    def abort(self) -> None:
        """The transfer failed: the connection's errback says why."""


class _ProgramSource:
    """The transfer Source of a writing program: its bytes, until its half-close."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection

    def next(self) -> defer.Deferred:
        return self.connection._next()
