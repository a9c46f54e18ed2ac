"""Crash loop: every confirmed persistent message survives ``kill -9``.

The issue's acceptance test: start the real binary, publish persistent messages
with confirms from several connections, SIGKILL the broker at a random moment,
restart it on the same data directory and check that every confirmed message is
there exactly once (or redelivered), for many cycles in a row. The MQTT test does
the same for a persistent session (clean_session=False, QoS 1) and PUBACKs.

What counts as what:

* confirmed: ``basic_publish`` on a channel in confirm mode returned (the broker's
  basic.ack came), or for MQTT the PUBACK came. Must be there after the restart
  until the test acknowledges it.
* in flight ("maybe"): the publish was under way when the broker died (or was
  nacked). May be there or not, but if it is not there right after that restart
  it must never show up later.
* acknowledged: a drain acked it. Must never come back. (An AMQP ack has no
  confirm; what makes it durable for the test's purpose is that every cycle has
  publishes to the same queue confirmed after the acks, and a broker that confirms
  a later message of a queue must not forget an earlier ack of that queue. The
  harness checks that every cycle confirms at least one message per queue.)

Random choices (kill delays, which cycles ack only half of a drain) come from one
seed, printed and named in every failure; ``LIEBRE_CRASH_SEED=<seed>`` replays
them. ``LIEBRE_CRASH_CYCLES`` (default 20) and ``LIEBRE_CRASH_MQTT_CYCLES``
(default 5) set the number of kills. Marked ``fresh_broker`` (a process of its own:
skipped against an external broker); ``LIEBRE_TEST_FRESH_RABBITMQ=1`` runs it
against throwaway RabbitMQ nodes (slow: ~5 s a start), as a check of the test.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pika
import pytest

from conftest import (FRESH_RABBITMQ, MqttBroker, MqttClient, drain as pump_until, settle, unique,
                      wait_message_count, wait_until)

CYCLES = int(os.environ.get("LIEBRE_CRASH_CYCLES", "20"))
MQTT_CYCLES = int(os.environ.get("LIEBRE_CRASH_MQTT_CYCLES", "5"))
PUBLISHERS = 3
MAX_PER_PUBLISHER = 300  # per cycle
PACE = 250.0  # at most this many publishes a second per publisher, so the kill (<= 0.8 s) comes mid-stream
KILL_AFTER = (0.1, 0.8)  # seconds after the publishers start
SECONDS_PER_CYCLE = 25 if FRESH_RABBITMQ else 5  # for the pytest timeout only

QUEUE = "crash_loop"  # publisher 0 -> default exchange -> QUEUE only
COPY = "crash_loop.copy"  # publishers 1.. -> FANOUT -> QUEUE and COPY (one message, two queues)
FANOUT = "crash_loop.fanout"
QUEUES = (QUEUE, COPY)
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)

pytestmark = [pytest.mark.fresh_broker]

BODY_RE = re.compile(rb"^c(\d+)-p(\d+)-(\d+)$")
MQTT_RE = re.compile(rb"^m(\d+)-(\d+)$")


def crash_seed() -> int:
    env = os.environ.get("LIEBRE_CRASH_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 32)


def routes(publisher: int) -> tuple[str, ...]:
    return (QUEUE,) if publisher == 0 else QUEUES


def sample(items, n: int = 8) -> str:
    items = list(items)
    shown = ", ".join(x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in items[:n])
    return f"[{shown}{f', ... (+{len(items) - n} more)' if len(items) > n else ''}]"


def pace(start: float, seq: int) -> None:
    """Publish number ``seq`` no earlier than ``seq / PACE`` s after ``start`` (a fast broker
    would otherwise take all MAX_PER_PUBLISHER before the kill)."""
    wait = start + seq / PACE - time.monotonic()
    if wait > 0:
        time.sleep(wait)


def log_tail(proc, n: int = 2000) -> str:
    return proc.stderr_text()[-n:]


# =========================================================================== AMQP


class AmqpPublisher(threading.Thread):
    """One connection, one channel in confirm mode, persistent messages until the kill."""

    def __init__(self, broker, cycle: int, index: int, go: threading.Event, killed: threading.Event):
        super().__init__(name=f"crash-amqp-c{cycle}-p{index}", daemon=True)
        self.broker, self.cycle, self.index = broker, cycle, index
        self.go, self.killed = go, killed
        self.ready = threading.Event()
        self.confirmed: list[bytes] = []  # in publish order
        self.maybe: list[bytes] = []  # under way at the kill, or nacked
        self.nacked = 0
        self.error: BaseException | None = None  # anything but the kill's connection loss

    def run(self):
        conn = None
        try:
            conn = self.broker.connect()
            ch = conn.channel()
            ch.confirm_delivery()
            self.ready.set()
            if not self.go.wait(30):
                raise RuntimeError("never told to start")
            exchange, key = ("", QUEUE) if self.index == 0 else (FANOUT, "")
            start = time.monotonic()
            for seq in range(MAX_PER_PUBLISHER):
                pace(start, seq)
                body = f"c{self.cycle}-p{self.index}-{seq:06d}".encode()
                self.maybe.append(body)
                try:
                    ch.basic_publish(exchange, key, body, properties=PERSISTENT)
                except pika.exceptions.NackError:
                    self.nacked += 1  # not confirmed: stays "maybe"
                    continue
                self.confirmed.append(self.maybe.pop())
            conn.close()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            expected = self.killed.is_set() and isinstance(e, (pika.exceptions.AMQPError, OSError))
            if not expected:
                self.error = e
        finally:
            self.ready.set()
            if conn is not None and conn.is_open and not self.killed.is_set():
                try:
                    conn.close()
                except Exception:
                    pass


@dataclass
class QueueBook:
    """What the test knows about one durable queue across cycles."""
    name: str
    must: dict = field(default_factory=dict)  # body -> cycle: confirmed (or seen) and not acked by us
    may: dict = field(default_factory=dict)  # body -> cycle: in flight at the last kill
    attempted: set = field(default_factory=set)  # every body ever published to this queue
    acked: dict = field(default_factory=dict)  # body -> cycle whose drain acked it
    vanished: dict = field(default_factory=dict)  # body -> cycle: in flight, not there after that restart


def amqp_declare(proc):
    conn = proc.broker.connect()
    try:
        ch = conn.channel()
        ch.exchange_declare(FANOUT, "fanout", durable=True)
        for q in QUEUES:
            ch.queue_declare(q, durable=True)
            ch.queue_bind(q, FANOUT)
    finally:
        conn.close()


def amqp_publish_and_kill(proc, cycle: int, delay: float, where: str) -> list[AmqpPublisher]:
    go, killed = threading.Event(), threading.Event()
    pubs = [AmqpPublisher(proc.broker, cycle, i, go, killed) for i in range(PUBLISHERS)]
    try:
        for p in pubs:
            p.start()
        for p in pubs:
            assert p.ready.wait(15), f"{where}: publisher {p.index} did not connect within 15 s"
        failed = [p for p in pubs if p.error is not None]
        assert not failed, (f"{where}: publisher {failed[0].index} failed to set up: {failed[0].error!r}\n"
                            f"--- broker output ---\n{log_tail(proc)}")
        go.set()
        time.sleep(delay)
        assert proc.proc.poll() is None, (f"{where}: the broker exited by itself (status {proc.proc.returncode}) "
                                          f"before the kill\n--- broker output ---\n{log_tail(proc)}")
    finally:
        killed.set()
        go.set()
        proc.kill()  # SIGKILL (also on a failure above: unblocks the publishers)
        for p in pubs:
            p.join(15)
    hung = [p.name for p in pubs if p.is_alive()]
    assert not hung, f"{where}: publisher threads still running 15 s after the kill: {hung}"
    failed = [p for p in pubs if p.error is not None]
    assert not failed, (f"{where}: publisher {failed[0].index} failed before the kill: {failed[0].error!r}\n"
                        f"--- broker output ---\n{log_tail(proc)}")
    for q in QUEUES:
        n = sum(len(p.confirmed) for p in pubs if q in routes(p.index))
        assert n > 0, (f"{where}: no publish to {q!r} was confirmed within {delay:.2f} s "
                       f"(nacks: {sum(p.nacked for p in pubs)}); the broker is too slow or never confirms")
    return pubs


def amqp_drain(proc, book: QueueBook, cycle: int, ack_half: bool, where: str) -> tuple[int, int]:
    """Consume everything in the queue (manual ack), check it against the book, then ack
    all of it (or only the first half: the rest is requeued by closing the connection).
    Returns (drained, acked)."""
    problems: list[str] = []
    got: list[tuple[bytes, bool, int]] = []  # (body, redelivered, delivery tag)
    conn = proc.broker.connect()
    n_ack = 0
    try:
        ch = conn.channel()
        try:
            count = ch.queue_declare(book.name, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != 404:
                raise
            problems.append(f"the durable queue itself is gone (404 on a passive declare: {e.reply_text})")
            ch = None
        if ch is not None:
            ch.basic_consume(book.name, lambda c, m, p, b: got.append((b, bool(m.redelivered), m.delivery_tag)),
                             auto_ack=False)
            if not pump_until(conn, lambda: len(got) >= count, timeout=20):
                problems.append(f"queue.declare reported {count} messages, but only {len(got)} were delivered "
                                f"within 20 s")
            settle(conn, 0.2)  # anything beyond the count (it would be a duplicate or a stranger)
        problems += amqp_check(book, got)
        assert not problems, (
            f"{where}: queue {book.name!r} after kill -9 and restart ({len(got)} messages there, "
            f"{len(book.must)} confirmed expected, {len(book.may)} in flight at the kill):\n  - "
            + "\n  - ".join(problems))
        n_ack = len(got) // 2 if ack_half else len(got)
        if n_ack:
            ch.basic_ack(got[n_ack - 1][2], multiple=True)
    finally:
        try:
            conn.close()  # unacked deliveries go back to the queue
        except Exception:
            pass
    # the acks (and the requeue) took effect before the next publishers start
    conn = proc.broker.connect()
    try:
        left = wait_message_count(conn.channel(), book.name, len(got) - n_ack, timeout=10)
    finally:
        conn.close()
    assert left == len(got) - n_ack, (f"{where}: queue {book.name!r}: {len(got)} drained, {n_ack} acked, "
                                      f"the connection closed, but {left} are ready (expected {len(got) - n_ack})")
    for body, _, _ in got[:n_ack]:
        book.acked[body] = cycle
        book.must.pop(body, None)
    for body, _, _ in got[n_ack:]:
        book.must.setdefault(body, book.may.get(body, cycle))
        book.acked.pop(body, None)
    seen = {b for b, _, _ in got}
    for body, c in book.may.items():
        if body not in seen:
            book.vanished[body] = c
    book.may.clear()
    return len(got), n_ack


def amqp_check(book: QueueBook, got: list[tuple[bytes, bool, int]]) -> list[str]:
    problems = []
    seen: Counter = Counter()
    acked_back, resurrected, strangers, dups = [], [], [], []
    streams: dict[tuple[int, int], list[int]] = defaultdict(list)
    for body, redelivered, _ in got:
        seen[body] += 1
        if seen[body] > 1:
            if not redelivered:
                dups.append(body)
            continue
        if body in book.acked:
            acked_back.append(f"{body.decode()} (acked in cycle {book.acked[body]})")
        elif body in book.vanished:
            resurrected.append(f"{body.decode()} (in flight at the kill of cycle {book.vanished[body]})")
        elif body not in book.attempted:
            strangers.append(body)
        m = BODY_RE.match(body)
        if m:
            streams[(int(m[1]), int(m[2]))].append(int(m[3]))
    missing = [b for b in book.must if seen[b] == 0]
    if missing:
        by_cycle = Counter(c for b, c in book.must.items() if seen[b] == 0)
        problems.append(f"{len(missing)} confirmed messages missing (by cycle published: {dict(sorted(by_cycle.items()))}): "
                        f"{sample(missing)}")
    if dups:
        problems.append(f"{len(dups)} duplicates not marked redelivered: {sample(dups)}")
    if acked_back:
        problems.append(f"{len(acked_back)} acknowledged messages came back: {sample(acked_back, 5)}")
    if resurrected:
        problems.append(f"{len(resurrected)} messages absent after their kill's restart showed up later: "
                        f"{sample(resurrected, 5)}")
    if strangers:
        problems.append(f"{len(strangers)} messages never published to this queue: {sample(strangers)}")
    for (c, p), seqs in sorted(streams.items()):
        if seqs != sorted(seqs):
            i = next(i for i in range(1, len(seqs)) if seqs[i] < seqs[i - 1])
            problems.append(f"cycle {c} publisher {p}: out of publish order: c{c}-p{p}-{seqs[i]:06d} came after "
                            f"c{c}-p{p}-{seqs[i - 1]:06d} (stream {sample(seqs, 12)})")
    return problems


@pytest.mark.timeout(60 + SECONDS_PER_CYCLE * CYCLES)
def test_every_confirmed_persistent_message_survives_kill_9_loop(fresh_liebre, caplog):
    """CYCLES x: (re)start on the same data, drain and verify both durable queues (ack all,
    or in about half the cycles only the first half), 3 publishers with confirms, SIGKILL
    at a random moment. Then a last restart and verification, and SIGTERM -> exit 0."""
    caplog.set_level(logging.CRITICAL, logger="pika")  # every kill: "connection lost" tracebacks
    seed = crash_seed()
    rng = random.Random(seed)
    print(f"crash loop: seed {seed} (replay: LIEBRE_CRASH_SEED={seed}), {CYCLES} cycles")
    books = {q: QueueBook(q) for q in QUEUES}
    first = proc = fresh_liebre()
    for cycle in range(CYCLES + 1):
        kill_delay = rng.uniform(*KILL_AFTER)
        ack_half = rng.random() < 0.5
        where = f"cycle {cycle} (seed {seed}, replay with LIEBRE_CRASH_SEED={seed})"
        if cycle:
            proc = fresh_liebre(data_dir=first.data_dir)
            drained = {q: amqp_drain(proc, books[q], cycle, ack_half and cycle < CYCLES, where) for q in QUEUES}
            print(f"cycle {cycle}: restarted; drained " + ", ".join(f"{q} {d} (acked {a})"
                                                                    for q, (d, a) in drained.items()))
        if cycle == CYCLES:
            break
        amqp_declare(proc)
        pubs = amqp_publish_and_kill(proc, cycle, kill_delay, where)
        for p in pubs:
            for q in routes(p.index):
                book = books[q]
                for body in p.confirmed:
                    book.must[body] = cycle
                    book.attempted.add(body)
                for body in p.maybe:
                    book.may[body] = cycle
                    book.attempted.add(body)
        print(f"cycle {cycle}: SIGKILL after {kill_delay:.2f} s: confirmed "
              f"{[len(p.confirmed) for p in pubs]}, in flight {[len(p.maybe) for p in pubs]}, "
              f"nacked {sum(p.nacked for p in pubs)}")
    assert proc.stop() == 0, f"exit status after SIGTERM (seed {seed})\n{log_tail(proc)}"


# =========================================================================== MQTT

MQTT_TOPIC = "crash/loop"


class MqttPublisher(threading.Thread):
    """A clean-session QoS 1 publisher: one message at a time, each waiting for its PUBACK."""

    def __init__(self, mb: MqttBroker, cycle: int, go: threading.Event, killed: threading.Event):
        super().__init__(name=f"crash-mqtt-c{cycle}", daemon=True)
        self.mb, self.cycle, self.go, self.killed = mb, cycle, go, killed
        self.ready = threading.Event()
        self.confirmed: list[bytes] = []
        self.maybe: list[bytes] = []
        self.error: BaseException | None = None
        self.client: MqttClient | None = None

    def run(self):
        c = None
        try:
            c = self.client = MqttClient(self.mb, unique("crash-pub"), clean=True)
            c.connect(timeout=10)
            self.ready.set()
            if not self.go.wait(30):
                raise RuntimeError("never told to start")
            start = time.monotonic()
            for seq in range(MAX_PER_PUBLISHER):
                pace(start, seq)
                payload = f"m{self.cycle}-{seq:06d}".encode()
                self.maybe.append(payload)
                info = c.c.publish(f"{MQTT_TOPIC}/{self.cycle}", payload, qos=1)
                if info.rc != 0:
                    break
                deadline = time.monotonic() + 10
                try:
                    while not info.is_published():
                        if c.disconnect_rc is not None or time.monotonic() > deadline:
                            break
                        info.wait_for_publish(0.05)
                    published = info.is_published()
                except (RuntimeError, ValueError):
                    published = False
                if not published:
                    if not self.killed.is_set():
                        raise RuntimeError(f"no PUBACK for {payload!r} within 10 s (disconnect rc "
                                           f"{c.disconnect_rc}) before the kill")
                    break
                self.confirmed.append(self.maybe.pop())
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            if not (self.killed.is_set() and isinstance(e, OSError)):
                self.error = e
        finally:
            self.ready.set()
            if c is not None:
                c.close()


def mqtt_receive(proc, sub_id: str, expect: set[bytes], where: str):
    """Reconnect the persistent session; wait for ``expect`` (bounded), then a little more."""
    sub = MqttClient(MqttBroker(host="127.0.0.1", port=proc.mqtt_port), sub_id, clean=False)
    try:
        present, _, _ = sub.connect(timeout=10)
        wait_until(lambda: expect <= set(sub.payloads()), timeout=10)
        msgs = sub.settle(0.3)
        sub.disconnect()  # after the PUBACKs of everything received (paho sends them in order)
    finally:
        sub.close()
    return present, msgs


@pytest.mark.timeout(60 + SECONDS_PER_CYCLE * 2 * MQTT_CYCLES)
def test_mqtt_persistent_session_keeps_every_pubacked_message_across_kill_9(fresh_liebre):
    """A clean_session=False QoS 1 subscriber (MQTT 3.1.1, ``crash/loop/#``) is offline while a
    QoS 1 publisher publishes with PUBACKs and the broker is SIGKILLed at a random moment;
    after each restart the subscriber's session gets every PUBACKed message (a duplicate only
    with DUP set or if it was in flight at the kill), per-cycle order kept, nothing else."""
    seed = crash_seed()
    rng = random.Random(f"mqtt-{seed}")
    print(f"MQTT crash loop: seed {seed} (replay: LIEBRE_CRASH_SEED={seed}), {MQTT_CYCLES} cycles")
    first = proc = fresh_liebre(mqtt=True)
    sub_id = unique("crash-loop-sub")
    sub = MqttClient(MqttBroker(host="127.0.0.1", port=proc.mqtt_port), sub_id, clean=False)
    try:
        sub.connect(timeout=10)
        assert sub.subscribe(f"{MQTT_TOPIC}/#", 1) == [1]
        sub.disconnect()  # offline from here on, the session stays
    finally:
        sub.close()

    must: dict[bytes, int] = {}  # PUBACKed, not yet received
    may: dict[bytes, int] = {}  # in flight at the last kill
    attempted: set[bytes] = set()
    received: dict[bytes, int] = {}  # payload -> cycle of the drain that got (and PUBACKed) it
    vanished: dict[bytes, int] = {}
    allowed_dups = 0
    for cycle in range(MQTT_CYCLES + 1):
        kill_delay = rng.uniform(*KILL_AFTER)
        where = f"MQTT cycle {cycle} (seed {seed}, replay with LIEBRE_CRASH_SEED={seed})"
        if cycle:
            proc = fresh_liebre(data_dir=first.data_dir, mqtt=True)
            present, msgs = mqtt_receive(proc, sub_id, set(must), where)
            problems = []
            if not present:
                problems.append("the persistent session is gone (CONNACK session present = 0)")
            count: Counter = Counter()
            dups, strangers, resurrected, wrong = [], [], [], []
            order: dict[int, list[int]] = defaultdict(list)
            for m in msgs:
                count[m.payload] += 1
                parsed = MQTT_RE.match(m.payload)
                if m.qos != 1 or not parsed or m.topic != f"{MQTT_TOPIC}/{int(parsed[1])}":
                    wrong.append(f"{m.payload!r} on {m.topic!r} qos {m.qos}")
                if count[m.payload] > 1 or m.payload in received:
                    if m.dup or m.payload in may:
                        allowed_dups += 1
                    else:
                        dups.append(m.payload)
                    continue
                if m.payload in vanished:
                    resurrected.append(f"{m.payload.decode()} (in flight at the kill of cycle {vanished[m.payload]})")
                elif m.payload not in attempted:
                    strangers.append(m.payload)
                if parsed:
                    order[int(parsed[1])].append(int(parsed[2]))
            missing = [p for p in must if count[p] == 0]
            if missing:
                by_cycle = Counter(must[p] for p in missing)
                problems.append(f"{len(missing)} PUBACKed messages missing (by cycle published: "
                                f"{dict(sorted(by_cycle.items()))}): {sample(missing)}")
            if dups:
                problems.append(f"{len(dups)} duplicates without DUP that were not in flight: {sample(dups)}")
            if resurrected:
                problems.append(f"absent after their kill's restart, showed up later: {sample(resurrected, 5)}")
            if strangers:
                problems.append(f"never published: {sample(strangers)}")
            if wrong:
                problems.append(f"wrong topic or QoS: {sample(wrong, 5)}")
            for c, seqs in sorted(order.items()):
                if seqs != sorted(seqs):
                    problems.append(f"cycle {c}: out of publish order: {sample(seqs, 12)}")
            assert not problems, (f"{where}: persistent session {sub_id!r} after kill -9 and restart "
                                  f"({len(msgs)} messages received, {len(must)} PUBACKed expected, "
                                  f"{len(may)} in flight at the kill):\n  - " + "\n  - ".join(problems))
            for m in msgs:
                received.setdefault(m.payload, cycle)
                must.pop(m.payload, None)
            for p, c in may.items():
                if p not in count:
                    vanished[p] = c
            may.clear()
            print(f"MQTT cycle {cycle}: restarted; received {len(msgs)} ({len(count)} distinct), "
                  f"allowed duplicates so far {allowed_dups}")
        if cycle == MQTT_CYCLES:
            break

        go, killed = threading.Event(), threading.Event()
        pub = MqttPublisher(MqttBroker(host="127.0.0.1", port=proc.mqtt_port), cycle, go, killed)
        try:
            pub.start()
            assert pub.ready.wait(15), f"{where}: the publisher did not connect within 15 s"
            assert pub.error is None, f"{where}: the publisher failed to set up: {pub.error!r}\n{log_tail(proc)}"
            go.set()
            time.sleep(kill_delay)
            assert proc.proc.poll() is None, (f"{where}: the broker exited by itself (status "
                                              f"{proc.proc.returncode}) before the kill\n{log_tail(proc)}")
        finally:
            killed.set()
            go.set()
            proc.kill()
            pub.join(20)
        assert not pub.is_alive(), f"{where}: the publisher thread still runs 20 s after the kill"
        assert pub.error is None, f"{where}: the publisher failed before the kill: {pub.error!r}\n{log_tail(proc)}"
        assert pub.confirmed, f"{where}: no PUBACK within {kill_delay:.2f} s; the broker is too slow or never acks"
        for p in pub.confirmed:
            must[p] = cycle
        for p in pub.maybe:
            may[p] = cycle
        attempted.update(pub.confirmed, pub.maybe)
        print(f"MQTT cycle {cycle}: SIGKILL after {kill_delay:.2f} s: PUBACKed {len(pub.confirmed)}, "
              f"in flight {len(pub.maybe)}")
    assert proc.stop() == 0, f"exit status after SIGTERM (seed {seed})\n{log_tail(proc)}"
