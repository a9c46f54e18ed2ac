"""RabbitMQ's AMQP 0-9-1 semantics beyond the tutorials, as pika users meet them."""

from __future__ import annotations

import datetime
import decimal
import os
import struct
import time

import pika
import pytest

import amqp_raw as raw
from conftest import drain, get_one, message_count, settle, unique, wait_message_count


def excl_queue(ch, **kw) -> str:
    return ch.queue_declare("", exclusive=True, **kw).method.queue


# --------------------------------------------------------------------------- publisher confirms


def test_confirms_publish_returns_normally(ch, cleanup):
    q = cleanup.queue(unique("confirms"))
    ch.queue_declare(q)
    ch.confirm_delivery()
    assert ch.basic_publish("", q, b"one") is None
    n = 300
    for i in range(n):
        ch.basic_publish("", q, f"m{i}".encode())
    # every publish was confirmed before basic_publish returned: all are in the queue
    assert message_count(ch, q) == n + 1
    # an unroutable message without `mandatory` is confirmed too (and dropped)
    ch.basic_publish("", unique("nowhere"), b"dropped")
    assert message_count(ch, q) == n + 1


def test_confirms_raw_delivery_tags_are_sequential(broker, cleanup):
    """confirm.select-ok, then acks (possibly multiple=true) cover tags 1..N exactly once."""
    q = cleanup.queue(unique("confirms-raw"))
    with raw.RawConnection(broker.host, broker.port) as c:
        c.handshake(vhost=broker.vhost)
        c.open_channel(1)
        c.send(raw.method_frame(1, raw.QUEUE_DECLARE, raw.queue_declare_args(q)))
        assert c.read_method().method == raw.QUEUE_DECLARE_OK
        c.send(raw.method_frame(1, (85, 10), b"\x00"))  # confirm.select nowait=false
        assert c.read_method().method == (85, 11)
        n = 50
        out = b""
        for i in range(n):
            out += raw.method_frame(1, raw.BASIC_PUBLISH, raw.basic_publish_args("", q))
            out += raw.content_header_frame(1, 3)
            out += raw.body_frame(1, b"abc")
        c.send(out)
        confirmed: set[int] = set()
        while len(confirmed) < n:
            f = c.read_method()
            assert f.method == (60, 80), f  # basic.ack
            tag, multiple = struct.unpack(">QB", f.payload[4:13])
            assert tag not in confirmed
            if multiple:
                new = {t for t in range(1, tag + 1) if t not in confirmed}
                assert new, f"multiple ack for {tag} confirms nothing new"
                confirmed |= new
            else:
                confirmed.add(tag)
        assert confirmed == set(range(1, n + 1))


def test_mandatory_unroutable_raises_unroutable_error(ch):
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as e:
        ch.basic_publish("", unique("no-such-queue"), b"lost?", mandatory=True)
    returned = e.value.messages
    assert len(returned) == 1
    assert returned[0].method.reply_code == 312
    assert returned[0].method.reply_text == "NO_ROUTE"
    assert returned[0].body == b"lost?"
    # the channel stays usable
    q = excl_queue(ch)
    ch.basic_publish("", q, b"routable", mandatory=True)
    assert get_one(ch, q)[2] == b"routable"


def test_mandatory_return_without_confirms(conn, ch):
    returns = []
    ch.add_on_return_callback(lambda chn, method, props, body: returns.append((method, props, body)))
    x = unique("mandatory-x")
    ch.exchange_declare(x, "direct", auto_delete=True)
    q = excl_queue(ch)
    ch.queue_bind(q, x, "bound")
    ch.basic_publish(x, "unbound", b"back to you", mandatory=True,
                     properties=pika.BasicProperties(message_id="r1"))
    ch.basic_publish(x, "bound", b"kept", mandatory=True)
    assert drain(conn, lambda: len(returns) >= 1)
    settle(conn, 0.1)
    assert len(returns) == 1
    method, props, body = returns[0]
    assert (method.reply_code, method.reply_text, method.exchange, method.routing_key) == \
        (312, "NO_ROUTE", x, "unbound")
    assert props.message_id == "r1" and body == b"back to you"
    assert get_one(ch, q)[2] == b"kept"
    ch.exchange_delete(x)


# --------------------------------------------------------------------------- direct reply-to


