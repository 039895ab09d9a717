#!/usr/bin/env bash
# The native fast path's measuring session (docs/PERFORMANCE.md, "The native fast path"):
# eventstream's native rows and the loopback and nats-server references they are judged
# against, taken alternately, ROUNDS times, each ratio within its round.
#
#   bench/fast-path-run.sh            # ROUNDS=3 COUNT=1M by default
#
# Needs a release build (cargo build --release) and the limits kit, built (LIMITS, default
# ../shared/limits; its run-all.sh installs nats-server when it runs as root). Server side on
# CPU 1, load on CPU 0, 100-byte payloads. Prints each round's figures, then one line per
# target with the per-round ratios and their median.
set -euo pipefail
# The servers started here are not bridged to NATS, whatever the environment says.
unset EVENTSTREAM_BRIDGE
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-1M}
LIMITS=${LIMITS:-../shared/limits}
BENCH=target/release/eventstream-bench
[ -x "$BENCH" ] || { echo "missing $BENCH (cargo build --release)" >&2; exit 2; }
[ -x "$LIMITS/run-all.sh" ] || { echo "missing $LIMITS/run-all.sh" >&2; exit 2; }
out=$(mktemp -d)
echo "raw results: $out"

steal() { awk '/^cpu /{print $9}' /proc/stat; }
rows=native-tcp,native-tcp-legacy,native-publish,native-publish-legacy,fanout,fanout-legacy
for round in $(seq 1 "$ROUNDS"); do
    echo "=== round $round"
    stolen=$(steal)
    started=$(date +%s.%N)
    # Default mode: the throughput rows, the latency row, and the latency floor of a relay
    # that sleeps between records as a default-mode shard does.
    "$BENCH" --spawn --cores 1 --count "$COUNT" --json \
        --rows "$rows,native-latency,ceiling-relay-latency-block" >"$out/es-$round.json"
    # Low-latency mode: the latency row and its floors (busy-poll ping-pong, relay latency).
    "$BENCH" --spawn --cores 1 --spin-us 200 --count "$COUNT" --json \
        --rows native-latency,ceiling-pingpong-spin,ceiling-relay-latency \
        >"$out/es-spin-$round.json"
    (cd "$LIMITS" && ONLY='^(sink_std|relay_glommio|nats_pub|nats_pubsub|nats_latency)$' \
        REPS=1 ./run-all.sh) >"$out/kit-$round.log" 2>&1
    cp "$(ls -td "$LIMITS"/target/bench-logs/*/ | head -1)/results.txt" "$out/kit-$round.txt"
    cat "$out/es-$round.json" "$out/es-spin-$round.json"
    grep -v '^#' "$out/kit-$round.txt" | grep -v 'name=aux_' | cut -c1-200
    # Time the hypervisor gave the machine's CPUs to others during the round (clock ticks of
    # 10 ms over 2 CPUs): a round with much of it measured the host, not the server.
    python3 -c "import sys; s, t = float(sys.argv[1]), float(sys.argv[2]); print(f'steal: {s / (2 * t):.1f}% of the CPUs over {t:.0f} s')" \
        "$(( $(steal) - stolen ))" "$(echo "$(date +%s.%N) - $started" | bc)" | tee "$out/steal-$round.txt"
done

python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def es(path):
    return {r["row"]: r for r in map(json.loads, open(path)) if r}
def kit(path):
    rows = {}
    for line in open(path):
        if not line.startswith("RESULT "):
            continue
        f = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
        name = f.get("name", "").split("#")[0]
        if not name.startswith("aux_"):
            rows[name] = f
    return rows
targets = {}
def add(name, value):
    targets.setdefault(name, []).append(value)
for r in range(1, rounds + 1):
    e, s, k = es(f"{out}/es-{r}.json"), es(f"{out}/es-spin-{r}.json"), kit(f"{out}/kit-{r}.txt")
    eps = lambda row: e[row]["events_per_s"]
    kit_eps = lambda name: float(k[name]["eps"])
    add("native-tcp / nats_pubsub (>= 3)", eps("native-tcp") / kit_eps("nats_pubsub"))
    add("native-tcp / relay_glommio (>= 0.40)", eps("native-tcp") / kit_eps("relay_glommio"))
    add("native-publish / nats_pub (>= 2)", eps("native-publish") / kit_eps("nats_pub"))
    add("native-publish / sink_std (>= 0.50)", eps("native-publish") / kit_eps("tcp_sink_std"))
    add("native-tcp-legacy / nats_pubsub (>= 1.5)", eps("native-tcp-legacy") / kit_eps("nats_pubsub"))
    add("fanout / fanout-legacy (>= 2)", eps("fanout") / eps("fanout-legacy"))
    add("low-latency P50 / ping-pong P50 (<= 1.5)",
        s["native-latency"]["p50_us"] / s["ceiling-pingpong-spin"]["p50_us"])
    add("low-latency P99 / relay-latency P99 (<= 1.2)",
        s["native-latency"]["p99_us"] / s["ceiling-relay-latency"]["p99_us"])
    nats = k["nats_latency"]
    add("default P50 / nats P50 (<= 0.5)", e["native-latency"]["p50_us"] / float(nats["p50_us"]))
    add("default P99 / nats P99 (<= 1)", e["native-latency"]["p99_us"] / float(nats["p99_us"]))
    add("default P50 / sleeping relay floor P50",
        e["native-latency"]["p50_us"] / e["ceiling-relay-latency-block"]["p50_us"])
    add("native-latency default P50 us", e["native-latency"]["p50_us"])
    add("sleeping relay floor P50 us", e["ceiling-relay-latency-block"]["p50_us"])
    add("nats_latency P50 us", float(nats["p50_us"]))
    add("low-latency P50 us", s["native-latency"]["p50_us"])
    add("ping-pong spin P50 us", s["ceiling-pingpong-spin"]["p50_us"])
    for row in ("native-tcp", "native-publish", "fanout", "native-tcp-legacy",
                "native-publish-legacy", "fanout-legacy"):
        add(f"{row} events/s", eps(row))
        add(f"{row} server CPU %", e[row]["server_cpu_pct"])
        add(f"{row} load CPU %", e[row]["load_cpu_pct"])
    for name in ("tcp_sink_std", "relay_glommio", "nats_pub", "nats_pubsub"):
        add(f"{name} events/s", kit_eps(name))
print()
for name, values in targets.items():
    rounds_text = " / ".join(f"{v:.3g}" for v in values)
    print(f"{name}: median {statistics.median(values):.3g} ({rounds_text})")
PY
