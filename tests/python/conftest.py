"""Fixtures for Liebre's acceptance suite: AMQP 0-9-1 (pytest + pika) and MQTT (paho-mqtt).

Two modes:

* External: ``LIEBRE_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5673/%2F`` and/or
  ``LIEBRE_TEST_MQTT_URL=mqtt://127.0.0.1:1884`` (plus ``LIEBRE_TEST_MQTT_WS_URL=
  ws://127.0.0.1:9002/mqtt`` for MQTT over WebSocket) run the suite against already
  running brokers (RabbitMQ and Mosquitto as the oracles, or a Liebre you started
  yourself). Tests that need a broker not given are skipped, and so are tests that
  need a broker process of their own; cross-protocol (MQTT <-> AMQP) tests run only
  when both an AMQP and an MQTT URL are given (they must be the same broker).
  Tests marked ``liebre_only`` (behaviour neither oracle has) are skipped too, unless
  ``LIEBRE_TEST_EXTERNAL_IS_LIEBRE=1`` says the external broker is a Liebre.
* Without any of them, the session starts the Liebre binary (``LIEBRE_BIN``, default
  ``<repo>/target/debug/liebre``) on free loopback ports with a temporary data
  directory (AMQP, MQTT, MQTT over WebSocket and HTTP listeners), and stops it with
  SIGTERM at the end, expecting exit status 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXTERNAL_URL = os.environ.get("LIEBRE_TEST_AMQP_URL")
MQTT_URL = os.environ.get("LIEBRE_TEST_MQTT_URL")
MQTT_WS_URL = os.environ.get("LIEBRE_TEST_MQTT_WS_URL")
# any external broker given: nothing is started, and what was not given is skipped
EXTERNAL = bool(EXTERNAL_URL or MQTT_URL or MQTT_WS_URL)
EXTERNAL_IS_LIEBRE = bool(os.environ.get("LIEBRE_TEST_EXTERNAL_IS_LIEBRE"))
LIEBRE_BIN = os.environ.get("LIEBRE_BIN", str(REPO / "target" / "debug" / "liebre"))

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "liebre_only: behaviour neither oracle (RabbitMQ, Mosquitto) has; skipped against "
        "an external broker unless LIEBRE_TEST_EXTERNAL_IS_LIEBRE=1")


def pytest_collection_modifyitems(config, items):
    if not EXTERNAL:
        return
    skip = pytest.mark.skip(reason="needs a Liebre process of its own; an external broker is set")
    skip_liebre = pytest.mark.skip(reason="Liebre-only behaviour; the external broker is an oracle "
                                          "(set LIEBRE_TEST_EXTERNAL_IS_LIEBRE=1 if it is a Liebre)")
    for item in items:
        if "fresh_broker" in item.keywords:
            item.add_marker(skip)
        if "liebre_only" in item.keywords and not EXTERNAL_IS_LIEBRE:
            item.add_marker(skip_liebre)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def unique(prefix: str) -> str:
    """A name no other test (or other run against a shared broker) uses."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@dataclass
class Broker:
    host: str
    port: int
    username: str = "guest"
    password: str = "guest"
    vhost: str = "/"
    external: bool = False
    # MQTT listeners of the same process (a Liebre started by the suite), if known
    mqtt_port: int | None = None
    mqtt_ws_port: int | None = None

    @property
    def url(self) -> str:
        vhost = urllib.parse.quote(self.vhost, safe="")
        return f"amqp://{self.username}:{self.password}@{self.host}:{self.port}/{vhost}"

    def params(self, **overrides) -> pika.ConnectionParameters:
        kw = dict(
            host=self.host,
            port=self.port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.username, self.password),
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=10,
            blocked_connection_timeout=10,
            heartbeat=0,
        )
        kw.update(overrides)
        return pika.ConnectionParameters(**kw)

    def connect(self, **overrides) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(**overrides))


def broker_from_url(url: str) -> Broker:
    u = urllib.parse.urlparse(url)
    vhost = urllib.parse.unquote(u.path[1:]) if len(u.path) > 1 else "/"
    return Broker(
        host=u.hostname or "127.0.0.1",
        port=u.port or 5672,
        username=urllib.parse.unquote(u.username or "guest"),
        password=urllib.parse.unquote(u.password or "guest"),
        vhost=vhost,
        external=True,
    )


