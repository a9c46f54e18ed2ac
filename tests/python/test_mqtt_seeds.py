"""The users' own MQTT scenarios (shared/seeds), with paho-mqtt 1.6.1 and 2.x.

* 000 fiscal printers: a backend publishes print jobs over AMQP to ``amq.topic``
  with the printer's UUID as routing key; the printer (paho, stable client id,
  clean_session=False, QoS 1 on its UUID topic) gets every job queued while it was
  offline, in order; errors go to ``fiscalberry/errors/{printer_id}`` at QoS 1 and
  reach an AMQP consumer bound with ``fiscalberry.errors.*``. Cross-protocol:
  validated against RabbitMQ 3.10 with its MQTT plugin.
* 003 industrial IoT: ``acme/v1/planta-1/norte/temp`` hierarchy, ``+`` and ``#``,
  retained state for late subscribers (also through wildcards), Last Will
  "offline" when the device process is SIGKILLed, an idempotent QoS 1 consumer
  that loses nothing across a crash and a reconnect. Validated against Mosquitto.
* 002 web pub/sub: two services publish on one topic, a subscriber gets both.

The clients run as subprocesses of this very file (``python test_mqtt_seeds.py
ROLE ARGS-JSON``), so the same seed-style code runs under paho-mqtt 1.6.1 (from
tests/python/.paho16, first on PYTHONPATH) and under 2.x (the virtualenv's). They
print one JSON event per line and read JSON commands from stdin. The code of each
role follows the seed's own calls (``mqtt.Client(client_id=..., clean_session=False,
protocol=mqtt.MQTTv311)``, ``on_connect`` subscribing, ``will_set(..., retain=True)``,
``loop_start()``); with 2.x the client is made with ``CallbackAPIVersion.VERSION2``,
as a team moving to 2.x would write it.

Topics are under a fresh ``liebre-test/<uuid>/`` prefix (the seed's names after
it), so tests can run against a shared broker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent

# =========================================================================== client side
# (runs in the subprocess; imports paho only here, after PYTHONPATH picked the version)

_emit_lock = threading.Lock()


def emit(ev: str, **kw) -> None:
    """One event line on stdout, flushed at once (the test may SIGKILL us any time)."""
    with _emit_lock:
        sys.stdout.write(json.dumps({"ev": ev, **kw}) + "\n")
        sys.stdout.flush()


def new_client(mqtt, **kw):
    """``mqtt.Client(**kw)`` as 1.6.1 takes it; 2.x needs the callback API version first."""
    if hasattr(mqtt, "CallbackAPIVersion"):
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kw)
    return mqtt.Client(**kw)


def rc_int(rc) -> int:
    return rc if isinstance(rc, int) else rc.value


def session_present(flags) -> bool:
    return bool(flags["session present"]) if isinstance(flags, dict) else bool(flags.session_present)


def commands():
    for line in sys.stdin:
        line = line.strip()
        if line:
            yield json.loads(line)


def role_printer(a: dict) -> None:
    """Seed 000's printer: consumer.py + error_publisher.py."""
    import paho.mqtt.client as mqtt

    PRINTER_UUID = a["uuid"]

    def on_connect(client, userdata, flags, rc, *rest):
        emit("connected", rc=rc_int(rc), session_present=session_present(flags))
        if rc == 0:
            # subscribe to this printer's topic with QoS 1
            client.subscribe(PRINTER_UUID, qos=1)

    def on_subscribe(client, userdata, mid, granted, *rest):
        emit("subscribed", granted=[rc_int(g) for g in granted])

    def on_message(client, userdata, msg):
        print_job = json.loads(msg.payload.decode())
        emit("job", job=print_job, topic=msg.topic, qos=msg.qos)
        # the ACK goes automatically with QoS 1, after this callback

    client = new_client(mqtt, client_id=f"fiscalberry-{PRINTER_UUID}", clean_session=False,
                        protocol=mqtt.MQTTv311)
    if a.get("user") is not None:
        client.username_pw_set(a["user"], a["password"])
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(a["host"], a["port"], keepalive=60)
    client.loop_start()

    for cmd in commands():
        if cmd["op"] == "error":
            # ErrorPublisher: its own connection, QoS 1 on fiscalberry/errors/{printer_id}
            pub = new_client(mqtt)
            if a.get("user") is not None:
                pub.username_pw_set(a["user"], a["password"])
            connected = threading.Event()
            pub.on_connect = lambda c, u, f, rc, *r: connected.set() if rc == 0 else None
            pub.connect(a["host"], a["port"], keepalive=60)
            pub.loop_start()
            connected.wait(5)
            info = pub.publish(f"fiscalberry/errors/{a['printer_id']}", json.dumps(cmd["error"]), qos=1)
            info.wait_for_publish(5)
            emit("error_published", ok=info.is_published())
            pub.disconnect()
            pub.loop_stop()
        elif cmd["op"] == "quit":
            client.disconnect()
            client.loop_stop()
            emit("bye")
            return


