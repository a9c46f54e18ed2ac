"""Fixtures for Liebre's AMQP 0-9-1 acceptance suite (pytest + pika).

Two modes:

* ``LIEBRE_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5673/%2F`` runs the suite
  against an already running broker (RabbitMQ as the oracle, or a Liebre you
  started yourself). Tests that need a broker process of their own are skipped.
* Without it, the session starts the Liebre binary (``LIEBRE_BIN``, default
  ``<repo>/target/debug/liebre``) on free loopback ports with a temporary data
  directory, and stops it with SIGTERM at the end, expecting exit status 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
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
LIEBRE_BIN = os.environ.get("LIEBRE_BIN", str(REPO / "target" / "debug" / "liebre"))

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def pytest_collection_modifyitems(config, items):
    if not EXTERNAL_URL:
        return
    skip = pytest.mark.skip(reason="needs a Liebre process of its own; LIEBRE_TEST_AMQP_URL is set")
    for item in items:
        if "fresh_broker" in item.keywords:
            item.add_marker(skip)


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
        return Broker(host="127.0.0.1", port=self.amqp_port)

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

    def __init__(self, data_dir: str | None = None):
        super().__init__(data_dir=data_dir, binary=os.path.join(self.RMQ_BIN, "rabbitmq-server"))
        self.start_timeout = 60.0
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
        for name in ("enabled_plugins", "advanced.config"):
            with open(os.path.join(d, name), "w") as f:
                f.write("[].\n")
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
def broker():
    """The broker under test: ``.host``, ``.port``, ``.url``, ``.connect()``."""
    if EXTERNAL_URL:
        b = broker_from_url(EXTERNAL_URL)
        if not wait_for_port(b.host, b.port, 5):
            pytest.exit(f"LIEBRE_TEST_AMQP_URL={EXTERNAL_URL}: nothing listens on {b.host}:{b.port}", 2)
        yield b
        return
    proc = LiebreProcess()
    try:
        proc.start()
        yield proc.broker
        code = proc.stop()
        assert code == 0, f"Liebre exited with status {code} after SIGTERM\n{proc.stderr_text()}"
    finally:
        proc.cleanup()


@pytest.fixture
def fresh_liebre(request):
    """A Liebre process of the test's own (start/stop/kill/restart at will).

    Only for tests that must restart, kill or shut down the broker. Such tests
    carry ``@pytest.mark.fresh_broker`` and are skipped against an external broker.
    """
    if EXTERNAL_URL:
        pytest.skip("needs a Liebre process of its own")
    procs: list[LiebreProcess] = []

    def make(data_dir: str | None = None) -> LiebreProcess:
        p = RabbitMQProcess(data_dir=data_dir) if FRESH_RABBITMQ else LiebreProcess(data_dir=data_dir)
        procs.append(p)
        return p.start()

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
