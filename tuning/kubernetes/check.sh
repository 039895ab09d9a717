#!/usr/bin/env bash
# Checks tuning/kubernetes offline, without a cluster or a container runtime:
#  1. the manifests against the Kubernetes API schemas (kubernetes-validate, strict: an
#     unknown field fails), for the newest API it knows and for 1.29;
#  2. the seccomp profile against what eventstream calls (seccomp/trace.sh --check);
#  3. the server under that profile, loaded as a runtime loads it (seccomp/confined.py):
#     it serves every door; without io_uring, `doctor` in a pod names the seccomp fix and
#     `serve` fails with the reason.
#
#   tuning/kubernetes/check.sh BIN_DIR     # BIN_DIR: target/debug or target/release
#
# Needs: kubernetes-validate (pip, for python3), strace, curl, and libseccomp's Python binding for
# /usr/bin/python3 (Debian: python3-seccomp). Ports 39200-39203 on 127.0.0.1.
set -euo pipefail
bin=${1:?usage: check.sh BIN_DIR}
here=$(cd "$(dirname "$0")" && pwd)
profile=$here/seccomp/eventstream.json
confined=(/usr/bin/python3 "$here/seccomp/confined.py")

for version in 1.37.0 1.29.0; do
    python3 -m kubernetes_validate --strict --quiet -k "$version" "$here/eventstream.yaml"
done
echo "kubernetes: eventstream.yaml valid for 1.37 and 1.29"

"$here/seccomp/trace.sh" --check "$bin"

out=$(mktemp -d)
server=
# A failed step must not leave a server holding the ports.
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$out"' EXIT
source "$here/lib.sh"
"${confined[@]}" "$profile" -- "$bin/eventstream" serve "${SERVE_PORTS[@]}" --shards 2 --no-pin \
    >"$out/serve.log" 2>&1 &
server=$!
wait_healthy "$bin"
bench_doors "$bin" 5k native-tcp,native-tcp-legacy,native-udp,grpc-unary,grpc-stream,grpc-batch \
    "$out/bench.log" "$out/serve.log"
"$bin/eventstream" health --grpc --server 127.0.0.1:39200 >/dev/null
kill -INT "$server"
stopped=0
wait "$server" || stopped=$?
server=
[ "$stopped" -eq 0 ] || { cat "$out/serve.log" >&2; echo "seccomp: the confined server did not stop cleanly" >&2; exit 1; }
echo "seccomp: a server under eventstream.json served every door and stopped cleanly"

no_uring=io_uring_setup,io_uring_enter,io_uring_register
KUBERNETES_SERVICE_HOST=10.0.0.1 "${confined[@]}" "$profile" --without "$no_uring" -- \
    "$bin/eventstream" doctor >"$out/doctor.txt" || true
grep -q "io_uring: blocked in a Kubernetes pod by its seccomp filter" "$out/doctor.txt" \
    || { cat "$out/doctor.txt" >&2; echo "seccomp: doctor did not name the blocked io_uring" >&2; exit 1; }
grep -q "seccompProfile" "$out/doctor.txt"
if "${confined[@]}" "$profile" --without "$no_uring" -- "$bin/eventstream" serve "${SERVE_PORTS[@]}" \
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