def role_sensor(a: dict) -> None:
    """Seed 003's production-ready producer: stable id, persistent session, Last Will."""
    import paho.mqtt.client as mqtt

    status = a["status_topic"]
    client = new_client(mqtt, client_id=a["client_id"], clean_session=False)
    if a.get("user") is not None:
        client.username_pw_set(a["user"], a["password"])
    client.will_set(status, "offline", retain=True)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, *r: connected.set() if rc == 0 else None
    client.connect(a["host"], a["port"], keepalive=60)
    client.loop_start()
    if not connected.wait(5):
        emit("connect_failed")
        return
    client.publish(status, "online", qos=1, retain=True).wait_for_publish(5)
    emit("online")
    for cmd in commands():
        if cmd["op"] == "publish":
            info = client.publish(cmd["topic"], payload=cmd["payload"], qos=cmd.get("qos", 1),
                                  retain=cmd.get("retain", False))
            info.wait_for_publish(5)
            emit("published", topic=cmd["topic"], ok=info.is_published())
        elif cmd["op"] == "quit":
            client.disconnect()
            client.loop_stop()
            emit("bye")
            return


def role_consumer(a: dict) -> None:
    """Seed 003's consumer that tolerates duplicates by design (dedupe on the message id)."""
    import paho.mqtt.client as mqtt

    seen: dict = {}  # the seed's LRUCache(maxsize=100_000)
    delay = a.get("insert_delay", 0)

    def on_message(c, _, msg):
        data = json.loads(msg.payload)
        msg_id = data["id"]
        if msg_id in seen:
            emit("duplicate", id=msg_id, dup_flag=bool(msg.dup))
            return
        seen[msg_id] = True
        time.sleep(delay)  # db.insert(topic=msg.topic, ts=data["ts"], value=data["v"])
        emit("stored", id=msg_id, topic=msg.topic, v=data["v"], dup_flag=bool(msg.dup))

    def on_connect(client, userdata, flags, rc, *rest):
        emit("connected", rc=rc_int(rc), session_present=session_present(flags))

    client = new_client(mqtt, client_id=a["client_id"], clean_session=False)
    if a.get("user") is not None:
        client.username_pw_set(a["user"], a["password"])
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda c, u, mid, granted, *r: emit("subscribed", granted=[rc_int(g) for g in granted])
    client.connect(a["host"], a["port"], keepalive=60)
    client.subscribe(a["filter"], qos=1)
    client.loop_start()
    for cmd in commands():
        if cmd["op"] == "quit":
            client.disconnect()
            client.loop_stop()
            emit("bye")
            return


def role_listener(a: dict) -> None:
    """A plain subscriber (seed 002's subscriber service, a dashboard): emits every message."""
    import paho.mqtt.client as mqtt

    def on_connect(client, userdata, flags, rc, *rest):
        emit("connected", rc=rc_int(rc), session_present=session_present(flags))
        for f in a["filters"]:
            client.subscribe(f, qos=a.get("qos", 1))

    def on_message(client, userdata, msg):
        emit("message", topic=msg.topic, payload=msg.payload.decode(), qos=msg.qos, retain=bool(msg.retain))

    client = new_client(mqtt, client_id=a.get("client_id", ""), clean_session=True)
    if a.get("user") is not None:
        client.username_pw_set(a["user"], a["password"])
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = lambda c, u, mid, granted, *r: emit("subscribed", granted=[rc_int(g) for g in granted])
    client.connect(a["host"], a["port"], keepalive=60)
    client.loop_start()
    for cmd in commands():
        if cmd["op"] == "quit":
            client.disconnect()
            client.loop_stop()
            emit("bye")
            return


