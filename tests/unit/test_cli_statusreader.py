"""``oneos status`` without Twisted (oneos/cli/statusreader.py): its packets, retries and messages.

The protocol (:class:`Exchange`) is checked against the MQTT codec, packet
by packet; the driver (:func:`read_statuses`) against a scripted broker
standing in for the socket, on a fake clock (no real waiting, no network).
The real command against real brokers is in
tests/integration/test_cli_status_reader.py.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import pytest

from oneos.cli import statusreader
from oneos.cli.statusreader import ConnectionEnded, Exchange, read_statuses
from oneos.errors import PubSubUnavailable
from oneos.pubsub import mqtt, topics
from oneos.pubsub.address import parse_broker_url
from oneos.runtime.status import RuntimeStatus

MARKER = b"m" * 32


def status_payload(rid: str, **fields: Any) -> bytes:
    body = {"v": 1, "type": "runtime.status", "id": rid, "instance": "i-" + rid, "state": "alive", **fields}
    return json.dumps(body).encode()


def packets(data: bytes) -> list[mqtt.Packet]:
    return mqtt.PacketParser().feed(data)


def subscribed_filters(p: mqtt.Packet) -> list[tuple[str, int]]:
    """The (filter, qos) pairs of a SUBSCRIBE (the codec keeps its payload raw)."""
    out, body = [], p.payload
    while body:
        n = int.from_bytes(body[:2], "big")
        out.append((body[2 : 2 + n].decode(), body[2 + n]))
        body = body[3 + n :]
    return out


def accepted(seen: dict | None = None, **kw: Any) -> tuple[Exchange, mqtt.Packet]:
    """An exchange past CONNACK and SUBACK: the marker's PUBLISH is what it sent last."""
    ex = Exchange("oneos-c1", "rt-a", MARKER, {} if seen is None else seen, **kw)
    ex.feed(mqtt.encode_connack(0))
    [publish] = packets(ex.feed(mqtt.encode_suback(1, [1, 1])))
    return ex, publish


# --------------------------------------------------------------------------
# the exchange, packet by packet


def test_connect_carries_the_credentials_the_keepalive_and_a_clean_session():
    ex = Exchange("oneos-c1", "rt-a", MARKER, {})
    sent = ex.connect("rt-a", "pw")
    assert sent == mqtt.encode_connect("oneos-c1", statusreader.KEEPALIVE, username="rt-a", password="pw")
    assert ex.connect(None, None) == mqtt.encode_connect("oneos-c1", statusreader.KEEPALIVE)


def test_connack_subscribes_to_every_status_and_the_own_barrier_topic_at_qos_1():
    ex = Exchange("oneos-c1", "rt-a", MARKER, {})
    [sub] = packets(ex.feed(mqtt.encode_connack(0)))
    assert sub.type == mqtt.SUBSCRIBE and ex.accepted
    assert subscribed_filters(sub) == [(topics.ALL_STATUS, 1), (topics.barrier("rt-a", "oneos-c1"), 1)]


def test_suback_publishes_the_marker_to_the_barrier_topic_at_qos_1():
    ex, publish = accepted()
    assert (publish.type, publish.topic, publish.payload, publish.qos) == (
        mqtt.PUBLISH,
        "oneos/v1/barrier/rt-a/oneos-c1",
        MARKER,
        1,
    )
    assert not publish.retain and not ex.done


def test_statuses_are_kept_acknowledged_and_the_marker_ends_the_read():
    seen: dict[str, RuntimeStatus] = {}
    ex, _ = accepted(seen)
    data = mqtt.encode_publish(topics.status("rt-a"), status_payload("rt-a"), qos=1, retain=True, packet_id=7)
    data += mqtt.encode_publish(topics.status("rt-b"), status_payload("rt-b", state="dead"), qos=0, retain=True)
    assert [(p.type, p.packet_id) for p in packets(ex.feed(data))] == [(mqtt.PUBACK, 7)]
    assert {rid: s.state for rid, s in seen.items()} == {"rt-a": "alive", "rt-b": "dead"}
    assert not ex.done
    reply = ex.feed(mqtt.encode_publish(ex.barrier_topic, MARKER, qos=1, packet_id=8))
    assert ex.done and [(p.type, p.packet_id) for p in packets(reply)] == [(mqtt.PUBACK, 8)]


