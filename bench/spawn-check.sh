#!/usr/bin/env bash
# Checks that `eventstream-bench --spawn` (a server inside the bench process, its shard pinned
# to CPU 1) measures what a server started apart measures (`taskset -c 1 eventstream serve`):
# ROUNDS rounds of the given rows (default native-latency), the two set-ups alternating, then
# the medians side by side. Fails when a median P50 or events/s of one set-up is more than
# TOLERANCE times the other's.
#
#   bench/spawn-check.sh                      # ROUNDS=3 ROWS=native-latency TOLERANCE=1.5
#
# Needs a release build (cargo build --release). Server on CPU 1, load on CPU 0.
set -euo pipefail
# The servers started here are not bridged to NATS, whatever the environment says.
unset EVENTSTREAM_BRIDGE
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-native-latency}
TOLERANCE=${TOLERANCE:-1.5}
COUNT=${COUNT:-1M}
BENCH=target/release/eventstream-bench
ES=target/release/eventstream
PORT=${PORT:-29300}
for bin in "$BENCH" "$ES"; do
    [ -x "$bin" ] || { echo "missing $bin (cargo build --release)" >&2; exit 2; }
done
out=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$out"
}
trap cleanup EXIT

taskset -c 1 "$ES" serve --bind 127.0.0.1 --shards 1 --grpc-port "$PORT" \
    --tcp-port $((PORT + 1)) --udp-port $((PORT + 2)) --metrics-port $((PORT + 3)) \
    >"$out/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 50); do
    "$ES" health --server "127.0.0.1:$((PORT + 1))" >/dev/null 2>&1 && break
    sleep 0.1
done

for round in $(seq 1 "$ROUNDS"); do
    "$BENCH" --spawn --cores 1 --count "$COUNT" --json --rows "$ROWS" >>"$out/spawned.json"
    "$BENCH" --server "127.0.0.1:$((PORT + 1))" --server-pid "$server_pid" --cores 1 \
        --count "$COUNT" --json --rows "$ROWS" >>"$out/apart.json"
done

python3 - "$out" "$TOLERANCE" <<'PY'
import json, statistics, sys
out, tolerance = sys.argv[1], float(sys.argv[2])
def rows(path):
    by_row = {}
    for line in open(path):
        r = json.loads(line)
        by_row.setdefault(r["row"], []).append(r)
    return by_row
spawned, apart = rows(f"{out}/spawned.json"), rows(f"{out}/apart.json")
failed = False
for row in spawned:
    for field in ("p50_us", "p99_us", "events_per_s", "server_cpu_pct"):
        a = [r[field] for r in spawned[row] if r[field] is not None]
        b = [r[field] for r in apart[row] if r[field] is not None]
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        ratio = ma / mb if mb else float("inf")
        judged = field in ("p50_us", "events_per_s")
        bad = judged and not (1 / tolerance <= ratio <= tolerance)
        failed |= bad
        runs = lambda v: " / ".join(f"{x:.1f}" for x in v)
        print(f"{row} {field}: spawned {ma:.1f} ({runs(a)}), apart {mb:.1f} ({runs(b)}), "
              f"ratio {ratio:.2f}{'  <-- the set-ups disagree' if bad else ''}")
sys.exit(1 if failed else 0)
PY
