"""The six RabbitMQ tutorials (seed 001) with pika, as a learner runs them.

The calls are the tutorials' own: queue_declare('hello'), basic_publish with
exchange='', the durable 'task_queue' with persistent messages, basic_qos
(prefetch_count=1) and manual acks, the 'logs' fanout exchange with exclusive
server-named queues, 'direct_logs', 'topic_logs' and the Fibonacci RPC with
reply_to + correlation_id. Only the loops are bounded so that a broken broker
fails instead of hanging.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid

import pika
import pytest

from conftest import HERE, drain, message_count, settle, wait_message_count


def _reset_queue(broker, name: str) -> None:
    """The tutorials use fixed names; start each test from an absent queue."""
    c = broker.connect()
    try:
        c.channel().queue_delete(name)
    finally:
        c.close()


@pytest.fixture
def fixed_queue(broker):
    """Delete the tutorial's fixed-name queue before and after the test."""
    names: list[str] = []

    def use(name: str) -> str:
        _reset_queue(broker, name)
        names.append(name)
        return name

    yield use
    for n in names:
        try:
            _reset_queue(broker, n)
        except Exception:
            pass


@pytest.fixture
def fixed_exchange(broker):
    names: list[str] = []

    def use(name: str) -> str:
        names.append(name)
        return name

    yield use
    c = broker.connect()
    try:
        for n in names:
            chn = c.channel()
            try:
                chn.exchange_delete(n)
            except Exception:
                pass
    finally:
        c.close()


# --------------------------------------------------------------------------- 1. Hello World


def test_hello_world(broker, fixed_queue):
    fixed_queue("hello")
    # send.py
    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    channel.queue_declare(queue="hello")
    channel.basic_publish(exchange="", routing_key="hello", body="Hello World!")
    connection.close()

    # receive.py
    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    channel.queue_declare(queue="hello")
    received = []

    def callback(ch, method, properties, body):
        received.append(body)
        ch.stop_consuming()

    channel.basic_consume(queue="hello", auto_ack=True, on_message_callback=callback)
    timer = connection.call_later(5, channel.stop_consuming)
    channel.start_consuming()
    connection.remove_timeout(timer)
    assert received == [b"Hello World!"]
    # auto_ack: nothing left behind
    assert message_count(channel, "hello") == 0
    connection.close()


def test_hello_world_queue_declare_is_idempotent_and_counts(broker, fixed_queue):
    """`rabbitmqctl list_queues` in the tutorial shows the message waiting; here via declare-ok."""
    fixed_queue("hello")
    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    first = channel.queue_declare(queue="hello")
    assert first.method.queue == "hello"
    assert first.method.message_count == 0
    assert first.method.consumer_count == 0
    channel.basic_publish(exchange="", routing_key="hello", body="Hello World!")
    assert wait_message_count(channel, "hello", 1) == 1
    again = channel.queue_declare(queue="hello")
    assert again.method.message_count == 1
    connection.close()


# --------------------------------------------------------------------------- 2. Work queues

TASKS = ["Primer mensaje.", "Segundo mensaje..", "Tercer mensaje...", "Cuarto mensaje....",
         "Quinto mensaje....."]


def new_task(broker, message: str, queue: str = "task_queue") -> None:
    """new_task.py"""
    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    channel.queue_declare(queue=queue, durable=True)
    channel.basic_publish(
        exchange="",
        routing_key=queue,
        body=message,
        properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
    )
    connection.close()


def test_work_queue_durable_persistent_manual_ack(broker, fixed_queue):
    fixed_queue("task_queue")
    for t in TASKS:
        new_task(broker, t)

    # worker.py
    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    declared = channel.queue_declare(queue="task_queue", durable=True)
    assert declared.method.message_count == len(TASKS)
    done = []

    def callback(ch, method, properties, body):
        time.sleep(body.count(b".") * 0.002)  # the tutorial sleeps one second per dot
        assert properties.delivery_mode == 2
        done.append(body.decode())
        ch.basic_ack(delivery_tag=method.delivery_tag)
        if len(done) == len(TASKS):
            ch.stop_consuming()

    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue="task_queue", on_message_callback=callback)
    timer = connection.call_later(10, channel.stop_consuming)
    channel.start_consuming()
    connection.remove_timeout(timer)
    assert done == TASKS  # one queue, one consumer: FIFO
    channel.cancel()
    assert message_count(channel, "task_queue") == 0
    connection.close()


