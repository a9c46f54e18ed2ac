"""Bad MQTT input, byte by byte (mqtt_raw.py), checked against Mosquitto 2.0.11.

Every case must end with the broker closing that connection. What it may send
first:

* MQTT 3.1.1 has no server DISCONNECT: nothing at all (except a CONNACK with a
  refusal code for a CONNECT it can read but not accept).
* MQTT 5: where Mosquitto sends DISCONNECT with a reason code before closing
  (0x81 Malformed Packet or 0x82 Protocol Error), the test requires a DISCONNECT
  with one of the codes the spec allows for the case. Where Mosquitto just closes
  the socket (bad Remaining Length, second CONNECT, duplicate property, AUTH
  without enhanced authentication), the test accepts a plain close or a
  DISCONNECT 0x81/0x82. Before a CONNACK nothing but a CONNACK may be sent.

Things Mosquitto 2.0.11 lets through although the spec calls them errors (PINGREQ
with reserved flag bits, a Subscription Identifier sent by a client in PUBLISH,
No Local on a shared subscription) are not tested.

After each case a bystander connection, open since the module started, must still
work and must not have been disconnected.
"""

from __future__ import annotations

import uuid

import pytest

import mqtt_raw as raw
from conftest import MqttClient, topic_prefix, unique, wait_until

V4, V5 = 4, 5

# reason codes a v5 DISCONNECT may carry for a bad packet
MALFORMED_OR_PROTOCOL = {raw.RC_MALFORMED, raw.RC_PROTOCOL_ERROR}
TOPIC_INVALID = {raw.RC_MALFORMED, raw.RC_PROTOCOL_ERROR, raw.RC_TOPIC_NAME_INVALID}

STRICT = "strict"  # v5: a DISCONNECT with an allowed reason, then close (Mosquitto does so)
LENIENT = "lenient"  # v5: a plain close, or such a DISCONNECT first (Mosquitto just closes)


@pytest.fixture(scope="module")
def bystander(mqtt_broker):
    """A v5 client connected for the whole module, subscribed to its own topic."""
    c = MqttClient(mqtt_broker, unique("bystander"), v5=True)
    c.connect(keepalive=30)
    topic = f"{topic_prefix()}/bystander"
    c.subscribe(topic, 1)
    c.topic = topic
    yield c
    c.close()


def check_bystander(c: MqttClient) -> None:
    assert c.disconnect_rc is None, f"the bystander was disconnected (reason {c.disconnect_rc})"
    marker = uuid.uuid4().hex.encode()
    c.publish(c.topic, marker, 1)
    assert wait_until(lambda: marker in c.payloads(), 5), "the bystander stopped getting messages"


def open_raw(mqtt_broker, version: int | None) -> raw.RawClient:
    """A raw connection, already past CONNECT/CONNACK unless version is None."""
    c = raw.RawClient(mqtt_broker.host, mqtt_broker.port, username=mqtt_broker.username,
                      password=mqtt_broker.password)
    if version is not None:
        c.handshake(unique("bad"), version=version)
    return c


def expect_closed(c: raw.RawClient, version: int, mode: str, allowed: set[int] = MALFORMED_OR_PROTOCOL) -> list:
    got = c.packets_until_closed(5)
    assert got is not None, "the broker kept the connection open after bad input"
    if version == V4:
        assert got == [], f"3.1.1: nothing may be sent before the close, got {got}"
        return got
    reasons = [raw.parse_disconnect(p)[0] if p.type == raw.DISCONNECT else p for p in got]
    if mode == STRICT:
        assert len(reasons) == 1 and reasons[0] in allowed, \
            f"v5: expected DISCONNECT with one of {sorted(hex(r) for r in allowed)} then close, got {got}"
    else:
        assert reasons == [] or (len(reasons) == 1 and reasons[0] in allowed), \
            f"v5: expected a close, optionally after DISCONNECT {sorted(hex(r) for r in allowed)}, got {got}"
    return got


def props_v(version: int) -> bytes:
    """An empty property block in v5, nothing in 3.1.1."""
    return raw.properties() if version == V5 else b""