def test_direct_reply_to(connect):
    client_conn = connect()
    client = client_conn.channel()
    server_conn = connect()
    server = server_conn.channel()
    rpc_q = server.queue_declare("", exclusive=True).method.queue

    replies = []
    client.basic_consume("amq.rabbitmq.reply-to",
                         lambda ch, m, p, b: replies.append((m, p, b)), auto_ack=True)
    client.basic_publish("", rpc_q, b"ping",
                         properties=pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                                         correlation_id="c-1"))
    method, props, body = get_one(server, rpc_q)
    assert body == b"ping"
    # the server sees a per-channel pseudo queue name, not the magic name itself
    assert props.reply_to.startswith("amq.rabbitmq.reply-to."), props.reply_to
    assert props.reply_to != "amq.rabbitmq.reply-to"
    server.basic_publish("", props.reply_to, b"pong",
                         properties=pika.BasicProperties(correlation_id=props.correlation_id))
    assert drain(client_conn, lambda: len(replies) >= 1)
    m, p, b = replies[0]
    assert b == b"pong"
    assert p.correlation_id == "c-1"
    assert m.routing_key == props.reply_to
    # a second round trip on the same channel works too
    client.basic_publish("", rpc_q, b"ping2",
                         properties=pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    _, props2, _ = get_one(server, rpc_q)
    server.basic_publish("", props2.reply_to, b"pong2")
    assert drain(client_conn, lambda: len(replies) >= 2)
    assert replies[1][2] == b"pong2"


# --------------------------------------------------------------------------- get, ack, nack, reject, recover


def test_basic_get_and_get_empty(ch):
    q = excl_queue(ch)
    assert ch.basic_get(q) == (None, None, None)  # basic.get-empty
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    assert wait_message_count(ch, q, 3) == 3
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m0"
    assert method.message_count == 2  # messages left in the queue
    assert method.redelivered is False
    assert method.exchange == "" and method.routing_key == q
    method, _, body = ch.basic_get(q, auto_ack=False)
    assert body == b"m1" and method.message_count == 1
    ch.basic_ack(method.delivery_tag)
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m2" and method.message_count == 0
    assert ch.basic_get(q) == (None, None, None)


def test_nack_requeue_sets_redelivered(ch):
    q = excl_queue(ch)
    ch.basic_publish("", q, b"again")
    method, _, _ = get_one(ch, q, auto_ack=False)
    assert method.redelivered is False
    ch.basic_nack(method.delivery_tag, requeue=True)
    method2, _, body = get_one(ch, q, auto_ack=False)
    assert body == b"again" and method2.redelivered is True
    assert method2.delivery_tag != method.delivery_tag  # tags are per channel and never reused
    ch.basic_ack(method2.delivery_tag)
    assert ch.basic_get(q) == (None, None, None)


def test_nack_multiple_requeues_in_order(ch):
    q = excl_queue(ch)
    for i in range(4):
        ch.basic_publish("", q, f"m{i}".encode())
    tags = [get_one(ch, q, auto_ack=False)[0].delivery_tag for _ in range(4)]
    # nack the first three at once; the fourth stays unacked
    ch.basic_nack(tags[2], multiple=True, requeue=True)
    got = [get_one(ch, q, auto_ack=True) for _ in range(3)]
    assert [b for _, _, b in got] == [b"m0", b"m1", b"m2"]  # requeued at their original position
    assert all(m.redelivered for m, _, _ in got)
    assert ch.basic_get(q) == (None, None, None)
    ch.basic_ack(tags[3])


def test_reject_without_requeue_drops(ch):
    q = excl_queue(ch)
    ch.basic_publish("", q, b"poison")
    ch.basic_publish("", q, b"good")
    method, _, body = get_one(ch, q, auto_ack=False)
    assert body == b"poison"
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, _, body = get_one(ch, q, auto_ack=False)
    assert body == b"good" and not method.redelivered
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = get_one(ch, q, auto_ack=True)
    assert body == b"good" and method.redelivered
    assert ch.basic_get(q) == (None, None, None)


def test_basic_recover_redelivers_unacked(conn, ch):
    q = excl_queue(ch)
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((b, m.redelivered, m.delivery_tag)))
    assert drain(conn, lambda: len(got) >= 3)
    ch.basic_ack(got[0][2])
    ch.basic_recover(requeue=True)
    assert drain(conn, lambda: len(got) >= 5)
    settle(conn, 0.1)
    assert [(b, r) for b, r, _ in got[3:]] == [(b"m1", True), (b"m2", True)]
    for _, _, tag in got[3:]:
        ch.basic_ack(tag)


