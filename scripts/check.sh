#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh clone: install the test dependencies (protoc, the
# reference etcd 3.5.16), build every target of the workspace, then run every test.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/install-test-deps.sh

# etcd-client's build script needs a protoc; our own build.rs falls back to the vendored one without it.
if [ -z "${PROTOC:-}" ] && command -v protoc >/dev/null 2>&1; then
    PROTOC="$(command -v protoc)"
    export PROTOC
fi
# compat-tests start the reference etcd and the keel binary from these paths.
export KEEL_ETCD_BIN_DIR="${KEEL_ETCD_BIN_DIR:-$repo_root/.tools/etcd/usr/bin}"
# Incremental caches double the target directory and buy nothing in a one-shot build.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export KEEL_BIN="${KEEL_BIN:-${CARGO_TARGET_DIR:-$repo_root/target}/debug/keel}"

echo "check: cargo fmt --check" >&2
cargo fmt --all -- --check

echo "check: cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings

echo "check: cargo build --workspace --all-targets" >&2
cargo build --workspace --all-targets

echo "check: cargo test --workspace" >&2
cargo test --workspace