# (id, builder(version) -> bytes, v5 mode, allowed v5 reasons)
CASES = [
    # Remaining Length in 5 bytes: the spec's maximum is 4
    ("remaining-length-5-bytes", lambda v: bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]), LENIENT, MALFORMED_OR_PROTOCOL),
    # SUBSCRIBE fixed-header flags must be 0b0010
    ("subscribe-flags-0000", lambda v: raw.subscribe(1, [("a/b", 0)], version=v, flags=0x0), STRICT, MALFORMED_OR_PROTOCOL),
    ("subscribe-flags-0011", lambda v: raw.subscribe(1, [("a/b", 0)], version=v, flags=0x3), STRICT, MALFORMED_OR_PROTOCOL),
    ("unsubscribe-flags-0000", lambda v: raw.packet(raw.UNSUBSCRIBE, b"\x00\x01" + props_v(v) + raw.string("a"), 0),
     STRICT, MALFORMED_OR_PROTOCOL),
    # topic names and filters are UTF-8 without U+0000
    ("publish-topic-invalid-utf8", lambda v: raw.publish(b"a/\xff\xfe", b"x", version=v), STRICT, TOPIC_INVALID),
    ("publish-topic-overlong-utf8", lambda v: raw.publish(b"a/\xc0\xaf", b"x", version=v), STRICT, TOPIC_INVALID),
    ("subscribe-filter-invalid-utf8", lambda v: raw.subscribe(1, [(b"a/\xc3\x28", 0)], version=v), STRICT, MALFORMED_OR_PROTOCOL),
    ("publish-topic-nul", lambda v: raw.publish(b"a/\x00b", b"x", version=v), STRICT, TOPIC_INVALID),
    ("subscribe-filter-nul", lambda v: raw.subscribe(1, [(b"a/\x00b", 0)], version=v), STRICT, MALFORMED_OR_PROTOCOL),
    # SUBSCRIBE needs a non-zero packet id and at least one filter with QoS <= 2
    ("subscribe-packet-id-0", lambda v: raw.subscribe(0, [("a/b", 0)], version=v), STRICT, MALFORMED_OR_PROTOCOL),
    ("subscribe-no-filters", lambda v: raw.subscribe(1, [], version=v), STRICT, MALFORMED_OR_PROTOCOL),
    ("subscribe-qos-3", lambda v: raw.subscribe(1, [("a/b", 3)], version=v), STRICT, MALFORMED_OR_PROTOCOL),
    ("subscribe-truncated", lambda v: raw.packet(raw.SUBSCRIBE, b"\x00\x01" + props_v(v) + b"\x00\x05ab", 2),
     STRICT, MALFORMED_OR_PROTOCOL),
    # PUBLISH with QoS 3 (both QoS bits set)
    ("publish-qos-3", lambda v: raw.packet(raw.PUBLISH, raw.string("a/b") + b"\x00\x01" + props_v(v) + b"x", 0x6),
     STRICT, MALFORMED_OR_PROTOCOL),
    # wildcards (and an empty name) are for filters, never for a PUBLISH topic
    ("publish-topic-hash", lambda v: raw.publish("a/#", b"x", version=v), STRICT, TOPIC_INVALID),
    ("publish-topic-plus", lambda v: raw.publish("a/+/c", b"x", qos=1, version=v), STRICT, TOPIC_INVALID),
    ("publish-topic-empty", lambda v: raw.publish("", b"x", version=v), STRICT, TOPIC_INVALID),
    # a second CONNECT on a connection
    ("second-connect", lambda v: raw.connect(unique("again"), version=v), LENIENT, MALFORMED_OR_PROTOCOL),
    # packet type 0 is reserved
    ("packet-type-0", lambda v: raw.packet(0, b""), STRICT, MALFORMED_OR_PROTOCOL),
]


