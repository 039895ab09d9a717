#!/usr/bin/env bash
# Generates the Go code for eventstream.proto into a private GOPATH (.gopath/, not committed)
# as package `eventstreampb`, so that publish.go builds with GO111MODULE=off against Debian's
# Go packages in /usr/share/gocode (no module proxy needed).
set -euo pipefail
cd "$(dirname "$0")"
out=.gopath/src/eventstream/eventstreampb
rm -rf "$out" && mkdir -p "$out"
# The .proto has no `option go_package`; M maps it to the import path
# `eventstream/eventstreampb` (protoc-gen-go wants a "/" or "." in it), and
# paths=source_relative writes the files straight into $out.
protoc -I ../../proto \
    --go_out="$out" --go_opt=paths=source_relative --go_opt=Meventstream.proto=eventstream/eventstreampb \
    --go-grpc_out="$out" --go-grpc_opt=paths=source_relative --go-grpc_opt=Meventstream.proto=eventstream/eventstreampb \
    eventstream.proto
