#!/usr/bin/env python3
"""Benchmark of the drover package against a real serve (not a test):
starts per second from one thread, and start -> exit latency seen through
watch_finished, with a plain call's round trip (poll of one name) as the
baseline of the same run.

  /usr/bin/python3 python/bench/bench.py [-n 2000] [-m 300] [--drover ./drover]

It uses the serve of $DROVER_HOME, or with --drover BIN starts one in a
temporary home and shuts it down at the end.
"""

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import drover  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def start_serve(binary):
    home = tempfile.mkdtemp(prefix="drover-bench-")
    proc = subprocess.Popen([binary, "serve"], env=dict(os.environ, DROVER_HOME=home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(home, "serve.json")):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("drover serve did not start")
        time.sleep(0.05)
    return home, proc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="starts to time (default 2000)")
    ap.add_argument("-m", type=int, default=300, help="start -> exit latencies to sample (default 300)")
    ap.add_argument("--drover", help="start this drover binary's serve in a temporary home")
    a = ap.parse_args()
    home, proc = start_serve(a.drover) if a.drover else (None, None)
    tag = secrets.token_hex(3)
    try:
        with drover.Client(home, group="bench-" + tag) as c:
            node = c.nodes()[0].name
            c.start(node, "bench-%s-warm" % tag, ["true"])

            t = time.perf_counter()
            for i in range(a.n):
                c.poll(["bench-%s-warm" % tag])
            rpc = a.n / (time.perf_counter() - t)

            names = ["bench-%s-%d" % (tag, i) for i in range(a.n)]
            t = time.perf_counter()
            for name in names:
                c.start(node, name, ["true"])
            starts = a.n / (time.perf_counter() - t)
            left = set(names) | {"bench-%s-warm" % tag}
            deadline = time.monotonic() + 300
            while left and time.monotonic() < deadline:
                left -= {e.name for e in c.finished(wait=1.0)}
            for name in set(names) - left:
                c.purge(name)

            lat = []
            watch = c.watch_finished()
            for i in range(a.m):
                name = "bench-%s-lat-%d" % (tag, i)
                t = time.perf_counter()
                c.start(node, name, ["true"])
                e = next(watch)
                lat.append(time.perf_counter() - t)
                if e.name != name:
                    sys.exit("expected the exit of %s, got %s" % (name, e.name))
                c.purge(name)
            watch.close()
    finally:
        if proc is not None:
            with drover.Client(home) as c:
                c.shutdown()
            proc.wait(timeout=60)

    print("baseline: %.0f calls/s (poll of one name, one thread)" % rpc)
    print("starts: %.0f/s over %d (one thread, /bin/true)" % (starts, a.n))
    print("start -> exit via watch_finished: p50 %.2f ms, p99 %.2f ms over %d"
          % (pct(lat, 50) * 1e3, pct(lat, 99) * 1e3, a.m))


if __name__ == "__main__":
    main()