@pytest.mark.parametrize("version", [V4, V5], ids=["v311", "v5"])
@pytest.mark.parametrize("build,mode,allowed", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_packet_closes_connection(mqtt_broker, bystander, version, build, mode, allowed):
    with open_raw(mqtt_broker, version) as c:
        c.send(build(version))
        expect_closed(c, version, mode, allowed)
    check_bystander(bystander)


def test_v5_duplicate_property_in_publish(mqtt_broker, bystander):
    """A property that may appear once, twice: Protocol Error (Mosquitto: plain close)."""
    dup = raw.properties(raw.prop("message_expiry_interval", 10), raw.prop("message_expiry_interval", 20))
    with open_raw(mqtt_broker, V5) as c:
        c.send(raw.publish(f"{topic_prefix()}/d", b"x", version=V5, props=dup))
        expect_closed(c, V5, LENIENT)
    with open_raw(mqtt_broker, V5) as c:
        dup = raw.properties(raw.prop("content_type", "a"), raw.prop("content_type", "b"))
        c.send(raw.publish(f"{topic_prefix()}/d", b"x", version=V5, props=dup))
        expect_closed(c, V5, LENIENT)
    check_bystander(bystander)


def test_v5_duplicate_property_in_connect(mqtt_broker, bystander):
    """Mosquitto closes without a CONNACK; a CONNACK may only refuse (0x81/0x82)."""
    dup = raw.properties(raw.prop("session_expiry_interval", 10), raw.prop("session_expiry_interval", 20))
    with open_raw(mqtt_broker, None) as c:
        c.send(raw.connect(unique("dupprop"), version=V5, props=dup, **auth_kw(mqtt_broker)))
        got = c.packets_until_closed(5)
        assert got is not None, "connection left open"
        assert [raw.parse_connack(p, V5).code for p in got] in ([], [0x81], [0x82]), got
    check_bystander(bystander)


def test_v5_unknown_property_and_topic_alias_zero(mqtt_broker, bystander):
    """An undefined property id, and Topic Alias 0, both answered DISCONNECT (Mosquitto: 0x81)."""
    with open_raw(mqtt_broker, V5) as c:
        c.send(raw.publish("a/b", b"x", version=V5, props=b"\x02\x7f\x00"))  # property 0x7F
        expect_closed(c, V5, STRICT)
    with open_raw(mqtt_broker, V5) as c:
        c.send(raw.publish("a/b", b"x", version=V5, props=raw.properties(raw.prop("topic_alias", 0))))
        expect_closed(c, V5, STRICT, MALFORMED_OR_PROTOCOL | {0x94})  # 0x94 Topic Alias invalid
    with open_raw(mqtt_broker, V5) as c:  # an alias that was never set, with an empty topic
        c.send(raw.publish("", b"x", version=V5, props=raw.properties(raw.prop("topic_alias", 3))))
        expect_closed(c, V5, STRICT, MALFORMED_OR_PROTOCOL | {0x94})
    check_bystander(bystander)


def test_v5_subscribe_bad_options(mqtt_broker, bystander):
    """Reserved subscription option bits, and Retain Handling 3."""
    for opts in (0xC1, 0x31):
        with open_raw(mqtt_broker, V5) as c:
            c.send(raw.subscribe(1, [("a/b", opts)], version=V5))
            expect_closed(c, V5, STRICT)
    check_bystander(bystander)


def test_v5_auth_packet_without_auth_method(mqtt_broker, bystander):
    with open_raw(mqtt_broker, V5) as c:
        c.send(raw.packet(raw.AUTH, b""))
        expect_closed(c, V5, LENIENT)
    check_bystander(bystander)


def auth_kw(mqtt_broker) -> dict:
    if mqtt_broker.username is None:
        return {}
    return {"username": mqtt_broker.username, "password": mqtt_broker.password}


# --------------------------------------------------------------------------- before CONNACK


@pytest.mark.parametrize("first", [
    pytest.param(lambda: raw.subscribe(1, [("a/b", 0)]), id="subscribe"),
    pytest.param(lambda: raw.publish("a/b", b"x"), id="publish"),
    pytest.param(lambda: raw.pingreq(), id="pingreq"),
    pytest.param(lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
])
def test_first_packet_not_connect(mqtt_broker, bystander, first):
    """Closed with nothing sent: there is no CONNACK to answer and no session for a DISCONNECT."""
    with open_raw(mqtt_broker, None) as c:
        c.send(first())
        got = c.packets_until_closed(5)
        assert got == [], f"expected a plain close, got {got}"
    check_bystander(bystander)


@pytest.mark.parametrize("level", [0, 2, 6, 255])
def test_unknown_protocol_level(mqtt_broker, bystander, level):
    """CONNACK 0x01 unacceptable protocol version (Mosquitto's answer, in the 3.1.1 format, even
    for levels above 5) or 0x84 Unsupported Protocol Version (v5 format), then close."""
    with open_raw(mqtt_broker, None) as c:
        c.send(raw.connect(unique("lvl"), version=level, **auth_kw(mqtt_broker)))
        got = c.packets_until_closed(5)
        assert got is not None, "connection left open after an unknown protocol level"
        assert len(got) == 1 and got[0].type == raw.CONNACK, got
        assert got[0].body[1] in (0x01, 0x84), got
        if got[0].body[1] == 0x01:
            assert got[0].body == b"\x00\x01", "CONNACK 0x01 is the 3.1.1 form: two bytes, no properties"
    check_bystander(bystander)


def test_bad_protocol_name(mqtt_broker, bystander):
    """Protocol name 'MQTX' (Mosquitto: plain close; a refusing CONNACK would do too)."""
    for version in (V4, V5):
        with open_raw(mqtt_broker, None) as c:
            c.send(raw.connect(unique("name"), version=version, protocol_name=b"MQTX", **auth_kw(mqtt_broker)))
            got = c.packets_until_closed(5)
            assert got is not None, "connection left open"
            assert all(p.type == raw.CONNACK and p.body[1] != 0 for p in got) and len(got) <= 1, got
    check_bystander(bystander)


def test_connect_reserved_flag(mqtt_broker, bystander):
    """The reserved bit of the CONNECT flags must be 0 (Mosquitto: plain close, no CONNACK)."""
    for version in (V4, V5):
        with open_raw(mqtt_broker, None) as c:
            c.send(raw.connect(unique("rsv"), version=version, reserved_flag=True, **auth_kw(mqtt_broker)))
            got = c.packets_until_closed(5)
            assert got is not None, "connection left open"
            assert all(p.type == raw.CONNACK and p.body[1] != 0 for p in got) and len(got) <= 1, got
    check_bystander(bystander)


def test_many_bad_connections_leave_broker_working(mqtt_broker, bystander):
    """A burst of garbage connections; the broker keeps serving the bystander and new clients."""
    socks = []
    try:
        for i in range(20):
            c = open_raw(mqtt_broker, None)
            c.send(bytes([0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]) if i % 2 else b"\x00" * 64)
            socks.append(c)
        for c in socks:
            assert c.packets_until_closed(5) is not None
    finally:
        for c in socks:
            c.close()
    check_bystander(bystander)
    with open_raw(mqtt_broker, V5) as c:
        c.send(raw.pingreq())
        assert c.read_packet().type == raw.PINGRESP
