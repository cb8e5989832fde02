"""An attacker on the bus: a plain MQTT 3.1.1 client with whatever credentials it has (or none).

It speaks the wire protocol itself over a blocking socket (like
``mosquitto_pub``/``mosquitto_sub`` would), so nothing of OneOS's own client
helps or hinders it.  Every wait has a deadline.  "Nothing arrived" is
established by a barrier, never by sleeping: the peer publishes a marker to a
topic it may use and reads until the marker comes back; the broker delivers
in order, so whatever it routed to us before is in by then.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from oneos.pubsub import messages, mqtt

DEADLINE = 15.0


class MQTTPeer:
    """One raw MQTT connection; ``return_code`` is the broker's CONNACK answer."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        client_id: str | None = None,
        will: mqtt.Will | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.username = username
        self.client_id = client_id or f"peer-{uuid.uuid4().hex[:12]}"
        self.sock = socket.create_connection((parts.hostname, parts.port or 1883), timeout=DEADLINE)
        self.parser = mqtt.PacketParser()
        self.pending: list[mqtt.Packet] = []
        self.publishes: list[mqtt.Packet] = []
        self._ids = iter(range(1, 60000))
        self.sock.sendall(mqtt.encode_connect(self.client_id, 60, will=will, username=username, password=password))
        ack = self._expect(mqtt.CONNACK)
        self.return_code = ack.return_code if ack is not None else -1

    # -- wire -----------------------------------------------------------------
    def _read(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, OSError):
            return False
        if not data:
            return False
        for packet in self.parser.feed(data):
            if packet.type == mqtt.PUBLISH:
                self.publishes.append(packet)
                if packet.qos == 1 and packet.packet_id is not None:
                    self.sock.sendall(mqtt.encode_ack(mqtt.PUBACK, packet.packet_id))
            else:
                self.pending.append(packet)
        return True

    def _expect(self, ptype: int, deadline: float | None = None) -> mqtt.Packet | None:
        end = time.monotonic() + DEADLINE if deadline is None else deadline
        while True:
            for i, p in enumerate(self.pending):
                if p.type == ptype:
                    return self.pending.pop(i)
            if time.monotonic() >= end or not self._read(end):
                return None

    @property
    def connected(self) -> bool:
        return self.return_code == 0

    def subscribe(self, topic_filter: str) -> int:
        """Subscribe; the granted code (0x80: refused)."""
        self.sock.sendall(mqtt.encode_subscribe(next(self._ids), [(topic_filter, 1)]))
        ack = self._expect(mqtt.SUBACK)
        return ack.granted[0] if ack is not None and ack.granted else -1

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Publish at QoS 1; True once the broker acknowledged it (MQTT 3.1.1 brokers acknowledge refused ones too)."""
        self.sock.sendall(mqtt.encode_publish(topic, payload, qos=1, retain=retain, packet_id=next(self._ids)))
        return self._expect(mqtt.PUBACK) is not None

    def barrier(self, own_topic: str) -> list[mqtt.Packet]:
        """Everything delivered so far: subscribe to *own_topic*, publish a marker there, read until it returns."""
        marker = uuid.uuid4().hex.encode()
        if self.subscribe(own_topic) not in (0, 1):
            raise AssertionError(f"{self.username} may not use its own barrier topic {own_topic}")
        self.publish(own_topic, marker)
        end = time.monotonic() + DEADLINE
        while not any(p.payload == marker for p in self.publishes):
            if time.monotonic() >= end or not self._read(end):
                raise AssertionError("the barrier marker did not come back")
        return [p for p in self.publishes if p.topic != own_topic]

    def wait_for(self, what: str, check: Callable[[mqtt.Packet], bool]) -> mqtt.Packet:
        """The first publish (already received or to come) for which *check* holds."""
        end = time.monotonic() + DEADLINE
        while True:
            for p in self.publishes:
                if check(p):
                    return p
            if time.monotonic() >= end or not self._read(end):
                raise AssertionError(f"timed out waiting for {what}")

    def request(self, target: str, method: str, **args: Any) -> dict[str, Any]:
        """An RPC request as oneos/pubsub/rpc.py sends it, under our own name; the reply."""
        me = self.username or "~"
        reply_to = f"oneos/v1/reply/{me}/{self.client_id}"
        if self.subscribe(reply_to) not in (0, 1):
            raise AssertionError(f"{me} may not read its own replies")
        corr = uuid.uuid4().hex
        self.publish(f"oneos/v1/rpc/{target}/{me}", rpc_request(corr, method, reply_to, **args))
        found = self.wait_for(
            f"the answer to {method} on {target}",
            lambda p: p.topic == reply_to and json.loads(p.payload).get("id") == corr,
        )
        return json.loads(found.payload)

    def close(self) -> None:
        try:
            self.sock.sendall(mqtt.encode_simple(mqtt.DISCONNECT))
        except OSError:
            pass
        self.sock.close()


def rpc_request(corr: str, method: str, reply_to: str, **args: Any) -> bytes:
    """A request body as oneos/pubsub/rpc.py encodes it (the wire format, not OneOS's client)."""
    return messages.encode("rpc.request", id=corr, method=method, args=args, reply_to=reply_to, meta={"timeout": 5.0})


def publish_as(url: str, creds: Any, topic: str, payload: bytes) -> None:
    """Connect as *creds*, publish *payload* at QoS 1 (acknowledged), disconnect."""
    peer = MQTTPeer(url, creds.username, creds.password)
    try:
        assert peer.connected, f"{creds.username} was refused ({peer.return_code})"
        peer.publish(topic, payload)
    finally:
        peer.close()


def sniff_as(url: str, creds: Any, topic_filter: str, action: Callable[[], Any]) -> list[bytes]:
    """Payloads *creds* receives on *topic_filter* while *action* runs (barrier-bounded, no sleeping)."""
    peer = MQTTPeer(url, creds.username, creds.password)
    try:
        assert peer.connected, f"{creds.username} was refused ({peer.return_code})"
        assert peer.subscribe(topic_filter) in (0, 1), f"{creds.username} may not subscribe to {topic_filter}"
        action()
        got = peer.barrier(f"oneos/v1/barrier/{creds.username}/{peer.client_id}")
        return [p.payload for p in got]
    finally:
        peer.close()
