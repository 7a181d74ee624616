#!/usr/bin/env python3
"""Session set-up with and without the warm pool (`serve --prespawn`).

The child takes ~300 ms to boot (`sh -c 'sleep 0.3; exec forkline
echo-server'`), as a Node or Python MCP server does. For each setting,
SESSIONS sessions are opened one after another, PAUSE apart (time for the
pool to refill), and each is timed from connect to the answer of its
`initialize`. Prints a Markdown table; the ratio is against the run
without the pool, measured in the same run. Loopback only; forkline is
started and stopped by pid.

Usage: benches/prespawn.py [FORKLINE_BINARY]   (default target/release/forkline)
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import time

SESSIONS = 20
PAUSE_S = 0.5
BOOT_S = 0.3
INIT = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    b'"capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}\n'
)


def start(binary, prespawn):
    child = f"sleep {BOOT_S}; exec {binary} echo-server"
    proc = subprocess.Popen(
        [binary, "serve", "--tcp", "127.0.0.1:0", "--prespawn", str(prespawn), "--", "sh", "-c", child],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith("forkline: listening on tcp://"):
            host, port = line.strip().rsplit("//", 1)[1].rsplit(":", 1)
            return proc, (host, int(port))
    proc.kill()
    proc.wait()
    raise SystemExit("forkline did not start")


def measure(addr):
    times = []
    for _ in range(SESSIONS):
        time.sleep(PAUSE_S)
        t0 = time.perf_counter()
        with socket.create_connection(addr, timeout=10) as s:
            s.sendall(INIT)
            answer = s.makefile("rb").readline()
            times.append((time.perf_counter() - t0) * 1000)
        if b'"result"' not in answer:
            raise SystemExit(f"bad answer: {answer!r}")
    return times


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/forkline")
    rows = []
    for prespawn in (0, 4):
        proc, addr = start(binary, prespawn)
        try:
            if prespawn:
                time.sleep(BOOT_S * 3)  # let the pool fill
            times = sorted(measure(addr))
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        rows.append((prespawn, statistics.median(times), times[int(len(times) * 0.9) - 1], max(times)))
    base = rows[0][1]
    print(f"session set-up, child booting in {BOOT_S * 1000:.0f} ms, {SESSIONS} sessions {PAUSE_S * 1000:.0f} ms apart:\n")
    print("| --prespawn | p50 ms | p90 ms | max ms | p50 ÷ no pool |")
    print("|---:|---:|---:|---:|---:|")
    for prespawn, p50, p90, worst in rows:
        print(f"| {prespawn} | {p50:.1f} | {p90:.1f} | {worst:.1f} | {p50 / base:.3f}× |")
    print("\n" + json.dumps({"no_pool_p50_ms": round(rows[0][1], 1), "pool_p50_ms": round(rows[1][1], 1)}))


if __name__ == "__main__":
    main()