def role_publisher(a: dict) -> None:
    """Seed 002's publisher service: POST /publication -> one publish per message."""
    import paho.mqtt.client as mqtt

    client = new_client(mqtt, client_id=a["client_id"])
    if a.get("user") is not None:
        client.username_pw_set(a["user"], a["password"])
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, *r: connected.set() if rc == 0 else None
    client.connect(a["host"], a["port"], keepalive=60)
    client.loop_start()
    if not connected.wait(5):
        emit("connect_failed")
        return
    for text in a["messages"]:
        info = client.publish(a["topic"], json.dumps({"service": a["client_id"], "text": text}), qos=a["qos"])
        info.wait_for_publish(5)
        if not info.is_published():
            emit("publish_failed", text=text)
    client.disconnect()
    client.loop_stop()
    emit("done", n=len(a["messages"]))


def client_main(argv: list[str]) -> None:
    import paho.mqtt

    role, args = argv[0], json.loads(argv[1])
    emit("ready", paho=paho.mqtt.__version__, pid=os.getpid())
    {"printer": role_printer, "sensor": role_sensor, "consumer": role_consumer,
     "listener": role_listener, "publisher": role_publisher}[role](args)


if __name__ == "__main__":
    client_main(sys.argv[1:])
    sys.exit(0)

# =========================================================================== test side

import pytest  # noqa: E402

from conftest import FRESH_RABBITMQ, MqttBroker, get_one, paho16_path, topic_prefix, unique, wait_until  # noqa: E402

PAHO_VERSIONS = ["1.6.1", "2.x"]


@pytest.fixture(params=PAHO_VERSIONS)
def paho_env(request) -> dict:
    """Environment for a client subprocess running the given paho-mqtt version."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    if request.param == "1.6.1":
        path = paho16_path()
        if path is None:
            pytest.skip("paho-mqtt 1.6.1 could not be installed into tests/python/.paho16")
        env["PYTHONPATH"] = os.pathsep.join([path] + [p for p in [env.get("PYTHONPATH")] if p])
        env["EXPECT_PAHO"] = "1.6.1"
    else:
        env.pop("PYTHONPATH", None)
        env["EXPECT_PAHO"] = "2."
    return env


class Agent:
    """A client subprocess: JSON events in ``.events``, JSON commands via ``send``."""

    def __init__(self, role: str, args: dict, env: dict):
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), role, json.dumps(args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=str(HERE), text=True, bufsize=1)
        self.events: list[dict] = []
        self.cond = threading.Condition()
        self.eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self.wait(lambda e: e["ev"] == "ready", 15)
        assert ready["paho"].startswith(env["EXPECT_PAHO"]), f"{role} runs paho {ready['paho']}"

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                self.events.append(ev)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def of(self, ev: str) -> list[dict]:
        with self.cond:
            return [e for e in self.events if e["ev"] == ev]

    def wait(self, pred, timeout: float = 5.0) -> dict:
        """The first event matching pred (waiting up to timeout)."""
        def find():
            for e in self.events:
                if pred(e):
                    return e
            return None
        with self.cond:
            self.cond.wait_for(lambda: find() is not None or self.eof, timeout)
            found = find()
        if found is None:
            raise AssertionError(f"{self.role}: no matching event within {timeout}s; events {self.events}; "
                                 f"stderr {self.stderr()}")
        return found

    def wait_count(self, ev: str, n: int, timeout: float = 5.0) -> list[dict]:
        with self.cond:
            self.cond.wait_for(lambda: len([e for e in self.events if e["ev"] == ev]) >= n or self.eof, timeout)
        got = self.of(ev)
        assert len(got) >= n, f"{self.role}: {len(got)} of {n} {ev!r} events within {timeout}s: {self.events}"
        return got

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def quit(self, timeout: float = 10.0) -> None:
        """Clean shutdown: DISCONNECT, exit status 0."""
        self.send(op="quit")
        self.wait(lambda e: e["ev"] == "bye", timeout)
        assert self.proc.wait(timeout) == 0, self.stderr()

    def kill(self) -> None:
        """SIGKILL: no DISCONNECT, the kernel closes the socket."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        self._reader.join(5)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        try:
            return self.proc.stderr.read()[-3000:]
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


