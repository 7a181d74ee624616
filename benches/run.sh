#!/usr/bin/env bash
# The one command behind docs/benchmarks.md (issues 5, 10 and 11):
#   1. install the peers (benches/setup.sh: socat, supergateway, mcp-proxy),
#   2. build forkline and its async twin (benches/async-twin) in release,
#   3. run the side-by-side benchmark, which prints the table and, on a full
#      run, writes docs/benchmarks.md.
# Arguments go to the benchmark: `--quick` for a smoke run with small counts
# (about a minute and a half; writes nothing), `--only forkline,socat` for
# some rows (keys: direct, socat, forkline, twin, twin-socketpair,
# forkline-http, forkline-http-json, supergateway, mcp-proxy), `--burst-cap
# N` for the cap of the max-live-sessions phase.
# Then benches/prespawn.py: session set-up with and without --prespawn, and
# benches/scaleout.py: sessions/s and requests/s through HAProxy
# (deploy/haproxy.cfg) with one, two and three nodes, next to one node
# without it (skipped with a notice when haproxy is not installed).
# A full run takes about 16 minutes on 2 cores, of which the max-live-sessions
# and recovery phases (6,500 sessions; 40 s windows) take about 5 and the
# phase with the Python SDK's server as the child about 2.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

benches/setup.sh || echo "run.sh: some peers could not be installed; their rows will say why" >&2
cargo build --release
cargo build --release --locked --manifest-path benches/async-twin/Cargo.toml
cargo bench --bench proxy -- "$@"
# Session set-up with and without the warm pool (--prespawn), on a child
# that boots in 300 ms; about 25 s.
python3 benches/prespawn.py target/release/forkline
# Through HAProxy on the committed recipe with 1, 2, 3 nodes and direct to
# one node, 3 rounds; about 2 minutes.
python3 benches/scaleout.py target/release/forkline