# --------------------------------------------------------------------------- exchanges


def test_headers_exchange_all_and_any(ch):
    x = unique("headers-x")
    ch.exchange_declare(x, "headers", auto_delete=True)
    q_all = excl_queue(ch)
    q_any = excl_queue(ch)
    q_default = excl_queue(ch)
    ch.queue_bind(q_all, x, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, x, arguments={"x-match": "any", "format": "pdf", "type": "log"})
    ch.queue_bind(q_default, x, arguments={"format": "zip", "n": 1})  # x-match defaults to all
    msgs = [
        ("both", {"format": "pdf", "type": "report"}),     # all, any
        ("pdf-only", {"format": "pdf"}),                    # any
        ("log", {"format": "txt", "type": "log"}),          # any
        ("extra", {"format": "pdf", "type": "report", "x": 1}),  # all (extra headers are fine), any
        ("none", {"format": "txt"}),                        # nobody
        ("noheaders", None),                                # nobody
        ("zip", {"format": "zip", "n": 1}),                 # default
        ("zip-n2", {"format": "zip", "n": 2}),              # nobody: value differs
    ]
    for body, headers in msgs:
        ch.basic_publish(x, "routing key is ignored", body.encode(),
                         properties=pika.BasicProperties(headers=headers))

    def bodies(q):
        out = []
        while True:
            m, _, b = ch.basic_get(q, auto_ack=True)
            if m is None:
                return out
            out.append(b.decode())

    time.sleep(0.05)
    assert bodies(q_all) == ["both", "extra"]
    assert bodies(q_any) == ["both", "pdf-only", "log", "extra"]
    assert bodies(q_default) == ["zip"]


def test_exchange_to_exchange_binding(ch, cleanup):
    src = cleanup.exchange(unique("e2e-src"))
    dst = cleanup.exchange(unique("e2e-dst"))
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "direct")
    ch.exchange_bind(destination=dst, source=src, routing_key="orders.*")
    q = excl_queue(ch)
    ch.queue_bind(q, dst, "orders.created")
    ch.basic_publish(src, "orders.created", b"via src")
    ch.basic_publish(src, "orders.deleted", b"matches src binding, not dst's")
    ch.basic_publish(src, "invoices.created", b"no match")
    ch.basic_publish(dst, "orders.created", b"direct to dst")
    time.sleep(0.05)
    assert get_one(ch, q)[2] == b"via src"
    assert get_one(ch, q)[2] == b"direct to dst"
    assert ch.basic_get(q) == (None, None, None)
    ch.exchange_unbind(destination=dst, source=src, routing_key="orders.*")
    ch.basic_publish(src, "orders.created", b"after unbind")
    time.sleep(0.05)
    assert ch.basic_get(q) == (None, None, None)


def test_auto_delete_exchange_goes_with_its_last_binding(conn, ch):
    """RabbitMQ deletes an auto-delete exchange when its last binding (as source) is removed,
    whether a queue binding or an exchange-to-exchange one."""
    x = unique("autodel-x")
    ch.exchange_declare(x, "direct", auto_delete=True)
    # never bound: it stays
    ch.exchange_declare(x, "direct", passive=True)
    q1 = excl_queue(ch)
    q2 = excl_queue(ch)
    ch.queue_bind(q1, x, "a")
    ch.queue_bind(q2, x, "b")
    ch.queue_unbind(q1, x, "a")
    ch.exchange_declare(x, "direct", passive=True)  # one binding left
    ch.queue_unbind(q2, x, "b")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare(x, "direct", passive=True)
    assert e.value.reply_code == 404

    ch = conn.channel()
    src = unique("autodel-src")
    dst = unique("autodel-dst")
    ch.exchange_declare(src, "fanout", auto_delete=True)
    ch.exchange_declare(dst, "fanout", auto_delete=True)
    ch.exchange_bind(destination=dst, source=src)
    ch.exchange_unbind(destination=dst, source=src)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare(src, "fanout", passive=True)
    assert e.value.reply_code == 404
    ch = conn.channel()
    # the destination had no bindings of its own as a source, so it was never "used": it stays
    ch.exchange_declare(dst, "fanout", passive=True)
    ch.exchange_delete(dst)