def test_work_queue_round_robin_without_prefetch(broker, fixed_queue):
    """'By default, RabbitMQ will send each message to the next consumer, in sequence.'"""
    fixed_queue("task_queue")
    workers = []
    for _ in range(2):
        c = pika.BlockingConnection(broker.params())
        chn = c.channel()
        chn.queue_declare(queue="task_queue", durable=True)
        got: list[bytes] = []
        chn.basic_consume(queue="task_queue",
                          on_message_callback=lambda ch, m, p, b, got=got: (got.append(b),
                                                                             ch.basic_ack(m.delivery_tag)))
        workers.append((c, got))
    tasks = [f"task {i}." for i in range(6)]
    for t in tasks:
        new_task(broker, t)
    deadline = time.monotonic() + 5
    while sum(len(g) for _, g in workers) < len(tasks) and time.monotonic() < deadline:
        for c, _ in workers:
            c.process_data_events(time_limit=0.02)
    (c1, got1), (c2, got2) = workers
    assert len(got1) == 3 and len(got2) == 3, (got1, got2)
    # strictly alternating: the first consumer gets every other task
    assert sorted(got1 + got2) == sorted(t.encode() for t in tasks)
    assert set(got1) in ({b"task 0.", b"task 2.", b"task 4."}, {b"task 1.", b"task 3.", b"task 5."})
    for c, _ in workers:
        c.close()


def test_work_queue_fair_dispatch_prefetch_one(broker, fixed_queue):
    """With basic_qos(prefetch_count=1) a busy (slow) worker gets no new task until it acks."""
    fixed_queue("task_queue")

    def worker():
        c = pika.BlockingConnection(broker.params())
        chn = c.channel()
        chn.queue_declare(queue="task_queue", durable=True)
        chn.basic_qos(prefetch_count=1)
        pending: list = []
        chn.basic_consume(queue="task_queue",
                          on_message_callback=lambda ch, m, p, b: pending.append((m, b)))
        return c, chn, pending

    slow_conn, slow_ch, slow_pending = worker()
    fast_conn, fast_ch, fast_pending = worker()
    tasks = ["uno.....", "dos.", "tres.", "cuatro.", "cinco.", "seis."]
    for t in tasks:
        new_task(broker, t)

    # The slow worker receives one task and sits on it.
    assert drain(slow_conn, lambda: len(slow_pending) >= 1)
    # The fast worker processes everything else, one at a time.
    fast_done = []
    deadline = time.monotonic() + 5
    while len(fast_done) + len(slow_pending) < len(tasks) and time.monotonic() < deadline:
        fast_conn.process_data_events(time_limit=0.02)
        assert len(fast_pending) <= 1, "prefetch_count=1 must limit a worker to one unacked task"
        while fast_pending:
            m, b = fast_pending.pop(0)
            fast_done.append(b)
            fast_ch.basic_ack(m.delivery_tag)
        slow_conn.process_data_events(time_limit=0)
    settle(slow_conn, 0.2)
    assert len(slow_pending) == 1, "the busy worker must not be sent a second task"
    assert len(fast_done) == len(tasks) - 1
    assert sorted(fast_done + [slow_pending[0][1]]) == sorted(t.encode() for t in tasks)
    # messages_ready 0, one unacked: passive declare reports ready messages only
    assert message_count(fast_ch, "task_queue") == 0
    slow_ch.basic_ack(slow_pending[0][0].delivery_tag)
    slow_conn.close()
    fast_conn.close()


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    line = b""
    fd = proc.stdout.fileno()
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"worker said nothing within {timeout}s; so far {line!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            ch = os.read(fd, 1)
            if not ch:
                raise AssertionError(f"worker exited ({proc.poll()}): {line!r} {proc.stderr.read()!r}")
            line += ch
    return line.decode().rstrip("\n")


