"""MQTT 3.1.1 packet codec: bytes in, packets out, and back.

Pure logic with no I/O, so it is tested directly and shared by the client
protocol.  Only what OneOS needs is modelled (QoS 0 and 1, retained
messages, last will, ping); a QoS 2 delivery from a broker is acknowledged
correctly so a misbehaving peer cannot wedge us, but we never ask for it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

#: CONNACK return codes (MQTT 3.1.1 section 3.2.2.3) as plain words.
CONNACK_REASONS = {
    0: "accepted",
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}

#: A larger packet than this from a peer is treated as malformed so a
#: hostile or broken peer cannot make us buffer without bound.
DEFAULT_MAX_PACKET = 16 * 1024 * 1024


class MalformedPacket(ValueError):
    """The byte stream is not valid MQTT 3.1.1; the connection must close."""


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us if we vanish uncleanly."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Packet:
    """One decoded packet; which fields matter depends on ``type``."""

    type: int
    flags: int = 0
    packet_id: int | None = None
    topic: str = ""
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    return_code: int = 0
    session_present: bool = False
    granted: tuple[int, ...] = field(default_factory=tuple)
    #: for a PUBLISH skipped unread for being larger than the parser's limit: its
    #: declared size (``payload`` is then empty; topic and packet id are kept)
    oversize: int = 0


def _encode_length(n: int) -> bytes:
    if n < 0 or n > 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    data = s.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return struct.pack("!H", len(data)) + data


def _blob(b: bytes) -> bytes:
    if len(b) > 0xFFFF:
        raise ValueError("MQTT field longer than 65535 bytes")
    return struct.pack("!H", len(b)) + b


def _packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + _encode_length(len(body)) + body


def validate_topic(topic: str) -> None:
    """Reject topic names that may not be published to (wildcards, empty, NUL)."""
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"invalid MQTT topic name {topic!r}")


def validate_filter(topic_filter: str) -> None:
    """Reject malformed subscription filters ('#' only last, wildcards whole levels)."""
    if not topic_filter or "\x00" in topic_filter:
        raise ValueError(f"invalid MQTT topic filter {topic_filter!r}")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"invalid MQTT topic filter {topic_filter!r}")
        if "+" in level and level != "+":
            raise ValueError(f"invalid MQTT topic filter {topic_filter!r}")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when *topic* matches the subscription *topic_filter*."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


def encode_connect(
    client_id: str,
    keepalive: int,
    *,
    clean_session: bool = True,
    will: Will | None = None,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """Build a CONNECT packet."""
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if will is not None:
        validate_topic(will.topic)
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _string(will.topic) + _blob(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _blob(password.encode("utf-8"))
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError("keepalive must be 0..65535 seconds")
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return _packet(CONNECT, 0, body)


def encode_publish(
    topic: str, payload: bytes, qos: int = 0, retain: bool = False, packet_id: int | None = None, dup: bool = False
) -> bytes:
    """Build a PUBLISH packet (QoS 0 or 1)."""
    validate_topic(topic)
    if qos not in (0, 1):
        raise ValueError("only QoS 0 and 1 are supported")
    flags = (qos << 1) | (0x01 if retain else 0) | (0x08 if dup and qos else 0)
    body = _string(topic)
    if qos:
        if packet_id is None:
            raise ValueError("QoS 1 publish needs a packet id")
        body += struct.pack("!H", packet_id)
    return _packet(PUBLISH, flags, body + payload)


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """Build a SUBSCRIBE packet for (filter, qos) pairs."""
    body = struct.pack("!H", packet_id)
    for topic_filter, qos in filters:
        validate_filter(topic_filter)
        body += _string(topic_filter) + bytes([qos])
    return _packet(SUBSCRIBE, 0x02, body)


def encode_unsubscribe(packet_id: int, filters: list[str]) -> bytes:
    """Build an UNSUBSCRIBE packet."""
    body = struct.pack("!H", packet_id) + b"".join(_string(f) for f in filters)
    return _packet(UNSUBSCRIBE, 0x02, body)


def encode_ack(ptype: int, packet_id: int) -> bytes:
    """Build PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK for *packet_id*."""
    return _packet(ptype, 0x02 if ptype == PUBREL else 0, struct.pack("!H", packet_id))


def encode_simple(ptype: int) -> bytes:
    """Build a packet with no body: PINGREQ, PINGRESP, DISCONNECT."""
    return _packet(ptype, 0, b"")


def encode_connack(return_code: int, session_present: bool = False) -> bytes:
    """Build a CONNACK (used by tests that play the broker)."""
    return _packet(CONNACK, 0, bytes([1 if session_present else 0, return_code]))


def encode_suback(packet_id: int, granted: list[int]) -> bytes:
    """Build a SUBACK (used by tests that play the broker)."""
    return _packet(SUBACK, 0, struct.pack("!H", packet_id) + bytes(granted))


class PacketParser:
    """Incremental decoder: feed bytes, get complete packets.

    Keeps at most one partial packet buffered; a declared length above
    ``max_packet`` raises :class:`MalformedPacket` before buffering it.  With
    *skip_oversize*, an oversized PUBLISH is skipped instead: its bytes are
    discarded as they arrive (only the topic and packet id are kept) and it
    comes out as a ``Packet`` with ``oversize`` set and an empty payload, so
    the receiver can acknowledge and log it rather than drop the connection
    (which, for a retained message, would only bring it back on the next
    subscription).
    """

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET, *, skip_oversize: bool = False) -> None:
        self._buffer = bytearray()
        self.max_packet = max_packet
        self.skip_oversize = skip_oversize
        self._skipping: _Skipped | None = None

    def feed(self, data: bytes) -> list[Packet]:
        """Add *data*; return every packet now complete, in order."""
        packets: list[Packet] = []
        while True:
            if self._skipping is not None:
                data = self._skipping.feed(data)
                if not self._skipping.done:
                    return packets
                packets.append(self._skipping.packet())
                self._skipping = None
            if data:
                self._buffer += data
                data = b""
            header = self._header()
            if header is None:
                return packets
            first, length, start = header
            if length > self.max_packet:
                if not (self.skip_oversize and first >> 4 == PUBLISH):
                    raise MalformedPacket(f"packet of {length} bytes exceeds limit {self.max_packet}")
                self._skipping = _Skipped(first, length)
                data = bytes(self._buffer[start:])
                self._buffer.clear()
                continue
            if len(self._buffer) < start + length:
                return packets
            body = bytes(self._buffer[start : start + length])
            del self._buffer[: start + length]
            packets.append(_decode(first >> 4, first & 0x0F, body))

    def _header(self) -> tuple[int, int, int] | None:
        if not self._buffer:
            return None
        multiplier, length = 1, 0
        for i in range(1, 5):
            if i >= len(self._buffer):
                return None
            byte = self._buffer[i]
            length += (byte & 0x7F) * multiplier
            if not byte & 0x80:
                return self._buffer[0], length, i + 1
            multiplier *= 128
        raise MalformedPacket("remaining length longer than 4 bytes")


class _Skipped:
    """An oversized PUBLISH being discarded: keeps its topic and packet id, drops the rest."""

    def __init__(self, first: int, length: int) -> None:
        self.flags = first & 0x0F
        self.qos = (self.flags >> 1) & 0x03
        self.length = length
        self.left = length
        self.head = bytearray()

    def _head_size(self) -> int:
        if len(self.head) < 2:
            return min(2, self.length)
        topic_length: int = struct.unpack_from("!H", self.head)[0]
        return min(self.length, 2 + topic_length + (2 if self.qos else 0))

    @property
    def done(self) -> bool:
        return self.left == 0

    def feed(self, data: bytes) -> bytes:
        """Consume what belongs to the skipped packet; return the bytes after it."""
        take = min(len(data), self.left)
        i = 0
        while i < take and len(self.head) < self._head_size():
            n = min(self._head_size() - len(self.head), take - i)
            self.head += data[i : i + n]
            i += n
        self.left -= take
        return data[take:]

    def packet(self) -> Packet:
        head = bytes(self.head)
        topic, packet_id = "", None
        try:
            topic, pos = _read_string(head, 0)
            if self.qos:
                packet_id = _packet_id(head, pos)
        except MalformedPacket:
            pass  # a broken header on a packet we drop anyway: report what we have
        return Packet(
            PUBLISH,
            self.flags,
            packet_id,
            topic,
            b"",
            self.qos,
            bool(self.flags & 0x01),
            bool(self.flags & 0x08),
            oversize=self.length,
        )


def _read_string(body: bytes, pos: int) -> tuple[str, int]:
    if pos + 2 > len(body):
        raise MalformedPacket("truncated string")
    (n,) = struct.unpack_from("!H", body, pos)
    end = pos + 2 + n
    if end > len(body):
        raise MalformedPacket("truncated string")
    try:
        return body[pos + 2 : end].decode("utf-8"), end
    except UnicodeDecodeError as e:
        raise MalformedPacket("string is not UTF-8") from e


def _packet_id(body: bytes, pos: int = 0) -> int:
    if pos + 2 > len(body):
        raise MalformedPacket("missing packet id")
    packet_id: int = struct.unpack_from("!H", body, pos)[0]
    return packet_id


def _decode(ptype: int, flags: int, body: bytes) -> Packet:
    if ptype == PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        topic, pos = _read_string(body, 0)
        packet_id = None
        if qos:
            packet_id = _packet_id(body, pos)
            pos += 2
        return Packet(PUBLISH, flags, packet_id, topic, body[pos:], qos, bool(flags & 0x01), bool(flags & 0x08))
    if ptype == CONNACK:
        if len(body) != 2:
            raise MalformedPacket("CONNACK must be 2 bytes")
        return Packet(CONNACK, flags, return_code=body[1], session_present=bool(body[0] & 0x01))
    if ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
        return Packet(ptype, flags, _packet_id(body))
    if ptype == SUBACK:
        return Packet(SUBACK, flags, _packet_id(body), granted=tuple(body[2:]))
    if ptype in (PINGREQ, PINGRESP, DISCONNECT):
        return Packet(ptype, flags)
    if ptype in (SUBSCRIBE, UNSUBSCRIBE):
        # Only brokers receive these; keep the raw filters for test brokers.
        return Packet(ptype, flags, _packet_id(body), payload=body[2:])
    if ptype == CONNECT:
        return Packet(ptype, flags, payload=body)
    raise MalformedPacket(f"unknown packet type {ptype}")