def test_alternate_exchange(ch):
    ae = unique("ae")
    main = unique("main")
    ch.exchange_declare(ae, "fanout", auto_delete=True)
    ch.exchange_declare(main, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
    q_main = excl_queue(ch)
    q_unrouted = excl_queue(ch)
    ch.queue_bind(q_main, main, "known")
    ch.queue_bind(q_unrouted, ae)
    ch.confirm_delivery()
    ch.basic_publish(main, "known", b"routed")
    # mandatory is satisfied by the alternate exchange: no basic.return
    ch.basic_publish(main, "unknown", b"to the AE", mandatory=True)
    assert get_one(ch, q_main)[2] == b"routed"
    m, _, body = get_one(ch, q_unrouted)
    assert body == b"to the AE"
    assert m.exchange == main and m.routing_key == "unknown"  # original exchange and key kept
    assert ch.basic_get(q_main) == (None, None, None)
    assert ch.basic_get(q_unrouted) == (None, None, None)


# --------------------------------------------------------------------------- queues


def test_queue_purge_and_delete_counts(ch, cleanup):
    q = cleanup.queue(unique("purge"))
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"x")
    assert ch.queue_purge(q).method.message_count == 5
    assert message_count(ch, q) == 0
    for i in range(3):
        ch.basic_publish("", q, b"y")
    # one unacked message is not counted as ready and not purged
    m, _, _ = ch.basic_get(q, auto_ack=False)
    assert ch.queue_purge(q).method.message_count == 2
    ch.basic_nack(m.delivery_tag, requeue=True)
    ch.basic_publish("", q, b"z")
    assert ch.queue_delete(q).method.message_count == 2
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, passive=True)
    assert e.value.reply_code == 404


def test_passive_declare_reports_counts(connect, cleanup):
    c = connect()
    ch = c.channel()
    q = cleanup.queue(unique("counts"))
    ok = ch.queue_declare(q, durable=True)
    assert (ok.method.queue, ok.method.message_count, ok.method.consumer_count) == (q, 0, 0)
    ch.confirm_delivery()
    for _ in range(3):
        ch.basic_publish("", q, b"x")
    other = connect().channel()
    other.basic_qos(prefetch_count=1)
    other.basic_consume(q, lambda *a: None)
    ch2 = c.channel()
    deadline = time.monotonic() + 5
    while True:
        ok = ch2.queue_declare(q, passive=True)
        if ok.method.message_count == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    # message_count counts ready messages only; one is out with the consumer
    assert (ok.method.message_count, ok.method.consumer_count) == (2, 1)


def test_auto_delete_queue_removed_after_last_consumer_cancels(conn, ch):
    q = unique("autodel")
    ch.queue_declare(q, auto_delete=True)
    other = conn.channel()
    # declared but never consumed: an auto-delete queue stays
    assert other.queue_declare(q, passive=True).method.consumer_count == 0
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    assert other.queue_declare(q, passive=True).method.consumer_count == 1
    ch.basic_cancel(t2)
    deadline = time.monotonic() + 5
    gone = False
    while not gone and time.monotonic() < deadline:
        chk = conn.channel()
        try:
            chk.queue_declare(q, passive=True)
            chk.close()
            time.sleep(0.02)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404
            gone = True
    assert gone, "auto-delete queue still exists after its last consumer cancelled"


def test_server_named_queue(ch):
    ok = ch.queue_declare("", exclusive=True)
    assert ok.method.queue.startswith("amq.gen-")
    assert len(ok.method.queue) > len("amq.gen-") + 8
    assert ch.queue_declare("", exclusive=True).method.queue != ok.method.queue


# --------------------------------------------------------------------------- message properties


ALL_PROPERTIES = dict(
    content_type="application/json",
    content_encoding="gzip",
    headers={
        "str": "héllo wörld",
        "empty": "",
        "bytes": b"\x00\xffraw\x01",
        "true": True,
        "false": False,
        "i32": -5,
        "i32max": 2**31 - 1,
        "big": 2**40,
        "neg_big": -(2**40),
        "decimal": decimal.Decimal("3.14"),
        "timestamp": datetime.datetime(2024, 5, 17, 12, 30, 45),
        "nested": {"a": 1, "b": {"c": "d", "e": [1, 2]}},
        "array": [1, "two", [3, [4]], {"five": 5}, True, b"\x01", None],
        "empty_array": [],
        "empty_table": {},
        "void": None,
    },
    delivery_mode=2,
    priority=7,
    correlation_id="corr-1",
    reply_to="reply.q",
    expiration="60000",
    message_id="msg-1",
    timestamp=1700000000,
    type="order.created",
    user_id="guest",  # must equal the connection's user, or the broker refuses (406)
    app_id="liebre-tests",
    cluster_id="cluster-x",
)