class LiebreProcess:
    """One Liebre server process on free loopback ports.

    ``start()`` waits for the AMQP port; ``stop()`` sends SIGTERM and returns the
    exit status; ``kill()`` sends SIGKILL. The data directory survives
    ``stop``/``kill`` so that ``start()`` again is a restart on the same data.
    """

    def __init__(self, data_dir: str | None = None, binary: str = LIEBRE_BIN):
        self.binary = binary
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="liebre-test-")
        self.amqp_port = free_port()
        self.mqtt_port = free_port()
        self.mqtt_ws_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start_timeout = START_TIMEOUT
        # the server's output goes next to (not into) its data directory
        d = os.path.abspath(self.data_dir)
        self._stderr_path = os.path.join(os.path.dirname(d), f"{os.path.basename(d)}.log")
        self._stderr = None

    @property
    def broker(self) -> Broker:
        return Broker(host="127.0.0.1", port=self.amqp_port, mqtt_port=self.mqtt_port,
                      mqtt_ws_port=self.mqtt_ws_port)

    def command(self) -> list[str]:
        return [
            self.binary, "server",
            "--data-dir", self.data_dir,
            "--amqp", f"127.0.0.1:{self.amqp_port}",
            "--mqtt", f"127.0.0.1:{self.mqtt_port}",
            "--mqtt-ws", f"127.0.0.1:{self.mqtt_ws_port}",
            "--http", f"127.0.0.1:{self.http_port}",
        ]

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def stderr_text(self) -> str:
        try:
            with open(self._stderr_path, "r", errors="replace") as f:
                return f.read()[-8000:]
        except OSError:
            return ""

    def start(self) -> "LiebreProcess":
        if not os.path.exists(self.binary):
            pytest.fail(f"Liebre binary not found at {self.binary} (build it, set LIEBRE_BIN, "
                        f"or set LIEBRE_TEST_AMQP_URL to test an external broker)")
        self._stderr = open(self._stderr_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
        )
        if not wait_for_port("127.0.0.1", self.amqp_port, self.start_timeout, self.proc):
            code = self.proc.poll()
            if code is None:
                self.proc.kill()
                self.proc.wait()
            pytest.fail(
                f"Liebre did not accept AMQP connections on 127.0.0.1:{self.amqp_port} within "
                f"{self.start_timeout}s (exit status {code}); command {self.command()}\n"
                f"--- output ---\n{self.stderr_text()}"
            )
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; returns the exit status (fails the test on a hang)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"Liebre did not exit within {timeout}s of SIGTERM\n{self.stderr_text()}")
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_log()

    def _close_log(self):
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            try:
                os.unlink(self._stderr_path)
            except OSError:
                pass


