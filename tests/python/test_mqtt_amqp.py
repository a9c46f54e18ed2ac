"""MQTT <-> AMQP 0-9-1 on one broker, as RabbitMQ's MQTT plugin does it.

Validated against RabbitMQ 3.10.8 with rabbitmq_mqtt (MQTT 3.1.1 only):
MQTT publishes go to the vhost's ``amq.topic`` with the topic's ``/`` turned into
``.``; an MQTT subscription is a binding of ``amq.topic`` (``+`` is ``*``, ``#`` is
``#``) to the session's queue (``mqtt-subscription-<client id>qos<0|1>``); QoS 1 is
a persistent message (delivery_mode 2), QoS 0 a transient one; the vhost comes from
a ``vhost:username`` login.

The MQTT 5 mapping tests (properties <-> AMQP basic properties and headers) follow
RabbitMQ 3.13's documented conversions (docs/conversions "MQTT 5.0 -> AMQP 0.9.1"
and "AMQP 0.9.1 -> MQTT 5.0"); RabbitMQ 3.10 has no MQTT 5, so they are Liebre-only.

Runs against Liebre, or against an external broker when both LIEBRE_TEST_AMQP_URL
and LIEBRE_TEST_MQTT_URL (of that same broker) are given.
"""

from __future__ import annotations

import time

import pika
import pytest

import mqtt_raw as raw
from conftest import get_one, topic_prefix, unique, wait_message_count


def key(topic: str) -> str:
    """The AMQP routing key of an MQTT topic (RabbitMQ's mapping)."""
    return topic.replace("/", ".")


@pytest.fixture
def amqp(amqp_mqtt, connect):
    """An AMQP channel on the broker under test."""
    return connect().channel()


@pytest.fixture
def prefix() -> str:
    return topic_prefix()


def bound_queue(ch, *keys: str, exchange: str = "amq.topic") -> str:
    q = ch.queue_declare("", exclusive=True).method.queue
    for k in keys:
        ch.queue_bind(q, exchange, k)
    return q


def header(props, name):
    v = (props.headers or {}).get(name)
    return v.decode() if isinstance(v, bytes) else v


# --------------------------------------------------------------------------- MQTT -> AMQP


@pytest.mark.parametrize("qos", [0, 1])
def test_mqtt_publish_reaches_amqp_queue_on_amq_topic(amqp, mqtt, prefix, qos):
    q = bound_queue(amqp, key(f"{prefix}/a/b/c"))
    mqtt().publish(f"{prefix}/a/b/c", f"hello-{qos}", qos)
    method, props, body = get_one(amqp, q)
    assert body == f"hello-{qos}".encode()
    assert method.exchange == "amq.topic"
    assert method.routing_key == key(f"{prefix}/a/b/c")
    if qos == 1:
        assert props.delivery_mode == 2, "QoS 1 must become a persistent AMQP message"
    else:
        assert props.delivery_mode in (None, 1), "QoS 0 is a transient AMQP message"


def test_mqtt_topic_levels_map_to_amqp_words(amqp, mqtt, prefix):
    """AMQP '*' and '#' bindings see MQTT levels as words; an empty level is an empty word."""
    star = bound_queue(amqp, key(f"{prefix}/*/c"))
    hash_ = bound_queue(amqp, key(f"{prefix}/#"))
    c = mqtt()
    c.publish(f"{prefix}/b/c", "one-level", 1)
    c.publish(f"{prefix}/b/x/c", "two-levels", 1)
    c.publish(f"{prefix}//c", "empty-level", 1)
    got = [get_one(amqp, hash_) for _ in range(3)]
    assert [(m.routing_key, b) for m, _, b in got] == [
        (key(f"{prefix}/b/c"), b"one-level"),
        (key(f"{prefix}/b/x/c"), b"two-levels"),
        (key(prefix) + "..c", b"empty-level"),
    ]
    assert wait_message_count(amqp, star, 2) == 2
    assert get_one(amqp, star)[2] == b"one-level"
    assert get_one(amqp, star)[2] == b"empty-level"


def test_mqtt_retained_publish_is_routed_too(amqp, mqtt, prefix):
    q = bound_queue(amqp, key(f"{prefix}/state"))
    c = mqtt()
    c.publish(f"{prefix}/state", "on", 1, retain=True)
    assert get_one(amqp, q)[2] == b"on"
    c.publish(f"{prefix}/state", b"", 1, retain=True)  # delete it again


# --------------------------------------------------------------------------- AMQP -> MQTT


