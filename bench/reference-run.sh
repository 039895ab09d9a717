#!/usr/bin/env bash
# One measuring session: eventstream's rows and the references they are compared with, taken
# alternately in the same run (docs/PERFORMANCE.md explains each figure).
#
#   bench/reference-run.sh            # ROUNDS=3 COUNT=1M by default
#
# Needs: a release build (cargo build --release), h2load (Debian: nghttp2-client), and the
# reference kits, built: TONIC=path/to/tonic-eventstream (a tonic server of the same proto),
# LIMITS=path/to/limits (loopback ceilings and nats-server; its run-all.sh). Server side on
# CPU 1, load on CPU 0, 100-byte payloads. Prints one line per measurement.
set -euo pipefail
# The servers started here are not bridged to NATS, whatever the environment says.
unset EVENTSTREAM_BRIDGE
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-1M}
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
TONIC=${TONIC:-../shared/peers/target/release/tonic-eventstream}
LIMITS=${LIMITS:-../shared/limits}
BENCH=target/release/eventstream-bench
ES=target/release/eventstream
for tool in "$BENCH" "$ES" h2load; do
    command -v "$tool" >/dev/null || [ -x "$tool" ] || { echo "missing $tool" >&2; exit 2; }
done

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# gRPC request bodies for h2load: PublishRequest and PublishBatchRequest(100), 100-byte payloads.
python3 - "$work" <<'PY'
import struct, sys
def varint(n):
    out = b''
    while True:
        b, n = n & 0x7f, n >> 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])
def field(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data
event = field(2, b'bench/h2load') + field(3, b'x' * 100) + bytes([0x20, 2])
frame = lambda m: b'\0' + struct.pack('>I', len(m)) + m
open(sys.argv[1] + '/unary.bin', 'wb').write(frame(field(1, event)))
open(sys.argv[1] + '/batch.bin', 'wb').write(frame(b''.join(field(1, event) for _ in range(100))))
PY

h2load_row() { # h2load_row NAME PORT METHOD BODY REQUESTS CONNS INFLIGHT
    local name=$1 port=$2 method=$3 body=$4 n=$5 c=$6 m=$7 out
    rm -f "$work/h2.log"
    out=$(taskset -c "$LOAD_CPU" h2load -n "$n" -c "$c" -m "$m" -d "$body" \
        -H 'content-type: application/grpc' -H 'te: trailers' --log-file "$work/h2.log" \
        "http://127.0.0.1:$port/eventstream.EventService/$method")
    echo "$out" | grep -q "$n succeeded" || { echo "$name: h2load failures"; echo "$out"; exit 1; }
    python3 - "$work/h2.log" "$name" "$(echo "$out" | sed -n 's/.*, \([0-9.]*\) req\/s.*/\1/p')" <<'PY'
import sys
lat = sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.strip())
n = len(lat)
print(f"{sys.argv[2]}: {float(sys.argv[3]):.0f} req/s p50 {lat[n // 2]} us p99 {lat[int(n * 0.99)]} us")
PY
}

start() { # start LOG COMMAND...: a server on SERVER_CPU; waits until it listens
    local log=$1
    shift
    taskset -c "$SERVER_CPU" "$@" >"$log" 2>&1 &
    pids+=($!)
    sleep 1.5
}

es_log="$work/es.log"
start "$es_log" "$ES" serve --bind 127.0.0.1
# The same server in low-latency mode, for the unary rows (it busy-polls only for 200 us
# after its last work, so it leaves the CPU to the others between its own rows).
start "$work/es-spin.log" "$ES" serve --bind 127.0.0.1 --spin-us 200 \
    --grpc-port 9210 --tcp-port 9211 --udp-port 9212 --metrics-port 9213
if [ -x "$TONIC" ]; then
    start "$work/tonic.log" "$TONIC" --threads 1 --addr 127.0.0.1:9300
fi

# The bench pins its load to the CPUs other than --cores (the server's).
bench() { "$BENCH" --cores "$SERVER_CPU" --count "$COUNT" --json "$@"; }

for round in $(seq "$ROUNDS"); do
    echo "== round $round"
    bench --rows native-tcp,native-publish,fanout,grpc-unary,grpc-stream,grpc-batch,ceiling |
        sed "s/^/eventstream /"
    # Rows that need a server of their own: growth (a fresh one each round) and latency in
    # low-latency mode (its shard busy-polls 200 us before sleeping).
    bench --spawn --rows growth-topics,growth-wildcards | sed "s/^/eventstream /"
    bench --spawn --spin-us 200 --rows native-latency,ceiling-pingpong-spin,ceiling-relay-latency |
        sed "s/^/eventstream low-latency /"
    if [ -x "$TONIC" ]; then
        # A row the peer fails (it has lost Stream events under this load) is reported and
        # leaves that figure out of the round; eventstream's own rows above stop the run.
        { bench --grpc 127.0.0.1:9300 --rows grpc-unary,grpc-stream,grpc-batch 2>&1 ||
            echo "a tonic row failed in round $round (above): its figure is left out"; } |
            sed "s/^/tonic /"
    fi
    for port in 9200 9210 9300; do
        [ "$port" = 9300 ] && [ ! -x "$TONIC" ] && continue
        case $port in
            9200) who=eventstream ;;
            9210) who="eventstream low-latency" ;;
            9300) who=tonic ;;
        esac
        h2load_row "$who h2load unary 4x100" "$port" Publish "$work/unary.bin" 400000 4 100
        h2load_row "$who h2load unary 1x32" "$port" Publish "$work/unary.bin" 300000 1 32
        h2load_row "$who h2load unary 1x1" "$port" Publish "$work/unary.bin" 20000 1 1
        if [ "$port" != 9210 ]; then
            h2load_row "$who h2load batch100 1x4" "$port" PublishBatch "$work/batch.bin" 30000 1 4
        fi
    done
done

for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
pids=()
echo "== memory"
"$BENCH" --spawn --cores "$SERVER_CPU" --rows memory --json
if [ -d "$LIMITS" ]; then
    echo "== references: $LIMITS/run-all.sh"
    (cd "$LIMITS" && REPS="$ROUNDS" ./run-all.sh) | tail -20
fi
