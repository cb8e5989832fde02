"""``oneos status`` without Twisted: the runtimes' retained statuses, read over one blocking socket.

Why: the command's own work is a few packets on loopback (well under a
millisecond), but through :func:`oneos.cli.common.run_with_client` it
first imports Twisted's asyncio reactor, whose ``twisted.internet.tcp``
pulls in TLS (pyOpenSSL, cryptography) and asyncio: about 170 ms of
imports on every call.  This reader needs only the standard library's
``socket`` (``ssl`` for an ``mqtts://`` broker) and the pure MQTT codec
(:mod:`oneos.pubsub.mqtt`).

On the wire it does what :class:`~oneos.pubsub.client.PubSubClient` and
:func:`oneos.cli.status.collect` do: CONNECT with the same credentials
(:func:`oneos.cli.common.broker_address`), SUBSCRIBE at QoS 1 to every
runtime's status and to its own barrier topic, PUBLISH a marker there and
read until the marker comes back (brokers deliver in order on one
connection, so every retained status is in by then: what
``PubSubClient.barrier`` relies on), then DISCONNECT.  It also waits and
retries as that client does: capped exponential backoff while the broker
cannot be reached, giving up with the last reason after ``--timeout``
seconds; once a broker has accepted it, a lost connection is retried
without a deadline, and a silent broker is noticed with pings.

:class:`Exchange` holds the protocol without I/O (tested on its own);
:func:`read_statuses` drives it over a socket.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oneos.errors import OneOSError, PubSubUnavailable
from oneos.pubsub import mqtt, topics
from oneos.pubsub.messages import MAX_MESSAGE, MalformedMessage

if TYPE_CHECKING:
    import ssl

    from oneos.pubsub.address import BrokerAddress
    from oneos.runtime.status import RuntimeStatus

#: the keepalive the CONNECT asks for, as run_with_client's client (seconds); pings go every half of it
KEEPALIVE = 10
#: how long one TCP connect, and then the broker's CONNACK, may take (PubSubClient's ``connect_timeout``)
CONNECT_TIMEOUT = 5.0
#: retry delays while the broker cannot be reached (run_with_client's client: 0.2 s doubling up to 1 s)
INITIAL_DELAY, MAX_DELAY = 0.2, 1.0
#: bytes a PUBLISH may hold besides its payload (as oneos/pubsub/client.py: topic, its length, a packet id)
PUBLISH_OVERHEAD = 2 + 0xFFFF + 2
#: OpenSSL's verify codes for a certificate naming other hosts (X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH)
_NAME_MISMATCH = (62, 64)
#: the packet ids this reader uses: its one SUBSCRIBE and its marker's PUBLISH
_SUBSCRIBE_ID, _MARKER_ID = 1, 2


class ConnectionEnded(Exception):
    """This connection is over (refused, broken, silent); *why* is said plainly, the next attempt may work."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Exchange:
    """One connection's part of a status read, without I/O: :meth:`feed` takes bytes and returns the reply.

    Statuses go into *seen* (runtime id -> the latest valid one), which the
    caller keeps across connections as the Twisted path keeps its dict
    across reconnects.  :attr:`done` is set once the marker has come back.
    """

    def __init__(
        self,
        client_id: str,
        caller: str,
        marker: bytes,
        seen: dict[str, RuntimeStatus],
        *,
        max_message: int = MAX_MESSAGE,
    ) -> None:
        self.client_id = client_id
        self.marker = marker
        self.seen = seen
        self.max_message = max_message
        #: the private topic the marker goes round (PubSubClient.barrier's)
        self.barrier_topic = topics.barrier(caller, client_id)
        # a larger status is skipped as it arrives, as PubSubClient does, never buffered
        self.parser = mqtt.PacketParser(max_message + PUBLISH_OVERHEAD, skip_oversize=True)
        self.accepted = False
        self.done = False
        #: a PINGREQ is waiting for its PINGRESP
        self.ping_outstanding = False

    def connect(self, username: str | None, password: str | None) -> bytes:
        """The CONNECT packet: a clean session, our keepalive, the credentials."""
        return mqtt.encode_connect(self.client_id, KEEPALIVE, username=username, password=password)

    def ping(self) -> bytes:
        """A PINGREQ (its answer clears :attr:`ping_outstanding`)."""
        self.ping_outstanding = True
        return mqtt.encode_simple(mqtt.PINGREQ)

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the broker; return the bytes to send back (possibly none).

        Raises :class:`ConnectionEnded` when the connection must close
        (refused, malformed data, a packet before CONNACK) and
        :class:`PubSubUnavailable` when the broker refuses a subscription
        (no retry helps: the Twisted path fails the same way).
        """
        try:
            packets = self.parser.feed(data)
        except mqtt.MalformedPacket as e:
            raise ConnectionEnded(f"malformed data from the broker: {e}") from None
        out = bytearray()
        for packet in packets:
            out += self._handle(packet)
            if self.done:
                break  # what follows the marker is not ours to read (the Twisted path stops there too)
        return bytes(out)

    def _handle(self, p: mqtt.Packet) -> bytes:
        if p.type == mqtt.CONNACK:
            if p.return_code != 0:
                raise ConnectionEnded(mqtt.CONNACK_REASONS.get(p.return_code, f"code {p.return_code}"))
            self.accepted = True
            return mqtt.encode_subscribe(_SUBSCRIBE_ID, [(topics.ALL_STATUS, 1), (self.barrier_topic, 1)])
        if not self.accepted:
            raise ConnectionEnded(f"the broker sent packet type {p.type} before CONNACK")
        if p.type == mqtt.SUBACK and p.packet_id == _SUBSCRIBE_ID:
            for i, topic_filter in enumerate((topics.ALL_STATUS, self.barrier_topic)):
                if (p.granted[i] if i < len(p.granted) else 0x80) == 0x80:
                    raise PubSubUnavailable(f"broker refused subscription to {topic_filter!r}")
            return mqtt.encode_publish(self.barrier_topic, self.marker, qos=1, packet_id=_MARKER_ID)
        if p.type == mqtt.PUBLISH:
            reply = b""
            if p.qos == 1 and p.packet_id is not None:
                reply = mqtt.encode_ack(mqtt.PUBACK, p.packet_id)
            elif p.qos == 2 and p.packet_id is not None:
                reply = mqtt.encode_ack(mqtt.PUBREC, p.packet_id)
            if not p.oversize and len(p.payload) <= self.max_message:
                self._message(p.topic, p.payload)
            return reply
        if p.type == mqtt.PUBREL and p.packet_id is not None:
            return mqtt.encode_ack(mqtt.PUBCOMP, p.packet_id)
        if p.type == mqtt.PINGRESP:
            self.ping_outstanding = False
        return b""  # our marker's PUBACK, and anything else: nothing to do

    def _message(self, topic: str, payload: bytes) -> None:
        if topic == self.barrier_topic:
            if payload == self.marker:
                self.done = True
            return
        # what oneos.cli.status.collect keeps: the latest valid status of each runtime
        from oneos.runtime.status import RuntimeStatus

        rid = topics.runtime_from_status_topic(topic)
        if rid is None or not payload:
            return
        try:
            self.seen[rid] = RuntimeStatus.decode(payload)
        except MalformedMessage:
            pass


# --------------------------------------------------------------------------
# TLS (mqtts://)


def default_ca() -> Path:
    """``$ONEOS_HOME/tls/ca.pem``, as oneos.security.tls.ca_path names it (without importing cryptography)."""
    from oneos.cli.quick import home

    return Path(home()) / "tls" / "ca.pem"


def first_certificate(pem: str) -> str | None:
    """The first PEM certificate in *pem* (the one Twisted's path trusts), or None when there is none."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start + len(begin)) if start >= 0 else -1
    return pem[start : stop + len(end)] + "\n" if stop >= 0 else None


def tls_context(ca: Path) -> tuple[ssl.SSLContext, str]:
    """A client context checking the broker against *ca* when that file exists, else the system's trust store.

    Checks what ``Trust.client_creator`` has Twisted check: the chain
    against the CA alone, and the name dialled against the certificate's
    subjectAltNames only (never its common name).  Returns the context and
    what it trusts, for messages.  A CA file that cannot be used raises the
    :class:`OneOSError` oneos.security.tls says for it.
    """
    import ssl

    if not ca.exists():
        return ssl.create_default_context(), "the system's trust store"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    context.hostname_checks_common_name = False
    try:
        first = first_certificate(ca.read_text())
        if first is None:
            raise ValueError("no certificate")
        context.load_verify_locations(cadata=first)
    except (OSError, ValueError, ssl.SSLError):
        # its own words for a file it cannot use (imports cryptography, but only now)
        from oneos.security.tls import Trust

        Trust.from_file(ca)
        raise OneOSError(f"{ca} is not a PEM certificate (damaged?)") from None
    return context, str(ca)


def describe_tls_error(error: Exception, host: str, trust_source: str) -> str:
    """The plain sentence oneos.security.tls.describe_tls_failure says for a failed handshake."""
    import ssl

    if isinstance(error, ssl.SSLCertVerificationError):
        if error.verify_code in _NAME_MISMATCH:
            return f"the broker's certificate is not valid for {host} (it names other hosts)"
        return f"the broker's certificate did not verify against {trust_source} ({error.verify_message})"
    reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error) or "handshake failed"
    return f"TLS handshake failed ({reason}): does it speak TLS, with a certificate of this network?"


