#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on Debian bookworm, idempotently:
#   * protoc and the well-known .proto includes (etcd-client's build script needs a system protoc);
#   * the reference etcd 3.5.16 (etcd, etcdctl, etcdutl), unpacked under .tools/etcd/ in the repository.
#
# etcd 3.5.16 is packaged in Debian trixie, not bookworm. Adding trixie to the system's apt sources would
# drag a newer libc in, so trixie is only ever seen through a private apt state under .tools/apt/: its own
# sources list, lists directory and cache, used for `apt-get update` and `apt-get download`, after which
# the .debs are unpacked with `dpkg -x`. Nothing is installed from trixie. Release files are verified
# against the system's Debian archive keyring, as for any other apt source.
set -euo pipefail

ETCD_VERSION="3.5.16"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="$repo_root/.tools"
etcd_root="$tools_dir/etcd"
etcd_bin="$etcd_root/usr/bin"
apt_dir="$tools_dir/apt"
keyring="/usr/share/keyrings/debian-archive-keyring.gpg"

log() { printf 'install-test-deps: %s\n' "$*" >&2; }
die() { printf 'install-test-deps: ERROR: %s\n' "$*" >&2; exit 1; }

# Privileged commands: run directly as root, through sudo otherwise (if there is one).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

system_apt_updated=0
system_apt_update() {
    if [ "$system_apt_updated" -eq 0 ]; then
        log "apt-get update (system sources)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        system_apt_updated=1
    fi
}