@pytest.fixture
def agents(paho_env):
    """Factory ``agents(role, **args)`` for client subprocesses, all ended at teardown."""
    made: list[Agent] = []

    def make(role: str, **args) -> Agent:
        a = Agent(role, args, paho_env)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def conn_args(mb) -> dict:
    d = {"host": mb.host, "port": mb.port}
    if mb.username is not None:
        d.update(user=mb.username, password=mb.password)
    return d


# --------------------------------------------------------------------------- 000 fiscal printers


def test_fiscal_printer_gets_jobs_queued_while_offline(amqp_mqtt, agents, mqtt, connect):
    broker, mb = amqp_mqtt
    printer_uuid = str(uuid.uuid4())
    printer_id = f"printer-{uuid.uuid4().hex[:8]}"
    args = dict(conn_args(mb), uuid=printer_uuid, printer_id=printer_id)

    # first start: the persistent session and its QoS 1 subscription are made
    p = agents("printer", **args)
    assert p.wait(lambda e: e["ev"] == "connected")["rc"] == 0
    assert p.wait(lambda e: e["ev"] == "subscribed")["granted"] == [1]
    p.quit()

    # the printer is offline: the backend publishes jobs over AMQP
    ch = connect().channel()
    ch.confirm_delivery()
    jobs = [{"job": i, "printer": printer_uuid, "lines": ["TOTAL", f"{i * 10}.00"]} for i in range(5)]
    for job in jobs:
        ch.basic_publish("amq.topic", printer_uuid, json.dumps(job).encode(),
                         pika_props(delivery_mode=2, content_type="application/json"), mandatory=True)

    # back online: every job, in order, at QoS 1
    p2 = agents("printer", **args)
    c = p2.wait(lambda e: e["ev"] == "connected")
    assert c["rc"] == 0 and c["session_present"], c
    got = p2.wait_count("job", len(jobs), timeout=10)
    assert [e["job"] for e in got] == jobs
    assert all(e["topic"] == printer_uuid and e["qos"] == 1 for e in got)

    # an error goes to fiscalberry/errors/{printer_id} -> AMQP routing key fiscalberry.errors.<id>
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "fiscalberry.errors.*")
    error = {"printer": printer_id, "error": "sin papel", "code": 42}
    p2.send(op="error", error=error)
    assert p2.wait(lambda e: e["ev"] == "error_published")["ok"]
    deadline = time.monotonic() + 5
    while True:  # other printers' errors may share the binding on a shared broker
        method, props, body = get_one(ch, q, timeout=max(0.1, deadline - time.monotonic()))
        if method.routing_key == f"fiscalberry.errors.{printer_id}":
            break
    assert json.loads(body) == error
    assert props.delivery_mode == 2, "a QoS 1 MQTT publish is a persistent AMQP message"
    p2.quit()
    # remove the persistent session from a shared broker
    mqtt(f"fiscalberry-{printer_uuid}", clean=True).disconnect()


