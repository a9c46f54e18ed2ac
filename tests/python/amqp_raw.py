"""A tiny AMQP 0-9-1 frame writer/reader for sending deliberately bad bytes.

Only what the error tests need: the handshake (PLAIN guest/guest), a handful of
methods, and a reader that returns frames until the server closes the socket.
Nothing here is clever on purpose: the point is to control every byte.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = 0xCE

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8

# (class-id, method-id)
CONNECTION_START = (10, 10)
CONNECTION_START_OK = (10, 11)
CONNECTION_TUNE = (10, 30)
CONNECTION_TUNE_OK = (10, 31)
CONNECTION_OPEN = (10, 40)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_OPEN = (20, 10)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)
EXCHANGE_DECLARE = (40, 10)
QUEUE_DECLARE = (50, 10)
QUEUE_DECLARE_OK = (50, 11)
BASIC_PUBLISH = (60, 40)
BASIC_GET = (60, 70)
BASIC_GET_OK = (60, 71)
BASIC_GET_EMPTY = (60, 72)


# ---------------------------------------------------------------- encoding


def shortstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    assert len(b) < 256
    return struct.pack(">B", len(b)) + b


def longstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(b)) + b


def empty_table() -> bytes:
    return struct.pack(">I", 0)


def field_value(v) -> bytes:
    if isinstance(v, bool):
        return b"t" + bytes([int(v)])
    if isinstance(v, int):
        return b"l" + struct.pack(">q", v)
    if isinstance(v, str):
        return b"S" + longstr(v)
    if isinstance(v, bytes):
        return b"x" + longstr(v)
    if isinstance(v, dict):
        return b"F" + table(v)
    raise TypeError(type(v))


def table(d: dict) -> bytes:
    body = b"".join(shortstr(k) + field_value(v) for k, v in d.items())
    return struct.pack(">I", len(body)) + body


# What a client such as pika announces; `authentication_failure_close` makes the
# server answer a failed login with connection.close 403 instead of just closing.
CLIENT_PROPERTIES = {
    "product": "liebre-tests amqp_raw",
    "capabilities": {
        "authentication_failure_close": True,
        "consumer_cancel_notify": True,
        "publisher_confirms": True,
        "basic.nack": True,
        "connection.blocked": True,
    },
}


def frame(frame_type: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])


def method_payload(method: tuple[int, int], args: bytes = b"") -> bytes:
    return struct.pack(">HH", *method) + args


def method_frame(channel: int, method: tuple[int, int], args: bytes = b"", end: int = FRAME_END) -> bytes:
    return frame(FRAME_METHOD, channel, method_payload(method, args), end)


def content_header_frame(channel: int, body_size: int, class_id: int = 60) -> bytes:
    # weight 0, no properties
    return frame(FRAME_HEADER, channel, struct.pack(">HHQH", class_id, 0, body_size, 0))


def body_frame(channel: int, body: bytes) -> bytes:
    return frame(FRAME_BODY, channel, body)


def channel_open(channel: int) -> bytes:
    return method_frame(channel, CHANNEL_OPEN, shortstr(""))


def queue_declare_args(queue: str = "", passive=False, durable=False, exclusive=False,
                       auto_delete=False, nowait=False) -> bytes:
    bits = (passive << 0) | (durable << 1) | (exclusive << 2) | (auto_delete << 3) | (nowait << 4)
    return struct.pack(">H", 0) + shortstr(queue) + struct.pack(">B", bits) + empty_table()


def basic_publish_args(exchange: str = "", routing_key: str = "", mandatory=False, immediate=False) -> bytes:
    bits = (mandatory << 0) | (immediate << 1)
    return struct.pack(">H", 0) + shortstr(exchange) + shortstr(routing_key) + struct.pack(">B", bits)


def basic_get_args(queue: str, no_ack: bool = True) -> bytes:
    return struct.pack(">H", 0) + shortstr(queue) + struct.pack(">B", int(no_ack))


# ---------------------------------------------------------------- decoding


@dataclass
class Frame:
    type: int
    channel: int
    payload: bytes

    @property
    def method(self) -> tuple[int, int] | None:
        if self.type != FRAME_METHOD or len(self.payload) < 4:
            return None
        return struct.unpack(">HH", self.payload[:4])

    def close_args(self) -> tuple[int, str, int, int]:
        """(reply-code, reply-text, class-id, method-id) of a connection/channel close."""
        p = self.payload[4:]
        code = struct.unpack(">H", p[:2])[0]
        n = p[2]
        text = p[3:3 + n].decode("utf-8", "replace")
        cls, meth = struct.unpack(">HH", p[3 + n:7 + n])
        return code, text, cls, meth

    def __repr__(self) -> str:
        m = self.method
        if m in (CONNECTION_CLOSE, CHANNEL_CLOSE):
            return f"Frame(ch={self.channel}, close={self.close_args()})"
        return f"Frame(type={self.type}, ch={self.channel}, method={m}, {self.payload[:40]!r})"


class Closed(Exception):
    """The server closed the socket."""


class RawConnection:
    """One TCP connection speaking AMQP by hand."""

    def __init__(self, host: str, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout
        self.frame_max = 0
        self.channel_max = 0
        self.server_properties_raw = b""

    # -- io

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from server")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError as e:
            raise Closed("connection reset") from e
        if not chunk:
            raise Closed("server closed the socket")
        self.buf += chunk

    def read_exact(self, n: int, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, timeout: float | None = None) -> Frame:
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < 7:
            self._fill(deadline)
        ftype, ch, size = struct.unpack(">BHI", self.buf[:7])
        while len(self.buf) < 7 + size + 1:
            self._fill(deadline)
        payload = self.buf[7:7 + size]
        end = self.buf[7 + size]
        self.buf = self.buf[8 + size:]
        assert end == FRAME_END, f"server sent a bad frame end {end:#x}"
        return Frame(ftype, ch, payload)

    def read_method(self, timeout: float | None = None) -> Frame:
        """Next method frame, skipping heartbeats."""
        while True:
            f = self.read_frame(timeout)
            if f.type != FRAME_HEARTBEAT:
                return f

    def read_all_until_closed(self, timeout: float | None = None) -> bytes:
        """Everything the server sends until it closes the socket."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                self._fill(deadline)
            except Closed:
                out, self.buf = self.buf, b""
                return out

    def wait_closed(self, timeout: float | None = None) -> bool:
        """True if the server closes the socket within the timeout (data is dropped)."""
        try:
            self.read_all_until_closed(timeout)
            return True
        except TimeoutError:
            return False
        except OSError:
            return True

    def expect_connection_close(self, timeout: float | None = None) -> tuple[int, str, int, int]:
        """Read until connection.close arrives, answer close-ok, and return its arguments.

        Frames sent before the close (e.g. a channel.open-ok) are skipped.
        """
        while True:
            f = self.read_method(timeout)
            if f.channel == 0 and f.method == CONNECTION_CLOSE:
                args = f.close_args()
                try:
                    self.send(method_frame(0, CONNECTION_CLOSE_OK))
                except OSError:
                    pass
                return args

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- handshake

    def handshake(self, user: str = "guest", password: str = "guest", vhost: str = "/",
                  frame_max: int | None = None) -> None:
        """Protocol header, start/start-ok, tune/tune-ok (heartbeats off), open/open-ok."""
        self.send(PROTOCOL_HEADER)
        start = self.read_method()
        assert start.method == CONNECTION_START, start
        # version-major, version-minor, server-properties (table), mechanisms, locales
        p = start.payload[4:]
        assert p[0:2] == b"\x00\x09", p[0:2]
        tlen = struct.unpack(">I", p[2:6])[0]
        self.server_properties_raw = p[6:6 + tlen]
        rest = p[6 + tlen:]
        mlen = struct.unpack(">I", rest[:4])[0]
        mechanisms = rest[4:4 + mlen].split()
        assert b"PLAIN" in mechanisms, mechanisms
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        self.send(method_frame(0, CONNECTION_START_OK,
                               table(CLIENT_PROPERTIES) + shortstr("PLAIN") + longstr(response) + shortstr("en_US")))
        tune = self.read_method()
        assert tune.method == CONNECTION_TUNE, tune
        channel_max, server_frame_max, _heartbeat = struct.unpack(">HIH", tune.payload[4:12])
        self.channel_max = channel_max
        self.frame_max = server_frame_max if frame_max is None else frame_max
        self.send(method_frame(0, CONNECTION_TUNE_OK, struct.pack(">HIH", channel_max, self.frame_max, 0)))
        self.send(method_frame(0, CONNECTION_OPEN, shortstr(vhost) + shortstr("") + b"\x00"))
        ok = self.read_method()
        assert ok.method == CONNECTION_OPEN_OK, ok

    def open_channel(self, channel: int = 1) -> None:
        self.send(channel_open(channel))
        ok = self.read_method()
        assert ok.channel == channel and ok.method == CHANNEL_OPEN_OK, ok

    def basic_get(self, channel: int, queue: str, timeout: float = 5.0) -> tuple[Frame, Frame, bytes]:
        """basic.get (no-ack) until a message comes: (get-ok, content header, body)."""
        deadline = time.monotonic() + timeout
        while True:
            self.send(method_frame(channel, BASIC_GET, basic_get_args(queue, no_ack=True)))
            f = self.read_method()
            if f.method == BASIC_GET_OK:
                break
            assert f.method == BASIC_GET_EMPTY, f
            assert time.monotonic() < deadline, f"no message in {queue!r} within {timeout}s"
            time.sleep(0.02)
        header = self.read_frame()
        assert header.type == FRAME_HEADER, header
        size = struct.unpack(">Q", header.payload[4:12])[0]
        body = b""
        while len(body) < size:
            b = self.read_frame()
            assert b.type == FRAME_BODY, b
            body += b.payload
        assert len(body) == size
        return f, header, body