# --------------------------------------------------------------------------
# the blocking driver


def describe_os_error(error: OSError, host: str) -> str:
    """One plain line for a failed connect or a broken connection."""
    if isinstance(error, socket.gaierror):
        return f"DNS lookup failed: {host}: {error.strerror or error}"
    if isinstance(error, TimeoutError):
        return "the connection timed out"
    return str(error.strerror or error)


def _open(address: BrokerAddress, timeout: float, ca: Path | None) -> socket.socket:
    """A connected socket to the broker (TLS already shaken hands for mqtts://); raises ConnectionEnded."""
    context: ssl.SSLContext | None = None
    trust_source = ""
    if address.tls:
        try:
            context, trust_source = tls_context(ca if ca is not None else default_ca())
        except OneOSError as e:
            raise ConnectionEnded(str(e)) from None
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError as e:
        raise ConnectionEnded(describe_os_error(e, address.host)) from None
    # small packets, each waited for: without NODELAY, Nagle and delayed ACKs cost ~40 ms a round trip
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if context is None:
        return sock
    import ssl

    try:
        return context.wrap_socket(sock, server_hostname=address.host)
    except (ssl.SSLError, OSError) as e:
        sock.close()
        raise ConnectionEnded(describe_tls_error(e, address.host, trust_source)) from None