@pytest.mark.fresh_broker
def test_fiscal_printer_jobs_survive_broker_restart(fresh_liebre, agents):
    """Jobs queued (persistent, confirmed) for an offline printer survive a broker restart."""
    first = fresh_liebre(mqtt=True)
    mb = MqttBroker(host="127.0.0.1", port=first.mqtt_port)
    printer_uuid = str(uuid.uuid4())
    args = dict(host=mb.host, uuid=printer_uuid, printer_id="p-restart")
    p = agents("printer", port=first.mqtt_port, **args)
    assert p.wait(lambda e: e["ev"] == "subscribed")["granted"] == [1]
    p.quit()

    conn = first.broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    jobs = [{"job": i} for i in range(3)]
    for job in jobs:
        ch.basic_publish("amq.topic", printer_uuid, json.dumps(job).encode(), pika_props(delivery_mode=2))
    conn.close()
    assert first.stop() == 0

    second = fresh_liebre(data_dir=first.data_dir, mqtt=True)
    p2 = agents("printer", port=second.mqtt_port, **args)
    c = p2.wait(lambda e: e["ev"] == "connected", 10)
    assert c["rc"] == 0 and c["session_present"], c
    got = p2.wait_count("job", len(jobs), timeout=10)
    assert [e["job"] for e in got] == jobs
    p2.quit()


@pytest.mark.fresh_broker
def test_iot_retained_values_and_persistent_session_survive_broker_restart(fresh_liebre, agents):
    """Seed 003 across a broker restart: the last known values (retained) are still there for a
    new dashboard, and the offline consumer's persistent session keeps both the readings queued
    before the restart and those published after it, while it is still offline."""
    first = fresh_liebre(mqtt=True)
    mb = MqttBroker(host="127.0.0.1", port=first.mqtt_port)
    root = f"{topic_prefix()}/acme/v1"
    status, temp = f"{root}/planta-1/estado", f"{root}/planta-1/norte/temp"
    cid = unique("consumer")
    c1 = agents("consumer", **conn_args(mb), client_id=cid, filter=f"{root}/+/+/temp")
    assert c1.wait(lambda e: e["ev"] == "subscribed")["granted"] == [1]
    c1.send(op="quit")
    c1.wait(lambda e: e["ev"] == "bye")

    def readings(port, ids):
        sensor = agents("sensor", host="127.0.0.1", port=port, client_id="gw-planta-1", status_topic=status)
        sensor.wait(lambda e: e["ev"] == "online")
        for i in ids:
            sensor.send(op="publish", topic=temp, payload=json.dumps({"id": i, "v": 20 + i}), qos=1, retain=True)
        assert all(e["ok"] for e in sensor.wait_count("published", len(ids)))
        sensor.send(op="quit")
        sensor.wait(lambda e: e["ev"] == "bye")

    readings(first.mqtt_port, range(5))
    assert first.stop() == 0

    second = fresh_liebre(data_dir=first.data_dir, mqtt=True)
    readings(second.mqtt_port, range(5, 8))  # the consumer is still offline
    dashboard = agents("listener", host="127.0.0.1", port=second.mqtt_port, filters=[f"{root}/#"], qos=1)
    got = {e["topic"]: e for e in dashboard.wait_count("message", 2)}
    assert got[status]["payload"] == "online" and got[status]["retain"]
    assert json.loads(got[temp]["payload"])["id"] == 7 and got[temp]["retain"]

    c2 = agents("consumer", host="127.0.0.1", port=second.mqtt_port, client_id=cid, filter=f"{root}/+/+/temp")
    c = c2.wait(lambda e: e["ev"] == "connected", 10)
    assert c["rc"] == 0 and c["session_present"], c
    stored = c2.wait_count("stored", 8, timeout=10)
    # Resubscribing (the seed's consumer does on every connect) also brings the retained
    # reading 7 at once, as in Mosquitto; the queued ones follow in order.
    assert sorted(e["id"] for e in stored) == list(range(8))
    assert [e["id"] for e in stored if e["id"] != 7] == list(range(7))
    c2.send(op="quit")


def pika_props(**kw):
    import pika

    return pika.BasicProperties(**kw)


# --------------------------------------------------------------------------- 003 industrial IoT


