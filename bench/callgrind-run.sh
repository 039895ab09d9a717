#!/usr/bin/env bash
# Counts the server's instructions per event under callgrind, a figure that does not move with
# the host's noise: a change meant to keep performance shows the same count before and after.
#
# For each row, a one-shard server runs under `valgrind --tool=callgrind` with counting off;
# WARMUP events go through it, counting is switched on, COUNT events go through it, and the
# total of instructions (Ir) is divided by COUNT.
#
#   bench/callgrind-run.sh                         # ROWS="native-tcp grpc-unary"
#   ES=/tmp/old/eventstream BENCH=/tmp/old/eventstream-bench bench/callgrind-run.sh
#   KEEP=/tmp/profiles bench/callgrind-run.sh       # keep the profiles for callgrind_annotate
#
# Rows and their default counts: native-tcp and native-publish (200k warm-up, 2M counted),
# grpc-unary (20k, 50k).
# Needs a release build (cargo build --release) and valgrind.
set -euo pipefail
# The servers started here are not bridged to NATS, whatever the environment says.
unset EVENTSTREAM_BRIDGE
cd "$(dirname "$0")/.."

ROWS=${ROWS:-native-tcp grpc-unary}
ES=${ES:-target/release/eventstream}
BENCH=${BENCH:-target/release/eventstream-bench}
PORT=${PORT:-29400}
for bin in "$BENCH" "$ES"; do
    [ -x "$bin" ] || { echo "missing $bin (cargo build --release)" >&2; exit 2; }
done
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }

out=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$out"
}
trap cleanup EXIT

counts_for() {
    case "$1" in
        native-tcp | native-publish) echo "${WARMUP:-200k} ${COUNT:-2M}" ;;
        grpc-unary) echo "${WARMUP:-20k} ${COUNT:-50k}" ;;
        *) echo "unknown row $1 (native-tcp, native-publish, grpc-unary)" >&2; exit 2 ;;
    esac
}

# A count with a k or M suffix, as a number.
expand() {
    case "$1" in
        *M) echo $(( ${1%M} * 1000000 )) ;;
        *k) echo $(( ${1%k} * 1000 )) ;;
        *) echo "$1" ;;
    esac
}

run_bench() {
    "$BENCH" --server "127.0.0.1:$((PORT + 1))" --grpc "127.0.0.1:$PORT" \
        --udp "127.0.0.1:$((PORT + 2))" --rows "$1" --count "$2" >>"$out/bench.log" 2>&1
}

for row in $ROWS; do
    read -r warmup count < <(counts_for "$row")
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/cg.out" \
        "$ES" serve --bind 127.0.0.1 --shards 1 --no-pin --grpc-port "$PORT" \
        --tcp-port $((PORT + 1)) --udp-port $((PORT + 2)) --metrics-port $((PORT + 3)) \
        >"$out/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 300); do
        "$ES" health --server "127.0.0.1:$((PORT + 1))" >/dev/null 2>&1 && break
        sleep 0.2
    done
    run_bench "$row" "$warmup"
    callgrind_control -z "$server_pid" >/dev/null 2>&1
    callgrind_control -i on "$server_pid" >/dev/null 2>&1
    run_bench "$row" "$count"
    callgrind_control -i off "$server_pid" >/dev/null 2>&1
    callgrind_control -d "$server_pid" >/dev/null 2>&1
    # The dump is complete once callgrind_control returns; a shutdown under valgrind can
    # take minutes and adds nothing to it.
    kill -KILL "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    # Each dump holds the instructions since the last one in its `totals:` line.
    total=0
    for f in "$out"/cg.out*; do
        ir=$(awk '/^totals:/ {print $2}' "$f")
        total=$(( total + ${ir:-0} ))
    done
    echo "$row: $(( total / $(expand "$count") )) instructions per event ($total over $count)"
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP" && cp "$out"/cg.out* "$KEEP/" && echo "  profile kept in $KEEP/${row}.cg.out*"
        for f in "$KEEP"/cg.out*; do mv "$f" "$KEEP/${row}.$(basename "$f")"; done
    fi
    rm -f "$out"/cg.out*
done
