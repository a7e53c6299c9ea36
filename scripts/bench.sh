#!/usr/bin/env bash
# Keel vs real etcd 3.5.16 on this machine, side by side: the same load generator (keel-bench) runs
# each workload against both servers, alternating A/B for ROUNDS rounds, and prints the median of each
# with the ratio Keel/etcd. Also compares Keel's two storage engines.
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
)

field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

start_server etcd "$ETCD_BIN_DIR/etcd"; ETCD_URL=$URL
declare -A KEEL_URL
for engine in $ENGINES; do
  start_server "keel-$engine" "$KEEL" KEEL_STORAGE_ENGINE="$engine"; KEEL_URL[$engine]=$URL
done

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $ROUNDS rounds, A/B interleaved; medians"
echo
printf '| workload | etcd ops/s | etcd p99 ms |'
for engine in $ENGINES; do printf ' keel-%s ops/s | keel-%s p99 ms | ratio keel-%s/etcd |' "$engine" "$engine" "$engine"; done
echo
printf '|---|---:|---:|'; for _ in $ENGINES; do printf '%s' '---:|---:|---:|'; done; echo

for w in "${WORKLOADS[@]}"; do
  label=${w%%|*}; args=${w#*|}
  declare -A OPS=() P99=()
  for _ in $(seq 1 "$ROUNDS"); do
    for target in etcd $ENGINES; do
      if [ "$target" = etcd ]; then url=$ETCD_URL; else url=${KEEL_URL[$target]}; fi
      # shellcheck disable=SC2086
      line=$("$BENCH" --endpoint "$url" $args | grep '^RESULT')
      OPS[$target]+="$(echo "$line" | field ops_per_sec) "
      P99[$target]+="$(echo "$line" | field p99_ms) "
    done
  done
  etcd_ops=$(echo ${OPS[etcd]} | tr ' ' '\n' | median)
  etcd_p99=$(echo ${P99[etcd]} | tr ' ' '\n' | median)
  printf '| %s | %.0f | %.2f |' "$label" "$etcd_ops" "$etcd_p99"
  for engine in $ENGINES; do
    k_ops=$(echo ${OPS[$engine]} | tr ' ' '\n' | median)
    k_p99=$(echo ${P99[$engine]} | tr ' ' '\n' | median)
    printf ' %.0f | %.2f | %.2fx |' "$k_ops" "$k_p99" "$(echo "$k_ops $etcd_ops" | awk '{print $1/$2}')"
  done
  echo
  unset OPS P99
done
