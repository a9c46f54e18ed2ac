#!/usr/bin/env python3
"""Side-by-side throughput: Liebre vs RabbitMQ (AMQP) and Mosquitto (MQTT).

Starts RabbitMQ and Mosquitto from Debian's packages by hand on loopback
(throwaway directories, via tests/python/run_rabbitmq.sh and
run_mosquitto.sh), starts a release build of Liebre, then runs the same
load programs against each, interleaved A B A B, and reports medians, the
broker's CPU seconds per run (from /proc), and ratios.

    python3 bench/compare.py                 # 3 rounds of 4 s each
    python3 bench/compare.py --only persistent
    python3 bench/compare.py --rounds 5 --seconds 15 --skip-mqtt
    python3 bench/compare.py --client libs   # the lapin/rumqttc examples instead

Installs the peers with apt-get when they are missing (needs root).
Nothing here is a test: timing belongs in BENCHMARKS.md, not in asserts.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, cwd=ROOT, **kw)


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_port(port, timeout=30):
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def ensure_packages(skip_mqtt):
    missing = []
    if not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server"):
        missing.append("rabbitmq-server")
    if not skip_mqtt and not shutil.which("mosquitto") and not os.path.exists("/usr/sbin/mosquitto"):
        missing.append("mosquitto")
    if missing:
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", *missing, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        for svc in missing:
            subprocess.run(["service", svc.split("-")[0] if svc == "rabbitmq-server" else svc, "stop"],
                           capture_output=True)


MOSQ_PORT = 1886


def start_mosquitto():
    """Mosquitto with its defaults, but logging errors only (the test
    oracle logs every packet, which would slow it down) and the same
    per-client queue bound as Liebre's default."""
    d = tempfile.mkdtemp(prefix="liebre-bench-mosquitto-")
    conf = os.path.join(d, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {MOSQ_PORT} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "log_type error\nlog_dest stderr\nmax_queued_messages 100000\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", conf], stderr=subprocess.DEVNULL)
    wait_port(MOSQ_PORT)
    return proc


def rabbitmq_pid():
    with open(os.environ.get("ORACLE_DIR", "/tmp/liebre-oracle") + "/rabbitmq.pid") as f:
        return int(f.read().strip())


def run_load(cmd, pid):
    before = cpu_seconds(pid)
    out = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout
    after = cpu_seconds(pid)
    line = [l for l in out.splitlines() if l.startswith("{")][-1]
    result = json.loads(line)
    result["broker_cpu_s"] = after - before
    return result


LIEBRE = os.path.join(ROOT, "target/release/liebre")
MANY_QUEUES = ("--queues", "1000", "--producers", "1000", "--consumers", "1000")
MANY_TOPICS = ("--topics", "1000", "--publishers", "1000", "--subscribers", "1000")