def test_damaged_empty_and_foreign_messages_change_nothing():
    seen: dict[str, RuntimeStatus] = {}
    ex, _ = accepted(seen)
    ex.feed(mqtt.encode_publish(topics.status("rt-a"), status_payload("rt-a", agents=3)))
    for topic, payload in (
        (topics.status("rt-a"), b"{not json"),  # damaged: the last good one stays
        (topics.status("rt-a"), b""),  # a cleared retained message
        (topics.status("rt-a"), status_payload("rt-a", state="bogus")),
        ("oneos/v1/runtimes/x/y/status", status_payload("x")),  # not a status topic
        (ex.barrier_topic, b"someone else's marker"),
    ):
        ex.feed(mqtt.encode_publish(topic, payload))
    assert list(seen) == ["rt-a"] and seen["rt-a"].agents == 3 and not ex.done


def test_nothing_after_the_marker_is_read():
    seen: dict[str, RuntimeStatus] = {}
    ex, _ = accepted(seen)
    data = mqtt.encode_publish(ex.barrier_topic, MARKER) + mqtt.encode_publish(
        topics.status("late"), status_payload("late"), qos=1, packet_id=9
    )
    assert ex.feed(data) == b"" and ex.done and seen == {}


def test_bytes_may_arrive_one_at_a_time():
    seen: dict[str, RuntimeStatus] = {}
    ex = Exchange("oneos-c1", "~", MARKER, seen)
    script = (
        mqtt.encode_connack(0)
        + mqtt.encode_suback(1, [1, 1])
        + mqtt.encode_publish(topics.status("rt-a"), status_payload("rt-a"), qos=1, packet_id=3)
        + mqtt.encode_publish(topics.barrier("~", "oneos-c1"), MARKER)
    )
    replies = b"".join(ex.feed(script[i : i + 1]) for i in range(len(script)))
    assert [p.type for p in packets(replies)] == [mqtt.SUBSCRIBE, mqtt.PUBLISH, mqtt.PUBACK]
    assert ex.done and list(seen) == ["rt-a"]


def test_an_oversized_status_is_acknowledged_and_skipped():
    seen: dict[str, RuntimeStatus] = {}
    ex, _ = accepted(seen, max_message=100)
    big = status_payload("rt-big", address="x" * 200)
    reply = ex.feed(mqtt.encode_publish(topics.status("rt-big"), big, qos=1, packet_id=4))
    assert [(p.type, p.packet_id) for p in packets(reply)] == [(mqtt.PUBACK, 4)] and seen == {}


def test_qos_2_deliveries_are_answered_so_a_broker_cannot_wedge_the_read():
    ex, _ = accepted()
    qos2 = bytearray(mqtt.encode_publish(topics.status("a"), status_payload("a"), qos=1, packet_id=5))
    qos2[0] = (qos2[0] & ~0x06) | 0x04  # the same PUBLISH at QoS 2
    assert [(p.type, p.packet_id) for p in packets(ex.feed(bytes(qos2)))] == [(mqtt.PUBREC, 5)]
    assert [(p.type, p.packet_id) for p in packets(ex.feed(mqtt.encode_ack(mqtt.PUBREL, 5)))] == [(mqtt.PUBCOMP, 5)]


def test_a_refused_connect_ends_the_connection_with_the_brokers_reason():
    ex = Exchange("oneos-c1", "~", MARKER, {})
    with pytest.raises(ConnectionEnded) as e:
        ex.feed(mqtt.encode_connack(4))
    assert e.value.why == "bad user name or password" and not ex.accepted


def test_a_packet_before_connack_or_garbage_ends_the_connection():
    with pytest.raises(ConnectionEnded, match="before CONNACK"):
        Exchange("c", "~", MARKER, {}).feed(mqtt.encode_suback(1, [1]))
    with pytest.raises(ConnectionEnded, match="malformed data"):
        Exchange("c", "~", MARKER, {}).feed(b"\xf0\x00")


@pytest.mark.parametrize("granted, refused", [([0x80, 1], topics.ALL_STATUS), ([1, 0x80], "barrier"), ([1], "barrier")])
def test_a_refused_subscription_is_the_plain_error_of_the_twisted_path(granted, refused):
    ex = Exchange("oneos-c1", "rt-a", MARKER, {})
    ex.feed(mqtt.encode_connack(0))
    with pytest.raises(PubSubUnavailable, match="broker refused subscription to") as e:
        ex.feed(mqtt.encode_suback(1, granted))
    assert refused in str(e.value)


def test_a_pingresp_clears_the_outstanding_ping():
    ex, _ = accepted()
    assert packets(ex.ping())[0].type == mqtt.PINGREQ and ex.ping_outstanding
    assert ex.feed(mqtt.encode_simple(mqtt.PINGRESP)) == b"" and not ex.ping_outstanding


