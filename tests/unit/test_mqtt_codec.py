"""The MQTT 3.1.1 codec is pure: bytes in, packets out."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oneos.pubsub import mqtt


def test_publish_round_trip_qos1_retained():
    data = mqtt.encode_publish("oneos/v1/x", b"hello", qos=1, retain=True, packet_id=7)
    [p] = mqtt.PacketParser().feed(data)
    assert (p.type, p.topic, p.payload, p.qos, p.retain, p.packet_id) == (
        mqtt.PUBLISH,
        "oneos/v1/x",
        b"hello",
        1,
        True,
        7,
    )


def test_connect_carries_will_and_keepalive():
    will = mqtt.Will("a/b", b"dead", qos=1, retain=True)
    data = mqtt.encode_connect("cid", 2, will=will)
    # fixed header, then "MQTT", level 4, flags: clean(0x02)|will(0x04)|qos1(0x08)|retain(0x20)
    assert data[2:8] == b"\x00\x04MQTT"
    assert data[8] == 4
    assert data[9] == 0x02 | 0x04 | 0x08 | 0x20
    assert data[10:12] == b"\x00\x02"
    assert data.endswith(b"\x00\x03a/b\x00\x04dead")


@given(st.binary(max_size=70000), st.integers(min_value=1, max_value=64))
def test_any_payload_survives_arbitrary_fragmentation(payload, step):
    data = mqtt.encode_publish("t", payload, qos=0)
    parser = mqtt.PacketParser()
    packets = []
    for i in range(0, len(data), step * 97):
        packets += parser.feed(data[i : i + step * 97])
    assert len(packets) == 1 and packets[0].payload == payload


def test_several_packets_in_one_chunk():
    data = mqtt.encode_simple(mqtt.PINGRESP) + mqtt.encode_ack(mqtt.PUBACK, 3) + mqtt.encode_suback(4, [1, 0x80])
    packets = mqtt.PacketParser().feed(data)
    assert [p.type for p in packets] == [mqtt.PINGRESP, mqtt.PUBACK, mqtt.SUBACK]
    assert packets[1].packet_id == 3
    assert packets[2].granted == (1, 0x80)


def test_oversize_packet_rejected_before_buffering():
    parser = mqtt.PacketParser(max_packet=1000)
    header = bytes([mqtt.PUBLISH << 4]) + bytes([0xFF, 0xFF, 0x7F])  # ~2 MiB declared
    with pytest.raises(mqtt.MalformedPacket):
        parser.feed(header)


def test_garbage_is_malformed_not_a_crash():
    with pytest.raises(mqtt.MalformedPacket):
        mqtt.PacketParser().feed(b"\xf0\x00")  # packet type 15 does not exist
    with pytest.raises(mqtt.MalformedPacket):
        mqtt.PacketParser().feed(b"\x30\xff\xff\xff\xff\x01")  # 5-byte length


@pytest.mark.parametrize(
    "topic_filter,topic,expected",
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a/b/c", True),
        ("a/#", "a", True),
        ("+/b", "a/b", True),
        ("a/b", "a/c", False),
        ("oneos/v1/runtimes/+/status", "oneos/v1/runtimes/rt-1/status", True),
    ],
)
def test_topic_matching(topic_filter, topic, expected):
    assert mqtt.topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a+/b", "x\x00"])
def test_bad_filters_rejected(bad):
    with pytest.raises(ValueError):
        mqtt.validate_filter(bad)


@pytest.mark.parametrize("bad", ["", "a/+", "a/#"])
def test_bad_publish_topics_rejected(bad):
    with pytest.raises(ValueError):
        mqtt.encode_publish(bad, b"")