def test_all_basic_properties_round_trip(broker, conn, ch):
    assert broker.username == "guest", "user_id below must be the login user"
    q = excl_queue(ch)
    props = pika.BasicProperties(**ALL_PROPERTIES)
    ch.basic_publish("", q, b"{}", properties=props)
    _, got, body = get_one(ch, q)
    assert body == b"{}"
    for name, value in ALL_PROPERTIES.items():
        assert getattr(got, name) == value, name
    # and through a consumer (basic.deliver) as well as basic.get
    ch.basic_publish("", q, b"{}", properties=props)
    seen = []
    ch.basic_consume(q, lambda c, m, p, b: seen.append(p), auto_ack=True)
    assert drain(conn, lambda: seen)
    for name, value in ALL_PROPERTIES.items():
        assert getattr(seen[0], name) == value, name


def test_no_properties_stay_absent(ch):
    q = excl_queue(ch)
    ch.basic_publish("", q, b"bare")
    _, props, body = get_one(ch, q)
    assert body == b"bare"
    for name in ALL_PROPERTIES:
        assert getattr(props, name) is None, name


def _typed_table(buf: bytes, off: int = 0):
    """Decode a field table into [(key, (type, value))], keeping the wire types."""
    size = struct.unpack_from(">I", buf, off)[0]
    off += 4
    end = off + size
    out = []
    while off < end:
        n = buf[off]
        key = buf[off + 1:off + 1 + n].decode()
        off += 1 + n
        val, off = _typed_value(buf, off)
        out.append((key, val))
    return out, off


def _typed_value(buf: bytes, off: int):
    t = chr(buf[off])
    off += 1
    fixed = {"t": ">B", "b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I",
             "l": ">q", "f": ">f", "d": ">d", "T": ">Q"}
    if t in fixed:
        v = struct.unpack_from(fixed[t], buf, off)[0]
        return (t, v), off + struct.calcsize(fixed[t])
    if t == "D":
        scale, v = struct.unpack_from(">Bi", buf, off)
        return (t, (scale, v)), off + 5
    if t in "Sx":
        n = struct.unpack_from(">I", buf, off)[0]
        return (t, buf[off + 4:off + 4 + n]), off + 4 + n
    if t == "A":
        n = struct.unpack_from(">I", buf, off)[0]
        end, off = off + 4 + n, off + 4
        items = []
        while off < end:
            v, off = _typed_value(buf, off)
            items.append(v)
        return (t, items), off
    if t == "F":
        v, off = _typed_table(buf, off)
        return (t, v), off
    if t == "V":
        return (t, None), off
    raise AssertionError(f"unknown field type {t!r}")


def _fv(t: str, v) -> bytes:
    """Encode one typed field value."""
    fixed = {"t": ">B", "b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I",
             "l": ">q", "f": ">f", "d": ">d", "T": ">Q"}
    if t in fixed:
        return t.encode() + struct.pack(fixed[t], v)
    if t == "D":
        return b"D" + struct.pack(">Bi", *v)
    if t in "Sx":
        return t.encode() + struct.pack(">I", len(v)) + v
    if t == "A":
        body = b"".join(_fv(*item) for item in v)
        return b"A" + struct.pack(">I", len(body)) + body
    if t == "F":
        return b"F" + _tbl(v)
    if t == "V":
        return b"V"
    raise ValueError(t)


def _tbl(items) -> bytes:
    body = b"".join(raw.shortstr(k) + _fv(*v) for k, v in items)
    return struct.pack(">I", len(body)) + body


