#!/usr/bin/env bash
# The network proxy against direct loopback, in one run: bulk throughput (CONNECT and
# HTTP forward), connection set-up latency (CONNECT and SOCKS5) and many concurrent
# small requests. Everything stays on 127.0.0.1 (a `bench.test` resolve pin). Prints a
# markdown table; docs/performance.md ("Network proxy") has the figures and the targets.
# Usage: scripts/bench-proxy.sh [--bytes MIB] [--conns N] [--concurrent N] [--repeat N]
# (defaults: 1024 MiB, 2000 connections, 500 concurrent, best of 3). Run it on an idle
# machine: the proxy, the origin and the client share its cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p workfence-proxy --example bench
target=${CARGO_TARGET_DIR:-target}
# Each concurrent request holds four descriptors (client, proxy's two sides, origin).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$target/release/examples/bench" "$@"
