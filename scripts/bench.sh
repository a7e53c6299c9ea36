#!/usr/bin/env bash
# Keel vs real etcd 3.5.16 on this machine, side by side: the same load generator (keel-bench) runs
# each workload against both servers, alternating A/B for ROUNDS rounds, and prints the median of each
# with the ratio Keel/etcd. Also compares Keel's two storage engines. Watch latency has its own
# script, scripts/bench-watch.sh.
#
#   scripts/bench.sh                 # single members, all workloads, 3 rounds
#   ROUNDS=5 scripts/bench.sh        # more rounds
#   ENGINES="redb sled" scripts/bench.sh   # which Keel engines to measure (default: both)
#   ONLY=txn scripts/bench.sh        # only the workloads whose label contains this text
#   scripts/bench.sh --members 3     # (or BENCH_MEMBERS=3) a three-member Keel next to a three-member
#                                    # etcd: put, txn-put and both ranges, keel-bench's connections
#                                    # spread over the members as etcd's benchmark tool does; CPU is
#                                    # summed over the members. Short runs (Keel engine redb unless
#                                    # ENGINES says otherwise); add --long for 10x the requests.
#
# Data dirs and logs live under bench.etcd/ in the repository (ignored by git, `*.etcd/`) and are
# removed at exit; only the processes this script started are stopped, by their pids.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MEMBERS=${BENCH_MEMBERS:-1}
LONG=0
while [ $# -gt 0 ]; do
  case $1 in
    --members) MEMBERS=${2:?--members needs a number}; shift 2 ;;
    --members=*) MEMBERS=${1#--members=}; shift ;;
    --long) LONG=1; shift ;;
    *) echo "usage: $0 [--members N] [--long]" >&2; exit 2 ;;
  esac
done
case $MEMBERS in ''|*[!0-9]*|0) echo "--members: a positive number, not '$MEMBERS'" >&2; exit 2 ;; esac
ROUNDS=${ROUNDS:-3}
# Three engines x three members is nine servers on a small machine: one engine by default there.
if [ "$MEMBERS" -gt 1 ]; then ENGINES=${ENGINES:-redb}; else ENGINES=${ENGINES:-"redb sled"}; fi
ETCD_BIN_DIR=${KEEL_ETCD_BIN_DIR:-$ROOT/.tools/etcd/usr/bin}

[ -x "$ETCD_BIN_DIR/etcd" ] || scripts/install-test-deps.sh
cargo build --release --bin keel --bin keel-bench >&2
KEEL=${CARGO_TARGET_DIR:-$ROOT/target}/release/keel
BENCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/keel-bench