# Every field type RabbitMQ's table codec knows, including the ones pika cannot
# encode (floats) or decodes wrongly ('f'/'d' come back as ints in pika 1.3).
EVERY_FIELD_TYPE = [
    ("bool", ("t", 1)),
    ("int8", ("b", -7)),
    ("uint8", ("B", 250)),
    ("int16", ("s", -30000)),
    ("uint16", ("u", 65000)),
    ("int32", ("I", -2_000_000_000)),
    ("uint32", ("i", 4_000_000_000)),
    ("int64", ("l", -(2**62))),
    ("float", ("f", 1.5)),
    ("double", ("d", -2.25e100)),
    ("decimal", ("D", (2, 314))),
    ("longstr", ("S", "ñandú".encode())),
    ("bytes", ("x", b"\x00\x01\xfe\xff")),
    ("timestamp", ("T", 1_700_000_000)),
    ("void", ("V", None)),
    ("array", ("A", [("I", 1), ("S", b"two"), ("A", [("d", 0.5)]), ("F", [("k", ("t", 0))])])),
    ("table", ("F", [("inner", ("F", [("deep", ("l", 42))])), ("list", ("A", []))])),
]


def test_every_field_type_round_trips_on_the_wire(broker, ch, cleanup):
    """Content header bytes (properties + headers of every type) come back exactly as sent."""
    q = cleanup.queue(unique("wire-types"))
    ch.queue_declare(q, auto_delete=False)
    flags = (1 << 15) | (1 << 13) | (1 << 6)  # content-type, headers, timestamp
    props = raw.shortstr("text/plain") + _tbl(EVERY_FIELD_TYPE) + struct.pack(">Q", 1_700_000_001)
    header_in = struct.pack(">HHQH", 60, 0, 5, flags) + props
    with raw.RawConnection(broker.host, broker.port) as c:
        c.handshake(vhost=broker.vhost)
        c.open_channel(1)
        c.send(raw.method_frame(1, raw.BASIC_PUBLISH, raw.basic_publish_args("", q))
               + raw.frame(raw.FRAME_HEADER, 1, header_in) + raw.body_frame(1, b"hello"))
        _, header, body = c.basic_get(1, q)
        assert body == b"hello"
    got_flags = struct.unpack_from(">H", header.payload, 12)[0]
    assert got_flags == flags
    assert header.payload[:12] == header_in[:12]  # class, weight, body size
    off = 14
    n = header.payload[off]
    assert header.payload[off + 1:off + 1 + n] == b"text/plain"
    table, off = _typed_table(header.payload, off + 1 + n)
    assert table == EVERY_FIELD_TYPE
    assert struct.unpack_from(">Q", header.payload, off)[0] == 1_700_000_001
    assert header.payload == header_in  # byte for byte, as RabbitMQ does


# --------------------------------------------------------------------------- transactions


def test_tx_commit_and_rollback_of_publishes(connect):
    c = connect()
    ch = c.channel()
    q = excl_queue(ch)
    watcher = c.channel()
    ch.tx_select()
    ch.basic_publish("", q, b"rolled back 1")
    ch.basic_publish("", q, b"rolled back 2")
    time.sleep(0.05)
    assert message_count(watcher, q) == 0  # nothing visible before commit
    ch.tx_rollback()
    assert message_count(watcher, q) == 0
    ch.basic_publish("", q, b"committed")
    time.sleep(0.05)
    assert message_count(watcher, q) == 0
    ch.tx_commit()
    assert message_count(watcher, q) == 1
    assert get_one(watcher, q)[2] == b"committed"
    assert watcher.basic_get(q) == (None, None, None)


def test_tx_acks_are_transactional(connect):
    c = connect()
    setup = c.channel()
    q = excl_queue(setup)
    setup.basic_publish("", q, b"a")
    setup.basic_publish("", q, b"b")
    assert wait_message_count(setup, q, 2) == 2

    ch = c.channel()
    ch.tx_select()
    ma, _, _ = get_one(ch, q, auto_ack=False)
    mb, _, _ = get_one(ch, q, auto_ack=False)
    ch.basic_ack(ma.delivery_tag)
    ch.tx_rollback()  # the ack of "a" is discarded: "a" is still unacked
    ch.basic_ack(mb.delivery_tag)
    ch.tx_commit()  # the ack of "b" takes effect
    ch.close()  # unacked "a" goes back to the queue
    m, _, body = get_one(setup, q)
    assert body == b"a" and m.redelivered
    assert setup.basic_get(q) == (None, None, None)


# --------------------------------------------------------------------------- prefetch


