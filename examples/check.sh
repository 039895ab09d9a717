#!/usr/bin/env bash
# End-to-end check of the Python, Go and Node examples against a running eventstream server.
#
#   EVENTSTREAM_GRPC=127.0.0.1:9200 examples/check.sh [--tls CA CERT KEY]
#
# Starts no server: EVENTSTREAM_GRPC names one already running. Two subscribers (Python and
# Node, both on sensors/* from LOW) must each receive exactly the three events published next
# by Python (sensors/t1), Go (sensors/go) and Node (sensors/node); then a Python PublishBatch
# of 100 events must succeed, and 100 events a Python publish-only Stream sends must reach a
# subscriber in order, and events from 16 KiB to 3.9 MiB must be published and delivered intact.
# --tls passes --ca/--cert/--key to every client (mTLS).
set -euo pipefail
cd "$(dirname "$0")"

die() { echo "check.sh: FAIL: $*" >&2; exit 1; }

server=${EVENTSTREAM_GRPC:-}
if [ -z "$server" ]; then
    echo "check.sh: set EVENTSTREAM_GRPC to the gRPC address of a running server" \
        "(e.g. EVENTSTREAM_GRPC=127.0.0.1:9200); this script starts and builds no server" >&2
    exit 2
fi
tls=()
if [ $# -gt 0 ]; then
    if [ $# -ne 4 ] || [ "$1" != --tls ]; then
        echo "usage: EVENTSTREAM_GRPC=HOST:PORT $0 [--tls CA CERT KEY]" >&2
        exit 2
    fi
    tls=(--ca "$2" --cert "$3" --key "$4")
fi
args=(--server "$server" "${tls[@]}")

# Client set-up: generated Python and Go code, the Go binary, Node's packages.
python/generate.sh
go/generate.sh
(cd go && GO111MODULE=off GOPATH="$PWD/.gopath:/usr/share/gocode" go build -o .gopath/bin/publish publish.go)
[ -d node/node_modules ] || (cd node && npm ci --no-audit --no-fund --loglevel=error)

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# Subscribers, each bounded to 20 s in case an event never arrives.
timeout 20 python3 python/subscribe.py "${args[@]}" --count 3 >"$tmp/python.out" 2>"$tmp/python.err" &
pids+=($!)
timeout 20 node node/subscribe.js "${args[@]}" --count 3 >"$tmp/node.out" 2>"$tmp/node.err" &
pids+=($!)
declare -A sub_pid=([python]=${pids[0]} [node]=${pids[1]})

# Each subscriber prints "subscribed to ..." on stderr when the server's response headers
# arrive. A server that sends its headers only with the first event never lets that happen
# before we publish, so after 5 s we go on anyway (by then the subscriptions are in place).
for _ in $(seq 50); do
    grep -qs '^subscribed to' "$tmp/python.err" && grep -qs '^subscribed to' "$tmp/node.err" && break
    for sub in python node; do
        kill -0 "${sub_pid[$sub]}" 2>/dev/null || die "$sub subscriber exited early: $(cat "$tmp/$sub.err")"
    done
    sleep 0.1
done
if ! grep -qs '^subscribed to' "$tmp/python.err" || ! grep -qs '^subscribed to' "$tmp/node.err"; then
    echo "check.sh: note: no response headers on Subscribe after 5 s; publishing anyway"
fi

echo "== publish: python -> sensors/t1"
python3 python/publish.py "${args[@]}" --topic sensors/t1 || die "python publish.py"
echo "== publish: go -> sensors/go"
go/.gopath/bin/publish "${args[@]}" --topic sensors/go || die "go publish"
echo "== publish: node -> sensors/node"
node node/publish.js "${args[@]}" --topic sensors/node || die "node publish.js"

# Each subscriber must have printed exactly the three topics (delivery order across topics
# is not guaranteed, so they are compared sorted) with a per-topic sequence number >= 1.
expected=$'sensors/go\nsensors/node\nsensors/t1'
for sub in python node; do
    status=0
    wait "${sub_pid[$sub]}" || status=$?
    [ "$status" -ne 124 ] || die "$sub subscriber timed out (20 s) before 3 events; it printed:
$(cat "$tmp/$sub.out")"
    [ "$status" -eq 0 ] || die "$sub subscriber exited with status $status after printing:
$(cat "$tmp/$sub.out")
$(cat "$tmp/$sub.err")"
    echo "== $sub subscriber received:"
    sed 's/^/   /' "$tmp/$sub.out"
    got=$(cut -d' ' -f1 "$tmp/$sub.out" | sort)
    [ "$got" = "$expected" ] || die "$sub subscriber got topics [${got//$'\n'/ }], want [${expected//$'\n'/ }]"
    grep -Evq '^[^ ]+ [1-9][0-9]* [A-Z]+ ' "$tmp/$sub.out" &&
        die "$sub subscriber: a line lacks 'topic sequence(>=1) priority payload'"
done
pids=()

echo "== batch: python -> 100 events to sensors/batch"
python3 python/batch.py "${args[@]}" || die "python batch.py"

echo "== stream: python publish-only Stream -> 100 events to sensors/stream, in order to a subscriber"
timeout 20 python3 python/subscribe.py "${args[@]}" --pattern sensors/stream --count 100 \
    >"$tmp/stream.out" 2>"$tmp/stream.err" &
stream_sub=$!
pids+=("$stream_sub")
for _ in $(seq 50); do
    grep -qs '^subscribed to' "$tmp/stream.err" && break
    kill -0 "$stream_sub" 2>/dev/null || die "stream subscriber exited early: $(cat "$tmp/stream.err")"
    sleep 0.1
done
python3 python/stream.py "${args[@]}" || die "python stream.py"
wait "$stream_sub" || die "stream subscriber did not get 100 events: $(cat "$tmp/stream.err")"
pids=()
got=$(cut -d' ' -f4- "$tmp/stream.out")
want=$(for i in $(seq 0 99); do echo "reading $i"; done)
[ "$got" = "$want" ] || die "stream subscriber did not get 'reading 0' .. 'reading 99' in order"

echo "== large: python publishes 16 KiB .. 3.9 MiB events to large/py, a subscriber gets each intact"
timeout 60 python3 python/large.py "${args[@]}" || die "python large.py"

echo "== reflection: python lists the services without the .proto"
python3 python/reflect.py "${args[@]}" || die "python reflect.py"

echo "check.sh: OK: python, go and node examples passed against $server"
