"""Queue features RabbitMQ users set through x-arguments and properties: message TTL,
per-message expiration, dead-lettering (with x-death), length limits, queue expiry,
message priorities and consumer priorities."""

from __future__ import annotations

import time

import pika
import pytest

from conftest import drain, get_one, message_count, settle, unique, wait_message_count


def excl(ch, **kw) -> str:
    return ch.queue_declare("", exclusive=True, **kw).method.queue


def bodies(ch, q) -> list[bytes]:
    out = []
    while True:
        m, _, b = ch.basic_get(q, auto_ack=True)
        if m is None:
            return out
        out.append(b)


def test_queue_message_ttl(ch):
    q = excl(ch, arguments={"x-message-ttl": 150})
    ch.basic_publish("", q, b"short-lived")
    assert wait_message_count(ch, q, 1) == 1
    time.sleep(0.4)
    assert ch.basic_get(q) == (None, None, None)
    assert message_count(ch, q) == 0


def test_per_message_expiration(ch):
    q = excl(ch)
    ch.basic_publish("", q, b"expires", properties=pika.BasicProperties(expiration="150"))
    ch.basic_publish("", q, b"stays")
    time.sleep(0.4)
    # RabbitMQ drops an expired message when it reaches the head of the queue
    assert bodies(ch, q) == [b"stays"]


def test_ttl_zero_delivers_to_a_waiting_consumer_only(conn, ch):
    q = excl(ch, arguments={"x-message-ttl": 0})
    ch.basic_publish("", q, b"nobody waiting")
    time.sleep(0.1)
    assert ch.basic_get(q) == (None, None, None)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"consumer waiting")
    assert drain(conn, lambda: got)
    assert got == [b"consumer waiting"]


def test_dead_letter_on_reject_with_x_death(ch):
    dlx = unique("dlx")
    ch.exchange_declare(dlx, "direct", auto_delete=True)
    dead = excl(ch)
    ch.queue_bind(dead, dlx, "dead")
    work = excl(ch, arguments={"x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"})
    ch.basic_publish("", work, b"poison", properties=pika.BasicProperties(headers={"app": "x"}))
    m, _, _ = get_one(ch, work, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, props, body = get_one(ch, dead)
    assert body == b"poison"
    assert m.exchange == dlx and m.routing_key == "dead"
    assert props.headers["app"] == "x"
    death = props.headers["x-death"]
    assert isinstance(death, list) and len(death) == 1
    d = death[0]
    assert d["queue"] == work and d["reason"] == "rejected" and d["count"] == 1
    assert d["exchange"] == "" and d["routing-keys"] == [work]
    assert props.headers["x-first-death-reason"] == "rejected"
    assert props.headers["x-first-death-queue"] == work


def test_dead_letter_on_expiry_keeps_routing_key(ch):
    dlx = unique("dlx")
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    dead = excl(ch)
    ch.queue_bind(dead, dlx)
    work = excl(ch, arguments={"x-dead-letter-exchange": dlx, "x-message-ttl": 100})
    ch.basic_publish("", work, b"too slow")
    m, props, body = get_one(ch, dead, timeout=5)
    assert body == b"too slow"
    assert m.routing_key == work  # no x-dead-letter-routing-key: the original key
    assert props.headers["x-death"][0]["reason"] == "expired"
    # the per-queue TTL does not become a per-message expiration
    assert props.expiration is None


def test_max_length_drops_head(ch):
    q = excl(ch, arguments={"x-max-length": 2})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, f"m{i}".encode())
    assert bodies(ch, q) == [b"m3", b"m4"]


def test_max_length_reject_publish_nacks(ch):
    q = excl(ch, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"fits")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"overflows")
    assert bodies(ch, q) == [b"fits"]


def test_max_length_dead_letters_dropped_head(ch):
    dlx = unique("dlx")
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    dead = excl(ch)
    ch.queue_bind(dead, dlx)
    q = excl(ch, arguments={"x-max-length": 1, "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"old")
    ch.basic_publish("", q, b"new")
    m, props, body = get_one(ch, dead)
    assert body == b"old" and props.headers["x-death"][0]["reason"] == "maxlen"
    assert bodies(ch, q) == [b"new"]


def test_priority_queue(ch):
    q = excl(ch, arguments={"x-max-priority": 10})
    ch.confirm_delivery()
    for body, prio in [(b"low", 1), (b"none", None), (b"high", 9), (b"mid", 5), (b"over-max", 200)]:
        ch.basic_publish("", q, body, properties=pika.BasicProperties(priority=prio))
    # above x-max-priority counts as the maximum (10, so ahead of 9); no priority counts as 0
    assert bodies(ch, q) == [b"over-max", b"high", b"mid", b"low", b"none"]


def test_priority_ignored_without_max_priority(ch):
    q = excl(ch)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"first", properties=pika.BasicProperties(priority=1))
    ch.basic_publish("", q, b"second", properties=pika.BasicProperties(priority=9))
    assert bodies(ch, q) == [b"first", b"second"]


def test_consumer_priority(conn, ch):
    q = excl(ch)
    low, high = [], []
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, lambda c, m, p, b: low.append(m.delivery_tag), arguments={"x-priority": 1})
    ch.basic_consume(q, lambda c, m, p, b: high.append(m.delivery_tag), arguments={"x-priority": 10})
    pub = conn.channel()
    pub.confirm_delivery()
    for i in range(3):
        pub.basic_publish("", q, f"m{i}".encode())
    drain(conn, lambda: len(high) + len(low) >= 2)
    settle(conn, 0.2)
    # the high-priority consumer gets a message first; the low one only when the high one is full
    assert len(high) == 1 and len(low) == 1, (high, low)
    ch.basic_ack(high[0])
    drain(conn, lambda: len(high) >= 2)
    settle(conn, 0.1)
    assert len(high) == 2 and len(low) == 1


def test_passive_declare_counts_as_use_for_x_expires(broker):
    c = broker.connect()
    ch = c.channel()
    q = unique("expires")
    ch.queue_declare(q, arguments={"x-expires": 400})
    for _ in range(6):  # 0.9 s in all, never 0.4 s without a declare
        time.sleep(0.15)
        ch.queue_declare(q, passive=True)
    ch.queue_delete(q)
    c.close()


def test_queue_expires_when_unused(broker):
    c = broker.connect()
    ch = c.channel()
    q = unique("expires")
    ch.queue_declare(q, arguments={"x-expires": 200})
    ch.queue_declare(q, passive=True)  # still there right after declaring
    # Every queue.declare, passive too, counts as a use and restarts the expiry timer in
    # RabbitMQ, so poll less often than x-expires.
    deadline = time.monotonic() + 5
    while True:
        time.sleep(0.4)
        try:
            ch.queue_declare(q, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404
            break
        assert time.monotonic() < deadline, "queue with x-expires=200 still exists after 5 s"
    c.close()
