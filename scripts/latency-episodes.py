#!/usr/bin/env python3
"""Where a latency phase's tail comes from: episodes of slow requests, and the p99 without them.

Reads the dumps of `canon-load --latency-dump F` (F for HTTP single publish, F.embedded,
F.jetstream, ... for the other phases), leaves out the warm-up rows the dump's header names,
and prints for each file:

- p50, p99, p999 and the maximum of the measured rows;
- how many took longer than SLOW ms (default 2);
- episodes: runs of at least MIN (default 20) slow rows, each within 50 ms of the one before,
  with how many slow rows they hold;
- the p99 of the rows outside those episodes.

  scripts/latency-episodes.py [--slow MS] [--min N] [--list] DUMP...

--list also prints each episode (start in ms after the first row, length, count, worst).
BENCHMARKS.md ("A steady-state latency phase ...") has figures from it.
"""
import argparse

GAP_MS = 50.0


def load(path):
    """The measured rows of a dump: (ms after the first row, latency in ms)."""
    warm, rows = 0, []
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                words = line.split()
                # "# the first N rows are the warm-up"
                if "warm-up" in line and len(words) > 3 and words[3].isdigit():
                    warm = int(words[3])
                continue
            cols = line.split()
            rows.append((float(cols[0]), float(cols[1])))
    return rows[warm:]


def pct(sorted_values, p):
    if not sorted_values:
        return 0.0
    at = round((len(sorted_values) - 1) * p)
    return sorted_values[min(at, len(sorted_values) - 1)]


def episodes(rows, slow_ms, min_rows):
    """Runs of slow rows, each within GAP_MS of the one before: [start, end, count, worst]."""
    runs = []
    for at, latency in rows:
        if latency <= slow_ms:
            continue
        if runs and at - runs[-1][1] < GAP_MS:
            run = runs[-1]
            run[1], run[2], run[3] = at, run[2] + 1, max(run[3], latency)
        else:
            runs.append([at, at, 1, latency])
    return [r for r in runs if r[2] >= min_rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slow", type=float, default=2.0, help="slow means over this many ms")
    ap.add_argument("--min", type=int, default=20, help="slow rows that make an episode")
    ap.add_argument("--list", action="store_true", help="print each episode")
    ap.add_argument("dumps", nargs="+")
    args = ap.parse_args()
    for path in args.dumps:
        rows = load(path)
        if not rows:
            print(f"{path}: no measured rows")
            continue
        lat = sorted(latency for _, latency in rows)
        slow = sum(1 for latency in lat if latency > args.slow)
        eps = episodes(rows, args.slow, args.min)
        inside = sum(e[2] for e in eps)
        # Rows are sorted by time: walk them beside the episodes.
        outside, i = [], 0
        for at, latency in rows:
            while i < len(eps) and at > eps[i][1]:
                i += 1
            if i < len(eps) and eps[i][0] <= at <= eps[i][1]:
                continue
            outside.append(latency)
        outside.sort()
        print(
            f"{path}: {len(rows)} rows, p50 {pct(lat, 0.5):.3f} p99 {pct(lat, 0.99):.3f} "
            f"p999 {pct(lat, 0.999):.3f} max {lat[-1]:.1f} ms; {slow} over {args.slow:g} ms, "
            f"{inside} of them in {len(eps)} episodes; p99 outside them {pct(outside, 0.99):.3f} ms"
        )
        if args.list:
            for start, end, count, worst in eps:
                print(f"  at {start:8.0f} ms for {end - start:4.0f} ms: {count:4d} slow, worst {worst:.1f} ms")


if __name__ == "__main__":
    main()