# --------------------------------------------------------------------------
# the driver, over a scripted broker and a fake clock


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class ScriptedBroker:
    """A socket whose far end is a broker: answers CONNECT, SUBSCRIBE (then the retained statuses) and PUBLISH.

    *silent_after*: stop answering (recv times out, the clock moving on) once that many packets came in;
    *close_after*: close the connection instead.
    """

    def __init__(
        self,
        clock: Clock,
        retained: dict[str, bytes],
        *,
        code: int = 0,
        silent_after: int | None = None,
        close_after: int | None = None,
    ) -> None:
        self.clock = clock
        self.retained = retained
        self.code = code
        self.silent_after = silent_after
        self.close_after = close_after
        self.parser = mqtt.PacketParser()
        self.received: list[mqtt.Packet] = []
        self.outbox = bytearray()
        self.timeout = 0.0
        self.closed = False

    def __enter__(self) -> ScriptedBroker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.closed = True

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def sendall(self, data: bytes) -> None:
        for p in self.parser.feed(data):
            self.received.append(p)
            if self.silent_after is not None and len(self.received) > self.silent_after:
                continue
            if p.type == mqtt.CONNECT:
                self.outbox += mqtt.encode_connack(self.code)
            elif p.type == mqtt.SUBSCRIBE:
                self.outbox += mqtt.encode_suback(p.packet_id, [1] * len(subscribed_filters(p)))
                for n, (rid, payload) in enumerate(sorted(self.retained.items()), start=100):
                    self.outbox += mqtt.encode_publish(topics.status(rid), payload, qos=1, retain=True, packet_id=n)
            elif p.type == mqtt.PUBLISH:
                self.outbox += mqtt.encode_ack(mqtt.PUBACK, p.packet_id) + mqtt.encode_publish(p.topic, p.payload)
            elif p.type == mqtt.PINGREQ:
                self.outbox += mqtt.encode_simple(mqtt.PINGRESP)

    def recv(self, size: int) -> bytes:
        if self.close_after is not None and len(self.received) >= self.close_after:
            return b""
        if not self.outbox:
            self.clock.now += self.timeout  # as a blocking recv with a timeout would have waited
            raise TimeoutError
        data = bytes(self.outbox[:size])
        del self.outbox[:size]
        return data


def opener(*brokers: Any) -> tuple[Any, list[tuple[Any, float]]]:
    """An ``_open`` handing out *brokers* in turn (an exception is raised instead); records its calls."""
    calls: list[tuple[Any, float]] = []
    queue = list(brokers)

    def fake_open(address: Any, timeout: float, ca: Path | None) -> Any:
        calls.append((address, timeout))
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return fake_open, calls


def test_a_read_returns_every_retained_status_and_disconnects(monkeypatch):
    clock = Clock()
    broker = ScriptedBroker(clock, {"rt-a": status_payload("rt-a"), "rt-b": status_payload("rt-b")})
    fake_open, _ = opener(broker)
    monkeypatch.setattr(statusreader, "_open", fake_open)
    found = read_statuses(parse_broker_url("mqtt://u:p@h:1"), 5.0, clock=clock, sleep=clock.sleep)
    assert sorted(s.id for s in found) == ["rt-a", "rt-b"]
    kinds = [p.type for p in broker.received]
    assert kinds[0] == mqtt.CONNECT and kinds[-1] == mqtt.DISCONNECT and kinds.count(mqtt.PUBACK) == 2
    assert broker.closed and clock.slept == []


def test_an_unreachable_broker_is_retried_with_backoff_until_the_timeout(monkeypatch):
    clock = Clock()
    fake_open, calls = opener(ConnectionEnded("Connection refused"))
    monkeypatch.setattr(statusreader, "_open", fake_open)
    with pytest.raises(PubSubUnavailable) as e:
        read_statuses(parse_broker_url("mqtt://127.0.0.1:1"), 2.0, clock=clock, sleep=clock.sleep)
    assert str(e.value).startswith("cannot reach the broker at mqtt://127.0.0.1:1: Connection refused (is a OneOS")
    assert len(calls) >= 3 and clock.now <= 1002.0  # tried again, never past the deadline
    assert all(0.16 <= d <= 1.2 for d in clock.slept) and clock.slept[0] < clock.slept[-1]


def test_a_broker_that_comes_up_within_the_timeout_is_read(monkeypatch):
    clock = Clock()
    broker = ScriptedBroker(clock, {"rt-a": status_payload("rt-a")})
    fake_open, calls = opener(ConnectionEnded("Connection refused"), ConnectionEnded("Connection refused"), broker)
    monkeypatch.setattr(statusreader, "_open", fake_open)
    assert [s.id for s in read_statuses(parse_broker_url("mqtt://h:1"), 5.0, clock=clock, sleep=clock.sleep)] == [
        "rt-a"
    ]
    assert len(calls) == 3


