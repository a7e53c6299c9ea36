#!/usr/bin/env bash
# Watch latency, Keel next to the reference etcd 3.5.16: for each server, start a fresh single member
# on loopback, run `keel-bench watch-latency` against it (W watchers of one key, one writer at R puts/s)
# and print the result line; stop the server by its pid. Defaults are the issue's goal: 1,000 watchers,
# 1,000 puts/s (etcd's own benchmark shape: 10 streams).
#
#   scripts/bench-watch.sh                      # both servers, defaults
#   WATCHERS=1000 STREAMS=100 PUTS=5000 RATE=1000 scripts/bench-watch.sh
#   EXTRA=--prev-kv scripts/bench-watch.sh
#
# Needs a release build (`cargo build --release --bin keel --bin keel-bench`). Run on a quiet machine:
# the writer, the watchers and the server share its cores.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo_root/target}/release"
etcd_dir="${KEEL_ETCD_BIN_DIR:-$repo_root/.tools/etcd/usr/bin}"
keel_bin="${KEEL_BIN:-$target/keel}"
bench_bin="${KEEL_BENCH_BIN:-$target/keel-bench}"
WATCHERS="${WATCHERS:-1000}"
STREAMS="${STREAMS:-10}"
CONNS="${CONNS:-10}"
PUTS="${PUTS:-5000}"
RATE="${RATE:-1000}"
EXTRA="${EXTRA:-}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_one() {
    local kind="$1" bin="$2"
    local dir client peer pid
    dir="$(mktemp -d "/tmp/keel-bench-watch-$kind.XXXXXX")"
    client="$(free_port)"
    peer="$(free_port)"
    "$bin" --name bench --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" >"$dir/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$client") 2>/dev/null; then break; fi
        sleep 0.1
    done
    sleep 1
    # shellcheck disable=SC2086
    result="$("$bench_bin" --endpoint "http://127.0.0.1:$client" --conns "$CONNS" --total "$PUTS" \
        watch-latency --watchers "$WATCHERS" --streams "$STREAMS" --put-rate "$RATE" $EXTRA || true)"
    rss="$(awk '/VmRSS/ {print $2 " kB"}' "/proc/$pid/status" 2>/dev/null || echo "?")"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    printf '%-5s %s\n      server RSS at the end: %s\n' "$kind" "$(printf '%s' "$result" | head -n 1)" "$rss"
}

[ -x "$bench_bin" ] || { echo "bench-watch: $bench_bin missing (cargo build --release --bin keel-bench)" >&2; exit 1; }
run_one etcd "$etcd_dir/etcd"
run_one keel "$keel_bin"