mkdir -p "$ROOT/bench.etcd"
WORK=$(mktemp -d "$ROOT/bench.etcd/run.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
  rmdir "$ROOT/bench.etcd" 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# start_server NAME BINARY [ENV...]: starts MEMBERS members on free ports (one member is named
# "bench", as before; several are m1..mN). Sets URL (the client URLs, comma-separated) and PID (the
# members' pids, space-separated), and appends the pids to PIDS.
start_server() {
  local name=$1 bin=$2; shift 2
  local i cports=() pports=() names=() initial=()
  for i in $(seq 1 "$MEMBERS"); do
    cports+=("$(free_port)"); pports+=("$(free_port)")
    if [ "$MEMBERS" -eq 1 ]; then names+=(bench); else names+=("m$i"); fi
    initial+=("${names[-1]}=http://127.0.0.1:${pports[-1]}")
  done
  local cluster urls=()
  cluster=$(IFS=,; echo "${initial[*]}")
  PID=""
  mkdir -p "$WORK/$name"
  for i in $(seq 0 $((MEMBERS - 1))); do
    local c="http://127.0.0.1:${cports[$i]}" p="http://127.0.0.1:${pports[$i]}"
    env "$@" "$bin" --name "${names[$i]}" --data-dir "$WORK/$name/${names[$i]}" \
      --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
      --initial-cluster "$cluster" --initial-cluster-token "bench-$name" \
      --initial-cluster-state new >"$WORK/$name/${names[$i]}.log" 2>&1 &
    PIDS+=($!)
    PID="${PID:+$PID }$!"
    urls+=("$c")
  done
  URL=$(IFS=,; echo "${urls[*]}")
  # Healthy on every member means a leader is elected and each member serves a quorum read.
  for _ in $(seq 1 150); do
    if "$ETCD_BIN_DIR/etcdctl" --endpoints="$URL" endpoint health >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$name did not start; logs:" >&2; tail -n 20 "$WORK/$name"/*.log >&2; exit 1
}

# Workloads: a label and keel-bench arguments (etcd's benchmark tool shapes). Cheap requests get more
# of them, so each run lasts about a second and is not mostly warm-up and noise.
if [ "$MEMBERS" -eq 1 ]; then
  WORKLOADS=(
    "put, 1 client|--conns 1 --clients 1 --total 3000 put --key-space-size 100000"
    "put, 100 clients|--conns 10 --clients 100 --total 30000 put --key-space-size 100000"
    "txn-put, 100 clients|--conns 10 --clients 100 --total 30000 txn-put --key-space-size 100000"
    "range (linearizable), 100 clients|--conns 10 --clients 100 --total 120000 range"
    "range (serializable), 100 clients|--conns 10 --clients 100 --total 120000 range --consistency s"
    "lease keep-alive, 100 clients|--conns 10 --clients 100 --total 300000 lease-keepalive"
  )
else
  # A cluster: short runs (about two seconds each on a 2-core machine) unless --long. keel-bench gets
  # every member's URL and spreads its connections over them round-robin.
  SCALE=$((LONG ? 10 : 1))
  WORKLOADS=(
    "put, 100 clients|--conns 12 --clients 100 --total $((20000 * SCALE)) put --key-space-size 100000"
    "txn-put, 100 clients|--conns 12 --clients 100 --total $((20000 * SCALE)) txn-put --key-space-size 100000"
    "range (linearizable), 100 clients|--conns 12 --clients 100 --total $((60000 * SCALE)) range"
    "range (serializable), 100 clients|--conns 12 --clients 100 --total $((60000 * SCALE)) range --consistency s"
  )
fi

field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# CPU time (user + system, in clock ticks) the given processes (a cluster's members) have used so far.
cpu_ticks() { local pid; for pid in "$@"; do cat "/proc/$pid/stat"; done | awk '{t += $14 + $15} END {print t}'; }
TICK=$(getconf CLK_TCK)

declare -A URL_OF PID_OF
start_server etcd "$ETCD_BIN_DIR/etcd"; URL_OF[etcd]=$URL; PID_OF[etcd]=$PID
for engine in $ENGINES; do
  start_server "keel-$engine" "$KEEL" KEEL_STORAGE_ENGINE="$engine"; URL_OF[$engine]=$URL; PID_OF[$engine]=$PID
done

# p50 is shown for clusters (the single-member table keeps its published shape): if_p50 FORMAT [ARGS]
# prints only then.
if_p50() { if [ "$MEMBERS" -gt 1 ]; then printf "$@"; fi; }
# med ARRAY KEY: the median of the space-separated samples ARRAY[KEY].
med() { local -n samples=$1; echo ${samples[$2]} | tr ' ' '\n' | median; }
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $MEMBERS member(s) each; $ROUNDS rounds, A/B interleaved; medians"
echo
echo "ops/s and latencies are what the clients saw; CPU is the server's own CPU time per request (user + system,"
echo "summed over the members), which the load generator sharing the machine does not distort."
echo
printf '| workload | etcd ops/s |'; if_p50 ' etcd p50 ms |'; printf ' etcd p99 ms | etcd CPU µs/req |'
for engine in $ENGINES; do
  printf ' keel-%s ops/s |' "$engine"; if_p50 ' p50 ms |'
  printf ' p99 ms | CPU µs/req | ratio ops/s keel/etcd | ratio CPU etcd/keel |'
done
echo
printf '|---|---:|---:|---:|'; if_p50 '%s' '---:|'
for _ in $ENGINES; do printf '%s' '---:|---:|---:|---:|---:|'; if_p50 '%s' '---:|'; done; echo

for w in "${WORKLOADS[@]}"; do
  label=${w%%|*}; args=${w#*|}
  case $label in *"${ONLY:-}"*) ;; *) continue ;; esac
  declare -A OPS=() P50=() P99=() CPU=()
  for _ in $(seq 1 "$ROUNDS"); do
    for target in etcd $ENGINES; do
      # shellcheck disable=SC2086  # a cluster's pids, one word each
      before=$(cpu_ticks ${PID_OF[$target]})
      # shellcheck disable=SC2086
      line=$("$BENCH" --endpoint "${URL_OF[$target]}" $args | grep '^RESULT')
      # shellcheck disable=SC2086
      after=$(cpu_ticks ${PID_OF[$target]})
      requests=$(echo "$args" | sed -n 's/.*--total \([0-9]*\).*/\1/p')
      OPS[$target]+="$(echo "$line" | field ops_per_sec) "
      P50[$target]+="$(echo "$line" | field p50_ms) "
      P99[$target]+="$(echo "$line" | field p99_ms) "
      CPU[$target]+="$(awk -v t=$((after - before)) -v hz="$TICK" -v n="$requests" 'BEGIN {print t / hz * 1e6 / n}') "
    done
  done
  etcd_ops=$(med OPS etcd); etcd_cpu=$(med CPU etcd)
  printf '| %s | %.0f |' "$label" "$etcd_ops"; if_p50 ' %.2f |' "$(med P50 etcd)"
  printf ' %.2f | %.1f |' "$(med P99 etcd)" "$etcd_cpu"
  for engine in $ENGINES; do
    k_ops=$(med OPS "$engine"); k_cpu=$(med CPU "$engine")
    printf ' %.0f |' "$k_ops"; if_p50 ' %.2f |' "$(med P50 "$engine")"
    printf ' %.2f | %.1f | %.2fx | %.2fx |' "$(med P99 "$engine")" "$k_cpu" \
      "$(echo "$k_ops $etcd_ops" | awk '{print $1/$2}')" "$(echo "$etcd_cpu $k_cpu" | awk '{print $1/$2}')"
  done
  echo
  unset OPS P50 P99 CPU
done