def test_amqp_publish_reaches_mqtt_wildcard_subscribers(amqp, mqtt, prefix):
    plus, hash_, exact, other = mqtt(), mqtt(), mqtt(), mqtt()
    plus.subscribe(f"{prefix}/a/+/c", 1)
    hash_.subscribe(f"{prefix}/a/#", 1)
    exact.subscribe(f"{prefix}/a/b/c", 0)
    other.subscribe(f"{prefix}/a/+", 1)  # one level only: must not match a/b/c
    amqp.basic_publish("amq.topic", key(f"{prefix}/a/b/c"), b"from-amqp",
                       pika.BasicProperties(delivery_mode=2))
    for c, qos in ((plus, 1), (hash_, 1), (exact, 0)):
        m = c.wait_messages(1)[0]
        assert (m.topic, m.payload, m.qos, m.retain) == (f"{prefix}/a/b/c", b"from-amqp", qos, False)
    amqp.basic_publish("amq.topic", key(f"{prefix}/a/x"), b"sentinel")
    assert other.wait_messages(1)[0].payload == b"sentinel"
    other.settle(0.1)
    assert other.payloads() == [b"sentinel"]


def test_amqp_message_properties_do_not_break_mqtt_311_delivery(amqp, mqtt, prefix):
    c = mqtt()
    c.subscribe(f"{prefix}/#", 1)
    props = pika.BasicProperties(content_type="application/json", correlation_id="c-1", reply_to="somewhere",
                                 headers={"trace": "abc", "n": 7}, message_id="m-1", priority=3,
                                 delivery_mode=2)
    amqp.basic_publish("amq.topic", key(f"{prefix}/x/y"), b'{"ok":true}', props)
    m = c.wait_messages(1)[0]
    assert (m.topic, m.payload, m.qos) == (f"{prefix}/x/y", b'{"ok":true}', 1)


def test_mqtt_subscriber_sees_amq_topic_only(amqp, mqtt, prefix, cleanup):
    """Other exchanges never reach MQTT, whatever their routing key."""
    c = mqtt()
    c.subscribe(f"{prefix}/#", 1)
    k = key(f"{prefix}/t")
    own = cleanup.exchange(unique("liebre-test-x"))
    amqp.exchange_declare(own, "topic", auto_delete=True)
    for exchange in ("amq.direct", "amq.fanout", "amq.match", own, ""):
        amqp.basic_publish(exchange, k, f"via-{exchange or 'default'}".encode())
    amqp.basic_publish("amq.topic", k, b"via-amq.topic")
    c.wait_messages(1)
    c.settle(0.2)
    assert c.payloads() == [b"via-amq.topic"]


def test_mqtt_to_mqtt_still_works_beside_amqp(amqp, mqtt, prefix):
    """Both directions at once through the same topic: AMQP and MQTT publishers, both consumers."""
    q = bound_queue(amqp, key(f"{prefix}/chat"))
    sub = mqtt()
    sub.subscribe(f"{prefix}/chat", 1)
    mqtt().publish(f"{prefix}/chat", "from-mqtt", 1)
    amqp.basic_publish("amq.topic", key(f"{prefix}/chat"), b"from-amqp", pika.BasicProperties(delivery_mode=2))
    sub.wait_messages(2)
    assert sorted(sub.payloads()) == [b"from-amqp", b"from-mqtt"]
    assert wait_message_count(amqp, q, 2) == 2


# --------------------------------------------------------------------------- sessions are queues


def test_persistent_session_is_a_queue_bound_to_amq_topic(amqp, mqtt, prefix):
    """clean_session=False + QoS 1: RabbitMQ's queue ``mqtt-subscription-<id>qos1`` holds the
    backlog while the client is away (list_queues shows it); a clean session deletes it."""
    cid = unique("session")
    qname = f"mqtt-subscription-{cid}qos1"
    c = mqtt(cid, clean=False)
    c.subscribe(f"{prefix}/jobs/+", 1)
    c.disconnect()
    for i in range(3):
        amqp.basic_publish("amq.topic", key(f"{prefix}/jobs/{i}"), f"job-{i}".encode(),
                           pika.BasicProperties(delivery_mode=2))
    assert wait_message_count(amqp, qname, 3) == 3, f"{qname} should hold the offline backlog"
    back = mqtt(cid, clean=False)
    assert back.session_present
    got = back.wait_messages(3)
    assert [m.payload for m in got] == [b"job-0", b"job-1", b"job-2"]
    back.disconnect()
    mqtt(cid, clean=True).disconnect()
    conn_ch = amqp.connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        conn_ch.queue_declare(qname, passive=True)
    assert e.value.reply_code == 404


# --------------------------------------------------------------------------- login


def test_login_vhost_username(amqp_mqtt):
    """``vhost:username`` picks the vhost; unknown vhosts and bad passwords are refused
    (RabbitMQ 3.10: CONNACK 0x04; 0x05 not authorized is accepted too)."""
    _, mb = amqp_mqtt
    cases = [
        ({"username": "guest", "password": "guest"}, (0,)),
        ({"username": "/:guest", "password": "guest"}, (0,)),
        ({"username": f"{unique('novhost')}:guest", "password": "guest"}, (4, 5)),
        ({"username": "guest", "password": "wrong"}, (4, 5)),
    ]
    for kw, codes in cases:
        with raw.RawClient(mb.host, mb.port) as c:
            c.send(raw.connect(unique("login"), **kw))
            ack = raw.parse_connack(c.read_packet())
            assert ack.code in codes, (kw, ack)
            if ack.code:
                assert c.packets_until_closed(5) == [], "a refused login must be closed"