def _prefetch_setup(conn, ch, per_consumer: int | None, global_: int | None, expected: int, n=5):
    """Two queues with n messages each, one consumer on each; returns once `expected`
    deliveries arrived and a little longer (to catch deliveries beyond the limit)."""
    queues = [excl_queue(ch) for _ in range(2)]
    pub = conn.channel()
    pub.confirm_delivery()
    for q in queues:
        for i in range(n):
            pub.basic_publish("", q, f"{q}:{i}".encode())
    if per_consumer is not None:
        ch.basic_qos(prefetch_count=per_consumer, global_qos=False)
    if global_ is not None:
        ch.basic_qos(prefetch_count=global_, global_qos=True)
    got = {q: [] for q in queues}
    for q in queues:
        ch.basic_consume(q, lambda c, m, p, b, q=q: got[q].append(m.delivery_tag))
    drain(conn, lambda: sum(len(v) for v in got.values()) >= expected)
    settle(conn, 0.2)
    return queues, got


def test_prefetch_per_consumer(conn, ch):
    queues, got = _prefetch_setup(conn, ch, per_consumer=2, global_=None, expected=4)
    assert [len(got[q]) for q in queues] == [2, 2]
    ch.basic_ack(got[queues[0]][0])
    drain(conn, lambda: len(got[queues[0]]) >= 3)
    settle(conn, 0.2)
    assert [len(got[q]) for q in queues] == [3, 2]


def test_prefetch_global_is_shared_by_the_channel(conn, ch):
    """RabbitMQ: global=true limits all consumers of the channel together."""
    queues, got = _prefetch_setup(conn, ch, per_consumer=None, global_=3, expected=3)
    counts = [len(got[q]) for q in queues]
    assert sum(counts) == 3, counts
    first = next(q for q in queues if got[q])
    ch.basic_ack(got[first][0])
    drain(conn, lambda: sum(len(got[q]) for q in queues) >= 4)
    settle(conn, 0.2)
    assert sum(len(got[q]) for q in queues) == 4


def test_prefetch_per_consumer_and_global_together(conn, ch):
    queues, got = _prefetch_setup(conn, ch, per_consumer=2, global_=3, expected=3)
    counts = [len(got[q]) for q in queues]
    assert sum(counts) == 3 and max(counts) <= 2, counts


def test_prefetch_zero_is_unlimited(conn, ch):
    queues, got = _prefetch_setup(conn, ch, per_consumer=0, global_=None, expected=40, n=20)
    assert [len(got[q]) for q in queues] == [20, 20]


# --------------------------------------------------------------------------- consumer cancel notify


def test_consumer_cancel_notify_on_queue_delete(connect):
    consumer_conn = connect()
    ch = consumer_conn.channel()
    q = unique("cancel-notify")
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method))
    tag = ch.basic_consume(q, lambda *a: None)
    assert tag in ch.consumer_tags

    other = connect().channel()
    other.queue_delete(q)
    assert drain(consumer_conn, lambda: cancelled), "no basic.cancel from the broker"
    assert cancelled[0].NAME == "Basic.Cancel"
    assert cancelled[0].consumer_tag == tag
    assert tag not in ch.consumer_tags
    # the channel itself is still open and usable
    assert ch.is_open
    ch.queue_declare("", exclusive=True)


# --------------------------------------------------------------------------- large messages


@pytest.mark.parametrize("frame_max", [None, 4096])
def test_large_message_split_over_frames(connect, frame_max):
    kw = {} if frame_max is None else {"frame_max": frame_max}
    c = connect(**kw)
    ch = c.channel()
    q = excl_queue(ch)
    body = os.urandom(1024 * 1024)
    ch.confirm_delivery()
    ch.basic_publish("", q, body, properties=pika.BasicProperties(message_id="big"))
    _, props, got = get_one(ch, q)
    assert props.message_id == "big"
    assert len(got) == len(body) and got == body
    # and to a consumer
    ch.basic_publish("", q, body[::-1])
    seen = []
    ch.basic_consume(q, lambda c_, m, p, b: seen.append(b), auto_ack=True)
    assert drain(c, lambda: seen)
    assert seen[0] == body[::-1]


def test_empty_body(ch):
    q = excl_queue(ch)
    ch.basic_publish("", q, b"", properties=pika.BasicProperties(message_id="empty"))
    _, props, body = get_one(ch, q)
    assert body == b"" and props.message_id == "empty"