def bench_loads(args, liebre_pid, mosquitto):
    """The issue 5 loads, driven by `liebre bench` (a lean client)."""
    d = ["--json", "--no-progress"]
    # p99 of a few seconds at 1000 msg/s rests on a few dozen samples:
    # the fixed-rate loads run at least 10 s.
    LATENCY = ("--rate", "1000", "--duration", str(max(args.seconds, 10)))
    amqp = lambda port, *extra: [LIEBRE, "bench", "amqp", "--url", f"amqp://guest:guest@127.0.0.1:{port}/%2F", *d,
                                 *(() if "--duration" in extra else ("--duration", str(args.seconds))), *extra]
    loads = {
        "AMQP 16 B transient, 1 to 1": [
            ("Liebre", amqp(5699), liebre_pid), ("RabbitMQ", amqp(5673), rabbitmq_pid())],
        "AMQP 1 KiB transient, 1 to 1": [
            ("Liebre", amqp(5699, "--size", "1024"), liebre_pid), ("RabbitMQ", amqp(5673, "--size", "1024"), rabbitmq_pid())],
        "AMQP 64 KiB transient, 1 to 1": [
            ("Liebre", amqp(5699, "--size", "65536", "--max-in-flight", "500"), liebre_pid),
            ("RabbitMQ", amqp(5673, "--size", "65536", "--max-in-flight", "500"), rabbitmq_pid())],
        # Many queues, the way RabbitMQ's PerfTest runs them: one producer
        # and one consumer connection per queue.
        "AMQP 16 B transient, 1,000 queues": [
            ("Liebre", amqp(5699, *MANY_QUEUES), liebre_pid), ("RabbitMQ", amqp(5673, *MANY_QUEUES), rabbitmq_pid())],
        "AMQP latency at 1000 msg/s": [
            ("Liebre", amqp(5699, *LATENCY), liebre_pid), ("RabbitMQ", amqp(5673, *LATENCY), rabbitmq_pid())],
    }
    # Persistent messages on durable queues, each confirmed only after the
    # broker's fsync (both brokers' defaults).
    for size in ("16", "1024"):
        for producers in ("1", "4"):
            extra = ("--persistent", "--confirm", "--size", size, "--producers", producers, "--consumers", producers,
                     "--queues", producers)
            loads[f"AMQP {'1 KiB' if size == '1024' else '16 B'} persistent + confirms, {producers} producer(s)"] = [
                ("Liebre", amqp(5699, *extra), liebre_pid), ("RabbitMQ", amqp(5673, *extra), rabbitmq_pid())]
    if mosquitto is not None:
        mqtt = lambda port, *extra: [LIEBRE, "bench", "mqtt", "--port", str(port), *d,
                                     *(() if "--duration" in extra else ("--duration", str(args.seconds))), *extra]
        for qos in ("0", "1"):
            for subs in ("1", "100"):
                extra = ("--qos", qos, "--subscribers", subs)
                loads[f"MQTT QoS {qos} 16 B, 1 to {subs}"] = [
                    ("Liebre", mqtt(1899, *extra), liebre_pid), ("Mosquitto", mqtt(MOSQ_PORT, *extra), mosquitto.pid)]
        for qos in ("0", "1"):
            extra = ("--qos", qos, *MANY_TOPICS)
            loads[f"MQTT QoS {qos} 16 B, 1,000 topics"] = [
                ("Liebre", mqtt(1899, *extra), liebre_pid), ("Mosquitto", mqtt(MOSQ_PORT, *extra), mosquitto.pid)]
        extra = ("--qos", "1", *LATENCY)
        loads["MQTT QoS 1 latency at 1000 msg/s"] = [
            ("Liebre", mqtt(1899, *extra), liebre_pid), ("Mosquitto", mqtt(MOSQ_PORT, *extra), mosquitto.pid)]
    return loads


def library_loads(args, liebre_pid, mosquitto, have_mqtt_load):
    """The first loads, with lapin and rumqttc as clients."""
    amqp = os.path.join(ROOT, "target/release/examples/amqp_load")
    mqtt = os.path.join(ROOT, "target/release/examples/mqtt_load")
    loads = {
        "AMQP 16 B transient, 1 to 1, manual multi-ack": [
            ("Liebre", [amqp, "--url", "amqp://guest:guest@127.0.0.1:5699/%2F", "--seconds", str(args.seconds), "--size", "16"], liebre_pid),
            ("RabbitMQ", [amqp, "--url", "amqp://guest:guest@127.0.0.1:5673/%2F", "--seconds", str(args.seconds), "--size", "16"], rabbitmq_pid()),
        ],
    }
    if have_mqtt_load and mosquitto is not None:
        for qos in ("0", "1"):
            for size in ("16", "1024"):
                for subs in ("1", "100"):
                    name = f"MQTT QoS {qos} {size} B, 1 to {subs}"
                    common = ["--seconds", str(args.seconds), "--size", size, "--qos", qos, "--subscribers", subs]
                    loads[name] = [
                        ("Liebre", [mqtt, "--host", "127.0.0.1", "--port", "1899", *common], liebre_pid),
                        ("Mosquitto", [mqtt, "--host", "127.0.0.1", "--port", str(MOSQ_PORT), *common], mosquitto.pid),
                    ]
    return loads