class RabbitMQProcess(LiebreProcess):
    """The same interface backed by a throwaway RabbitMQ node (Debian's rabbitmq-server).

    Only for checking the fresh_broker tests themselves against the oracle:
    ``LIEBRE_TEST_FRESH_RABBITMQ=1 pytest tests/python -m fresh_broker``. A node takes
    about 5 s to start, so this is not the default.
    """

    RMQ_BIN = os.environ.get("RABBITMQ_BIN_DIR", "/usr/lib/rabbitmq/bin")

    def __init__(self, data_dir: str | None = None, mqtt: bool = False):
        super().__init__(data_dir=data_dir, binary=os.path.join(self.RMQ_BIN, "rabbitmq-server"))
        self.start_timeout = 60.0
        self.mqtt = mqtt  # enable rabbitmq_mqtt on self.mqtt_port (for the MQTT fresh_broker tests)
        # the node name (and so the mnesia directory) must stay the same across restarts
        name_file = os.path.join(self.data_dir, "nodename")
        if not os.path.exists(name_file):
            with open(name_file, "w") as f:
                f.write(f"liebre-fresh-{uuid.uuid4().hex[:8]}@localhost")
        with open(name_file) as f:
            self.nodename = f.read().strip()

    def command(self) -> list[str]:
        return [self.binary]

    def env(self) -> dict[str, str]:
        d = self.data_dir
        home = os.path.join(d, "home")
        os.makedirs(home, exist_ok=True)
        with open(os.path.join(d, "rabbitmq.conf"), "w") as f:
            f.write(f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\nloopback_users.guest = false\n")
            if self.mqtt:
                f.write(f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\nmqtt.allow_anonymous = true\n")
        for name in ("enabled_plugins", "advanced.config"):
            with open(os.path.join(d, name), "w") as f:
                f.write("[rabbitmq_mqtt].\n" if name == "enabled_plugins" and self.mqtt else "[].\n")
        env = dict(os.environ)
        env.update(
            HOME=home,
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_MNESIA_BASE=os.path.join(d, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(d, "log"),
            RABBITMQ_CONFIG_FILE=os.path.join(d, "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(d, "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(d, "enabled_plugins"),
            RABBITMQ_PID_FILE=os.path.join(d, "beam.pid"),
            RABBITMQ_CONF_ENV_FILE=os.path.join(d, "rabbitmq-env.conf"),
            RABBITMQ_DIST_PORT=str(free_port()),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        open(env["RABBITMQ_CONF_ENV_FILE"], "w").close()
        return env

    def kill(self) -> None:
        """SIGKILL the Erlang VM itself (the launcher script would stop it gracefully)."""
        try:
            with open(os.path.join(self.data_dir, "beam.pid")) as f:
                os.kill(int(f.read().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        super().kill()

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        super().cleanup()


FRESH_RABBITMQ = bool(os.environ.get("LIEBRE_TEST_FRESH_RABBITMQ"))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def liebre_server():
    """The Liebre process the session starts (only without external brokers)."""
    assert not EXTERNAL
    proc = LiebreProcess()
    try:
        proc.start()
        yield proc
        code = proc.stop()
        assert code == 0, f"Liebre exited with status {code} after SIGTERM\n{proc.stderr_text()}"
    finally:
        proc.cleanup()


@pytest.fixture(scope="session")
def broker(request):
    """The broker under test: ``.host``, ``.port``, ``.url``, ``.connect()``."""
    if EXTERNAL_URL:
        b = broker_from_url(EXTERNAL_URL)
        if not wait_for_port(b.host, b.port, 5):
            pytest.exit(f"LIEBRE_TEST_AMQP_URL={EXTERNAL_URL}: nothing listens on {b.host}:{b.port}", 2)
        yield b
        return
    if EXTERNAL:
        pytest.skip("needs an AMQP broker: LIEBRE_TEST_MQTT_URL is set but LIEBRE_TEST_AMQP_URL is not")
    yield request.getfixturevalue("liebre_server").broker


@pytest.fixture
def fresh_liebre(request):
    """A Liebre process of the test's own (start/stop/kill/restart at will).

    Only for tests that must restart, kill or shut down the broker. Such tests
    carry ``@pytest.mark.fresh_broker`` and are skipped against an external broker.
    """
    if EXTERNAL:
        pytest.skip("needs a Liebre process of its own")
    procs: list[LiebreProcess] = []

    def make(data_dir: str | None = None, mqtt: bool = False) -> LiebreProcess:
        """Start one; ``mqtt=True`` also waits for its MQTT listener (and, for the RabbitMQ
        check of these tests, enables the MQTT plugin)."""
        if FRESH_RABBITMQ:
            p = RabbitMQProcess(data_dir=data_dir, mqtt=mqtt)
        else:
            p = LiebreProcess(data_dir=data_dir)
        procs.append(p)
        p.start()
        if mqtt and not wait_for_port("127.0.0.1", p.mqtt_port, p.start_timeout, p.proc):
            pytest.fail(f"no MQTT listener on 127.0.0.1:{p.mqtt_port}\n{p.stderr_text()}")
        return p

    yield make
    for p in reversed(procs):  # restarts first: the first process owns the data directory
        p.cleanup()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def conn(broker):
    c = broker.connect()
    yield c
    if c.is_open:
        try:
            c.close()
        except Exception:
            pass


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def connect(broker):
    """Factory for extra connections that are closed at teardown."""
    opened: list[pika.BlockingConnection] = []

    def make(**overrides) -> pika.BlockingConnection:
        c = broker.connect(**overrides)
        opened.append(c)
        return c

    yield make
    for c in opened:
        if c.is_open:
            try:
                c.close()
            except Exception:
                pass


@pytest.fixture
def cleanup(broker):
    """Register queues/exchanges to delete at teardown (for non-exclusive names)."""
    queues: list[str] = []
    exchanges: list[str] = []

    class Reg:
        def queue(self, name: str) -> str:
            queues.append(name)
            return name

        def exchange(self, name: str) -> str:
            exchanges.append(name)
            return name

    yield Reg()
    try:
        c = broker.connect()
    except Exception:
        return
    try:
        for q in queues:
            chn = c.channel()
            try:
                chn.queue_delete(q)
                chn.close()
            except Exception:
                pass
        for x in exchanges:
            chn = c.channel()
            try:
                chn.exchange_delete(x)
                chn.close()
            except Exception:
                pass
    finally:
        try:
            c.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- polling helpers


def drain(connection: pika.BlockingConnection, until, timeout: float = 5.0) -> bool:
    """Process events until ``until()`` is true or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not until():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        connection.process_data_events(time_limit=min(0.05, remaining))
    return True


def settle(connection: pika.BlockingConnection, duration: float = 0.3) -> None:
    """Let the broker deliver whatever it is going to deliver in ``duration`` seconds."""
    deadline = time.monotonic() + duration
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        connection.process_data_events(time_limit=remaining)


def get_one(channel, queue: str, timeout: float = 5.0, auto_ack: bool = True):
    """basic_get with retries until a message arrives (routing can be asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        if time.monotonic() > deadline:
            raise AssertionError(f"no message in {queue!r} within {timeout}s")
        time.sleep(0.02)


def message_count(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def wait_message_count(channel, queue: str, expected: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = message_count(channel, queue)
        if n == expected or time.monotonic() > deadline:
            return n
        time.sleep(0.02)


# =========================================================================== MQTT
#
# The MQTT side: a broker description (`mqtt_broker`), a small synchronous wrapper
# around paho-mqtt 2.x (`MqttClient`, made by the `mqtt` fixture), and paho-mqtt
# 1.6.1 (the seeds' version) installed on demand into tests/python/.paho16 for the
# scenarios that run as subprocesses under both versions.

PAHO16_DIR = HERE / ".paho16"
PAHO16_VERSION = "1.6.1"


@dataclass
class MqttBroker:
    host: str
    port: int
    ws_host: str | None = None
    ws_port: int | None = None
    ws_path: str = "/mqtt"
    username: str | None = None
    password: str | None = None
    external: bool = False


def mqtt_broker_from_urls(url: str | None, ws_url: str | None) -> MqttBroker:
    b = MqttBroker(host="127.0.0.1", port=0, external=True)
    if url:
        u = urllib.parse.urlparse(url)
        b.host, b.port = u.hostname or "127.0.0.1", u.port or 1883
        if u.username is not None:
            b.username = urllib.parse.unquote(u.username)
            b.password = urllib.parse.unquote(u.password or "")
    if ws_url:
        w = urllib.parse.urlparse(ws_url)
        b.ws_host, b.ws_port = w.hostname or "127.0.0.1", w.port or 80
        b.ws_path = w.path or "/mqtt"
    return b


@pytest.fixture(scope="session")
def mqtt_broker(request) -> MqttBroker:
    """The MQTT broker under test (``.host``, ``.port``, ``.ws_*``); skips when there is none."""
    if EXTERNAL:
        if not MQTT_URL:
            pytest.skip("needs an MQTT broker: an external broker is set but LIEBRE_TEST_MQTT_URL is not")
        b = mqtt_broker_from_urls(MQTT_URL, MQTT_WS_URL)
        if not wait_for_port(b.host, b.port, 5):
            pytest.exit(f"LIEBRE_TEST_MQTT_URL={MQTT_URL}: nothing listens on {b.host}:{b.port}", 2)
        return b
    proc: LiebreProcess = request.getfixturevalue("liebre_server")
    if not wait_for_port("127.0.0.1", proc.mqtt_port, START_TIMEOUT, proc.proc):
        pytest.fail(f"Liebre does not accept MQTT connections on 127.0.0.1:{proc.mqtt_port}\n{proc.stderr_text()}")
    return MqttBroker(host="127.0.0.1", port=proc.mqtt_port, ws_host="127.0.0.1", ws_port=proc.mqtt_ws_port)


@pytest.fixture(scope="session")
def mqtt_ws_broker(mqtt_broker) -> MqttBroker:
    """The same broker, for tests over WebSocket (skipped if no WebSocket URL was given)."""
    if mqtt_broker.ws_port is None:
        pytest.skip("needs MQTT over WebSocket: set LIEBRE_TEST_MQTT_WS_URL")
    if not wait_for_port(mqtt_broker.ws_host, mqtt_broker.ws_port, START_TIMEOUT):
        pytest.fail(f"nothing accepts connections on {mqtt_broker.ws_host}:{mqtt_broker.ws_port} (MQTT over WebSocket)")
    return mqtt_broker


@pytest.fixture(scope="session")
def amqp_mqtt(request):
    """(AMQP Broker, MqttBroker) of one broker, for cross-protocol tests.

    Against external brokers both LIEBRE_TEST_AMQP_URL and LIEBRE_TEST_MQTT_URL must be
    given, and must be the same broker (e.g. RabbitMQ with its MQTT plugin).
    """
    if EXTERNAL and not (EXTERNAL_URL and MQTT_URL):
        pytest.skip("cross-protocol: needs both LIEBRE_TEST_AMQP_URL and LIEBRE_TEST_MQTT_URL of one broker")
    return request.getfixturevalue("broker"), request.getfixturevalue("mqtt_broker")


def wait_until(pred, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``pred()`` until it is true or the timeout passes; returns its last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


@dataclass
class Msg:
    """One message as an MQTT subscriber saw it (v5 properties as plain values)."""
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    props: dict


# paho's Properties attribute names -> the names used in Msg.props
_V5_PROPS = {
    "PayloadFormatIndicator": "payload_format_indicator",
    "MessageExpiryInterval": "message_expiry_interval",
    "ContentType": "content_type",
    "ResponseTopic": "response_topic",
    "CorrelationData": "correlation_data",
    "SubscriptionIdentifier": "subscription_identifier",
    "UserProperty": "user_property",
    "TopicAlias": "topic_alias",
    "AssignedClientIdentifier": "assigned_client_identifier",
    "ServerKeepAlive": "server_keep_alive",
    "SessionExpiryInterval": "session_expiry_interval",
    "TopicAliasMaximum": "topic_alias_maximum",
    "ReasonString": "reason_string",
    "ReceiveMaximum": "receive_maximum",
    "MaximumQoS": "maximum_qos",
    "RetainAvailable": "retain_available",
    "SharedSubscriptionAvailable": "shared_subscription_available",
    "SubscriptionIdentifierAvailable": "subscription_identifier_available",
    "WildcardSubscriptionAvailable": "wildcard_subscription_available",
}


def props_dict(properties) -> dict:
    out = {}
    if properties is None:
        return out
    for attr, name in _V5_PROPS.items():
        if hasattr(properties, attr):
            out[name] = getattr(properties, attr)
    return out


def _rc(code) -> int:
    """A paho ReasonCode (or int) as an int."""
    return code if isinstance(code, int) else code.value


class MqttClient:
    """paho-mqtt 2.x with blocking helpers: every wait is bounded.

    ``connect()`` returns once the CONNACK came (and checks its reason code);
    messages are collected in ``.messages``; ``drop()`` closes the socket without
    a DISCONNECT (an unclean disconnect, as a pulled cable). Never reconnects by
    itself, so two clients with one id do not take each other over in a loop.
    """

    def __init__(self, mb: MqttBroker, client_id: str = "", *, v5: bool = False, clean: bool = True,
                 transport: str = "tcp", ws_path: str | None = None):
        import paho.mqtt.client as paho

        self.mb = mb
        self.v5 = v5
        self.clean = clean
        self.client_id = client_id
        self.transport = transport
        kw = dict(callback_api_version=paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                  protocol=paho.MQTTv5 if v5 else paho.MQTTv311, transport=transport,
                  reconnect_on_failure=False)
        if not v5:
            kw["clean_session"] = clean
        self.c = paho.Client(**kw)
        if transport == "websockets":
            self.c.ws_set_options(path=ws_path or mb.ws_path)
        self.cond = threading.Condition()
        self.messages: list[Msg] = []
        self.connack: tuple[bool, int, dict] | None = None  # (session present, reason code, properties)
        self.disconnect_rc: int | None = None
        self.disconnect_props: dict = {}
        self.subacks: dict[int, list[int]] = {}
        self.unsubacks: dict[int, list[int]] = {}
        self.c.on_connect = self._on_connect
        self.c.on_connect_fail = self._on_connect_fail
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self._loop = False

    # -- callbacks (paho's network thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.connack = (bool(flags.session_present), _rc(reason_code), props_dict(properties))
            self.cond.notify_all()

    def _on_connect_fail(self, client, userdata):
        with self.cond:
            if self.disconnect_rc is None:
                self.disconnect_rc = -1
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.disconnect_rc = _rc(reason_code)
            self.disconnect_props = props_dict(properties)
            self.cond.notify_all()

    def _on_message(self, client, userdata, m):
        msg = Msg(m.topic, bytes(m.payload), m.qos, bool(m.retain), bool(m.dup),
                  props_dict(getattr(m, "properties", None)))
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = [_rc(r) for r in reason_codes]
            self.cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.unsubacks[mid] = [_rc(r) for r in (reason_codes or [])]
            self.cond.notify_all()

    def _wait(self, pred, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    # -- operations

    def will(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False, **v5props):
        """Set the Last Will (before connect); v5 properties by paho name, e.g. WillDelayInterval=2."""
        props = None
        if v5props:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            props = Properties(PacketTypes.WILLMESSAGE)
            for k, v in v5props.items():
                setattr(props, k, v)
        self.c.will_set(topic, payload, qos, retain, props)
        return self

    def connect(self, *, keepalive: int = 60, username: str | None = None, password: str | None = None,
                session_expiry: int | None = None, expect: int | None = 0, timeout: float = 5.0,
                **v5props) -> tuple[bool, int, dict]:
        """CONNECT and wait for the CONNACK: (session present, reason code, properties).

        ``expect`` is the reason code required (None: anything). v5: ``session_expiry``
        and other CONNECT properties by paho name (``ReceiveMaximum=...``).
        """
        user = username if username is not None else self.mb.username
        if user is not None:
            self.c.username_pw_set(user, password if username is not None else self.mb.password)
        kw = {}
        if self.v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            props = Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                props.SessionExpiryInterval = session_expiry
            for k, v in v5props.items():
                setattr(props, k, v)
            kw = dict(clean_start=self.clean, properties=props)
        host, port = (self.mb.ws_host, self.mb.ws_port) if self.transport == "websockets" else (self.mb.host, self.mb.port)
        with self.cond:
            self.connack = None
            self.disconnect_rc = None
        self.c.connect(host, port, keepalive, **kw)
        if not self._loop:
            self.c.loop_start()
            self._loop = True
        ok = self._wait(lambda: self.connack is not None or self.disconnect_rc is not None, timeout)
        assert ok, f"no CONNACK within {timeout}s ({self.client_id!r})"
        assert self.connack is not None, f"connection closed before a CONNACK ({self.client_id!r}, rc {self.disconnect_rc})"
        if expect is not None:
            assert self.connack[1] == expect, f"CONNACK reason {self.connack[1]:#x}, expected {expect:#x}"
        return self.connack

    @property
    def session_present(self) -> bool:
        assert self.connack is not None
        return self.connack[0]

    def subscribe(self, topic: str, qos: int = 1, *, no_local: bool = False, retain_as_published: bool = False,
                  retain_handling: int = 0, sub_id: int | None = None, user_property=None,
                  timeout: float = 5.0) -> list[int]:
        """SUBSCRIBE one filter and wait for the SUBACK: the reason codes (granted QoS)."""
        kw = {}
        if self.v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            from paho.mqtt.subscribeoptions import SubscribeOptions
            kw["options"] = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=retain_as_published,
                                             retainHandling=retain_handling)
            if sub_id is not None or user_property:
                props = Properties(PacketTypes.SUBSCRIBE)
                if sub_id is not None:
                    props.SubscriptionIdentifier = sub_id
                if user_property:
                    props.UserProperty = user_property
                kw["properties"] = props
            rc, mid = self.c.subscribe(topic, **kw)
        else:
            rc, mid = self.c.subscribe(topic, qos)
        assert rc == 0, f"subscribe({topic!r}) failed locally: {rc}"
        assert self._wait(lambda: mid in self.subacks, timeout), f"no SUBACK for {topic!r} within {timeout}s"
        return self.subacks[mid]

    def unsubscribe(self, topic: str, timeout: float = 5.0) -> list[int]:
        rc, mid = self.c.unsubscribe(topic)
        assert rc == 0, rc
        assert self._wait(lambda: mid in self.unsubacks, timeout), f"no UNSUBACK for {topic!r} within {timeout}s"
        return self.unsubacks[mid]

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0, retain: bool = False, *,
                timeout: float = 5.0, **v5props):
        """PUBLISH; for QoS 1/2 waits until the broker acknowledged it (PUBACK / PUBCOMP)."""
        props = None
        if v5props:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            props = Properties(PacketTypes.PUBLISH)
            for k, v in v5props.items():
                setattr(props, k, v)
        info = self.c.publish(topic, payload, qos, retain, props)
        assert info.rc == 0, f"publish({topic!r}) failed locally: {info.rc}"
        if qos:
            info.wait_for_publish(timeout)
            assert info.is_published(), f"QoS {qos} publish on {topic!r} not acknowledged within {timeout}s"
        return info

    def wait_messages(self, n: int, timeout: float = 5.0, topic: str | None = None) -> list[Msg]:
        """Wait until at least n messages (on ``topic``, if given) came; returns them all."""
        def have():
            return len(self.received(topic)) >= n
        self._wait(have, timeout)
        got = self.received(topic)
        assert len(got) >= n, f"{self.client_id!r}: {len(got)} of {n} messages within {timeout}s: {got}"
        return got

    def received(self, topic: str | None = None) -> list[Msg]:
        with self.cond:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [m.payload for m in self.received(topic)]

    def settle(self, duration: float = 0.3) -> list[Msg]:
        """Let the broker deliver what it is going to deliver for ``duration`` s."""
        time.sleep(duration)
        return self.received()

    def wait_disconnected(self, timeout: float = 5.0) -> int | None:
        """Wait until the connection ended; its reason code (None if still connected)."""
        self._wait(lambda: self.disconnect_rc is not None, timeout)
        return self.disconnect_rc

    def disconnect(self, reason: int | None = None, timeout: float = 5.0, **v5props) -> None:
        """A normal DISCONNECT (v5: with ``reason`` and properties such as SessionExpiryInterval)."""
        rc = None
        props = None
        if self.v5 and reason is not None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.reasoncodes import ReasonCode
            rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reason)
        if self.v5 and v5props:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            props = Properties(PacketTypes.DISCONNECT)
            for k, v in v5props.items():
                setattr(props, k, v)
        self.c.disconnect(rc, props)
        self._wait(lambda: self.disconnect_rc is not None, timeout)
        self.stop()

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT (the broker sees an unclean end)."""
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._wait(lambda: self.disconnect_rc is not None, 5.0)
        self.stop()

    def stop(self) -> None:
        if self._loop:
            self._loop = False
            self.c.loop_stop()

    def close(self) -> None:
        try:
            if self.c.is_connected():
                self.c.disconnect()
        except Exception:
            pass
        self.stop()


@pytest.fixture
def mqtt(mqtt_broker):
    """Factory: ``mqtt(client_id=None, v5=False, clean=True, connect=True, **connect_kw)``.

    Makes a ``MqttClient`` (client id unique unless given), connects it unless
    ``connect=False``, and disconnects every client at teardown.
    """
    made: list[MqttClient] = []

    def make(client_id: str | None = None, *, v5: bool = False, clean: bool = True, connect: bool = True,
             transport: str = "tcp", ws_path: str | None = None, **connect_kw) -> MqttClient:
        c = MqttClient(mqtt_broker, client_id if client_id is not None else unique("t"), v5=v5, clean=clean,
                       transport=transport, ws_path=ws_path)
        made.append(c)
        if connect:
            c.connect(**connect_kw)
        return c

    yield make
    for c in made:
        c.close()


def topic_prefix() -> str:
    """A topic level no other test uses (parallel-safe against a shared broker)."""
    return f"liebre-test/{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- paho-mqtt 1.6.1


def paho16_path() -> str | None:
    """Where paho-mqtt 1.6.1 (the seeds' version) is installed, installing it if needed.

    It goes into tests/python/.paho16 (``pip install --target``, git-ignored by a
    .gitignore inside) so it never shadows the 2.x in the virtualenv: a scenario
    runs under 1.6.1 as a subprocess with this directory first on PYTHONPATH.
    Returns None if it cannot be installed (no registry reachable).
    """
    marker = PAHO16_DIR / "paho" / "mqtt" / "client.py"
    ignore = PAHO16_DIR / ".gitignore"
    if marker.exists():
        if not ignore.exists():
            ignore.write_text("*\n")
        return str(PAHO16_DIR)
    PAHO16_DIR.mkdir(exist_ok=True)
    ignore.write_text("*\n")
    import fcntl  # concurrent sessions (xdist workers) install once

    with open(PAHO16_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            r = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 "--no-deps", "--target", str(PAHO16_DIR), f"paho-mqtt=={PAHO16_VERSION}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
            if r.returncode != 0 or not marker.exists():
                return None
    return str(PAHO16_DIR)