# --------------------------------------------------------------------------- connection level


def test_server_capabilities(conn):
    """pika (and other clients) look at these before using the features: e.g. pika's
    confirm_delivery() raises MethodNotImplemented without publisher_confirms."""
    props = conn._impl.server_properties
    caps = props["capabilities"]
    for cap in ["publisher_confirms", "exchange_exchange_bindings", "basic.nack", "consumer_cancel_notify",
                "connection.blocked", "authentication_failure_close", "per_consumer_qos", "direct_reply_to"]:
        assert caps.get(cap) is True, cap
    for key in ["product", "version", "platform"]:
        assert isinstance(props.get(key), str) and props[key], key
    assert conn.publisher_confirms_supported
    assert conn.basic_nack_supported
    assert conn.consumer_cancel_notify_supported
    assert conn.exchange_exchange_bindings_supported


def test_connection_start_and_tune(broker):
    with raw.RawConnection(broker.host, broker.port) as c:
        c.send(raw.PROTOCOL_HEADER)
        start = c.read_method()
        assert start.channel == 0 and start.method == raw.CONNECTION_START
        p = start.payload[4:]
        assert p[:2] == b"\x00\x09"  # 0-9
        tlen = struct.unpack(">I", p[2:6])[0]
        rest = p[6 + tlen:]
        mlen = struct.unpack(">I", rest[:4])[0]
        mechanisms = rest[4:4 + mlen].split()
        assert b"PLAIN" in mechanisms
        locales = rest[4 + mlen + 4:].split()
        assert b"en_US" in locales
        c.send(raw.method_frame(0, raw.CONNECTION_START_OK,
                                raw.table(raw.CLIENT_PROPERTIES) + raw.shortstr("PLAIN")
                                + raw.longstr(b"\x00guest\x00guest") + raw.shortstr("en_US")))
        tune = c.read_method()
        assert tune.method == raw.CONNECTION_TUNE
        channel_max, frame_max, heartbeat = struct.unpack(">HIH", tune.payload[4:12])
        # RabbitMQ offers 2047 / 131072 / 60
        assert channel_max > 0 and frame_max >= 4096 and heartbeat > 0, (channel_max, frame_max, heartbeat)


def test_heartbeats(broker):
    """With heartbeat=1 negotiated the server sends heartbeats (RabbitMQ: every 0.5 s) and,
    when the client sends nothing at all, closes the socket after about two intervals
    (RabbitMQ: ~3 s, no connection.close)."""
    with raw.RawConnection(broker.host, broker.port) as c:
        c.send(raw.PROTOCOL_HEADER)
        assert c.read_method().method == raw.CONNECTION_START
        c.send(raw.method_frame(0, raw.CONNECTION_START_OK,
                                raw.table(raw.CLIENT_PROPERTIES) + raw.shortstr("PLAIN")
                                + raw.longstr(b"\x00guest\x00guest") + raw.shortstr("en_US")))
        tune = c.read_method()
        channel_max, frame_max, _ = struct.unpack(">HIH", tune.payload[4:12])
        c.send(raw.method_frame(0, raw.CONNECTION_TUNE_OK, struct.pack(">HIH", channel_max, frame_max, 1))
               + raw.method_frame(0, raw.CONNECTION_OPEN, raw.shortstr(broker.vhost) + raw.shortstr("") + b"\x00"))
        assert c.read_method().method == raw.CONNECTION_OPEN_OK
        t0 = time.monotonic()
        beats = []
        closed_at = None
        while time.monotonic() - t0 < 8:
            try:
                f = c.read_frame(8)
            except (raw.Closed, ConnectionError):
                closed_at = time.monotonic() - t0
                break
            if f.type == raw.FRAME_HEARTBEAT:
                assert f.channel == 0 and f.payload == b""
                beats.append(time.monotonic() - t0)
        assert beats and beats[0] <= 1.2, beats
        assert closed_at is not None, "a silent client with heartbeat=1 was not disconnected"
        assert 1.5 <= closed_at <= 5, closed_at


def test_pika_heartbeat_keeps_idle_connection_alive(broker):
    c = broker.connect(heartbeat=1)
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    settle(c, 2.5)  # pika answers heartbeats while processing events
    assert c.is_open
    ch.basic_publish("", q, b"alive")
    assert get_one(ch, q)[2] == b"alive"
    c.close()
