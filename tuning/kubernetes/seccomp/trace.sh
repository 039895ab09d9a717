#!/usr/bin/env bash
# The system calls eventstream makes over a whole life, traced with strace: `doctor`, then a
# server started on 4 unpinned shards, in low-latency mode and bridged to NATS, loaded through
# every door by the bench (native TCP publish/subscribe/fan-out/latency, UDP, gRPC
# unary/Stream/batch; all of it exported), importing from a second node, reconnecting after
# NATS went away, asked for its health and metrics, and stopped with SIGINT; then a server on
# one pinned shard, started and stopped.
#
#   tuning/kubernetes/seccomp/trace.sh BIN_DIR            # prints the calls, one per line
#   tuning/kubernetes/seccomp/trace.sh --check BIN_DIR    # fails if eventstream.json misses one
#
# BIN_DIR holds `eventstream` and `eventstream-bench` (target/debug or target/release).
# Needs strace, curl and nats-server. Ports 39200-39203, 39210-39213 and 39222 on 127.0.0.1.
set -euo pipefail
# The servers started here are not bridged to NATS, whatever the environment says.
unset EVENTSTREAM_BRIDGE
# One byte order for sort, comm and the profile's sorted lists.
export LC_ALL=C
check=false
if [ "${1:-}" = --check ]; then check=true; shift; fi
bin=${1:?usage: trace.sh [--check] BIN_DIR}
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
server=
peer=
source "$here/../lib.sh"
# A failed step must not leave a server (strace's child) holding the ports: SIGKILL, as strace
# intercepts other signals to it and, killed meanwhile, may leave it running.
trap '[ -n "$server" ] && { pkill -KILL -P "$server"; kill "$server"; } 2>/dev/null;
      [ -n "$peer" ] && kill "$peer" 2>/dev/null; stop_nats; rm -rf "$out"' EXIT

# One traced server life: `serve` with arguments $2..., its trace in $out/$1.
start_traced() {
    local name=$1
    shift
    strace -f -qq -o "$out/$name" "$bin/eventstream" serve "${SERVE_PORTS[@]}" "$@" \
        >"$out/$name.log" 2>&1 &
    server=$!
    wait_healthy "$bin"
}

# Stops the traced server with SIGINT (strace's pid is $server; the server is its child).
stop_traced() {
    kill -INT "$(pgrep -P "$server")"
    wait_stopped "$server" || [ $? -ne 124 ]
    server=
}

strace -f -qq -o "$out/doctor" "$bin/eventstream" doctor >/dev/null || true
start_nats
start_traced serve --shards 4 --no-pin --spin-us 50 --bridge "$NATS_URL"
# A second node on the same NATS, untraced: what it publishes, the traced node imports.
"$bin/eventstream" serve --bind 127.0.0.1 --grpc-port 39210 --tcp-port 39211 --udp-port 39212 \
    --metrics-port 39213 --shards 1 --no-pin --bridge "$NATS_URL" >"$out/peer.log" 2>&1 &
peer=$!
wait_metric "eventstream_bridge_connected 1"
bench_doors "$bin" 20k \
    native-tcp,native-tcp-legacy,native-publish,native-latency,fanout,native-udp,grpc-unary,grpc-stream,grpc-batch \
    "$out/bench.log"
# Imports: a subscriber here, events published on the peer until one arrives (the NATS
# subscription is made in the background).
"$bin/eventstream" sub --server 127.0.0.1:39201 --count 1 'imported/**' >"$out/sub.txt" &
subscriber=$!
for _ in $(seq 1 100); do
    kill -0 "$subscriber" 2>/dev/null || break
    "$bin/eventstream" pub --server 127.0.0.1:39211 imported/t probe >/dev/null 2>&1 || true
    sleep 0.2
done
if kill -0 "$subscriber" 2>/dev/null; then
    kill "$subscriber"
    echo "the traced node imported nothing from its peer in 20 s" >&2
    exit 1
fi
wait "$subscriber" || { cat "$out/sub.txt" >&2; echo "the traced node's subscriber failed" >&2; exit 1; }
# NATS away and back: the bridge reconnects.
stop_nats
sleep 1
start_nats
wait_metric "eventstream_bridge_reconnects_total 1"
kill "$peer"
wait_stopped "$peer" || [ $? -ne 124 ]
peer=
"$bin/eventstream" health --server 127.0.0.1:39201 >/dev/null
"$bin/eventstream" health --grpc --server 127.0.0.1:39200 >/dev/null
curl -sf http://127.0.0.1:39203/metrics >/dev/null
stop_traced
stop_nats
# Pinned shards (the default) set their threads' affinity: one more life, with one shard.
start_traced pinned --shards 1
stop_traced

# Each line of strace: "PID name(args) = result", or "<... name resumed>" for a call begun
# in another line, or "+++ exited +++" / "--- SIG ---".
calls=$(cat "$out/doctor" "$out/serve" "$out/pinned" | sed -nE 's/^[0-9]+ +([a-z0-9_]+)\(.*/\1/p' | sort -u)
if ! $check; then
    echo "$calls"
    exit 0
fi
# Calls allowed whatever their arguments; the one conditional rule, ioctl for FIONREAD only,
# is checked against the traced ioctls themselves.
allowed=$(python3 -c 'import json, sys; print("\n".join(sorted({n for s in json.load(open(sys.argv[1]))["syscalls"] if s["action"] == "SCMP_ACT_ALLOW" and "args" not in s for n in s["names"]})))' "$here/eventstream.json")
other_ioctls=$(cat "$out/doctor" "$out/serve" "$out/pinned" | grep -E '^[0-9]+ +ioctl\(' | grep -v FIONREAD || true)
if [ -n "$other_ioctls" ]; then
    echo "seccomp: eventstream made ioctl calls its profile refuses (it allows FIONREAD only):" >&2
    echo "$other_ioctls" >&2
    exit 1
fi
allowed=$(printf '%s\nioctl\n' "$allowed" | sort)
missing=$(comm -23 <(echo "$calls") <(echo "$allowed"))
if [ -n "$missing" ]; then
    echo "seccomp: eventstream made calls its profile does not allow:" >&2
    echo "$missing" >&2
    exit 1
fi
echo "seccomp: all $(echo "$calls" | wc -l) calls eventstream made are in tuning/kubernetes/seccomp/eventstream.json"
