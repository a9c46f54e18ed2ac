"""A tiny MQTT 3.1.1 / 5.0 packet writer/reader for sending deliberately bad bytes.

Only what the malformed-input and keepalive tests need: builders for the packets
a client sends (each taking overrides for the bits a test wants wrong), a reader
that splits what the server sends into packets, and decoders for CONNACK, SUBACK
and DISCONNECT. Nothing here is clever on purpose: the point is to control every
byte. Protocol levels: 4 is MQTT 3.1.1, 5 is MQTT 5.0.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

# packet types (high nibble of the first byte)
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

# MQTT 5 property identifiers and their wire types
PROPS = {
    0x01: ("payload_format_indicator", "byte"),
    0x02: ("message_expiry_interval", "u32"),
    0x03: ("content_type", "str"),
    0x08: ("response_topic", "str"),
    0x09: ("correlation_data", "bin"),
    0x0B: ("subscription_identifier", "varint"),
    0x11: ("session_expiry_interval", "u32"),
    0x12: ("assigned_client_identifier", "str"),
    0x13: ("server_keep_alive", "u16"),
    0x15: ("authentication_method", "str"),
    0x16: ("authentication_data", "bin"),
    0x17: ("request_problem_information", "byte"),
    0x18: ("will_delay_interval", "u32"),
    0x19: ("request_response_information", "byte"),
    0x1A: ("response_information", "str"),
    0x1C: ("server_reference", "str"),
    0x1F: ("reason_string", "str"),
    0x21: ("receive_maximum", "u16"),
    0x22: ("topic_alias_maximum", "u16"),
    0x23: ("topic_alias", "u16"),
    0x24: ("maximum_qos", "byte"),
    0x25: ("retain_available", "byte"),
    0x26: ("user_property", "pair"),
    0x27: ("maximum_packet_size", "u32"),
    0x28: ("wildcard_subscription_available", "byte"),
    0x29: ("subscription_identifier_available", "byte"),
    0x2A: ("shared_subscription_available", "byte"),
}
PROP_IDS = {name: pid for pid, (name, _) in PROPS.items()}

# reason codes the tests look for
RC_MALFORMED = 0x81
RC_PROTOCOL_ERROR = 0x82
RC_UNSUPPORTED_PROTOCOL_VERSION = 0x84
RC_SESSION_TAKEN_OVER = 0x8E
RC_TOPIC_NAME_INVALID = 0x90


# ---------------------------------------------------------------- encoding


def varint(n: int) -> bytes:
    """The Variable Byte Integer of the spec (1 to 4 bytes)."""
    assert 0 <= n < 268_435_456, n
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string(s: str | bytes) -> bytes:
    """A UTF-8 Encoded String: u16 length then the bytes (bytes are sent as given)."""
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def prop(pid: int | str, value) -> bytes:
    """One MQTT 5 property; pid is the identifier or its name in PROPS."""
    if isinstance(pid, str):
        pid = PROP_IDS[pid]
    kind = PROPS[pid][1]
    head = varint(pid)
    if kind == "byte":
        return head + bytes([value])
    if kind == "u16":
        return head + struct.pack(">H", value)
    if kind == "u32":
        return head + struct.pack(">I", value)
    if kind == "varint":
        return head + varint(value)
    if kind in ("str", "bin"):
        return head + string(value)
    if kind == "pair":
        return head + string(value[0]) + string(value[1])
    raise ValueError(kind)


def properties(*items: bytes) -> bytes:
    """A property block: length then the concatenated properties (from `prop`)."""
    body = b"".join(items)
    return varint(len(body)) + body


def packet(ptype: int, body: bytes, flags: int = 0, remaining: bytes | None = None) -> bytes:
    """Fixed header + body; `remaining` overrides the encoded Remaining Length."""
    return bytes([(ptype << 4) | (flags & 0x0F)]) + (varint(len(body)) if remaining is None else remaining) + body


def connect(client_id: str | bytes = "", *, version: int = 4, clean: bool = True, keepalive: int = 60,
            username: str | None = None, password: str | bytes | None = None,
            will_topic: str | None = None, will_payload: bytes = b"", will_qos: int = 0,
            will_retain: bool = False, props: bytes | None = None, will_props: bytes | None = None,
            protocol_name: bytes = b"MQTT", reserved_flag: bool = False) -> bytes:
    flags = (clean << 1) | (reserved_flag << 0)
    if will_topic is not None:
        flags |= 0x04 | (will_qos << 3) | (will_retain << 5)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = string(protocol_name) + bytes([version, flags]) + struct.pack(">H", keepalive)
    if version == 5:
        body += props if props is not None else properties()
    body += string(client_id)
    if will_topic is not None:
        if version == 5:
            body += will_props if will_props is not None else properties()
        body += string(will_topic) + string(will_payload)
    if username is not None:
        body += string(username)
    if password is not None:
        body += string(password)
    return packet(CONNECT, body)


def subscribe(packet_id: int, filters: list[tuple[str | bytes, int]], *, version: int = 4,
              props: bytes | None = None, flags: int = 0x02) -> bytes:
    """SUBSCRIBE; each filter is (topic filter, options byte: QoS | v5 option bits)."""
    body = struct.pack(">H", packet_id)
    if version == 5:
        body += props if props is not None else properties()
    for topic, opts in filters:
        body += string(topic) + bytes([opts])
    return packet(SUBSCRIBE, body, flags)


def unsubscribe(packet_id: int, filters: list[str], *, version: int = 4) -> bytes:
    body = struct.pack(">H", packet_id)
    if version == 5:
        body += properties()
    for topic in filters:
        body += string(topic)
    return packet(UNSUBSCRIBE, body, 0x02)


def publish(topic: str | bytes, payload: bytes = b"", *, qos: int = 0, retain: bool = False,
            dup: bool = False, packet_id: int = 1, version: int = 4, props: bytes | None = None) -> bytes:
    body = string(topic)
    if qos:
        body += struct.pack(">H", packet_id)
    if version == 5:
        body += props if props is not None else properties()
    body += payload
    return packet(PUBLISH, body, (dup << 3) | (qos << 1) | int(retain))


def puback(packet_id: int) -> bytes:
    return packet(PUBACK, struct.pack(">H", packet_id))


def pingreq() -> bytes:
    return packet(PINGREQ, b"")


def disconnect(reason: int | None = None, *, props: bytes | None = None) -> bytes:
    """DISCONNECT; with `reason` (v5) a reason code and a property block follow."""
    if reason is None:
        return packet(DISCONNECT, b"")
    return packet(DISCONNECT, bytes([reason]) + (props if props is not None else properties()))


# ---------------------------------------------------------------- decoding


def read_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """(value, next position)."""
    mult, value = 1, 0
    for i in range(4):
        b = data[pos + i]
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos + i + 1
        mult *= 128
    raise ValueError("malformed variable byte integer")


def parse_properties(data: bytes, pos: int) -> tuple[dict, int]:
    """(dict name -> value, user properties as a list of pairs; next position)."""
    length, pos = read_varint(data, pos)
    end = pos + length
    out: dict = {}
    while pos < end:
        pid, pos = read_varint(data, pos)
        name, kind = PROPS.get(pid, (f"0x{pid:02x}", "?"))
        if kind == "byte":
            value = data[pos]
            pos += 1
        elif kind == "u16":
            value = struct.unpack(">H", data[pos:pos + 2])[0]
            pos += 2
        elif kind == "u32":
            value = struct.unpack(">I", data[pos:pos + 4])[0]
            pos += 4
        elif kind == "varint":
            value, pos = read_varint(data, pos)
        elif kind in ("str", "bin", "pair"):
            n = struct.unpack(">H", data[pos:pos + 2])[0]
            value = data[pos + 2:pos + 2 + n]
            pos += 2 + n
            if kind == "str":
                value = value.decode("utf-8", "replace")
            if kind == "pair":
                m = struct.unpack(">H", data[pos:pos + 2])[0]
                value = (value.decode("utf-8", "replace"), data[pos + 2:pos + 2 + m].decode("utf-8", "replace"))
                pos += 2 + m
        else:
            raise ValueError(f"unknown property 0x{pid:02x}")
        if kind == "pair" or name == "subscription_identifier":
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out, end


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes

    @property
    def name(self) -> str:
        return NAMES.get(self.type, f"type{self.type}")

    def __repr__(self) -> str:
        return f"Packet({self.name}, flags={self.flags:#x}, body={self.body[:40]!r})"


@dataclass
class Connack:
    session_present: bool
    code: int
    props: dict = field(default_factory=dict)


def parse_connack(p: Packet, version: int = 4) -> Connack:
    assert p.type == CONNACK, p
    props = {}
    if version == 5 and len(p.body) > 2:
        props, _ = parse_properties(p.body, 2)
    return Connack(bool(p.body[0] & 1), p.body[1], props)


def parse_suback(p: Packet, version: int = 4) -> tuple[int, list[int]]:
    """(packet id, reason codes)."""
    assert p.type == SUBACK, p
    pid = struct.unpack(">H", p.body[:2])[0]
    pos = 2
    if version == 5:
        _, pos = parse_properties(p.body, pos)
    return pid, list(p.body[pos:])


def parse_disconnect(p: Packet) -> tuple[int, dict]:
    """(reason code, properties); a DISCONNECT without a body means 0x00."""
    assert p.type == DISCONNECT, p
    if not p.body:
        return 0, {}
    props = {}
    if len(p.body) > 1:
        props, _ = parse_properties(p.body, 1)
    return p.body[0], props


def parse_publish(p: Packet, version: int = 4) -> tuple[str, bytes, int, int | None, dict]:
    """(topic, payload, qos, packet id, properties)."""
    assert p.type == PUBLISH, p
    qos = (p.flags >> 1) & 3
    n = struct.unpack(">H", p.body[:2])[0]
    topic = p.body[2:2 + n].decode()
    pos = 2 + n
    pid = None
    if qos:
        pid = struct.unpack(">H", p.body[pos:pos + 2])[0]
        pos += 2
    props = {}
    if version == 5:
        props, pos = parse_properties(p.body, pos)
    return topic, p.body[pos:], qos, pid, props


# ---------------------------------------------------------------- connection


class Closed(Exception):
    """The server closed the socket."""


class RawClient:
    """One TCP connection speaking MQTT by hand."""

    def __init__(self, host: str, port: int, timeout: float = 5.0, *,
                 username: str | None = None, password: str | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout
        self.version = 4
        # used by handshake() unless it is given others
        self.username = username
        self.password = password

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from server")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise Closed("connection reset") from e
        if not chunk:
            raise Closed("server closed the socket")
        self.buf += chunk

    def read_packet(self, timeout: float | None = None) -> Packet:
        """The next packet; raises Closed on EOF/reset and TimeoutError when none comes."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            if len(self.buf) >= 2:
                try:
                    length, pos = read_varint(self.buf, 1)
                except IndexError:
                    length, pos = None, 0
                if length is not None and len(self.buf) >= pos + length:
                    first = self.buf[0]
                    body = self.buf[pos:pos + length]
                    self.buf = self.buf[pos + length:]
                    return Packet(first >> 4, first & 0x0F, body)
            self._fill(deadline)

    def packets_until_closed(self, timeout: float = 5.0) -> list[Packet] | None:
        """Every packet the server sends until it closes the socket, or None if it
        keeps the connection open for `timeout` seconds."""
        deadline = time.monotonic() + timeout
        got: list[Packet] = []
        while True:
            try:
                got.append(self.read_packet(max(0.001, deadline - time.monotonic())))
            except Closed:
                return got
            except TimeoutError:
                return None
            except OSError:
                return got

    def handshake(self, client_id: str, *, version: int = 4, **kw) -> Connack:
        """CONNECT and read the CONNACK (which must accept)."""
        self.version = version
        if self.username is not None:
            kw.setdefault("username", self.username)
            kw.setdefault("password", self.password)
        self.send(connect(client_id, version=version, **kw))
        ack = parse_connack(self.read_packet(), version)
        assert ack.code == 0, ack
        return ack

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
