#!/usr/bin/env bash
# Generates the gRPC code, builds publish.go into .gopath/bin/ (GOPATH mode, Debian's Go
# packages) and runs it; arguments go to it (e.g. --topic sensors/go).
set -euo pipefail
cd "$(dirname "$0")"
./generate.sh
GO111MODULE=off GOPATH="$PWD/.gopath:/usr/share/gocode" go build -o .gopath/bin/publish publish.go
exec .gopath/bin/publish "$@"
