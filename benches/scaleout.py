#!/usr/bin/env python3
"""Sessions/s and requests/s through HAProxy with one, two and three forkline
nodes, next to one node without a balancer, all in one run (issue 15).

Each row starts its own nodes (`forkline -q serve --http 127.0.0.1:0 --admin
127.0.0.1:0 --node-id forkline-N`, child `forkline echo-server`) and, except
the direct row, HAProxy on deploy/haproxy.cfg as committed (the variables it
reads point it at the nodes; the recipe's servers that a row does not run
point at a closed loopback port, and the row waits until HAProxy has marked
them down, as after a node loss). Then two phases, WORKERS client processes
each on its own keep-alive connection:

- sessions/s: each worker opens sessions one after another for PHASE_S:
  `initialize` (the new session's child is spawned), `notifications/
  initialized`, `DELETE`; a session counts once its DELETE is answered.
- requests/s: SESSIONS sessions opened first (spread by the balancer's
  least connections), then each worker POSTs `tools/call echo` in its own
  sessions in turn for PHASE_S (JSON answers), counting answered calls and
  timing each.

ROUNDS rounds, the rows in turn within a round; each figure is the median of
its rounds. Ratios are to the direct row of the same run. Loopback only, on
the same cores as the client: the figures show what routing through the
balancer costs, not a cluster's capacity. Every process is started here
and ended by its pid.

Usage: benches/scaleout.py [--quick] [FORKLINE_BINARY]
       (default target/release/forkline; --quick: one round of 1 s phases,
       a smoke run whose figures mean little)
"""

import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

WORKERS = 4
SESSIONS = 32
PHASE_S = 4.0
ROUNDS = 3
NODES = ("forkline-0", "forkline-1", "forkline-2")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
RECIPE = os.path.join(ROOT, "deploy", "haproxy.cfg")

INIT = json.dumps({
    "jsonrpc": "2.0", "id": 0, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
}).encode()
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'


class Conn:
    """A minimal keep-alive HTTP/1.1 client: forkline and HAProxy answer
    with Content-Length, which is all this reads."""

    def __init__(self, addr):
        self.addr = addr
        self.sock = socket.create_connection(addr, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, method, headers, body=b""):
        # JSON answers only: with text/event-stream allowed, forkline answers
        # as a (chunked) stream, which this client does not read.
        head = f"{method} /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        for name, value in headers:
            head += f"{name}: {value}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        length = int(fields.get("content-length", "0"))
        while len(self.buf) < length:
            self.fill()
        payload, self.buf = self.buf[:length], self.buf[length:]
        return status, fields, payload

    def fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk


def open_session(conn):
    status, fields, _ = conn.request("POST", [], INIT)
    if status != 200 or "mcp-session-id" not in fields:
        raise RuntimeError(f"initialize answered {status}")
    sid = fields["mcp-session-id"]
    status, _, _ = conn.request("POST", [("Mcp-Session-Id", sid), ("MCP-Protocol-Version", "2025-06-18")], INITIALIZED)
    if status != 202:
        raise RuntimeError(f"notifications/initialized answered {status}")
    return sid


def close_session(conn, sid):
    status, _, _ = conn.request("DELETE", [("Mcp-Session-Id", sid), ("MCP-Protocol-Version", "2025-06-18")])
    if status != 200:
        raise RuntimeError(f"DELETE answered {status}")


def guarded(target):
    """Runs a worker, passing its failure to the parent instead of hanging it."""

    def run(*args):
        out = args[-1]
        try:
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - anything ends the bench
            out.put(f"error: {exc!r}")
            raise

    return run


def worker_sessions(addr, start_at, out):
    conn = Conn(addr)
    while time.monotonic() < start_at:
        time.sleep(0.001)
    done, end = 0, start_at + PHASE_S
    while time.monotonic() < end:
        close_session(conn, open_session(conn))
        done += 1
    out.put(done)


def worker_requests(addr, sids, start_at, out):
    conn = Conn(addr)
    while time.monotonic() < start_at:
        time.sleep(0.001)
    times, i, end = [], 0, start_at + PHASE_S
    while time.monotonic() < end:
        sid = sids[i % len(sids)]
        i += 1
        t0 = time.perf_counter()
        status, _, body = conn.request("POST", [("Mcp-Session-Id", sid), ("MCP-Protocol-Version", "2025-06-18")], CALL)
        times.append(time.perf_counter() - t0)
        if status != 200 or b'"result"' not in body:
            raise RuntimeError(f"tools/call answered {status}: {body[:200]!r}")
    out.put(times)


def run_workers(target, args_of):
    out = multiprocessing.Queue()
    start_at = time.monotonic() + 0.5
    procs = [multiprocessing.Process(target=guarded(target), args=(*args_of(w), start_at, out)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=PHASE_S + 30) for _ in procs]
    failed = [r for r in results if isinstance(r, str)]
    if failed:
        for p in procs:
            p.kill()
        raise SystemExit(f"a client worker failed: {failed[0]}")
    for p in procs:
        p.join(timeout=10)
        if p.exitcode != 0:
            raise SystemExit(f"a client worker failed (exit {p.exitcode})")
    return results


class Procs:
    """Everything a row started, ended by pid."""

    def __init__(self):
        self.procs = []

    def start(self, argv, env=None):
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)
        self.procs.append(proc)
        return proc

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []


def start_node(procs, binary, node_id):
    proc = procs.start([binary, "-q", "serve", "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                        "--node-id", node_id, "--max-sessions", "1100", "--max-sessions-per-client", "1100",
                        "--shutdown-grace", "1"])
    http = admin = None
    deadline = time.monotonic() + 10
    while (http is None or admin is None) and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith("forkline: listening on http://"):
            host, port = line.strip()[len("forkline: listening on http://"):-len("/mcp")].rsplit(":", 1)
            http = (host, int(port))
        elif line.startswith("forkline: listening on admin http://"):
            admin = int(line.strip().rsplit(":", 1)[1])
    if http is None or admin is None:
        raise SystemExit(f"node {node_id} did not start")
    # Nothing more is read from its stderr: -q keeps it near silent.
    return http, admin


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_haproxy(procs, nodes):
    env = dict(os.environ)
    dead = free_port()  # nothing listens there: the recipe's absent nodes
    for n in range(len(NODES)):
        if n < len(nodes):
            (host, port), admin = nodes[n]
            env[f"FORKLINE_{n}"], env[f"FORKLINE_{n}_ADMIN_PORT"] = f"{host}:{port}", str(admin)
        else:
            env[f"FORKLINE_{n}"], env[f"FORKLINE_{n}_ADMIN_PORT"] = f"127.0.0.1:{dead}", str(dead)
    port = free_port()
    env["FORKLINE_LB_BIND"] = f"127.0.0.1:{port}"
    proc = procs.start([shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", RECIPE], env=env)
    missing = {f"sessions/{NODES[n]} is DOWN" for n in range(len(nodes), len(NODES))}
    deadline = time.monotonic() + 20
    while missing and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit("haproxy exited")
        missing = {m for m in missing if m not in line}
    if missing:
        raise SystemExit(f"haproxy never marked {missing} down")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return ("127.0.0.1", port)
        except OSError:
            time.sleep(0.02)
    raise SystemExit("haproxy does not listen")


def measure_row(binary, n_nodes, balancer):
    procs = Procs()
    try:
        nodes = [start_node(procs, binary, NODES[n]) for n in range(n_nodes)]
        addr = start_haproxy(procs, nodes) if balancer else nodes[0][0]
        counts = run_workers(worker_sessions, lambda w: (addr,))
        sessions_per_s = sum(counts) / PHASE_S
        conn = Conn(addr)
        sids = [open_session(conn) for _ in range(SESSIONS)]
        spread = {}
        for sid in sids:
            spread[sid.split(".")[0]] = spread.get(sid.split(".")[0], 0) + 1
        per_worker = [sids[w::WORKERS] for w in range(WORKERS)]
        times = sorted(t for ts in run_workers(worker_requests, lambda w: (addr, per_worker[w])) for t in ts)
        for sid in sids:
            close_session(conn, sid)
        return {
            "sessions_per_s": sessions_per_s,
            "requests_per_s": len(times) / PHASE_S,
            "p50_us": times[len(times) // 2] * 1e6,
            "p99_us": times[int(len(times) * 0.99)] * 1e6,
            "spread": spread,
        }
    finally:
        procs.stop()


def main():
    global ROUNDS, PHASE_S
    args = sys.argv[1:]
    if "--quick" in args:
        args.remove("--quick")
        ROUNDS, PHASE_S = 1, 1.0
    binary = os.path.abspath(args[0] if args else os.path.join(ROOT, "target/release/forkline"))
    if not (shutil.which("haproxy") or os.path.exists("/usr/sbin/haproxy")):
        print("scaleout.py: haproxy is not installed (.ci/setup-haproxy); skipped", file=sys.stderr)
        return 0
    rows = [("direct to one node (no balancer)", 1, False), ("HAProxy + 1 node", 1, True),
            ("HAProxy + 2 nodes", 2, True), ("HAProxy + 3 nodes", 3, True)]
    runs = {name: [] for name, _, _ in rows}
    load = open("/proc/loadavg").read().split()[:3]
    t0 = time.monotonic()
    for _ in range(ROUNDS):
        for name, n, balancer in rows:
            runs[name].append(measure_row(binary, n, balancer))
    version = subprocess.run([shutil.which("haproxy") or "/usr/sbin/haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"{WORKERS} client processes, {PHASE_S:.0f} s per phase, median of {ROUNDS} rounds; "
          f"{version}; load average at start {', '.join(load)}; whole run {time.monotonic() - t0:.0f} s\n")
    print("| setup | sessions/s | requests/s | request p50 µs | request p99 µs | sessions/s ÷ direct | requests/s ÷ direct | sessions per node (last round) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    med = {name: {k: statistics.median(r[k] for r in runs[name]) for k in ("sessions_per_s", "requests_per_s", "p50_us", "p99_us")} for name in runs}
    base = med[rows[0][0]]
    for name, _, _ in rows:
        m = med[name]
        spread = ", ".join(f"{k} {v}" for k, v in sorted(runs[name][-1]["spread"].items()))
        print(f"| {name} | {m['sessions_per_s']:,.0f} | {m['requests_per_s']:,.0f} | {m['p50_us']:.0f} | {m['p99_us']:.0f} | "
              f"{m['sessions_per_s'] / base['sessions_per_s']:.2f}× | {m['requests_per_s'] / base['requests_per_s']:.2f}× | {spread} |")
    print("\nby round (sessions/s; requests/s):")
    for name, _, _ in rows:
        print(f"- {name}: " + " / ".join(f"{r['sessions_per_s']:,.0f}; {r['requests_per_s']:,.0f}" for r in runs[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
