# What check.sh and seccomp/trace.sh share (sourced, not run): the ports a server under test
# serves on, waiting for it, and loading every door of it with the bench.

# Every door on 127.0.0.1, on fixed ports the scripts' other commands name.
SERVE_PORTS=(--bind 127.0.0.1 --grpc-port 39200 --tcp-port 39201 --udp-port 39202 --metrics-port 39203)

# Waits up to 20 s for the server with binaries in $1 to answer its health check.
wait_healthy() {
    for _ in $(seq 1 100); do
        "$1/eventstream" health --server 127.0.0.1:39201 >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "the server on 127.0.0.1:39201 never answered its health check" >&2
    return 1
}

# Loads the server through the doors with the bench in $1: $2 events per row of the rows in
# $3, its output in $4 (shown, with $5 if given, when a row fails).
bench_doors() {
    "$1/eventstream-bench" --server 127.0.0.1:39201 --grpc 127.0.0.1:39200 --udp 127.0.0.1:39202 \
        --count "$2" --rows "$3" >"$4" 2>&1 || { cat ${5:+"$5"} "$4" >&2; return 1; }
}

# A nats-server for the bridge (Debian's, in /usr/sbin), on 127.0.0.1:$NATS_PORT.
NATS_PORT=39222
NATS_URL=nats://localhost:$NATS_PORT
nats=

# True when something listens on 127.0.0.1:$1.
listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Starts nats-server and waits up to 10 s for it, this one, to listen.
start_nats() {
    local server
    if listening "$NATS_PORT"; then
        echo "127.0.0.1:$NATS_PORT is taken: another nats-server left running?" >&2
        return 1
    fi
    server=$(command -v nats-server || echo /usr/sbin/nats-server)
    "$server" -a 127.0.0.1 -p "$NATS_PORT" >/dev/null 2>&1 &
    nats=$!
    for _ in $(seq 1 50); do
        kill -0 "$nats" 2>/dev/null || { echo "nats-server exited at start" >&2; return 1; }
        listening "$NATS_PORT" && return 0
        sleep 0.2
    done
    echo "nats-server never listened on 127.0.0.1:$NATS_PORT" >&2
    return 1
}

stop_nats() {
    [ -n "$nats" ] && { kill "$nats" 2>/dev/null; wait "$nats" 2>/dev/null || true; }
    nats=
}

# Waits up to 20 s for the metric line $1 on the server's metrics port (the bridge connects
# in the background).
wait_metric() {
    for _ in $(seq 1 100); do
        # grep reads all of curl's output (-q could close the pipe early, failing curl).
        curl -sf http://127.0.0.1:39203/metrics | grep -x "$1" >/dev/null && return 0
        sleep 0.2
    done
    echo "the server's metrics never showed: $1" >&2
    return 1
}

# Waits up to 30 s for process $1, sent a signal to stop, to exit; returns its status. One that
# does not exit is killed, and that is a failure: a shutdown must not hang.
wait_stopped() {
    local status=0
    for _ in $(seq 1 150); do
        if ! kill -0 "$1" 2>/dev/null; then
            wait "$1" || status=$?
            return "$status"
        fi
        sleep 0.2
    done
    echo "process $1 did not stop within 30 s of its signal" >&2
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null || true
    return 124
}
