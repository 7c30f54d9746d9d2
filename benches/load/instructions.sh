#!/usr/bin/env bash
# Counts the user-space instructions icp-gate executes per request, under callgrind, for the
# block path and the forward path. Unlike requests per second on a shared VM, the count is
# nearly the same from run to run, so it shows what a change to the request path did to the
# gate's own work (kernel time is not counted: see profile.sh for that).
#
#   benches/load/instructions.sh                # both paths, 5 s of load each
#   PATHS=block DURATION=10 benches/load/instructions.sh
#   PATHS=block-random benches/load/instructions.sh   # every request a new unfiled subdomain
#
# Environment (defaults in brackets): PATHS ["block forward"], DURATION [5], RECORDS [2000],
# BASE_PORT [18280] (uses BASE_PORT..BASE_PORT+2), SKIP_BUILD [0], KEEP [0] (keep the callgrind
# output in the printed directory; open it with callgrind_annotate), LOGS [on] (the gate's logs:
# on, off or stderr, as in lib.sh).
#
# The gate runs under valgrind with instrumentation off while it starts and loads its registry;
# it is switched on (callgrind_control -i on) after a 1 s warm-up of wrk, for one wrk run of
# DURATION seconds (-t1 -c64), and the instructions counted are divided by the requests wrk
# completed. Needs valgrind, nginx (the origin) and wrk.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
ROOT=$(cd "$HERE/../.." && pwd)
PATHS=${PATHS:-block forward}
DURATION=${DURATION:-5}
RECORDS=${RECORDS:-2000}
BASE_PORT=${BASE_PORT:-18280}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

check_logs
require_integers DURATION RECORDS BASE_PORT
for p in $PATHS; do
    [[ $p == block || $p == block-random || $p == forward ]] ||
        die "PATHS may name block, block-random and forward (got '$p')"
done
require_tools "apt-get install -y valgrind nginx wrk" valgrind callgrind_control callgrind_annotate nginx wrk curl awk

GATE_PORT=$BASE_PORT
ADMIN_PORT=$((BASE_PORT + 1))
ORIGIN_PORT=$((BASE_PORT + 2))
setup_scratch instructions
release_gate "$ROOT" "$TARGET_DIR"
generate_registry "$RECORDS"
BLOCK_HOST=unfiled-load-test.cn

write_origin_conf "$OUT/origin" "$ORIGIN_PORT"
nginx -e "$OUT/origin/error.log" -p "$OUT/origin" -c "$OUT/origin/nginx.conf" &
PIDS+=($!)

write_gate_conf "$OUT/icp-gate.toml" "$OUT" "$GATE_PORT" "$ADMIN_PORT" "$ORIGIN_PORT" "$OUT/registry.tsv"

echo "icp-gate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $RECORDS records, logs $LOGS, wrk -t1 -c64 for ${DURATION}s per path, user-space instructions (callgrind Ir)"
# block-random: a new random subdomain of the block host on every request (the flood that
# /top/blocked's summaries must absorb: every name is new to them).
cat >"$OUT/random-host.lua" <<LUA
math.randomseed(1)
request = function()
    local host = string.format("r%08x%08x.$BLOCK_HOST", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
    return wrk.format("GET", "/", { ["Host"] = host })
end
LUA
for path in $PATHS; do
    host=$BLOCK_HOST
    wrk_args=(-H "Host: $host")
    [[ $path == forward ]] && host=$FORWARD_HOST && wrk_args=(-H "Host: $host")
    [[ $path == block-random ]] && wrk_args=(-s "$OUT/random-host.lua")
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.$path.%p" \
        "$GATE" -c "$OUT/icp-gate.toml" >"$OUT/gate.$path.out" 2>&1 &
    vg=$!
    PIDS+=("$vg")
    for ((i = 0; i < 600; i++)); do
        curl -sf -o /dev/null -m 2 "http://127.0.0.1:$ADMIN_PORT/readyz" && break
        kill -0 "$vg" 2>/dev/null || die "icp-gate exited: $(tail -5 "$OUT/gate.$path.out")"
        sleep 0.2
    done
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $host" "http://127.0.0.1:$GATE_PORT/")
    wrk -t1 -c64 -d1s "${wrk_args[@]}" "http://127.0.0.1:$GATE_PORT/" >/dev/null
    callgrind_control -i on "$vg" >/dev/null 2>&1
    wrk -t1 -c64 -d"${DURATION}s" "${wrk_args[@]}" "http://127.0.0.1:$GATE_PORT/" >"$OUT/wrk.$path.txt"
    callgrind_control -d "$vg" >/dev/null 2>&1
    kill -INT "$vg"
    wait "$vg" 2>/dev/null || true
    requests=$(awk '/requests in/ { print $1 }' "$OUT/wrk.$path.txt")
    dump=$(ls -t "$OUT"/callgrind."$path".*.* 2>/dev/null | head -1)
    [[ -n $dump ]] || die "no callgrind dump for $path"
    ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
    ((requests > 0)) || die "wrk completed no requests on the $path path"
    printf '%-8s Host: %-28s -> %s  %8d requests  %7d instructions per request\n' \
        "$path" "$host" "$status" "$requests" $((ir / requests))
done