def test_iot_hierarchy_wildcards(mqtt_broker, agents):
    root = f"{topic_prefix()}/acme/v1"
    topics = [f"{root}/planta-1/norte/temp", f"{root}/planta-1/norte/humedad", f"{root}/planta-1/sur/temp",
              f"{root}/planta-1/sur/ruido-db", f"{root}/planta-2/norte/temp"]
    filters = {
        f"{root}/+/norte/temp": {topics[0], topics[4]},
        f"{root}/planta-1/#": set(topics[:4]) | {f"{root}/planta-1/estado"},  # with the sensor's "online"
        f"{root}/+/+/temp": {topics[0], topics[2], topics[4]},
        f"{root}/planta-2/norte/temp": {topics[4]},
    }
    listeners = {f: agents("listener", **conn_args(mqtt_broker), filters=[f], qos=1) for f in filters}
    for ln in listeners.values():
        ln.wait(lambda e: e["ev"] == "subscribed")
    sensor = agents("sensor", **conn_args(mqtt_broker), client_id=unique("gw-planta-1"),
                    status_topic=f"{root}/planta-1/estado")
    sensor.wait(lambda e: e["ev"] == "online")
    for t in topics:
        sensor.send(op="publish", topic=t, payload=json.dumps({"v": 21.3, "t": t}), qos=1)
    sensor.wait_count("published", len(topics))
    sensor.send(op="publish", topic=f"{root}/end", payload="{}", qos=1)  # matched by none of the filters
    sensor.wait_count("published", len(topics) + 1)
    for f, expected in filters.items():
        ln = listeners[f]
        ln.wait_count("message", len(expected))
        time.sleep(0.1)
        assert {e["topic"] for e in ln.of("message")} == expected, f
        assert len(ln.of("message")) == len(expected), (f, ln.of("message"))
    sensor.quit()
    _clear_retained(agents, mqtt_broker, [f"{root}/planta-1/estado"])


def _clear_retained(agents, mqtt_broker, topics: list[str]) -> None:
    """Delete retained messages a test left (an empty retained publish)."""
    s = agents("sensor", **conn_args(mqtt_broker), client_id=unique("cleanup"), status_topic=topics[0])
    s.wait(lambda e: e["ev"] == "online")
    for t in topics:
        s.send(op="publish", topic=t, payload="", qos=1, retain=True)
    s.wait_count("published", len(topics))
    s.quit()


def test_iot_retained_state_and_last_will(mqtt_broker, agents):
    root = f"{topic_prefix()}/acme/v1"
    status = f"{root}/planta-1/estado"
    temp = f"{root}/planta-1/norte/temp"
    watcher = agents("listener", **conn_args(mqtt_broker), filters=[status], qos=1)
    watcher.wait(lambda e: e["ev"] == "subscribed")

    sensor = agents("sensor", **conn_args(mqtt_broker), client_id=unique("gw-planta-1"), status_topic=status)
    sensor.wait(lambda e: e["ev"] == "online")
    sensor.send(op="publish", topic=temp, payload='{"v":21.3}', qos=1, retain=True)
    sensor.wait(lambda e: e["ev"] == "published")
    assert watcher.wait(lambda e: e["ev"] == "message")["payload"] == "online"

    # late subscribers get the last known values: exact filter and wildcards
    late = {
        status: {status: "online"},
        f"{root}/planta-1/#": {status: "online", temp: '{"v":21.3}'},
        f"{root}/+/norte/temp": {temp: '{"v":21.3}'},
        f"{root}/+/estado": {status: "online"},
        f"{root}/#": {status: "online", temp: '{"v":21.3}'},
    }
    for f, expected in late.items():
        ln = agents("listener", **conn_args(mqtt_broker), filters=[f], qos=1)
        got = ln.wait_count("message", len(expected))
        assert {e["topic"]: e["payload"] for e in got} == expected, f
        assert all(e["retain"] for e in got), got
    none = agents("listener", **conn_args(mqtt_broker), filters=[f"{root}/planta-2/#"], qos=1)
    none.wait(lambda e: e["ev"] == "subscribed")

    # the device dies (kill -9): the broker publishes its Last Will, retained
    sensor.kill()
    m = watcher.wait(lambda e: e["ev"] == "message" and e["payload"] == "offline")
    assert m["topic"] == status
    after = agents("listener", **conn_args(mqtt_broker), filters=[f"{root}/+/estado"], qos=1)
    got = after.wait(lambda e: e["ev"] == "message")
    assert (got["topic"], got["payload"], got["retain"]) == (status, "offline", True)
    time.sleep(0.1)
    assert none.of("message") == []
    _clear_retained(agents, mqtt_broker, [status, temp])