def test_work_queue_worker_killed_mid_task_is_redelivered(broker, fixed_queue):
    """'If a consumer dies without sending an ack, RabbitMQ will ... re-queue it ... to another consumer.'"""
    fixed_queue("task_queue")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "tutorial_worker.py"), broker.host, str(broker.port), "task_queue",
         broker.vhost],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert _read_line(proc, 10) == "ready"
        new_task(broker, "Tarea larga.....")
        assert _read_line(proc, 5) == "received Tarea larga....."

        # The other worker (this process) starts; it gets the next task, not the one in progress.
        connection = pika.BlockingConnection(broker.params())
        channel = connection.channel()
        channel.queue_declare(queue="task_queue", durable=True)
        channel.basic_qos(prefetch_count=1)
        got = []

        def callback(ch, method, properties, body):
            got.append((body.decode(), method.redelivered))
            ch.basic_ack(delivery_tag=method.delivery_tag)

        channel.basic_consume(queue="task_queue", on_message_callback=callback)
        new_task(broker, "Tarea corta.")
        assert drain(connection, lambda: len(got) >= 1)
        settle(connection, 0.2)
        assert got == [("Tarea corta.", False)]
        # the unacknowledged task is not ready while its worker lives
        assert message_count(channel, "task_queue") == 0

        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        assert drain(connection, lambda: len(got) >= 2), "the killed worker's task was not redelivered"
        assert got[1] == ("Tarea larga.....", True)
        settle(connection, 0.2)
        assert len(got) == 2
        channel.cancel()
        assert message_count(channel, "task_queue") == 0
        connection.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# --------------------------------------------------------------------------- 3. Publish/Subscribe


def receive_logs(broker, exchange="logs"):
    """receive_logs.py up to basic_consume; returns (connection, channel, queue, received)."""
    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    channel.exchange_declare(exchange=exchange, exchange_type="fanout")
    result = channel.queue_declare(queue="", exclusive=True)
    queue_name = result.method.queue
    channel.queue_bind(exchange=exchange, queue=queue_name)
    received: list[bytes] = []
    channel.basic_consume(queue=queue_name, on_message_callback=lambda ch, m, p, b: received.append(b),
                          auto_ack=True)
    return connection, channel, queue_name, received


def test_publish_subscribe_fanout(broker, fixed_exchange):
    fixed_exchange("logs")
    r1 = receive_logs(broker)
    r2 = receive_logs(broker)
    assert r1[2] != r2[2]
    # server-named queues look like RabbitMQ's
    assert r1[2].startswith("amq.gen-") and r2[2].startswith("amq.gen-"), (r1[2], r2[2])

    # emit_log.py
    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    channel.exchange_declare(exchange="logs", exchange_type="fanout")
    messages = ["info: Hello World!", "warning: disk 91%", "error: boom"]
    for message in messages:
        channel.basic_publish(exchange="logs", routing_key="", body=message)
    # the routing key is ignored by fanout
    channel.basic_publish(exchange="logs", routing_key="anything.at.all", body="ignored key")
    connection.close()

    expected = [m.encode() for m in messages] + [b"ignored key"]
    for c, _, _, received in (r1, r2):
        assert drain(c, lambda received=received: len(received) >= len(expected))
        assert received == expected

    # temporary queues disappear with their connection
    name = r1[2]
    r1[0].close()
    c = broker.connect()
    chn = c.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        chn.queue_declare(name, passive=True)
    assert e.value.reply_code == 404
    c.close()
    r2[0].close()


def test_fanout_without_queues_drops_messages(broker, fixed_exchange):
    """'The messages will be lost if no queue is bound to the exchange yet.'"""
    fixed_exchange("logs")
    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    channel.exchange_declare(exchange="logs", exchange_type="fanout")
    channel.basic_publish(exchange="logs", routing_key="", body="nobody listens")
    c, _, _, received = receive_logs(broker)
    channel.basic_publish(exchange="logs", routing_key="", body="now someone does")
    assert drain(c, lambda: len(received) >= 1)
    settle(c, 0.2)
    assert received == [b"now someone does"]
    c.close()
    connection.close()


# --------------------------------------------------------------------------- 4. Routing


def receive_logs_direct(broker, severities):
    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    channel.exchange_declare(exchange="direct_logs", exchange_type="direct")
    result = channel.queue_declare(queue="", exclusive=True)
    queue_name = result.method.queue
    for severity in severities:
        channel.queue_bind(exchange="direct_logs", queue=queue_name, routing_key=severity)
    received: list[tuple[str, bytes]] = []
    channel.basic_consume(queue=queue_name,
                          on_message_callback=lambda ch, m, p, b: received.append((m.routing_key, b)),
                          auto_ack=True)
    return connection, received


