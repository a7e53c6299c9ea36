#!/usr/bin/env bash
# Keel vs real etcd 3.5.16 on this machine, side by side: the same load generator (keel-bench) runs
# each workload against both servers, alternating A/B for ROUNDS rounds, and prints the median of each
# with the ratio Keel/etcd. Also compares Keel's two storage engines. Watch latency has its own
# script, scripts/bench-watch.sh.
#
#   scripts/bench.sh                 # all workloads, 3 rounds
#   ROUNDS=5 scripts/bench.sh        # more rounds
#   ENGINES="redb sled" scripts/bench.sh   # which Keel engines to measure (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
ENGINES=${ENGINES:-"redb sled"}
ETCD_BIN_DIR=${KEEL_ETCD_BIN_DIR:-$ROOT/.tools/etcd/usr/bin}

[ -x "$ETCD_BIN_DIR/etcd" ] || scripts/install-test-deps.sh
cargo build --release --bin keel --bin keel-bench >&2
KEEL=$ROOT/target/release/keel
BENCH=$ROOT/target/release/keel-bench

WORK=$(mktemp -d /tmp/keel-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# start_server NAME BINARY [ENV...]: starts a single member on free ports; sets URL and appends its pid.
start_server() {
  local name=$1 bin=$2; shift 2
  local cport pport
  cport=$(free_port); pport=$(free_port)
  mkdir -p "$WORK/$name"
  env "$@" "$bin" --name bench --data-dir "$WORK/$name/data" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "bench=http://127.0.0.1:$pport" >"$WORK/$name/log" 2>&1 &
  PIDS+=($!)
  PID=$!
  URL="http://127.0.0.1:$cport"
  for _ in $(seq 1 100); do
    if "$ETCD_BIN_DIR/etcdctl" --endpoints="$URL" endpoint health >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$name did not start; log:" >&2; tail -20 "$WORK/$name/log" >&2; exit 1
}

# Workloads: a label and keel-bench arguments (etcd's benchmark tool shapes).
WORKLOADS=(
  "put, 1 client|--conns 1 --clients 1 --total 3000 put --key-space-size 100000"
  "put, 100 clients|--conns 10 --clients 100 --total 30000 put --key-space-size 100000"
  "txn-put, 100 clients|--conns 10 --clients 100 --total 30000 txn-put --key-space-size 100000"
  "range (linearizable), 100 clients|--conns 10 --clients 100 --total 60000 range"
  "range (serializable), 100 clients|--conns 10 --clients 100 --total 60000 range --consistency s"
  "lease keep-alive, 100 clients|--conns 10 --clients 100 --total 60000 lease-keepalive"
)

field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

declare -A URL_OF PID_OF
start_server etcd "$ETCD_BIN_DIR/etcd"; URL_OF[etcd]=$URL; PID_OF[etcd]=$PID
for engine in $ENGINES; do
  start_server "keel-$engine" "$KEEL" KEEL_STORAGE_ENGINE="$engine"; URL_OF[$engine]=$URL; PID_OF[$engine]=$PID
done

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $ROUNDS rounds, A/B interleaved; medians"
echo
echo "ops/s and p99 are what the clients saw; CPU is the server's own CPU time per request (user + system),"
echo "which the load generator sharing the machine does not distort."
echo
printf '| workload | etcd ops/s | etcd p99 ms | etcd CPU µs/req |'
for engine in $ENGINES; do printf ' keel-%s ops/s | p99 ms | CPU µs/req | ratio ops/s keel/etcd | ratio CPU etcd/keel |' "$engine"; done
echo
printf '|---|---:|---:|---:|'; for _ in $ENGINES; do printf '%s' '---:|---:|---:|---:|---:|'; done; echo

for w in "${WORKLOADS[@]}"; do
  label=${w%%|*}; args=${w#*|}
  declare -A OPS=() P99=() CPU=()
  for _ in $(seq 1 "$ROUNDS"); do
    for target in etcd $ENGINES; do
      before=$(cpu_ticks "${PID_OF[$target]}")
      # shellcheck disable=SC2086
      line=$("$BENCH" --endpoint "${URL_OF[$target]}" $args | grep '^RESULT')
      after=$(cpu_ticks "${PID_OF[$target]}")
      requests=$(echo "$args" | sed -n 's/.*--total \([0-9]*\).*/\1/p')
      OPS[$target]+="$(echo "$line" | field ops_per_sec) "
      P99[$target]+="$(echo "$line" | field p99_ms) "
      CPU[$target]+="$(awk -v t=$((after - before)) -v hz="$TICK" -v n="$requests" 'BEGIN {print t / hz * 1e6 / n}') "
    done
  done
  etcd_ops=$(echo ${OPS[etcd]} | tr ' ' '\n' | median)
  etcd_p99=$(echo ${P99[etcd]} | tr ' ' '\n' | median)
  etcd_cpu=$(echo ${CPU[etcd]} | tr ' ' '\n' | median)
  printf '| %s | %.0f | %.2f | %.1f |' "$label" "$etcd_ops" "$etcd_p99" "$etcd_cpu"
  for engine in $ENGINES; do
    k_ops=$(echo ${OPS[$engine]} | tr ' ' '\n' | median)
    k_p99=$(echo ${P99[$engine]} | tr ' ' '\n' | median)
    k_cpu=$(echo ${CPU[$engine]} | tr ' ' '\n' | median)
    printf ' %.0f | %.2f | %.1f | %.2fx | %.2fx |' "$k_ops" "$k_p99" "$k_cpu" \
      "$(echo "$k_ops $etcd_ops" | awk '{print $1/$2}')" "$(echo "$etcd_cpu $k_cpu" | awk '{print $1/$2}')"
  done
  echo
  unset OPS P99 CPU
done