def idle_round(broker, count):
    """Open `count` idle MQTT connections to a freshly started broker."""
    if broker == "Liebre":
        data = tempfile.mkdtemp(prefix="liebre-bench-idle-")
        proc = subprocess.Popen(
            [LIEBRE, "server", "--data-dir", data, "--amqp", "127.0.0.1:5697", "--mqtt", "127.0.0.1:1897",
             "--mqtt-ws", "127.0.0.1:9097", "--http", "127.0.0.1:15697", "--sys-interval", "0"],
            stderr=subprocess.DEVNULL)
        port = 1897
    else:
        data = tempfile.mkdtemp(prefix="liebre-bench-idle-mosquitto-")
        conf = os.path.join(data, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write("listener 1887 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "log_type error\nlog_dest stderr\nmax_queued_messages 100000\n")
        proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf],
                                stderr=subprocess.DEVNULL)
        port = 1887
    try:
        wait_port(port)
        time.sleep(0.5)
        return run_load([LIEBRE, "bench", "connections", "--protocol", "mqtt", "--port", str(port),
                         "--count", str(count), "--pid", str(proc.pid), "--json"], proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def churn_targets(liebre_pid, mosquitto):
    """Connection churn: connect, handshake, clean close, in a loop."""
    churn = [LIEBRE, "bench", "connections", "--churn", "--json", "--no-progress"]
    targets = {
        "AMQP": [("Liebre", [*churn, "--protocol", "amqp", "--url", "amqp://guest:guest@127.0.0.1:5699/%2F"], liebre_pid),
                 ("RabbitMQ", [*churn, "--protocol", "amqp", "--url", "amqp://guest:guest@127.0.0.1:5673/%2F"],
                  rabbitmq_pid())],
    }
    if mosquitto is not None:
        targets["MQTT"] = [("Liebre", [*churn, "--protocol", "mqtt", "--port", "1899"], liebre_pid),
                           ("Mosquitto", [*churn, "--protocol", "mqtt", "--port", str(MOSQ_PORT)], mosquitto.pid)]
    return targets


def relay_floor(args):
    """`liebre bench relay`: the client's cost of moving the same frames
    through a raw TCP relay (no broker), per protocol."""
    out = {}
    for name, extra in (("AMQP 16 B", ("--protocol", "amqp")), ("MQTT QoS 0 16 B", ("--protocol", "mqtt")),
                        ("MQTT QoS 1 16 B", ("--protocol", "mqtt", "--qos", "1", "--max-in-flight", "1024"))):
        runs = []
        for _ in range(args.rounds):
            # The relay involves no broker and varies little: 2 s is plenty.
            res = subprocess.run([LIEBRE, "bench", "relay", *extra, "--duration", "2", "--json"],
                                 check=True, cwd=ROOT, capture_output=True, text=True).stdout
            runs.append(json.loads([l for l in res.splitlines() if l.startswith("{")][-1]))
        out[name] = runs
    return out


def rate_of(r):
    """Messages per second from either kind of load program."""
    return r.get("consume_rate") or r.get("msgs_per_sec") or r.get("delivered_per_sec") or 0.0


def moved_of(r):
    return r.get("consumed") or r.get("received_total") or 1


def p99_of(r):
    return (r.get("latency_us") or {}).get("p99")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--only", help="run only the loads whose name contains this text")
    ap.add_argument("--connections", type=int, default=10000, help="idle MQTT connections to open")
    ap.add_argument("--skip-mqtt", action="store_true")
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--client", choices=["bench", "libs"], default="bench",
                    help="bench: `liebre bench` (lean); libs: the lapin/rumqttc examples")
    args = ap.parse_args()

    ensure_packages(args.skip_mqtt)
    sh("cargo", "build", "--release", "-q", "-p", "liebre")
    have_mqtt_load = os.path.exists(os.path.join(ROOT, "crates/server/examples/mqtt_load.rs"))
    if args.client == "libs":
        sh("cargo", "build", "--release", "-q", "-p", "liebre-server", "--example", "amqp_load")
        if have_mqtt_load and not args.skip_mqtt:
            sh("cargo", "build", "--release", "-q", "-p", "liebre-server", "--example", "mqtt_load")

    sh("tests/python/run_rabbitmq.sh", "start")
    mosquitto = None
    if not args.skip_mqtt:
        mosquitto = start_mosquitto()
    data = tempfile.mkdtemp(prefix="liebre-bench-")
    liebre = subprocess.Popen(
        [os.path.join(ROOT, "target/release/liebre"), "server", "--data-dir", data,
         "--amqp", "127.0.0.1:5699", "--mqtt", "127.0.0.1:1899", "--mqtt-ws", "127.0.0.1:9099",
         "--http", "127.0.0.1:15699", "--sys-interval", "0"],
        stderr=subprocess.DEVNULL)
    wait_port(5699)
    wait_port(5673)

    if args.client == "bench":
        loads = bench_loads(args, liebre.pid, mosquitto)
    else:
        loads = library_loads(args, liebre.pid, mosquitto, have_mqtt_load)
    if args.only:
        loads = {k: v for k, v in loads.items() if args.only in k}
    results = {}
    idle = {}
    churn = {}
    relay = {}
    try:
        for name, targets in loads.items():
            for r in range(args.rounds):
                for broker, cmd, pid in targets:  # interleaved: A B A B ...
                    if "--rate" in cmd:
                        # Let the brokers settle after the heavy loads
                        # (RabbitMQ deleting 1,000 queues, say) so the
                        # latency run does not share the CPU with that.
                        time.sleep(2)
                    res = run_load(cmd, pid)
                    results.setdefault(name, {}).setdefault(broker, []).append(res)
                    p99 = p99_of(res)
                    lat = f", p99 {p99} µs" if p99 is not None else ""
                    print(f"{name} | round {r + 1} | {broker}: {rate_of(res):,.0f} msg/s{lat}, "
                          f"broker CPU {res['broker_cpu_s']:.2f} s", file=sys.stderr)
        if not args.only or "churn" in args.only:
            for proto, targets in churn_targets(liebre.pid, mosquitto).items():
                for r in range(args.rounds):
                    for broker, cmd, pid in targets:
                        res = run_load([*cmd, "--pid", str(pid), "--duration", str(min(args.seconds, 3))], pid)
                        churn.setdefault(proto, {}).setdefault(broker, []).append(res)
                        print(f"{proto} churn | round {r + 1} | {broker}: {res['cycles_per_s']:,.0f} cycles/s, "
                              f"broker {res['broker_cpu_us_per_cycle']:,.0f} µs CPU per cycle", file=sys.stderr)
        if not args.only or "relay" in args.only:
            relay = relay_floor(args)
        if mosquitto is not None and (not args.only or "idle" in args.only):
            # Idle connections: the broker's resident memory before and
            # after opening them (`liebre bench connections --pid`), each
            # round on freshly started brokers: a broker that ran a load
            # before reuses freed memory and would show next to nothing.
            for r in range(args.rounds):
                for broker in ("Liebre", "Mosquitto"):
                    res = idle_round(broker, args.connections)
                    idle.setdefault(broker, []).append(res)
                    print(f"idle connections | round {r + 1} | {broker}: "
                          f"{res['broker_bytes_per_connection']:,.0f} B each, {res['connect_rate']:,.0f}/s",
                          file=sys.stderr)
    finally:
        if mosquitto:
            mosquitto.terminate()
        liebre.send_signal(signal.SIGTERM)
        liebre.wait(timeout=15)
        shutil.rmtree(data, ignore_errors=True)
        subprocess.run([os.path.join(ROOT, "tests/python/run_rabbitmq.sh"), "stop"], capture_output=True)

    print("| load | broker | msg/s (median) | p99 µs (median) | broker CPU s per 1M msgs | throughput ratio | efficiency ratio | p99 ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, by_broker in results.items():
        rows = {}
        for broker, runs in by_broker.items():
            rate = statistics.median(rate_of(r) for r in runs)
            p99s = [p99_of(r) for r in runs if p99_of(r) is not None]
            p99 = statistics.median(p99s) if p99s else None
            cpu_per_m = statistics.median(r["broker_cpu_s"] / moved_of(r) * 1e6 for r in runs)
            rows[broker] = (rate, p99, cpu_per_m)
        base = rows.get("Liebre")
        for broker, (rate, p99, cpu) in rows.items():
            p99_txt = f"{p99:,.0f}" if p99 is not None else ""
            if broker == "Liebre":
                print(f"| {name} | {broker} | {rate:,.0f} | {p99_txt} | {cpu:.2f} | | | |")
            else:
                p99_ratio = f"{base[1] / p99:.2f}" if p99 and base[1] else ""
                print(f"| {name} | {broker} | {rate:,.0f} | {p99_txt} | {cpu:.2f} | "
                      f"{base[0] / rate:.2f}x | {cpu / base[2]:.2f}x | {p99_ratio} |")
    if churn:
        print()
        print("| connection churn | broker | cycles per s (median) | p99 cycle µs (median) | broker CPU µs per cycle (median) | efficiency, other / Liebre |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for proto, by_broker in churn.items():
            med = {b: (statistics.median(r["cycles_per_s"] for r in runs),
                       statistics.median(r["cycle_latency_us"]["p99"] for r in runs),
                       statistics.median(r["broker_cpu_us_per_cycle"] for r in runs)) for b, runs in by_broker.items()}
            for b, (rate, p99, cpu) in med.items():
                ratio = "" if b == "Liebre" else f"{cpu / med['Liebre'][2]:.2f}x"
                print(f"| {proto} | {b} | {rate:,.0f} | {p99:,.0f} | {cpu:,.1f} | {ratio} |")
        results["connection churn"] = churn
    if relay:
        print()
        print("| client CPU s per 1M msgs (median) | raw TCP relay (floor) | liebre bench against Liebre | against the other broker |")
        print("| --- | ---: | ---: | ---: |")
        against = {"AMQP 16 B": "AMQP 16 B transient, 1 to 1", "MQTT QoS 0 16 B": "MQTT QoS 0 16 B, 1 to 1",
                   "MQTT QoS 1 16 B": "MQTT QoS 1 16 B, 1 to 1"}
        for name, runs in relay.items():
            floor = statistics.median(r["client_cpu_s_per_million"] for r in runs)
            cells = []
            for broker_runs in (results.get(against[name]) or {}).values():
                vals = [r["client_cpu_s_per_million"] for r in broker_runs if r.get("client_cpu_s_per_million")]
                cells.append(f"{statistics.median(vals):.3f}" if vals else "")
            cells += [""] * (2 - len(cells))
            print(f"| {name} | {floor:.3f} | {cells[0]} | {cells[1]} |")
        results["relay"] = relay
    if idle:
        print()
        print(f"| {args.connections:,} idle MQTT connections | broker | bytes per connection (median) | connections opened per s (median) | memory, Liebre / other |")
        print("| --- | --- | ---: | ---: | ---: |")
        med = {b: (statistics.median(r["broker_bytes_per_connection"] for r in runs),
                   statistics.median(r["connect_rate"] for r in runs)) for b, runs in idle.items()}
        for b, (mem, rate) in med.items():
            ratio = "" if b == "Liebre" else f"{med['Liebre'][0] / mem:.2f}x"
            print(f"| | {b} | {mem:,.0f} | {rate:,.0f} | {ratio} |")
        results["idle MQTT connections"] = idle
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
