"""The in-memory broker the cluster tier runs on: the MQTT behaviour OneOS relies on, checked byte for byte.

Clients here are raw MQTT peers (packets built with the project's codec) on hosts of the in-memory
network, so what is checked is what a real client would see; the last test runs the real
PubSubClient against it.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from twisted.internet import protocol
from twisted.python.failure import Failure

from oneos.pubsub import mqtt
from oneos.pubsub.client import Message, PubSubClient
from oneos.testing.cluster import BROKER_IP, BROKER_PORT, Cluster

_hosts = itertools.count(1)


class RawClient(protocol.Protocol):
    """An MQTT peer that sends what it is told and keeps every packet it receives."""

    def __init__(self) -> None:
        self.parser = mqtt.PacketParser()
        self.packets: list[mqtt.Packet] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.packets.extend(self.parser.feed(data))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = reason

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def take(self) -> list[mqtt.Packet]:
        out, self.packets = self.packets, []
        return out

    def publishes(self) -> list[tuple[str, bytes, bool, int]]:
        """(topic, payload, retain, qos) of the PUBLISHes received since the last take."""
        return [(p.topic, p.payload, p.retain, p.qos) for p in self.take() if p.type == mqtt.PUBLISH]


class _Factory(protocol.ClientFactory):
    def __init__(self, client: RawClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> RawClient:
        return self.client


def connect(cluster: Cluster, client_id: str, keepalive: int = 0, **options: Any) -> RawClient:
    """A raw client on a new host, connected, its CONNACK taken (check it with ``connack``)."""
    client = RawClient()
    reactor = cluster.network.add_host(f"10.9.0.{next(_hosts) % 250 + 1}", client_id)
    reactor.connectTCP(BROKER_IP, BROKER_PORT, _Factory(client))
    cluster.settle()
    client.send(mqtt.encode_connect(client_id, keepalive, **options))
    cluster.settle()
    return client


def connack(client: RawClient) -> int:
    [ack] = client.take()
    assert ack.type == mqtt.CONNACK
    return ack.return_code


def subscribe(cluster: Cluster, client: RawClient, *filters: str, qos: int = 1) -> list[int]:
    client.send(mqtt.encode_subscribe(7, [(f, qos) for f in filters]))
    cluster.settle()
    ack = client.packets.pop(0)
    assert (ack.type, ack.packet_id) == (mqtt.SUBACK, 7)
    return list(ack.granted)


def publish(
    cluster: Cluster, client: RawClient, topic: str, payload: bytes, qos: int = 0, retain: bool = False
) -> None:
    client.send(mqtt.encode_publish(topic, payload, qos, retain, packet_id=3 if qos else None))
    cluster.settle()


def test_wildcards_match_whole_levels_and_each_client_gets_a_message_once(cluster: Cluster) -> None:
    sub = connect(cluster, "sub")
    pub = connect(cluster, "pub")
    assert connack(sub) == connack(pub) == 0
    assert subscribe(cluster, sub, "a/+/c", "a/#", "x") == [1, 1, 1]
    for topic in ("a/b/c", "a/b/d", "a", "ab/c", "x", "x/y", "b/a/c"):
        publish(cluster, pub, topic, topic.encode())
    assert [t for t, *_ in sub.publishes()] == ["a/b/c", "a/b/d", "a", "x"]
    # a filter with '#' not last is refused (built by hand: the codec refuses to encode it)
    body = b"\x00\x08" + b"\x00\x0cbad/#/filter\x01"
    sub.send(bytes([0x82, len(body)]) + body)
    cluster.settle()
    [ack] = sub.take()
    assert (ack.type, ack.packet_id, ack.granted) == (mqtt.SUBACK, 8, (0x80,))


def test_qos1_is_acknowledged_and_delivered_at_the_granted_qos(cluster: Cluster) -> None:
    sub, pub = connect(cluster, "sub"), connect(cluster, "pub")
    connack(sub), connack(pub)
    assert subscribe(cluster, sub, "q/0", qos=0) == [0]
    assert subscribe(cluster, sub, "q/1", qos=1) == [1]
    assert subscribe(cluster, sub, "q/2", qos=2) == [1], "QoS 2 is granted as 1"
    publish(cluster, pub, "q/0", b"x", qos=1)
    [ack] = pub.take()
    assert (ack.type, ack.packet_id) == (mqtt.PUBACK, 3)
    publish(cluster, pub, "q/1", b"y", qos=1)
    publish(cluster, pub, "q/1", b"z", qos=0)
    assert sub.publishes() == [("q/0", b"x", False, 0), ("q/1", b"y", False, 1), ("q/1", b"z", False, 0)]


def test_retained_messages_reach_later_subscribers_and_an_empty_one_clears_them(cluster: Cluster) -> None:
    pub = connect(cluster, "pub")
    connack(pub)
    publish(cluster, pub, "s/1", b"one", qos=1, retain=True)
    publish(cluster, pub, "s/2", b"two", retain=True)
    early = connect(cluster, "early")
    connack(early)
    subscribe(cluster, early, "s/+")
    assert early.publishes() == [("s/1", b"one", True, 1), ("s/2", b"two", True, 0)]
    publish(cluster, pub, "s/1", b"", retain=True)  # clears s/1 ...
    assert early.publishes() == [("s/1", b"", False, 0)]  # ... and live subscribers see it, not as retained
    late = connect(cluster, "late")
    connack(late)
    subscribe(cluster, late, "s/#")
    assert late.publishes() == [("s/2", b"two", True, 0)]
    assert cluster.broker.retained == {"s/2": (b"two", 0)}


def test_the_will_is_published_when_a_client_vanishes_but_not_after_disconnect(cluster: Cluster) -> None:
    watcher = connect(cluster, "watcher")
    connack(watcher)
    subscribe(cluster, watcher, "will/+")
    will = mqtt.Will("will/gone", b"dead", qos=1, retain=True)
    gone = connect(cluster, "gone", will=will)
    polite = connect(cluster, "polite", will=mqtt.Will("will/polite", b"dead"))
    assert connack(gone) == connack(polite) == 0
    polite.send(mqtt.encode_simple(mqtt.DISCONNECT))
    cluster.settle()
    assert polite.lost is not None and watcher.publishes() == []
    assert gone.transport is not None
    gone.transport.reactor.crash()  # type: ignore[attr-defined]  # its host dies: the connection resets
    cluster.settle()
    assert watcher.publishes() == [("will/gone", b"dead", False, 1)]
    assert cluster.broker.retained["will/gone"] == (b"dead", 1)
    assert set(cluster.broker.sessions) == {"watcher"}


def test_a_silent_client_is_dropped_after_one_and_a_half_keepalives(cluster: Cluster) -> None:
    watcher = connect(cluster, "watcher")
    connack(watcher)
    subscribe(cluster, watcher, "will/#")
    pinging = connect(cluster, "pinging", keepalive=2, will=mqtt.Will("will/pinging", b"dead"))
    silent = connect(cluster, "silent", keepalive=2, will=mqtt.Will("will/silent", b"dead"))
    connack(pinging), connack(silent)
    start = cluster.now
    for _ in range(4):
        pinging.send(mqtt.encode_simple(mqtt.PINGREQ))
        cluster.run(1.0)
        assert [p.type for p in pinging.take()] == [mqtt.PINGRESP]
    assert silent.lost is not None, "dropped after 3 s of silence"
    assert pinging.lost is None
    assert watcher.publishes() == [("will/silent", b"dead", False, 1)]
    assert cluster.now - start == pytest.approx(4.0)


def test_a_second_connection_with_the_same_client_id_takes_over(cluster: Cluster) -> None:
    watcher = connect(cluster, "watcher")
    connack(watcher)
    subscribe(cluster, watcher, "will/#")
    first = connect(cluster, "same", will=mqtt.Will("will/same", b"first gone"))
    connack(first)
    second = connect(cluster, "same")
    assert connack(second) == 0
    assert first.lost is not None and second.lost is None
    assert watcher.publishes() == [("will/same", b"first gone", False, 1)]
    assert cluster.broker.sessions["same"].transport is not None


def test_credentials_are_checked_when_the_broker_has_some(cluster: Cluster) -> None:
    cluster.broker.credentials = {"rt-a": "secret"}
    assert connack(connect(cluster, "x", username="rt-a", password="secret")) == 0
    wrong = connect(cluster, "y", username="rt-a", password="guess")
    assert connack(wrong) == 4 and wrong.lost is not None
    assert connack(connect(cluster, "z")) == 4


def test_unsubscribe_stops_delivery_and_garbage_drops_the_connection(cluster: Cluster) -> None:
    sub, pub = connect(cluster, "sub"), connect(cluster, "pub")
    connack(sub), connack(pub)
    subscribe(cluster, sub, "u/+")
    sub.send(mqtt.encode_unsubscribe(9, ["u/+"]))
    cluster.settle()
    [ack] = sub.take()
    assert (ack.type, ack.packet_id) == (mqtt.UNSUBACK, 9)
    publish(cluster, pub, "u/1", b"x")
    assert sub.publishes() == []
    pub.send(b"\xf0\x00")  # packet type 15 does not exist
    cluster.settle()
    assert pub.lost is not None
    wild = connect(cluster, "wild")
    connack(wild)
    wild.send(b"\x30\x05\x00\x03u/+x")  # a PUBLISH to a topic name with a wildcard: a protocol error
    cluster.settle()
    assert wild.lost is not None and sub.publishes() == []


def test_the_real_client_subscribes_publishes_and_passes_a_barrier(cluster: Cluster) -> None:
    reactor = cluster.network.add_host("10.9.1.1", "client")
    client = PubSubClient(f"mqtt://{BROKER_IP}:{BROKER_PORT}", reactor, rng=random.Random(1))
    client.startService()
    got: list[Message] = []
    client.subscribe("t/#", got.append)
    done = client.publish("t/x", b"hello", qos=1, retain=True)
    passed = client.barrier()
    cluster.run_until(lambda: passed.called and done.called, timeout=1, what="the barrier")
    assert client.connected and [(m.topic, m.payload) for m in got] == [("t/x", b"hello")]
    stopped = client.stopService()
    cluster.settle()
    assert stopped.called and cluster.broker.sessions == {}