def test_routing_direct(broker, fixed_exchange):
    fixed_exchange("direct_logs")
    # python receive_logs_direct.py warning error > logs_from_rabbit.log
    to_file = receive_logs_direct(broker, ["warning", "error"])
    # python receive_logs_direct.py info warning error
    to_screen = receive_logs_direct(broker, ["info", "warning", "error"])
    # a queue bound twice with the same key still gets each message once
    twice = receive_logs_direct(broker, ["error", "error"])

    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    channel.exchange_declare(exchange="direct_logs", exchange_type="direct")
    sent = [("info", "Hello World!"), ("warning", "Careful"), ("error", "Run. Run. Or it will explode."),
            ("debug", "nobody binds debug"), ("Error", "keys are case sensitive")]
    for severity, message in sent:
        channel.basic_publish(exchange="direct_logs", routing_key=severity, body=message)
    connection.close()

    def expect(r, severities):
        exp = [(s, m.encode()) for s, m in sent if s in severities]
        assert drain(r[0], lambda: len(r[1]) >= len(exp))
        settle(r[0], 0.1)
        assert r[1] == exp

    expect(to_file, {"warning", "error"})
    expect(to_screen, {"info", "warning", "error"})
    expect(twice, {"error"})
    for c, _ in (to_file, to_screen, twice):
        c.close()


# --------------------------------------------------------------------------- 5. Topics

TOPIC_KEYS = [
    "quick.orange.rabbit",      # Q1 and Q2
    "lazy.orange.elephant",     # Q1 and Q2
    "quick.orange.fox",         # Q1
    "lazy.brown.fox",           # Q2
    "lazy.pink.rabbit",         # Q2 once, though it matches both of Q2's bindings
    "quick.brown.fox",          # nobody: dropped
    "orange",                   # nobody: one word
    "quick.orange.new.rabbit",  # nobody: four words
    "lazy.orange.new.rabbit",   # Q2 (lazy.#)
    "lazy",                     # Q2: '#' matches zero words
]


def receive_logs_topic(broker, binding_keys):
    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    channel.exchange_declare(exchange="topic_logs", exchange_type="topic")
    result = channel.queue_declare("", exclusive=True)
    queue_name = result.method.queue
    for binding_key in binding_keys:
        channel.queue_bind(exchange="topic_logs", queue=queue_name, routing_key=binding_key)
    received: list[str] = []
    channel.basic_consume(queue=queue_name,
                          on_message_callback=lambda ch, m, p, b: received.append(m.routing_key),
                          auto_ack=True)
    return connection, received


def test_topics(broker, fixed_exchange):
    fixed_exchange("topic_logs")
    q1 = receive_logs_topic(broker, ["*.orange.*"])
    q2 = receive_logs_topic(broker, ["*.*.rabbit", "lazy.#"])
    everything = receive_logs_topic(broker, ["#"])
    kern = receive_logs_topic(broker, ["kern.*"])
    critical = receive_logs_topic(broker, ["*.critical"])

    connection = pika.BlockingConnection(broker.params())
    channel = connection.channel()
    channel.exchange_declare(exchange="topic_logs", exchange_type="topic")
    keys = TOPIC_KEYS + ["kern.critical", "kern.info", "cron.critical", "kern.critical.disk", ""]
    for routing_key in keys:
        channel.basic_publish(exchange="topic_logs", routing_key=routing_key, body=f"{routing_key}: Hello")
    connection.close()

    expected = {
        id(q1): ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"],
        id(q2): ["quick.orange.rabbit", "lazy.orange.elephant", "lazy.brown.fox", "lazy.pink.rabbit",
                 "lazy.orange.new.rabbit", "lazy"],
        id(everything): keys,
        id(kern): ["kern.critical", "kern.info"],
        id(critical): ["kern.critical", "cron.critical"],
    }
    for r in (q1, q2, everything, kern, critical):
        exp = expected[id(r)]
        assert drain(r[0], lambda r=r, exp=exp: len(r[1]) >= len(exp))
        settle(r[0], 0.1)
        assert r[1] == exp
        r[0].close()


# --------------------------------------------------------------------------- 6. RPC


def fib(n):
    if n == 0:
        return 0
    elif n == 1:
        return 1
    else:
        return fib(n - 1) + fib(n - 2)


