"""`liebre server` as an operator starts it: which listeners open, what a port
that cannot be bound does, and `loopback_users`.

Each test starts a Liebre process of its own (``fresh_broker``); they are Liebre's
own command line, so they do not run against RabbitMQ or Mosquitto.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

import paho.mqtt.client as paho
import pika
import pytest

from conftest import LIEBRE_BIN, free_port, wait_for_port

pytestmark = [pytest.mark.fresh_broker, pytest.mark.liebre_only, pytest.mark.timeout(60)]


def listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (from /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                        ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


class Server:
    """`liebre server` with the arguments given (and a data directory of its own)."""

    def __init__(self, *args: str):
        self.dir = tempfile.mkdtemp(prefix="liebre-cli-")
        self.log = open(os.path.join(self.dir, "stderr.log"), "w+b")
        self.proc = subprocess.Popen(
            [LIEBRE_BIN, "server", "--data-dir", os.path.join(self.dir, "data"), *args],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
        )

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(15)
        self.log.close()
        return code


@pytest.fixture
def server():
    started: list[Server] = []

    def make(*args: str) -> Server:
        s = Server(*args)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def test_one_listener_flag_opens_that_listener_and_no_other(server):
    port = free_port()
    s = server("--amqp", f"127.0.0.1:{port}")
    assert wait_for_port("127.0.0.1", port, 20, s.proc), s.output()
    time.sleep(0.3)  # every listener is bound before any accepts; give a buggy one time to show
    assert listening_ports(s.proc.pid) == {port}, s.output()
    assert s.stop() == 0


def test_every_named_listener_opens(server):
    amqp, mqtt, ws = free_port(), free_port(), free_port()
    s = server("--amqp", f"127.0.0.1:{amqp}", "--mqtt", f"127.0.0.1:{mqtt}",
               "--mqtt-ws", f"127.0.0.1:{ws}")
    assert wait_for_port("127.0.0.1", ws, 20, s.proc), s.output()
    assert listening_ports(s.proc.pid) == {amqp, mqtt, ws}
    assert s.stop() == 0


def test_a_busy_port_is_a_one_line_error_and_a_non_zero_exit(server):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    amqp = free_port()
    try:
        s = server("--amqp", f"127.0.0.1:{amqp}", "--mqtt-ws", f"127.0.0.1:{taken}")
        code = s.proc.wait(20)
        out = s.output()
        assert code != 0, out
        errors = [line for line in out.splitlines() if line.startswith("liebre:")]
        assert len(errors) == 1, out
        assert f"127.0.0.1:{taken}" in errors[0] and "in use" in errors[0], errors[0]
        # Nothing was accepted: no listener was announced as started.
        assert "listener started" not in out, out
    finally:
        busy.close()


def non_loopback_address() -> str | None:
    """An address of this host that is not loopback (the kernel still routes to it
    locally), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


# paho 2 reports a 3.1.1 CONNACK return code as the 5.0 reason code it maps to.
NOT_AUTHORISED = 135  # 3.1.1 return code 5


def mqtt_connack(host: str, port: int, **login) -> int:
    """CONNECT with paho (3.1.1); the CONNACK code as paho reports it."""
    got = []
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="remote-1", protocol=paho.MQTTv311)
    c.on_connect = lambda cl, u, flags, rc, props: got.append(rc.value if hasattr(rc, "value") else rc)
    if login:
        c.username_pw_set(login["username"], login["password"])
    c.connect(host, port)
    c.loop_start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    c.loop_stop()
    c.disconnect()
    assert got, "no CONNACK"
    return got[0]


@pytest.mark.parametrize("loopback_users", [None, "[]"])
def test_loopback_users_decides_where_guest_may_log_in_from(server, loopback_users):
    remote = non_loopback_address()
    if remote is None:
        pytest.skip("this host has no non-loopback address")
    amqp, mqtt = free_port(), free_port()
    args = ["--amqp", f"0.0.0.0:{amqp}", "--mqtt", f"0.0.0.0:{mqtt}"]
    if loopback_users is not None:
        cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        cfg.write(f"loopback_users = {loopback_users}\n")
        cfg.close()
        args += ["--config", cfg.name]
    s = server(*args)
    assert wait_for_port("127.0.0.1", mqtt, 20, s.proc), s.output()
    params = pika.ConnectionParameters(host=remote, port=amqp,
                                       credentials=pika.PlainCredentials("guest", "guest"),
                                       connection_attempts=1)
    if loopback_users == "[]":
        # As RabbitMQ with loopback_users = none: guest may log in from anywhere.
        pika.BlockingConnection(params).close()
        assert mqtt_connack(remote, mqtt) == 0  # anonymous is guest
        assert mqtt_connack(remote, mqtt, username="guest", password="guest") == 0
    else:
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(params)
        assert mqtt_connack(remote, mqtt) == NOT_AUTHORISED  # anonymous is guest
        assert mqtt_connack(remote, mqtt, username="guest", password="guest") == NOT_AUTHORISED
        # From loopback it is fine.
        pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=amqp)).close()
        assert mqtt_connack("127.0.0.1", mqtt) == 0
    assert s.stop() == 0
