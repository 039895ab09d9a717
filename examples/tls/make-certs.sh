#!/usr/bin/env bash
# Makes a throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate,
# for trying TLS and mTLS locally: `examples/tls/make-certs.sh DIR` writes ca.crt, server.crt,
# server.key, client.crt and client.key into DIR.
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=eventstream test CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
make() { # name, subject, extensions
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile <(printf '%s' "$3") -out "$1.crt" 2>/dev/null
    rm "$1.csr"
}
make server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
make client eventstream-client "extendedKeyUsage=clientAuth"
echo "certificates in $dir: ca.crt server.crt server.key client.crt client.key"