system_apt_install() {
    system_apt_update
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# ---------------------------------------------------------------------------------------------------
# 1. protoc + google/protobuf/*.proto
# ---------------------------------------------------------------------------------------------------
if command -v protoc >/dev/null 2>&1 && [ -f /usr/include/google/protobuf/descriptor.proto ]; then
    log "protoc present: $(protoc --version)"
else
    system_apt_install protobuf-compiler libprotobuf-dev
    command -v protoc >/dev/null 2>&1 || die "protoc still missing after installing protobuf-compiler"
    log "protoc installed: $(protoc --version)"
fi

# ---------------------------------------------------------------------------------------------------
# 2. reference etcd from Debian trixie, unpacked privately
# ---------------------------------------------------------------------------------------------------
etcd_version_ok() {
    [ -x "$etcd_bin/etcd" ] && [ -x "$etcd_bin/etcdctl" ] && [ -x "$etcd_bin/etcdutl" ] || return 1
    # Read the whole output first: `grep -q` stops at its first match, and with pipefail the
    # SIGPIPE that etcd then gets while printing the rest would fail the check at random.
    local out
    out="$("$etcd_bin/etcd" --version 2>/dev/null)" || return 1
    grep -qx "etcd Version: $ETCD_VERSION" <<<"$out"
}

if etcd_version_ok; then
    log "etcd $ETCD_VERSION already unpacked in $etcd_bin"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script targets Debian bookworm"
command -v dpkg >/dev/null 2>&1 || die "dpkg not found: this script targets Debian bookworm"

# The Debian mirror the machine already uses: the first non-security URI serving the system's codename,
# from one-line (*.list) or deb822 (*.sources) files. deb.debian.org if none is found.
system_codename() {
    # shellcheck disable=SC1091
    (. /etc/os-release && printf '%s' "${VERSION_CODENAME:-bookworm}")
}

find_debian_mirror() {
    local codename="$1" files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ "${#files[@]}" -gt 0 ] || return 0
    awk -v want="$codename" '
        function consider(uris, suites,   n, i, u, m, j, s) {
            n = split(suites, s, /[ \t]+/)
            for (i = 1; i <= n; i++) if (s[i] == want) break
            if (i > n) return
            m = split(uris, u, /[ \t]+/)
            for (j = 1; j <= m; j++)
                if (u[j] ~ /^https?:\/\// && u[j] !~ /security/ && found == "") found = u[j]
        }
        FILENAME ~ /\.sources$/ {
            if ($0 ~ /^[ \t]*$/) { if (types ~ /(^|[ \t])deb([ \t]|$)/) consider(uris, suites); types = uris = suites = ""; next }
            if (tolower($1) == "types:")  { types  = $0; sub(/^[^:]*:[ \t]*/, "", types) }
            if (tolower($1) == "uris:")   { uris   = $0; sub(/^[^:]*:[ \t]*/, "", uris) }
            if (tolower($1) == "suites:") { suites = $0; sub(/^[^:]*:[ \t]*/, "", suites) }
            next
        }
        FNR == 1 && prev != FILENAME { if (types ~ /deb/) consider(uris, suites); types = uris = suites = ""; prev = FILENAME }
        /^[ \t]*deb[ \t]/ {
            line = $0
            sub(/^[ \t]*deb[ \t]+/, "", line)
            if (line ~ /^\[/) sub(/^\[[^]]*\][ \t]*/, "", line)
            split(line, w, /[ \t]+/)
            consider(w[1], w[2])
        }
        END { if (types ~ /(^|[ \t])deb([ \t]|$)/) consider(uris, suites); if (found != "") print found }
    ' "${files[@]}"
}

codename="$(system_codename)"
mirror="$(find_debian_mirror "$codename")"
mirror="${mirror:-http://deb.debian.org/debian}"
mirror="${mirror%/}"
log "system is Debian $codename; using mirror $mirror for trixie"

[ -f "$keyring" ] || system_apt_install debian-archive-keyring

mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
sources_file="$apt_dir/trixie.list"
printf 'deb [signed-by=%s] %s trixie main\n' "$keyring" "$mirror" >"$sources_file"

apt_private=(
    -o "Dir::Etc::SourceList=$sources_file"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir/cache"
    # Only the Packages index is needed, not the AppStream metadata some systems enable.
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
)
# apt drops privileges to _apt for downloads; let it write into our private directories.
if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then
    chown -R _apt "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" 2>/dev/null || true
fi

private_update() {
    # --error-on=any: a missing or bad signature must fail the run, not just warn.
    apt-get "${apt_private[@]}" -q --error-on=any update
}

log "apt-get update (private trixie state in $apt_dir)"
if ! private_update; then
    # A bookworm keyring older than 2023.3+deb12u1 lacks the trixie keys; the fix is bookworm's own
    # updated debian-archive-keyring, never an unsigned or trusted=yes source.
    log "trixie Release could not be verified with $keyring; upgrading debian-archive-keyring"
    system_apt_install debian-archive-keyring
    private_update || die "apt-get update of trixie failed even with the current debian-archive-keyring"
fi
signed=0
for f in "$apt_dir"/lists/*_dists_trixie_InRelease "$apt_dir"/lists/*_dists_trixie_Release.gpg; do
    [ -f "$f" ] && signed=1
done
[ "$signed" -eq 1 ] || die "no signed Release for trixie in $apt_dir/lists: refusing unverified packages"

candidate="$(apt-cache "${apt_private[@]}" policy etcd-server | awk '/Candidate:/ { print $2 }')"
log "trixie candidate for etcd-server: ${candidate:-none}"
case "$candidate" in
    "$ETCD_VERSION"*) ;;
    *) die "trixie offers etcd-server '${candidate:-none}', expected $ETCD_VERSION" ;;
esac

rm -f "$apt_dir"/debs/*.deb
log "apt-get download etcd-server etcd-client"
(cd "$apt_dir/debs" && apt-get "${apt_private[@]}" -q download etcd-server etcd-client)

rm -rf "$etcd_root"
mkdir -p "$etcd_root"
for deb in "$apt_dir"/debs/*.deb; do
    log "unpacking $(basename "$deb")"
    dpkg -x "$deb" "$etcd_root"
done

for b in etcd etcdctl etcdutl; do
    [ -x "$etcd_bin/$b" ] || die "$etcd_bin/$b missing after unpacking"
done
if ! etcd_version_ok; then
    "$etcd_bin/etcd" --version >&2 || true
    die "unpacked etcd is not version $ETCD_VERSION"
fi
log "etcd $ETCD_VERSION ready: $etcd_bin"
"$etcd_bin/etcd" --version >&2