class _Deadline(Exception):
    """The time allowed to reach the broker is over."""


def _converse(
    sock: socket.socket,
    exchange: Exchange,
    address: BrokerAddress,
    give_up: float | None,
    clock: Callable[[], float],
) -> None:
    """Run *exchange* over *sock* until it is done; ConnectionEnded or _Deadline when it cannot be.

    Keeps the connection alive as PubSubClient does: a ping when we have
    sent nothing for half a keepalive, and the connection given up when
    nothing at all arrived in the half keepalive after a ping.
    """
    last_sent = ping_sent = last_bytes = 0.0

    def send(data: bytes) -> None:
        nonlocal last_sent
        if data:
            try:
                sock.sendall(data)
            except OSError as e:
                raise ConnectionEnded(describe_os_error(e, address.host)) from None
            last_sent = clock()

    send(exchange.connect(address.username, address.password))
    connack_by = clock() + CONNECT_TIMEOUT
    while not exchange.done:
        now = clock()
        if not exchange.accepted:
            if give_up is not None and now >= give_up:
                raise _Deadline
            if now >= connack_by:
                raise ConnectionEnded(f"the broker did not answer CONNECT within {CONNECT_TIMEOUT:g}s")
            due = min(connack_by, give_up) if give_up is not None else connack_by
        elif exchange.ping_outstanding:
            due = ping_sent + KEEPALIVE * 0.5
            if now >= due:
                if last_bytes <= ping_sent:
                    raise ConnectionEnded("the broker stopped answering pings")
                ping_sent = now  # bytes keep coming (a large message ahead of the PINGRESP): it is there
                continue
        else:
            due = last_sent + KEEPALIVE * 0.5
            if now >= due:
                send(exchange.ping())
                ping_sent = last_sent
                continue
        sock.settimeout(max(due - now, 0.001))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue  # a deadline or a ping is due: see above
        except OSError as e:
            raise ConnectionEnded(describe_os_error(e, address.host)) from None
        if not data:
            if exchange.accepted:
                raise ConnectionEnded("the broker closed the connection")
            raise ConnectionEnded(
                "the broker closed the connection before answering CONNECT (if it serves TLS: an mqtts:// URL)"
            )
        last_bytes = clock()
        send(exchange.feed(data))
    try:
        sock.sendall(mqtt.encode_simple(mqtt.DISCONNECT))
    except OSError:
        pass  # we have what we came for