def test_refused_credentials_are_said_with_the_join_hint(monkeypatch):
    clock = Clock()
    fake_open, _ = opener(ScriptedBroker(clock, {}, code=4))
    monkeypatch.setattr(statusreader, "_open", fake_open)
    with pytest.raises(PubSubUnavailable) as e:
        read_statuses(parse_broker_url("mqtt://h:1"), 1.0, clock=clock, sleep=clock.sleep)
    assert "bad user name or password" in str(e.value) and "'oneos join TOKEN' here" in str(e.value)


def test_a_broker_that_never_answers_connect_is_no_answer_at_the_deadline(monkeypatch):
    clock = Clock()
    fake_open, calls = opener(ScriptedBroker(clock, {}, silent_after=0))
    monkeypatch.setattr(statusreader, "_open", fake_open)
    with pytest.raises(PubSubUnavailable, match=r"mqtt://h:1: no answer \(is a OneOS"):
        read_statuses(parse_broker_url("mqtt://h:1"), 2.0, clock=clock, sleep=clock.sleep)
    assert len(calls) == 1 and clock.now == pytest.approx(1002.0)


def test_a_connection_lost_after_connack_is_made_again_without_the_deadline(monkeypatch):
    clock = Clock()
    first = ScriptedBroker(clock, {"rt-a": status_payload("rt-a")}, close_after=3)  # gone before the marker came back
    second = ScriptedBroker(clock, {"rt-b": status_payload("rt-b")})
    fake_open, calls = opener(first, second)
    monkeypatch.setattr(statusreader, "_open", fake_open)
    found = read_statuses(parse_broker_url("mqtt://h:1"), 0.1, clock=clock, sleep=clock.sleep)
    assert sorted(s.id for s in found) == ["rt-a", "rt-b"]  # what the first connection brought is kept
    assert len(calls) == 2 and calls[1][1] == statusreader.CONNECT_TIMEOUT  # the 0.1 s were for reaching it


def test_a_broker_silent_after_connack_is_pinged_then_left(monkeypatch):
    clock = Clock()
    silent = ScriptedBroker(clock, {}, silent_after=1)  # accepts, then answers nothing (pings neither)
    fine = ScriptedBroker(clock, {"rt-a": status_payload("rt-a")})
    fake_open, calls = opener(silent, fine)
    monkeypatch.setattr(statusreader, "_open", fake_open)
    assert [s.id for s in read_statuses(parse_broker_url("mqtt://h:1"), 5.0, clock=clock, sleep=clock.sleep)] == [
        "rt-a"
    ]
    assert [p.type for p in silent.received] == [mqtt.CONNECT, mqtt.SUBSCRIBE, mqtt.PINGREQ]
    assert len(calls) == 2


# --------------------------------------------------------------------------
# TLS and messages


def test_the_first_certificate_of_a_pem_file_is_the_one_trusted():
    a = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
    b = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----"
    assert statusreader.first_certificate(f"junk\n{a}\n{b}\n") == a + "\n"
    assert statusreader.first_certificate("no certificate here") is None
    assert statusreader.first_certificate("-----BEGIN CERTIFICATE-----\ncut") is None


def test_tls_failures_are_said_as_the_twisted_path_says_them():
    wrong_name = ssl.SSLCertVerificationError("certificate verify failed")
    wrong_name.verify_code, wrong_name.verify_message = 64, "IP address mismatch"
    assert statusreader.describe_tls_error(wrong_name, "127.0.0.1", "/h/tls/ca.pem") == (
        "the broker's certificate is not valid for 127.0.0.1 (it names other hosts)"
    )
    other_ca = ssl.SSLCertVerificationError("certificate verify failed")
    other_ca.verify_code, other_ca.verify_message = 20, "unable to get local issuer certificate"
    assert statusreader.describe_tls_error(other_ca, "h", "/h/tls/ca.pem") == (
        "the broker's certificate did not verify against /h/tls/ca.pem (unable to get local issuer certificate)"
    )
    assert statusreader.describe_tls_error(ConnectionResetError(104, "Connection reset by peer"), "h", "") == (
        "TLS handshake failed (Connection reset by peer): does it speak TLS, with a certificate of this network?"
    )


def test_a_damaged_ca_file_is_the_tls_modules_own_error(tmp_path):
    from oneos.security.tls import TLSError

    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate")
    with pytest.raises(TLSError, match="is not a PEM certificate"):
        statusreader.tls_context(ca)
    assert statusreader.tls_context(tmp_path / "absent.pem")[1] == "the system's trust store"