def test_vhost_login_publishes_into_that_vhost(amqp, amqp_mqtt, prefix):
    """A '/:guest' MQTT login publishes to amq.topic of vhost '/', where the AMQP side is."""
    broker, mb = amqp_mqtt
    q = bound_queue(amqp, key(f"{prefix}/v"))
    with raw.RawClient(mb.host, mb.port) as c:
        c.handshake(unique("vh"), username=f"{broker.vhost}:{broker.username}", password=broker.password)
        c.send(raw.publish(f"{prefix}/v", b"in-vhost", qos=1, packet_id=1))
        ack = c.read_packet()
        assert ack.type == raw.PUBACK, ack
    assert get_one(amqp, q)[2] == b"in-vhost"


# --------------------------------------------------------------------------- MQTT 5 (Liebre-only)


@pytest.mark.liebre_only
def test_v5_properties_to_amqp(amqp, mqtt, prefix):
    """MQTT 5 -> AMQP 0-9-1 as RabbitMQ 3.13: Content Type -> content_type, Correlation Data
    -> correlation_id, Response Topic -> header x-reply-to-topic (AMQP form), User
    Properties -> headers, Message Expiry Interval s -> expiration ms, QoS 1 -> persistent."""
    q = bound_queue(amqp, key(f"{prefix}/req"))
    mqtt(v5=True).publish(f"{prefix}/req", '{"op":"sum"}', 1, ContentType="application/json",
                          CorrelationData=b"req-42", ResponseTopic=f"{prefix}/reply/here",
                          UserProperty=[("b", "2"), ("a", "1")], MessageExpiryInterval=60)
    method, props, body = get_one(amqp, q)
    assert body == b'{"op":"sum"}'
    assert props.delivery_mode == 2
    assert props.content_type == "application/json"
    assert props.correlation_id == "req-42"
    assert props.expiration == "60000"
    assert header(props, "x-reply-to-topic") == key(f"{prefix}/reply/here")
    assert header(props, "a") == "1" and header(props, "b") == "2"


@pytest.mark.liebre_only
def test_v5_properties_from_amqp(amqp, mqtt, prefix):
    """AMQP 0-9-1 -> MQTT 5 as RabbitMQ 3.13: content_type -> Content Type, correlation_id ->
    Correlation Data, header x-reply-to-topic -> Response Topic (MQTT form), other headers ->
    User Properties, expiration ms -> Message Expiry Interval s, delivery_mode 2 -> QoS 1."""
    c = mqtt(v5=True)
    c.subscribe(f"{prefix}/reply/#", 1)
    amqp.basic_publish("amq.topic", key(f"{prefix}/reply/x"), b"42", pika.BasicProperties(
        content_type="text/plain", correlation_id="req-42", expiration="60000", delivery_mode=2,
        headers={"x-reply-to-topic": key(f"{prefix}/back"), "trace": "abc"}))
    m = c.wait_messages(1)[0]
    assert (m.topic, m.payload, m.qos) == (f"{prefix}/reply/x", b"42", 1)
    assert m.props.get("content_type") == "text/plain"
    assert m.props.get("correlation_data") == b"req-42"
    assert m.props.get("response_topic") == f"{prefix}/back"
    assert ("trace", "abc") in (m.props.get("user_property") or [])
    assert 0 < m.props.get("message_expiry_interval", 0) <= 60


@pytest.mark.liebre_only
def test_v5_request_reply_between_mqtt_and_amqp(amqp, mqtt, prefix):
    """An MQTT 5 requester and an AMQP responder that answers to x-reply-to-topic."""
    q = bound_queue(amqp, key(f"{prefix}/service/sum"))
    requester = mqtt(v5=True)
    requester.subscribe(f"{prefix}/replies/me", 1)
    requester.publish(f"{prefix}/service/sum", "1+2", 1, ResponseTopic=f"{prefix}/replies/me",
                      CorrelationData=b"r1")
    _, props, body = get_one(amqp, q)
    assert body == b"1+2"
    amqp.basic_publish("amq.topic", header(props, "x-reply-to-topic"), b"3",
                       pika.BasicProperties(correlation_id=props.correlation_id, delivery_mode=2))
    m = requester.wait_messages(1)[0]
    assert (m.topic, m.payload, m.props.get("correlation_data")) == (f"{prefix}/replies/me", b"3", b"r1")


@pytest.mark.liebre_only
def test_v5_expired_message_not_delivered_to_amqp(amqp, mqtt, prefix):
    q = bound_queue(amqp, key(f"{prefix}/ttl"))
    pub = mqtt(v5=True)
    pub.publish(f"{prefix}/ttl", "short", 1, MessageExpiryInterval=1)
    pub.publish(f"{prefix}/ttl", "long", 1, MessageExpiryInterval=300)
    time.sleep(1.5)
    assert get_one(amqp, q)[2] == b"long"
    assert amqp.basic_get(q, auto_ack=True)[0] is None
