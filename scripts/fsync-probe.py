#!/usr/bin/env python3
"""The disk's own fdatasync latency, without Canon: the floor under a synced publish.

Appends 2,600 bytes (about five 512-byte events) to a 64 MiB journal and fdatasyncs it,
about 2,000 times a second, for SECONDS, and prints the sync latency's percentiles. Beside it,
a second thread may write a 16 MiB "table" every half second, the way an LSM flush does:

  scripts/fsync-probe.py [SECONDS] [none|bulk|trickle|paced|nudged] [zero|sparse]

  none     the journal alone
  bulk     each table written whole, then fsynced (what fjall's flush does)
  trickle  each table synced every MiB as it is written (RocksDB's bytes_per_sync)
  paced    as bulk, but written a MiB every 5 ms, as a flush that encodes as it goes
  nudged   as paced, while another thread starts the table's write-back every 5 ms
           (sync_file_range SYNC_FILE_RANGE_WRITE, which does not wait for it)
  zero     the journal file is written with zeros first (blocks allocated)
  sparse   the journal is only extended with ftruncate, as fjall does (default)

Files go to target/fsync-probe (same disk as the data directories of canon-load).
BENCHMARKS.md has figures from it.
"""
import ctypes
import os
import sys
import threading
import time

SYNC_FILE_RANGE_WRITE = 2

secs = float(sys.argv[1]) if len(sys.argv) > 1 else 8
tables = sys.argv[2] if len(sys.argv) > 2 else "none"
journal_kind = sys.argv[3] if len(sys.argv) > 3 else "sparse"
d = os.path.join("target", "fsync-probe")
os.makedirs(d, exist_ok=True)

fd = os.open(os.path.join(d, "journal"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
if journal_kind == "zero":
    zeros = b"\0" * (1 << 20)
    for _ in range(64):
        os.write(fd, zeros)
else:
    os.ftruncate(fd, 64 << 20)
os.fsync(fd)

stop = False


writing = None


def nudge():
    # Linux and glibc only, so loaded here: the other modes run anywhere.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    while not stop:
        t = writing
        if t is not None:
            # The writer may have closed `t` meanwhile (or the number been reused): the call
            # then fails or nudges another file, both harmless for a probe. Errors are ignored.
            libc.sync_file_range(t, 0, 0, SYNC_FILE_RANGE_WRITE)
        time.sleep(0.005)


def write_tables():
    global writing
    blob = os.urandom(1 << 20)
    n = 0
    while not stop:
        if tables != "none":
            t = os.open(os.path.join(d, f"table{n % 4}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            writing = t
            for _ in range(16):
                os.write(t, blob)
                if tables == "trickle":
                    os.fdatasync(t)
                if tables in ("paced", "nudged"):
                    time.sleep(0.005)
            writing = None
            os.fsync(t)
            os.close(t)
            n += 1
        time.sleep(0.5)


writer = threading.Thread(target=write_tables)
writer.start()
nudger = threading.Thread(target=nudge)
if tables == "nudged":
    nudger.start()
record = b"x" * 2600
latencies = []
offset = 0
end = time.time() + secs
while time.time() < end:
    os.pwrite(fd, record, offset)
    offset += len(record)
    t0 = time.perf_counter()
    os.fdatasync(fd)
    latencies.append(time.perf_counter() - t0)
    time.sleep(0.0005)
stop = True
writer.join()
if tables == "nudged":
    nudger.join()
latencies.sort()


def q(p):
    return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000


print(
    f"tables={tables} journal={journal_kind}: {len(latencies)} syncs, p50 {q(.5):.2f} "
    f"p90 {q(.9):.2f} p99 {q(.99):.2f} p999 {q(.999):.2f} max {latencies[-1] * 1000:.1f} ms"
)