def read_statuses(
    address: BrokerAddress,
    timeout: float,
    *,
    ca: Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[RuntimeStatus]:
    """Every runtime's retained status from the broker at *address* (credentials already in it).

    Fails with the same plain :class:`PubSubUnavailable` as
    :func:`oneos.cli.common.run_with_client` when the broker cannot be
    reached within *timeout* seconds.  *ca*: the CA certificate an
    ``mqtts://`` broker is checked against (default
    ``$ONEOS_HOME/tls/ca.pem``, else the system's trust store).
    """
    from oneos.cli.common import unreachable

    seen: dict[str, RuntimeStatus] = {}
    client_id = f"oneos-{os.urandom(8).hex()}"
    caller = address.username or topics.ANONYMOUS
    give_up: float | None = clock() + timeout
    attempts = 0
    why: str | None = None
    rng = random.Random()
    while True:
        exchange = Exchange(client_id, caller, os.urandom(16).hex().encode(), seen)
        try:
            connect_within = CONNECT_TIMEOUT if give_up is None else min(CONNECT_TIMEOUT, give_up - clock())
            if connect_within <= 0:
                raise _Deadline
            with _open(address, connect_within, ca) as sock:
                _converse(sock, exchange, address, give_up, clock)
            return list(seen.values())
        except _Deadline:
            raise unreachable(address, why or "no answer") from None
        except ConnectionEnded as e:
            why = e.why
        if exchange.accepted:
            give_up, attempts = None, 0  # as the Twisted path: once connected, no deadline, a fresh back-off
        delay = min(MAX_DELAY, INITIAL_DELAY * 2**attempts) * (0.8 + 0.4 * rng.random())
        attempts += 1
        if give_up is not None and clock() + delay >= give_up:
            raise unreachable(address, why)  # the next try would come after the deadline
        sleep(delay)


def statuses_at(url: str, timeout: float) -> list[RuntimeStatus]:
    """Every runtime's retained status from the broker at *url*, as a command reads them.

    The read of ``oneos status`` and the ``oneos devices`` table: the broker
    found from the URL and this home's credentials, SIGTERM ending the wait
    as Ctrl-C does.
    """
    from oneos.cli.common import broker_address

    with sigterm_interrupts():
        return read_statuses(broker_address(url), timeout)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile, as under Twisted's reactor: 'interrupted', status 130."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
