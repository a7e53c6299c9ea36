#!/usr/bin/env bash
# A local three-member Keel cluster on 127.0.0.1, for trying clusters out by hand.
#
#   scripts/cluster.sh start     # build keel (debug), start k1..k3, print the client endpoints
#   scripts/cluster.sh status    # etcdctl endpoint status over the three (needs etcdctl on PATH
#                                # or KEEL_ETCD_BIN_DIR)
#   scripts/cluster.sh stop      # stop the members this script started (by their recorded PIDs)
#
# Client ports 42371-42373, peer ports 42381-42383 (override with BASE_CLIENT / BASE_PEER). Data and
# logs live under `cluster.etcd/` in the repository (ignored by git, `*.etcd/`); `stop` keeps them,
# `stop --clean` removes them. KEEL_BIN picks a prebuilt binary instead of building.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="$repo_root/cluster.etcd"
BASE_CLIENT="${BASE_CLIENT:-42371}"
BASE_PEER="${BASE_PEER:-42381}"
names=(k1 k2 k3)

endpoints() {
    local out=() i
    for i in 0 1 2; do out+=("http://127.0.0.1:$((BASE_CLIENT + i))"); done
    local IFS=,
    echo "${out[*]}"
}

start() {
    local bin="${KEEL_BIN:-}"
    if [[ -z "$bin" ]]; then
        (cd "$repo_root" && cargo build --bin keel)
        bin="${CARGO_TARGET_DIR:-$repo_root/target}/debug/keel"
    fi
    mkdir -p "$state"
    local initial=() i
    for i in 0 1 2; do initial+=("${names[$i]}=http://127.0.0.1:$((BASE_PEER + i))"); done
    local IFS=,
    local initial_cluster="${initial[*]}"
    unset IFS
    for i in 0 1 2; do
        local name="${names[$i]}" pidfile="$state/${names[$i]}.pid"
        if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "$name already running (pid $(cat "$pidfile"))"
            continue
        fi
        local client="http://127.0.0.1:$((BASE_CLIENT + i))" peer="http://127.0.0.1:$((BASE_PEER + i))"
        "$bin" --name "$name" --data-dir "$state/$name" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$initial_cluster" --initial-cluster-token keel-local-cluster \
            --initial-cluster-state new >"$state/$name.log" 2>&1 &
        echo $! >"$pidfile"
        echo "started $name (pid $!) client $client peer $peer"
    done
    echo "endpoints: $(endpoints)"
}

stop() {
    local i
    for i in 0 1 2; do
        local pidfile="$state/${names[$i]}.pid"
        [[ -f "$pidfile" ]] || continue
        local pid
        pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            # Wait for a graceful stop (it flushes storage), then give up on it.
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            echo "stopped ${names[$i]} (pid $pid)"
        fi
        rm -f "$pidfile"
    done
    if [[ "${1:-}" == "--clean" ]]; then
        rm -rf "$state"
    fi
}

status() {
    local etcdctl="etcdctl"
    [[ -n "${KEEL_ETCD_BIN_DIR:-}" ]] && etcdctl="$KEEL_ETCD_BIN_DIR/etcdctl"
    "$etcdctl" --endpoints "$(endpoints)" endpoint status -w table
    "$etcdctl" --endpoints "$(endpoints)" member list -w table
}

case "${1:-}" in
    start) start ;;
    stop) shift; stop "${1:-}" ;;
    status) status ;;
    *) echo "usage: $0 start|stop [--clean]|status" >&2; exit 2 ;;
esac
