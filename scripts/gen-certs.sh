#!/usr/bin/env bash
# Makes a throwaway certificate authority and the certificates a Keel (or etcd) cluster needs for TLS:
#   ca.crt/ca.key            the CA that signs everything below
#   server.crt/server.key    client-facing serving certificate (SAN: localhost, 127.0.0.1, ::1)
#   peer.crt/peer.key        member-to-member certificate, usable as server and client (same SANs)
#   client.crt/client.key    a client certificate whose CN is the user name (default "root")
#   other-ca.crt, other-client.crt/.key   a second CA and a client it signed, for refusal tests
# Usage: scripts/gen-certs.sh [out-dir] [client-common-name]   (default: ./certs root)
# Needs only the openssl command line. Keys are ECDSA P-256, valid for 10 days: for tests and trials,
# not for production.
set -euo pipefail

out="${1:-certs}"
client_cn="${2:-root}"
days="${KEEL_CERT_DAYS:-10}"
mkdir -p "$out"
cd "$out"

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# A CA: self-signed, allowed to sign certificates.
make_ca() {
    local name="$1" cn="$2"
    newkey "$name.key"
    openssl req -x509 -new -key "$name.key" -sha256 -days "$days" -subj "/CN=$cn" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$name.crt" 2>/dev/null
}

# A leaf signed by CA $2, with extended key usages $3 and, for serving certificates, SANs.
make_leaf() {
    local name="$1" ca="$2" usage="$3" cn="$4" san="${5:-}"
    newkey "$name.key"
    openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr" 2>/dev/null
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usage"
        if [ -n "$san" ]; then echo "subjectAltName=$san"; fi
    } >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -sha256 -days "$days" \
        -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

hosts="DNS:localhost,IP:127.0.0.1,IP:0:0:0:0:0:0:0:1"
make_ca ca "keel test CA"
make_leaf server ca "serverAuth,clientAuth" "keel-server" "$hosts"
make_leaf peer ca "serverAuth,clientAuth" "keel-peer" "$hosts"
make_leaf client ca "clientAuth" "$client_cn"
make_ca other-ca "another CA"
make_leaf other-client other-ca "clientAuth" "$client_cn"
rm -f ./*.srl
chmod 600 ./*.key
echo "certificates written to $(pwd)" >&2
