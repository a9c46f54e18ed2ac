"""Broker restarts, crashes and shutdown: tests that need a broker process of their own.

They are marked ``fresh_broker`` and skipped when LIEBRE_TEST_AMQP_URL points at a
shared broker. To check the tests themselves against RabbitMQ, run them on throwaway
RabbitMQ nodes: ``LIEBRE_TEST_FRESH_RABBITMQ=1 pytest tests/python -m fresh_broker``.
"""

from __future__ import annotations

import time

import pika
import pytest

from conftest import get_one, message_count, unique

pytestmark = [pytest.mark.fresh_broker, pytest.mark.timeout(120)]


def test_sigterm_closes_clients_with_320_and_exits_0(fresh_liebre):
    proc = fresh_liebre()
    conn = proc.broker.connect()
    ch = conn.channel()
    ch.queue_declare("", exclusive=True)
    proc.proc.terminate()  # SIGTERM
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
    # RabbitMQ: (320) "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    assert e.value.reply_code == 320
    assert e.value.reply_text.startswith("CONNECTION_FORCED - ")
    assert proc.stop() == 0


def test_durable_things_survive_a_restart(fresh_liebre):
    """The work-queues tutorial: durable queue + persistent messages survive a broker restart;
    transient messages, non-durable queues and exchanges do not."""
    first = fresh_liebre()
    conn = first.broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("task_queue", durable=True)
    ch.queue_declare("transient_queue", durable=False)
    ch.exchange_declare("durable_x", "direct", durable=True)
    ch.exchange_declare("transient_x", "direct", durable=False)
    ch.queue_bind("task_queue", "durable_x", "task")
    persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent, message_id="p")
    for i in range(3):
        ch.basic_publish("", "task_queue", f"persistent {i}".encode(), properties=persistent)
    ch.basic_publish("", "task_queue", b"transient", properties=pika.BasicProperties(delivery_mode=1))
    ch.basic_publish("", "transient_queue", b"gone", properties=persistent)
    assert message_count(ch, "task_queue") == 4
    conn.close()
    assert first.stop() == 0

    second = fresh_liebre(data_dir=first.data_dir)
    conn = second.broker.connect()
    ch = conn.channel()
    assert message_count(ch, "task_queue") == 3  # the transient message is gone
    ch.exchange_declare("durable_x", "direct", passive=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        conn.channel().queue_declare("transient_queue", passive=True)
    assert e.value.reply_code == 404
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        conn.channel().exchange_declare("transient_x", "direct", passive=True)
    assert e.value.reply_code == 404
    got = [get_one(ch, "task_queue") for _ in range(3)]
    assert [b for _, _, b in got] == [b"persistent 0", b"persistent 1", b"persistent 2"]
    assert all(p.delivery_mode == 2 and p.message_id == "p" for _, p, _ in got)
    assert all(not m.redelivered for m, _, _ in got)  # never delivered before the restart
    # the binding survived too
    ch.basic_publish("durable_x", "task", b"via binding")
    assert get_one(ch, "task_queue")[2] == b"via binding"
    conn.close()
    assert second.stop() == 0


def test_kill_9_keeps_every_confirmed_persistent_message(fresh_liebre):
    first = fresh_liebre()
    conn = first.broker.connect()
    ch = conn.channel()
    ch.queue_declare("task_queue", durable=True)
    ch.confirm_delivery()
    n = 200
    persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    for i in range(n):
        ch.basic_publish("", "task_queue", f"task {i}".encode(), properties=persistent)
    first.kill()  # SIGKILL right after the last confirm

    second = fresh_liebre(data_dir=first.data_dir)
    conn = second.broker.connect()
    ch = conn.channel()
    assert message_count(ch, "task_queue") == n
    bodies = [get_one(ch, "task_queue")[2] for _ in range(n)]
    assert bodies == [f"task {i}".encode() for i in range(n)]
    conn.close()
    assert second.stop() == 0


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_unacked_messages_come_back_redelivered_after_restart(fresh_liebre, how):
    """A message delivered but not acknowledged before the broker went down is delivered
    again after the restart with redelivered=True; after a clean shutdown one never
    delivered has redelivered=False."""
    first = fresh_liebre()
    conn = first.broker.connect()
    ch = conn.channel()
    ch.queue_declare("task_queue", durable=True)
    ch.confirm_delivery()
    persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    ch.basic_publish("", "task_queue", b"in progress", properties=persistent)
    ch.basic_publish("", "task_queue", b"waiting", properties=persistent)
    m, _, body = get_one(ch, "task_queue", auto_ack=False)
    assert body == b"in progress" and not m.redelivered
    if how == "sigterm":
        assert first.stop() == 0
    else:
        first.kill()

    second = fresh_liebre(data_dir=first.data_dir)
    conn = second.broker.connect()
    ch = conn.channel()
    got = [get_one(ch, "task_queue") for _ in range(2)]
    assert [b for _, _, b in got] == [b"in progress", b"waiting"]
    assert got[0][0].redelivered is True
    if how == "sigterm":
        assert got[1][0].redelivered is False
    # After a crash RabbitMQ cannot tell which messages had been delivered, so it marks
    # every recovered message redelivered=True (the flag means "maybe seen before");
    # either value is acceptable for the never-delivered one.
    conn.close()
    assert second.stop() == 0


def test_server_named_and_exclusive_queues_do_not_survive(fresh_liebre):
    first = fresh_liebre()
    conn = first.broker.connect()
    ch = conn.channel()
    name = ch.queue_declare("", exclusive=True).method.queue
    auto = unique("autodel")
    ch.queue_declare(auto, auto_delete=True, durable=True)
    ch.basic_consume(auto, lambda *a: None)
    assert first.stop() == 0

    second = fresh_liebre(data_dir=first.data_dir)
    conn = second.broker.connect()
    for q in (name, auto):
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            conn.channel().queue_declare(q, passive=True)
        assert e.value.reply_code == 404, q
    conn.close()
    assert second.stop() == 0
