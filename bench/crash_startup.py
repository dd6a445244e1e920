#!/usr/bin/env python3
"""Start-up of `canon serve` after a crash, on a data directory that already holds a backlog.

Each round starts `canon serve` on DIR, publishes batches over HTTP from four threads for a
random 5 to 20 s, kills the server with SIGKILL mid-publish (its journal then holds writes not
yet in a segment), starts it again and times how long it takes until `GET /health` answers.

    target/release/canon-load --events 10000000 --publishers 16 --nats ""   # fills the directory
    python3 bench/crash_startup.py target/release/canon target/canon-load-data 5

Prints one line per round (events published, journal bytes left by the crash, time to ready,
RSS once ready) and the worst time.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

ADDR = "127.0.0.1:8499"
BASE = f"http://{ADDR}"


def start(canon, data):
    started = time.monotonic()
    proc = subprocess.Popen(
        [canon, "serve", "--data-dir", data, "--listen", ADDR],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            urllib.request.urlopen(f"{BASE}/health", timeout=1).read()
            return proc, time.monotonic() - started
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"canon serve exited with {proc.returncode}")
            time.sleep(0.002)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def publish_until(stop, counter, lock):
    pad = "x" * 430
    while not stop.is_set():
        batch = [
            {
                "specversion": "1.0",
                "id": f"crash-{uuid.uuid4().hex}",
                "source": "/crash-startup",
                "type": "load.tick",
                "data": {"pad": pad},
            }
            for _ in range(500)
        ]
        req = urllib.request.Request(
            f"{BASE}/v1/topics/bench/events",
            data=json.dumps(batch).encode(),
            headers={"content-type": "application/cloudevents-batch+json"},
        )
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except OSError:
            return  # the server was killed
        with lock:
            counter[0] += len(batch)


def journal_bytes(data):
    return sum(
        os.stat(os.path.join(data, f)).st_blocks * 512
        for f in os.listdir(data)
        if f.endswith(".jnl")
    )


def main():
    canon, data, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    worst = 0.0
    proc, _ = start(canon, data)
    for i in range(rounds):
        stop, lock, counter = threading.Event(), threading.Lock(), [0]
        threads = [
            threading.Thread(target=publish_until, args=(stop, counter, lock))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        time.sleep(random.uniform(5, 20))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
        journal = journal_bytes(data)
        proc, ready = start(canon, data)
        worst = max(worst, ready)
        print(
            f"round {i + 1}: {counter[0]} events published before the kill, "
            f"journal {journal / 2**20:.0f} MiB, ready after {ready * 1e3:.0f} ms, "
            f"RSS {rss_mb(proc.pid):.0f} MB",
            flush=True,
        )
    proc.terminate()
    proc.wait()
    print(f"worst start-up after a crash: {worst * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
