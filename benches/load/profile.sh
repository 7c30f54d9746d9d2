#!/usr/bin/env bash
# Profiles icp-gate under load: one path (block or forward), one proxy core, wrk on the other,
# `perf record` on the gate. Prints the CPU time per request (user and kernel, from
# /proc/PID/stat) and where the time goes (perf report by DSO and by symbol).
#
#   benches/load/profile.sh                 # block path, 10 s
#   PATH_KIND=forward benches/load/profile.sh
#
# Environment (defaults in brackets): PATH_KIND [block] (block or forward), DURATION [10],
# RECORDS [1000000], BASE_PORT [18180] (uses BASE_PORT..BASE_PORT+2), PROXY_CPU [0], LOAD_CPU [1],
# SKIP_BUILD [0], OUT [a temporary directory, removed unless KEEP=1], LOGS [on] (the gate's logs:
# on, off or stderr, as in lib.sh).
#
# perf's default event (cycles) needs a PMU, which VMs often lack: the script samples cpu-clock,
# which works everywhere. Needs perf (Debian: linux-perf), nginx (the origin) and wrk.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
ROOT=$(cd "$HERE/../.." && pwd)
PATH_KIND=${PATH_KIND:-block}
DURATION=${DURATION:-10}
RECORDS=${RECORDS:-1000000}
BASE_PORT=${BASE_PORT:-18180}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

[[ $PATH_KIND == block || $PATH_KIND == forward ]] || die "PATH_KIND must be block or forward"
check_logs
require_integers DURATION RECORDS BASE_PORT PROXY_CPU LOAD_CPU
require_tools "apt-get install -y linux-perf nginx wrk" perf nginx wrk taskset curl awk

GATE_PORT=$BASE_PORT
ADMIN_PORT=$((BASE_PORT + 1))
ORIGIN_PORT=$((BASE_PORT + 2))
setup_scratch profile
release_gate "$ROOT" "$TARGET_DIR"
generate_registry "$RECORDS"
HOST=unfiled-load-test.cn
[[ $PATH_KIND == forward ]] && HOST=$FORWARD_HOST

write_origin_conf "$OUT/origin" "$ORIGIN_PORT"
taskset -c "$LOAD_CPU" nginx -e "$OUT/origin/error.log" -p "$OUT/origin" -c "$OUT/origin/nginx.conf" &
PIDS+=($!)

write_gate_conf "$OUT/icp-gate.toml" "$OUT" "$GATE_PORT" "$ADMIN_PORT" "$ORIGIN_PORT" "$OUT/registry.tsv"
taskset -c "$PROXY_CPU" "$GATE" -c "$OUT/icp-gate.toml" >"$OUT/icp-gate.out" 2>&1 &
GATE_PID=$!
PIDS+=("$GATE_PID")
for ((i = 0; i < 1200; i++)); do
    curl -sf -o /dev/null -m 2 "http://127.0.0.1:$ADMIN_PORT/readyz" && break
    kill -0 "$GATE_PID" 2>/dev/null || die "icp-gate exited: $(cat "$OUT/icp-gate.out")"
    sleep 0.1
done
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://127.0.0.1:$GATE_PORT/")
echo "path $PATH_KIND, Host: $HOST -> $status, logs $LOGS"

taskset -c "$LOAD_CPU" wrk -t1 -c64 -d2s -H "Host: $HOST" "http://127.0.0.1:$GATE_PORT/" >/dev/null
read -r u1 s1 < <(awk '{ print $14, $15 }' "/proc/$GATE_PID/stat")
taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${DURATION}s" -H "Host: $HOST" "http://127.0.0.1:$GATE_PORT/" >"$OUT/wrk.txt" &
WRK=$!
sleep 1
perf record -e cpu-clock -F 1999 -g -p "$GATE_PID" -o "$OUT/perf.data" -- sleep $((DURATION - 2)) 2>/dev/null
wait "$WRK"
read -r u2 s2 < <(awk '{ print $14, $15 }' "/proc/$GATE_PID/stat")
requests=$(awk '/requests in/ { print $1 }' "$OUT/wrk.txt")
hz=$(getconf CLK_TCK)
grep -E 'Requests/sec|Latency' "$OUT/wrk.txt"
awk -v u=$((u2 - u1)) -v s=$((s2 - s1)) -v n="$requests" -v hz="$hz" 'BEGIN {
    printf "CPU per request: user %.2f us, kernel %.2f us (perf adds a little to both)\n",
        u / hz / n * 1e6, s / hz / n * 1e6 }'
echo
echo "== by DSO =="
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -8
echo
echo "== top symbols =="
perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null | grep '%' | head -40 | cut -c1-150
