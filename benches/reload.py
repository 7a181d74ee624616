#!/usr/bin/env python3
"""How long `serve --config` takes to check a file and to reload it.

For files of 1, 10 and 100 servers (each `forkline echo-server`), times
`forkline check FILE` as a whole process, then serves the file and times,
ROUNDS times, from SIGHUP to the log line `SIGHUP: reloaded` after one
server's `env` changed (so one server starts afresh and the others are
kept). Prints a Markdown table. Loopback only; forkline is started and
stopped by pid, and every wait is bounded.

Usage: benches/reload.py [FORKLINE_BINARY]   (default target/release/forkline)
"""

import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = 9
SIZES = (1, 10, 100)
PATIENCE_S = 20.0


def config(binary, servers, generation):
    entries = {}
    for i in range(servers):
        who = f"g{generation}" if i == 0 else "same"
        entries[f"s{i}"] = {"command": binary, "args": ["echo-server"], "env": {"WHO": who}}
    return {"forkline": {"http": "127.0.0.1:0"}, "mcpServers": entries}


def wait_for(proc, selector, needle, buffer):
    """Reads forkline's stderr until a line holds `needle`; bounded."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        while "\n" in buffer[0]:
            line, buffer[0] = buffer[0].split("\n", 1)
            if needle in line:
                return
        left = deadline - time.monotonic()
        if left <= 0 or not selector.select(left):
            raise SystemExit(f"no line with {needle!r} within {PATIENCE_S} s")
        chunk = os.read(proc.stderr.fileno(), 65536)
        if not chunk:
            raise SystemExit(f"forkline exited before printing {needle!r}")
        buffer[0] += chunk.decode(errors="replace")


def measure(binary, servers, directory):
    path = os.path.join(directory, f"servers-{servers}.json")
    with open(path, "w") as f:
        json.dump(config(binary, servers, 0), f)
    started = time.perf_counter()
    subprocess.run([binary, "check", path], check=True, capture_output=True, timeout=PATIENCE_S)
    check_ms = (time.perf_counter() - started) * 1000
    proc = subprocess.Popen([binary, "serve", "--config", path], stderr=subprocess.PIPE)
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stderr, selectors.EVENT_READ)
        buffer = [""]
        wait_for(proc, selector, "listening on http", buffer)
        times = []
        for generation in range(1, ROUNDS + 1):
            with open(path, "w") as f:
                json.dump(config(binary, servers, generation), f)
            started = time.perf_counter()
            proc.send_signal(signal.SIGHUP)
            wait_for(proc, selector, "SIGHUP: reloaded", buffer)
            times.append((time.perf_counter() - started) * 1000)
        return check_ms, statistics.median(times), max(times)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(PATIENCE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/forkline")
    print("| servers in the file | `forkline check` ms (whole process) | SIGHUP → reloaded, median ms | max ms |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="forkline-reload-") as directory:
        for servers in SIZES:
            check_ms, median_ms, max_ms = measure(binary, servers, directory)
            print(f"| {servers} | {check_ms:.1f} | {median_ms:.2f} | {max_ms:.2f} |")


if __name__ == "__main__":
    main()
