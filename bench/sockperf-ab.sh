#!/usr/bin/env bash
# Interleaved A/B/... of UDP servers under the same `sockperf ping-pong` client, in a throw-away veth lab.
# Lighter than `shunt-bench compare` (no sweep, no shunt-bench client): for quick questions such as "does this
# build or this flag move the round trip". Results used in bench/results/latency-budget.md came from it.
#
#   bench/sockperf-ab.sh [-n REPS] [-t SECONDS] [-o DIR] NAME='COMMAND' [NAME='COMMAND' ...]
#
# Each COMMAND is started in the server namespace (server pinned by the command itself) with these
# placeholders replaced: {if} the server's interface, {ip} its IPv4 address, {report} DIR/NAME-REP.json
# (for `shunt serve --report`). Targets run in turn, REPS times over (A B C A B C ...), each a fresh start;
# the client is `taskset -c 0 sockperf ping-pong --full-rtt --nonblocked -m 64 --mps 10000 -t SECONDS` on
# port 9000. Prints one line per run and the median p50 / p99 per target with the ratio to the last target.
# The lab (deploy/lab.sh, names shunt*) is deleted on exit, also on failure or Ctrl-C.
#
# Example:
#   bench/sockperf-ab.sh -n 8 \
#     shunt='target/release/shunt serve --config config/lab.toml --interface {if} --handler sockperf --port 9000 --cores 1 --quiet --report {report}' \
#     kernel='taskset -c 1 sockperf server -i {ip} -p 9000 --nonblocked'
set -euo pipefail
cd "$(dirname "$0")/.."

reps=5 secs=3 out=""
while getopts "n:t:o:" opt; do
    case $opt in
        n) reps=$OPTARG ;;
        t) secs=$OPTARG ;;
        o) out=$OPTARG ;;
        *) sed -n '2,20p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -eq 0 ]; then
    sed -n '2,20p' "$0"
    exit 2
fi
names=() cmds=()
for t in "$@"; do
    case $t in
        *=*) names+=("${t%%=*}") cmds+=("${t#*=}") ;;
        *) echo "sockperf-ab: '$t' is not NAME='COMMAND'" >&2; exit 2 ;;
    esac
done
command -v sockperf >/dev/null || { echo "sockperf-ab: sockperf is not installed (make bench-deps)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "sockperf-ab: needs root (network namespaces)" >&2; exit 2; }

lab=$(deploy/lab.sh name)
out=${out:-$(mktemp -d /tmp/sockperf-ab.XXXXXX)}
mkdir -p "$out"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill -INT "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    deploy/lab.sh down "$lab" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
deploy/lab.sh up "$lab" >/dev/null
server_if=${lab}s server_ip=198.18.0.1

results="$out/results.txt"
: >"$results"
for rep in $(seq "$reps"); do
    for i in "${!names[@]}"; do
        name=${names[$i]}
        cmd=${cmds[$i]//\{if\}/$server_if}
        cmd=${cmd//\{ip\}/$server_ip}
        cmd=${cmd//\{report\}/$out/$name-$rep.json}
        deploy/lab.sh exec "$lab" server sh -c "exec $cmd" >"$out/$name-$rep.log" 2>&1 &
        server_pid=$!
        sleep 1.5
        kill -0 "$server_pid" 2>/dev/null || { echo "sockperf-ab: $name exited at start:" >&2; cat "$out/$name-$rep.log" >&2; exit 1; }
        pp=$(deploy/lab.sh exec "$lab" client timeout $((secs + 20)) taskset -c 0 sockperf ping-pong -i "$server_ip" \
            -p 9000 -t "$secs" --mps 10000 -m 64 --full-rtt --nonblocked 2>&1) || true
        kill -INT "$server_pid"
        wait "$server_pid" || true
        server_pid=""
        p50=$(grep -oP 'percentile 50.000 =\s*\K[0-9.]+' <<<"$pp" || echo nan)
        p99=$(grep -oP 'percentile 99.000 =\s*\K[0-9.]+' <<<"$pp" || echo nan)
        echo "$rep $name p50=$p50 p99=$p99" | tee -a "$results"
        sleep 0.5
    done
done

python3 - "$results" "${names[@]}" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
names = sys.argv[2:]
def med(name, key):
    vals = [float(r[{"p50": 2, "p99": 3}[key]].split("=")[1]) for r in rows if r[1] == name and "nan" not in r[2:]]
    return statistics.median(vals) if vals else float("nan")
base = names[-1]
print(f"\nmedians over repetitions (µs), ratio to {base}:")
for n in names:
    p50, p99 = med(n, "p50"), med(n, "p99")
    print(f"  {n:24s} p50 {p50:7.2f} ({p50 / med(base, 'p50'):.2f}x)  p99 {p99:7.2f} ({p99 / med(base, 'p99'):.2f}x)")
EOF
echo "logs and reports: $out"
