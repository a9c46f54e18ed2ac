#!/usr/bin/env python3
"""A large backlog in one durable queue: memory, disk, recovery time, drain.

For each (messages, size):
  1. start a release build of Liebre on a fresh data directory;
  2. fill one durable queue with persistent, confirmed messages
     (`liebre bench amqp --consumers 0 --burst N --persistent --confirm`);
  3. report the broker's resident memory and the size of the data directory;
  4. kill it (SIGKILL by default, or SIGTERM with --clean) and start it again
     on the same directory, timing how long until it accepts AMQP
     connections, and read the recovery report from its log;
  5. report resident memory after recovery;
  6. drain the queue with one consumer (bodies past the in-memory budget
     are read back from the log), and report the rate and the disk left.

    python3 bench/backlog.py                       # 1M x 1 KiB and 10M x 16 B
    python3 bench/backlog.py --case 100000x1024     # one smaller case

Nothing here is a test; the figures go to BENCHMARKS.md.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIEBRE = os.path.join(ROOT, "target/release/liebre")
PORT = 5698
URL = f"amqp://guest:guest@127.0.0.1:{PORT}/%2F"


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def dir_mib(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total / 2**20


def port_open():
    try:
        socket.create_connection(("127.0.0.1", PORT), 0.2).close()
        return True
    except OSError:
        return False


def start(data, log):
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [LIEBRE, "server", "--data-dir", data, "--amqp", f"127.0.0.1:{PORT}", "--mqtt", "127.0.0.1:1898",
         "--mqtt-ws", "127.0.0.1:9098", "--http", "127.0.0.1:15698", "--sys-interval", "0"],
        stderr=open(log, "ab"), env={**os.environ, "RUST_LOG": "info"})
    while not port_open():
        if proc.poll() is not None:
            raise SystemExit(f"liebre exited: see {log}")
        if time.monotonic() - t0 > 600:
            raise SystemExit("liebre did not start within 600 s")
        time.sleep(0.01)
    return proc, time.monotonic() - t0


def bench(*extra):
    out = subprocess.run([LIEBRE, "bench", "amqp", "--url", URL, "--queue-prefix", "backlog", "--keep-queues",
                          "--persistent", "--json", "--no-progress", *extra],
                         check=True, capture_output=True, text=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


def recovery_line(log):
    with open(log, errors="replace") as f:
        lines = [l for l in f if "Messages recovered" in l or "Store opened" in l]
    return [re.sub(r"\x1b\[[0-9;]*m", "", l).strip() for l in lines[-2:]]


def run_case(n, size, clean):
    data = tempfile.mkdtemp(prefix="liebre-backlog-")
    log = data + ".log"
    res = {"messages": n, "size": size}
    try:
        proc, _ = start(data, log)
        t0 = time.monotonic()
        fill = bench("--producers", "1", "--consumers", "0", "--burst", str(n), "--size", str(size), "--confirm",
                     "--max-in-flight", "20000")
        res["fill_s"] = round(time.monotonic() - t0, 1)
        res["fill_confirmed_per_s"] = round(fill.get("confirm_rate") or fill.get("publish_rate") or 0)
        time.sleep(1)
        res["rss_full_mib"] = round(rss_mib(proc.pid))
        res["disk_full_mib"] = round(dir_mib(data))
        if clean:
            proc.send_signal(signal.SIGTERM)
        else:
            proc.kill()
        proc.wait(timeout=120)
        proc, res["restart_s"] = start(data, log)
        res["restart_s"] = round(res["restart_s"], 2)
        res["recovery_log"] = recovery_line(log)
        time.sleep(1)
        res["rss_recovered_mib"] = round(rss_mib(proc.pid))
        t0 = time.monotonic()
        drain = bench("--producers", "0", "--consumers", "1", "--duration", "3600", "--drain-timeout", "3s")
        res["drained"] = drain.get("consumed")
        res["drain_s"] = round(time.monotonic() - t0 - 3, 1)
        res["drain_per_s"] = round((drain.get("consumed") or 0) / max(res["drain_s"], 0.001))
        time.sleep(1.5)  # the writer reclaims segments after the last acks
        res["disk_drained_mib"] = round(dir_mib(data))
        res["rss_drained_mib"] = round(rss_mib(proc.pid))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        subprocess.run(["pkill", "-f", f"--amqp 127.0.0.1:{PORT}"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", help="NxSIZE, e.g. 1000000x1024 (repeatable)")
    ap.add_argument("--clean", action="store_true", help="stop with SIGTERM instead of SIGKILL")
    args = ap.parse_args()
    cases = args.case or ["1000000x1024", "10000000x16"]
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "liebre"], check=True, cwd=ROOT)
    for c in cases:
        n, size = (int(x) for x in c.split("x"))
        r = run_case(n, size, args.clean)
        print(json.dumps(r), flush=True)
        print(json.dumps(r), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