class RpcServer(threading.Thread):
    """rpc_server.py in a thread, with its own connection."""

    def __init__(self, broker, queue="rpc_queue"):
        super().__init__(daemon=True)
        self.connection = pika.BlockingConnection(broker.params())
        self.channel = self.connection.channel()
        self.channel.queue_declare(queue=queue)
        self.queue = queue
        self.served = 0
        self.error: BaseException | None = None

    def on_request(self, ch, method, props, body):
        n = int(body)
        response = fib(n)
        ch.basic_publish(exchange="",
                         routing_key=props.reply_to,
                         properties=pika.BasicProperties(correlation_id=props.correlation_id),
                         body=str(response))
        ch.basic_ack(delivery_tag=method.delivery_tag)
        self.served += 1

    def run(self):
        try:
            self.channel.basic_qos(prefetch_count=1)
            self.channel.basic_consume(queue=self.queue, on_message_callback=self.on_request)
            self.channel.start_consuming()
            self.connection.close()
        except BaseException as e:  # reported by the test
            self.error = e

    def stop(self):
        self.connection.add_callback_threadsafe(self.channel.stop_consuming)
        self.join(10)


class FibonacciRpcClient(object):
    """rpc_client.py, with a deadline instead of process_data_events(time_limit=None) forever."""

    def __init__(self, broker, queue="rpc_queue"):
        self.queue = queue
        self.connection = pika.BlockingConnection(broker.params())
        self.channel = self.connection.channel()
        result = self.channel.queue_declare(queue="", exclusive=True)
        self.callback_queue = result.method.queue
        self.channel.basic_consume(queue=self.callback_queue, on_message_callback=self.on_response,
                                   auto_ack=True)
        self.response = None
        self.corr_id = None
        self.ignored = []

    def on_response(self, ch, method, props, body):
        if self.corr_id == props.correlation_id:
            self.response = body
        else:
            self.ignored.append(props.correlation_id)

    def call(self, n, timeout=5.0):
        self.response = None
        self.corr_id = str(uuid.uuid4())
        self.channel.basic_publish(exchange="",
                                   routing_key=self.queue,
                                   properties=pika.BasicProperties(reply_to=self.callback_queue,
                                                                   correlation_id=self.corr_id),
                                   body=str(n))
        deadline = time.monotonic() + timeout
        while self.response is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no RPC reply for fib({n}) within {timeout}s")
            self.connection.process_data_events(time_limit=0.05)
        return int(self.response)


def test_rpc_fibonacci(broker, fixed_queue):
    fixed_queue("rpc_queue")
    server = RpcServer(broker)
    server.start()
    try:
        fibonacci_rpc = FibonacciRpcClient(broker)
        for n in [0, 1, 2, 4, 10, 15]:
            assert fibonacci_rpc.call(n) == fib(n)
        assert fibonacci_rpc.ignored == []

        # A stale reply with an unknown correlation id is ignored, as the tutorial says.
        other = broker.connect()
        other.channel().basic_publish(exchange="", routing_key=fibonacci_rpc.callback_queue,
                                      properties=pika.BasicProperties(correlation_id="stale"), body="999")
        other.close()
        assert fibonacci_rpc.call(7) == 13
        assert fibonacci_rpc.ignored == ["stale"]
        fibonacci_rpc.connection.close()
    finally:
        server.stop()
    assert server.error is None, server.error
    assert server.served == 7


def test_rpc_two_servers_share_the_load(broker, fixed_queue):
    """'If the RPC server is too slow, you can scale up by just running another one.'"""
    fixed_queue("rpc_queue")
    servers = [RpcServer(broker), RpcServer(broker)]
    for s in servers:
        s.start()
    try:
        client = FibonacciRpcClient(broker)
        # wait until both servers are consuming
        c = broker.connect()
        chn = c.channel()
        deadline = time.monotonic() + 5
        while chn.queue_declare("rpc_queue", passive=True).method.consumer_count < 2:
            assert time.monotonic() < deadline, "RPC servers did not start consuming"
            time.sleep(0.02)
        c.close()
        for n in range(10):
            assert client.call(n) == fib(n)
        client.connection.close()
    finally:
        for s in servers:
            s.stop()
    assert [s.error for s in servers] == [None, None]
    assert sum(s.served for s in servers) == 10
    assert all(s.served > 0 for s in servers), [s.served for s in servers]
