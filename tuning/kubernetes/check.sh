#!/usr/bin/env bash
# Checks tuning/kubernetes offline, without a cluster or a container runtime:
#  1. the manifests against the Kubernetes API schemas (kubernetes-validate, strict: an
#     unknown field fails), for the newest API it knows and for 1.29;
#  2. the seccomp profile against what eventstream calls (seccomp/trace.sh --check);
#  3. the server under that profile, loaded as a runtime loads it (seccomp/confined.py):
#     it serves every door and exports to NATS through its bridge; without io_uring, `doctor`
#     in a pod names the seccomp fix and `serve` fails with the reason.
#
#   tuning/kubernetes/check.sh BIN_DIR     # BIN_DIR: target/debug or target/release
#
# Needs: kubernetes-validate (pip, for python3), strace, curl, nats-server, and libseccomp's
# Python binding for /usr/bin/python3 (Debian: python3-seccomp). Ports 39200-39203, 39210-39213
# and 39222 on 127.0.0.1.
set -euo pipefail
# The servers started here are not bridged to NATS, whatever the environment says.
unset EVENTSTREAM_BRIDGE
bin=${1:?usage: check.sh BIN_DIR}
here=$(cd "$(dirname "$0")" && pwd)
profile=$here/seccomp/eventstream.json
confined=(/usr/bin/python3 "$here/seccomp/confined.py")

out=$(mktemp -d)
server=
source "$here/lib.sh"
# A failed step must not leave a server holding the ports.
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; stop_nats; rm -rf "$out"' EXIT

for version in 1.37.0 1.29.0; do
    python3 -m kubernetes_validate --strict --quiet -k "$version" "$here/eventstream.yaml" \
        "$here/nats.yaml"
done
echo "kubernetes: eventstream.yaml and nats.yaml valid for 1.37 and 1.29"
# nats.yaml's server configuration, as nats-server reads it.
python3 -c 'import sys, yaml; docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
print(next(d["data"]["nats.conf"] for d in docs if d["metadata"]["name"] == "nats-config"))' \
    "$here/nats.yaml" >"$out/nats.conf"
"$(command -v nats-server || echo /usr/sbin/nats-server)" -t -c "$out/nats.conf" >"$out/nats-t.log" 2>&1 \
    || { cat "$out/nats-t.log" >&2; exit 1; }
echo "kubernetes: nats.yaml's nats.conf is valid for nats-server"

"$here/seccomp/trace.sh" --check "$bin"

start_nats
"${confined[@]}" "$profile" -- "$bin/eventstream" serve "${SERVE_PORTS[@]}" --shards 2 --no-pin \
    --bridge "$NATS_URL" >"$out/serve.log" 2>&1 &
server=$!
wait_healthy "$bin"
wait_metric "eventstream_bridge_connected 1"
bench_doors "$bin" 5k native-tcp,native-tcp-legacy,native-udp,grpc-unary,grpc-stream,grpc-batch \
    "$out/bench.log" "$out/serve.log"
"$bin/eventstream" health --grpc --server 127.0.0.1:39200 >/dev/null
metrics=$(curl -sf http://127.0.0.1:39203/metrics) \
    || { cat "$out/serve.log" >&2; echo "seccomp: the confined server's metrics did not answer" >&2; exit 1; }
exported=$(echo "$metrics" | sed -n 's/^eventstream_bridge_exported_total //p')
[ "${exported:-0}" -gt 0 ] || { cat "$out/serve.log" >&2; echo "seccomp: the confined bridge exported nothing" >&2; exit 1; }
kill -INT "$server"
stopped=0
wait_stopped "$server" || stopped=$?
server=
[ "$stopped" -eq 0 ] || { cat "$out/serve.log" >&2; echo "seccomp: the confined server did not stop cleanly" >&2; exit 1; }
stop_nats
echo "seccomp: a server under eventstream.json served every door, exported $exported events to NATS, and stopped cleanly"

no_uring=io_uring_setup,io_uring_enter,io_uring_register
KUBERNETES_SERVICE_HOST=10.0.0.1 "${confined[@]}" "$profile" --without "$no_uring" -- \
    "$bin/eventstream" doctor >"$out/doctor.txt" || true
grep -q "io_uring: blocked in a Kubernetes pod by its seccomp filter" "$out/doctor.txt" \
    || { cat "$out/doctor.txt" >&2; echo "seccomp: doctor did not name the blocked io_uring" >&2; exit 1; }
grep -q "seccompProfile" "$out/doctor.txt"
# (timeout: were it to start after all, it would fail here rather than serve forever.)
if timeout 30 "${confined[@]}" "$profile" --without "$no_uring" -- "$bin/eventstream" serve "${SERVE_PORTS[@]}" \
    >"$out/refused.log" 2>&1; then
    echo "seccomp: serve started without io_uring" >&2
    exit 1
fi
grep -q "io_uring is unavailable (io_uring_setup: Operation not permitted" "$out/refused.log" \
    || { cat "$out/refused.log" >&2; exit 1; }
if grep -q panicked "$out/refused.log"; then
    cat "$out/refused.log" >&2
    echo "seccomp: serve panicked instead of failing with the reason" >&2
    exit 1
fi
echo "seccomp: without io_uring, doctor names the fix and serve fails with the reason"
