#!/usr/bin/env bash
# Demo of shunt in a throw-away two-namespace veth lab (run as root; `make demo` builds first).
#   phase 1: shunt with the sockperf handler on UDP 11111, `sockperf ping-pong` for 5 s from the client
#   phase 2: shunt with the echo handler on UDP 9000, a bounded burst of 10,000 datagrams (IPv4 + IPv6)
# Each phase stops the server with SIGTERM and prints its text and JSON reports. The lab is removed on exit,
# on failure and on Ctrl-C.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${SHUNT_BIN:-target/release/shunt}
CONFIG=${SHUNT_CONFIG:-config/lab.toml}
LAB=deploy/lab.sh
PY=python3
[[ -x /usr/bin/python3 ]] && PY=/usr/bin/python3

[[ $(id -u) == 0 ]] || { echo "demo: must run as root" >&2; exit 2; }
[[ -x $BIN ]] || { echo "demo: $BIN not found (make build)" >&2; exit 2; }

NAME=$($LAB name)
SNS=${NAME}s CNS=${NAME}c SIF=${NAME}s
TMP=$(mktemp -d /tmp/shunt-demo.XXXXXX)
SERVER_PID=""
LAB_UP=0

# shellcheck disable=SC2317  # (stop_server_quietly and cleanup run from the EXIT trap)
stop_server_quietly() {
    [[ -n $SERVER_PID ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then kill -KILL "$SERVER_PID" 2>/dev/null || true; fi
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# shellcheck disable=SC2317
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_server_quietly
    if ((LAB_UP)); then $LAB down "$NAME" || true; fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

# start_server PHASE ARGS... : start shunt in the server namespace, wait (bounded) for `ready`.
start_server() {
    local phase=$1
    shift
    : >"$TMP/$phase.err"
    ip netns exec "$SNS" "$BIN" serve --config "$CONFIG" --interface "$SIF" --report "$TMP/$phase.json" "$@" \
        >"$TMP/$phase.out" 2>"$TMP/$phase.err" </dev/null &
    SERVER_PID=$!
    local i
    for ((i = 0; i < 200; i++)); do
        if grep -qw ready "$TMP/$phase.err"; then
            echo "demo: server pid $SERVER_PID ready ($phase${*:+ $*})"
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" || true
            SERVER_PID=""
            echo "demo: server exited before it was ready:" >&2
            cat "$TMP/$phase.err" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "demo: server not ready within 20 s:" >&2
    cat "$TMP/$phase.err" >&2
    return 1
}

# stop_server PHASE : SIGTERM, wait (bounded), print the reports.
stop_server() {
    local phase=$1 rc=0 i
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "demo: server did not exit within 20 s of SIGTERM; killing it" >&2
        kill -KILL "$SERVER_PID" || true
    fi
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=""
    echo "demo: server exited with status $rc"
    echo "----- text report -----"
    cat "$TMP/$phase.out"
    echo "----- JSON report ($TMP/$phase.json) -----"
    if [[ -s $TMP/$phase.json ]]; then $PY -m json.tool "$TMP/$phase.json"; else echo "(none)"; fi
    if ((rc != 0)); then
        echo "----- server stderr -----"
        cat "$TMP/$phase.err"
        return 1
    fi
}

cat >"$TMP/burst.py" <<'EOF'
# Bounded echo burst: N datagrams (sizes 16..1400, sequence number inside) in batches of 32, half over IPv4,
# half over IPv6; counts byte-identical echoes. Never runs longer than LIMIT seconds.
import socket, sys, time
N, LIMIT, BATCH = int(sys.argv[1]), float(sys.argv[2]), 32
start = time.monotonic()
total_ok = total_sent = 0
for fam, src, dst in ((socket.AF_INET, "198.18.0.2", "198.18.0.1"), (socket.AF_INET6, "2001:2::2", "2001:2::1")):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.connect((dst, 9000))
    s.settimeout(0.2)
    sent = ok = bad = 0
    t0 = time.monotonic()
    seq = 0
    while seq < N // 2 and time.monotonic() - start < LIMIT:
        want = set()
        for _ in range(min(BATCH, N // 2 - seq)):
            size = 16 + (seq * 677) % 1385
            p = seq.to_bytes(8, "little") + bytes((seq + j) & 0xFF for j in range(size - 8))
            s.send(p)
            want.add(p)
            sent += 1
            seq += 1
        while want:
            try:
                r = s.recv(2048)
            except socket.timeout:
                break
            if r in want:
                want.discard(r)
                ok += 1
            else:
                bad += 1
    dt = time.monotonic() - t0
    name = "IPv4" if fam == socket.AF_INET else "IPv6"
    print(f"{name}: sent {sent}, echoed {ok}, unexpected {bad}, {dt:.2f} s, {sent / dt if dt else 0:.0f} datagrams/s")
    total_ok += ok
    total_sent += sent
print(f"total: sent {total_sent}, echoed {total_ok}")
sys.exit(0 if total_sent == N and total_ok == total_sent else 1)
EOF

$LAB up "$NAME"
LAB_UP=1
$LAB info "$NAME"
status=0

echo
echo "===== phase 1: sockperf handler on UDP 11111, sockperf ping-pong 5 s ====="
start_server sockperf --handler sockperf --port 11111
ip netns exec "$CNS" timeout --foreground -k 5 60 taskset -c 0 \
    sockperf ping-pong -i 198.18.0.1 -p 11111 -t 5 --full-rtt -m 64 | tee "$TMP/sockperf.txt" || status=1
grep -q "Summary:" "$TMP/sockperf.txt" || { echo "demo: sockperf got no replies" >&2; status=1; }
stop_server sockperf || status=1

echo
echo "===== phase 2: echo handler on UDP 9000, burst of 10,000 datagrams ====="
start_server echo
ip netns exec "$CNS" timeout --foreground -k 5 60 taskset -c 0 "$PY" "$TMP/burst.py" 10000 30 || status=1
stop_server echo || status=1

echo
if ((status == 0)); then echo "demo: OK"; else echo "demo: FAILED" >&2; fi
exit "$status"