def test_iot_idempotent_consumer_loses_nothing_across_crash(mqtt_broker, agents):
    """QoS 1 + persistent session: duplicates allowed, nothing lost across a kill -9 and reconnect."""
    root = f"{topic_prefix()}/acme/v1"
    cid = unique("consumer")
    cons_args = dict(conn_args(mqtt_broker), client_id=cid, filter=f"{root}/+/+/temp", insert_delay=0.02)
    c1 = agents("consumer", **cons_args)
    assert c1.wait(lambda e: e["ev"] == "subscribed")["granted"] == [1]

    sensor = agents("sensor", **conn_args(mqtt_broker), client_id=unique("gw"), status_topic=f"{root}/planta-1/estado")
    sensor.wait(lambda e: e["ev"] == "online")

    def publish(ids):
        for i in ids:
            plant = "planta-1" if i % 2 else "planta-2"
            sensor.send(op="publish", topic=f"{root}/{plant}/norte/temp",
                        payload=json.dumps({"id": f"m{i}", "ts": i, "v": 20 + i / 10}), qos=1)

    publish(range(0, 30))
    c1.wait_count("stored", 5, timeout=10)
    c1.kill()  # mid-stream: some delivered and acknowledged, some in flight
    first = {e["id"] for e in c1.of("stored")}
    assert 5 <= len(first), first

    publish(range(30, 40))  # while the consumer is down
    sensor.wait_count("published", 40, timeout=10)

    c2 = agents("consumer", **cons_args)
    assert c2.wait(lambda e: e["ev"] == "connected")["session_present"]
    want = {f"m{i}" for i in range(40)}
    assert wait_until(lambda: first | {e["id"] for e in c2.of("stored")} >= want, 10), \
        f"lost: {sorted(want - first - {e['id'] for e in c2.of('stored')})}"
    stored2 = [e["id"] for e in c2.of("stored")]
    assert len(stored2) == len(set(stored2)), "the consumer's dedupe let a duplicate through"
    assert {f"m{i}" for i in range(30, 40)} <= set(stored2)
    c2.quit()
    sensor.quit()
    _clear_retained(agents, mqtt_broker, [f"{root}/planta-1/estado"])


# --------------------------------------------------------------------------- 002 web pub/sub


def test_web_two_services_one_topic(mqtt_broker, agents):
    topic = f"{topic_prefix()}/mi/topico/de/prueba"
    sub = agents("listener", **conn_args(mqtt_broker), filters=[topic], qos=2)
    assert sub.wait(lambda e: e["ev"] == "subscribed")["granted"] == [2]
    a = agents("publisher", **conn_args(mqtt_broker), client_id=unique("publisher-a"), topic=topic, qos=1,
               messages=[f"a{i}" for i in range(5)])
    b = agents("publisher", **conn_args(mqtt_broker), client_id=unique("publisher-b"), topic=topic, qos=2,
               messages=[f"b{i}" for i in range(5)])
    assert a.wait(lambda e: e["ev"] == "done", 10)["n"] == 5
    assert b.wait(lambda e: e["ev"] == "done", 10)["n"] == 5
    got = sub.wait_count("message", 10)
    time.sleep(0.1)
    got = sub.of("message")
    texts = [json.loads(e["payload"])["text"] for e in got]
    assert sorted(texts) == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]), texts
    # each service's messages in its own order, at its own QoS
    assert [t for t in texts if t[0] == "a"] == [f"a{i}" for i in range(5)]
    assert [t for t in texts if t[0] == "b"] == [f"b{i}" for i in range(5)]
    assert {json.loads(e["payload"])["service"][:11]: e["qos"] for e in got} == {"publisher-a": 1, "publisher-b": 2}
    sub.quit()
