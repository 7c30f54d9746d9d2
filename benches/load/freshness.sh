#!/usr/bin/env bash
# How soon a newly filed domain passes the gate when the source publishes deltas, with a large
# registry in service (10 million records by default). One command:
#
#   benches/load/freshness.sh                              # 10M records, 20 publications
#   DELTA_INTERVAL=2 benches/load/freshness.sh             # the gate's default poll interval
#   RECORDS=100000 PUBLICATIONS=5 benches/load/freshness.sh
#
# What it does, all on 127.0.0.1:
#   - a synthetic snapshot (`icp-gate registry generate`) and a delta feed served as static files
#     by nginx: `registry.tsv`, and `deltas/<serial>` for the delta from each serial (404 until it
#     is published), as an exporter would put them on object storage;
#   - the release gate with `registry.source` and `registry.delta_source` on that server,
#     `delta_interval_seconds = DELTA_INTERVAL`, a `state_dir` (each applied delta is kept on
#     disk, as in production), logs on (its access log and info lines to a file), and an origin
#     (the same nginx) to forward to;
#   - then PUBLICATIONS times: a pause of a random fraction of the poll interval (so that the
#     publications land all over the poll cycle), a check that a new name is blocked (403
#     unfiled), the publication of a delta filing it as `connected` (written, then renamed into
#     place: the clock starts at the rename), and requests for that name every POLL_MS until one
#     is forwarded to the origin (200 with the origin's body): the clock stops at that answer;
#   - with BULK=N, each delta also files N other names (a batch): a delta that brings the
#     changes held over the index past 1% of the registry makes the gate compact it (see
#     docs/performance.md);
#   - it prints each publication (seconds to pass, and the gate's own apply time from its
#     `registry delta applied` line), min, median, p90 and worst, and what polling costs: the
#     gate's CPU time and the feed's requests per second over IDLE seconds with nothing new.
#
# Exits 1 if a name did not pass within TIMEOUT seconds, or the gate's counters disagree.
#
# Environment (defaults in brackets): RECORDS [10000000], PUBLICATIONS [20], DELTA_INTERVAL
# seconds [1], POLL_MS [20], TIMEOUT seconds per publication [30], IDLE seconds [10], BULK [0],
# BASE_PORT [18680] (gate, admin, feed and origin on BASE_PORT..BASE_PORT+3; or set GATE_PORT,
# ADMIN_PORT, FEED_PORT, ORIGIN_PORT one by one), CACHE [none: the snapshot is generated in the
# scratch directory; a directory to keep it between runs], GATE [the release build, built first
# unless SKIP_BUILD=1; or the path of an icp-gate binary to use], KEEP [0], RESULTS [none: a
# file to copy the summary to]. Needs nginx, curl, awk and sha256sum.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
ROOT=$(cd "$HERE/../.." && pwd)

RECORDS=${RECORDS:-10000000}
PUBLICATIONS=${PUBLICATIONS:-20}
DELTA_INTERVAL=${DELTA_INTERVAL:-1}
POLL_MS=${POLL_MS:-20}
TIMEOUT=${TIMEOUT:-30}
IDLE=${IDLE:-10}
BULK=${BULK:-0}
BASE_PORT=${BASE_PORT:-18680}
GATE_PORT=${GATE_PORT:-$BASE_PORT}
ADMIN_PORT=${ADMIN_PORT:-$((BASE_PORT + 1))}
FEED_PORT=${FEED_PORT:-$((BASE_PORT + 2))}
ORIGIN_PORT=${ORIGIN_PORT:-$((BASE_PORT + 3))}
CACHE=${CACHE:-}
KEEP=${KEEP:-0}
RESULTS=${RESULTS:-}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

note() { echo "freshness.sh: $*" >&2; }

require_integers RECORDS PUBLICATIONS POLL_MS TIMEOUT IDLE BULK GATE_PORT ADMIN_PORT FEED_PORT ORIGIN_PORT
[[ $DELTA_INTERVAL =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "DELTA_INTERVAL must be a number of seconds (got '$DELTA_INTERVAL')"
((RECORDS >= 1)) || die "RECORDS must be at least 1"
((PUBLICATIONS >= 1)) || die "PUBLICATIONS must be at least 1"
((TIMEOUT >= 1)) || die "TIMEOUT must be at least 1 second"
require_tools "apt-get install -y nginx curl mawk coreutils" nginx curl awk sha256sum
for port in "$GATE_PORT" "$ADMIN_PORT" "$FEED_PORT" "$ORIGIN_PORT"; do
    ! port_in_use "$port" || die "127.0.0.1:$port is in use (set BASE_PORT, or GATE_PORT, ADMIN_PORT, FEED_PORT and ORIGIN_PORT)"
done

setup_scratch freshness
if [[ -n ${GATE:-} ]]; then
    [[ -x $GATE ]] || die "GATE=$GATE is not an executable"
else
    release_gate "$ROOT" "$TARGET_DIR"
fi

# The snapshot (serial 1), generated unless CACHE holds a complete one.
SNAP=${CACHE:-$OUT}/registry-$RECORDS-s1.tsv
mkdir -p "$(dirname "$SNAP")"
if ! tail -c 100 "$SNAP" 2>/dev/null | grep -q "^end count=$RECORDS "; then
    note "generating a snapshot of $RECORDS records"
    "$GATE" registry generate "$SNAP" --records "$RECORDS" >/dev/null
fi
WWW=$OUT/www
mkdir -p "$WWW/deltas" "$OUT/feed" "$OUT/state"
chmod 755 "$WWW" "$WWW/deltas"
ln -s "$SNAP" "$WWW/registry.tsv"
chmod 644 "$SNAP" 2>/dev/null || true

# The feed (static files) and the origin, one nginx, two servers. The feed logs every request,
# so that the polls can be counted.
ORIGIN_BODY_TEXT="$ORIGIN_BODY"
{
    nginx_preamble "$OUT/feed"
    cat <<CONF
    server {
        listen 127.0.0.1:$FEED_PORT;
        root $WWW;
        access_log $OUT/feed/access.log;
        location / { try_files \$uri =404; }
    }
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        location / {
            default_type text/plain;
            return 200 "$ORIGIN_BODY_TEXT\n";
        }
    }
}
CONF
} >"$OUT/feed/nginx.conf"
nginx -e "$OUT/feed/error.log" -p "$OUT/feed" -c "$OUT/feed/nginx.conf" >"$OUT/feed/nginx.out" 2>&1 &
PIDS+=($!)
for ((i = 0; ; i++)); do
    curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$FEED_PORT/registry.tsv" && break
    ((i < 100)) || die "nginx (the feed) did not start: $(cat "$OUT/feed/error.log" "$OUT/feed/nginx.out" 2>/dev/null)"
    sleep 0.1
done

cat >"$OUT/icp-gate.toml" <<CONF
[[listener]]
name = "fresh"
address = "127.0.0.1:$GATE_PORT"
require = "connected"

[upstream]
servers = ["127.0.0.1:$ORIGIN_PORT"]

[registry]
source = "http://127.0.0.1:$FEED_PORT/registry.tsv"
refresh_interval_seconds = 3600
delta_source = "http://127.0.0.1:$FEED_PORT/deltas/"
delta_interval_seconds = $DELTA_INTERVAL
state_dir = "$OUT/state"

[admin]
address = "127.0.0.1:$ADMIN_PORT"

[log]
level = "info"

[server]
threads = 1
grace_period_seconds = 0
shutdown_timeout_seconds = 1
pid_file = "$OUT/icp-gate.pid"
upgrade_sock = "$OUT/icp-gate-upgrade.sock"
CONF
"$GATE" -t -c "$OUT/icp-gate.toml" >/dev/null || die "the gate's configuration is invalid"

note "starting the gate ($RECORDS records over HTTP, deltas every ${DELTA_INTERVAL}s)"
"$GATE" -c "$OUT/icp-gate.toml" >"$OUT/icp-gate.log" 2>&1 &
GATE_PID=$!
PIDS+=("$GATE_PID")
for ((i = 0; ; i++)); do
    curl -sf -o /dev/null -m 2 "http://127.0.0.1:$ADMIN_PORT/readyz" && break
    kill -0 "$GATE_PID" 2>/dev/null || die "the gate exited: $(tail -5 "$OUT/icp-gate.log")"
    ((i < 6000)) || die "the gate was not ready within 10 minutes"
    sleep 0.1
done

metric() { curl -s -m 5 "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m && !found { print $2; found = 1 }'; }
now_ns() { date +%s%N; }
# answer HOST: "status reason body" of one request through the gate.
answer() {
    curl -s -m 5 -D "$OUT/answer.headers" -o "$OUT/answer.body" -w '%{http_code}' \
        -H "Host: $1" "http://127.0.0.1:$GATE_PORT/" || true
}
reason() { awk -F': ' 'tolower($1) == "x-icp-block-reason" { sub(/\r$/, "", $2); print $2 }' "$OUT/answer.headers"; }

SERIAL=$(metric icp_gate_registry_serial)
[[ $SERIAL == 1 ]] || die "the gate serves serial '$SERIAL', expected 1"
[[ $(metric icp_gate_registry_entries) == "$RECORDS" ]] || die "the gate does not serve $RECORDS records"

# What polling costs when nothing is published: the gate's CPU time and the feed's requests.
polls_so_far() { grep -c ' "GET /deltas/' "$OUT/feed/access.log" 2>/dev/null || true; }
# cpu_ns PID [COMM-PREFIX]: nanoseconds the process's threads (those whose name starts with
# COMM-PREFIX) have run so far (schedstat: finer than the clock ticks of /proc/PID/stat).
cpu_ns() {
    local t n=0 comm
    for t in /proc/"$1"/task/*; do
        comm=$(cat "$t/comm" 2>/dev/null) || continue
        [[ $comm == "${2:-}"* ]] || continue
        n=$((n + $(cut -d' ' -f1 "$t/schedstat" 2>/dev/null || echo 0)))
    done
    echo "$n"
}
# The registry sync runs on Pingora's background service runtime, whose threads (and blocking
# pool) are named after the service: "BG registry sync", cut to 15 characters.
SYNC_THREADS="BG registry"
note "measuring ${IDLE}s of polling with nothing new"
all0=$(cpu_ns "$GATE_PID")
sync0=$(cpu_ns "$GATE_PID" "$SYNC_THREADS")
polls0=$(polls_so_far)
sleep "$IDLE"
all1=$(cpu_ns "$GATE_PID")
sync1=$(cpu_ns "$GATE_PID" "$SYNC_THREADS")
polls1=$(polls_so_far)
IDLE_LINE=$(awk -v a=$((all1 - all0)) -v y=$((sync1 - sync0)) -v p=$((polls1 - polls0)) -v s="$IDLE" 'BEGIN {
    printf "idle polling: %d polls in %ds (%.2f/s); the sync threads %.0f us of CPU per poll; the whole gate %.2f ms of CPU per s (Pingora'"'"'s timer thread included)", p, s, p / s, p ? y / 1e3 / p : 0, a / 1e6 / s }')
echo "$IDLE_LINE"

LINES=()
TIMES=()
FAILED=0
for ((i = 1; i <= PUBLICATIONS; i++)); do
    name=fresh-$i-$RANDOM$RANDOM.cn
    st=$(answer "$name")
    [[ $st == 403 && $(reason) == unfiled ]] || die "$name: $st $(reason) before its publication, expected 403 unfiled"
    # Somewhere in the poll cycle.
    sleep "$(awk -v r="$RANDOM" -v d="$DELTA_INTERVAL" 'BEGIN { printf "%.3f", r / 32768 * d }')"
    next=$((SERIAL + 1))
    delta=$OUT/delta.tmp
    printf 'icp-gate-delta 1 from=%d to=%d generated_at=%s\n+\t%s\tconnected\t京ICP备%08d号-1\n' \
        "$SERIAL" "$next" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name" "$i" >"$delta"
    if ((BULK > 0)); then
        awk -v i="$i" -v n="$BULK" 'BEGIN { for (k = 1; k <= n; k++) printf "+\tbulk-%d-%d.cn\tconnected\n", i, k }' >>"$delta"
    fi
    sum=$(sha256sum "$delta" | cut -d' ' -f1)
    printf 'end count=%d entries=%d sha256=%s\n' $((1 + BULK)) $((RECORDS + i * (1 + BULK))) "$sum" >>"$delta"
    chmod 644 "$delta"
    mv "$delta" "$WWW/deltas/$SERIAL"
    t0=$(now_ns)
    deadline=$((t0 + TIMEOUT * 1000000000))
    passed=
    while :; do
        st=$(answer "$name")
        t1=$(now_ns)
        if [[ $st == 200 ]] && grep -qF "$ORIGIN_BODY" "$OUT/answer.body"; then
            passed=1
            break
        fi
        [[ $st == 403 && $(reason) == unfiled ]] || die "$name: $st $(reason) while waiting, expected 403 unfiled or 200"
        ((t1 < deadline)) || break
        sleep "$(awk -v m="$POLL_MS" 'BEGIN { printf "%.3f", m / 1000 }')"
    done
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    if [[ -z $passed ]]; then
        line=$(printf 'publication %2d/%d  %-26s serial %d -> %d  NOT PASSED within %ds' "$i" "$PUBLICATIONS" "$name" "$SERIAL" "$next" "$TIMEOUT")
        FAILED=$((FAILED + 1))
    else
        line=$(printf 'publication %2d/%d  %-26s serial %d -> %d  passed after %6.3f s' \
            "$i" "$PUBLICATIONS" "$name" "$SERIAL" "$next" "$secs")
        TIMES+=("$secs")
    fi
    echo "$line"
    LINES+=("$line")
    SERIAL=$next
    [[ -n $passed ]] || break
done

# The gate's own figures, from its log lines (written once a poll's steps are done): the time to
# check and apply each delta, and the compactions.
sleep 1
field() { awk -v m="$1" -v f="$2=" 'index($0, m) { for (i = 1; i <= NF; i++) if (index($i, f) == 1) print substr($i, length(f) + 1) }' "$OUT/icp-gate.log"; }
APPLY_LINE=$(field "registry delta applied" duration_us | sort -n | awk '{ v[NR] = $1 } END {
    if (NR) printf "the gate checking and applying a delta (duration_us of its log lines): median %d us, worst %d us, %d deltas", v[int((NR + 1) / 2)], v[NR], NR }')
COMPACT_LINE=$(field "registry compacted" duration_ms | awk '{ n++; s = s (n > 1 ? ", " : "") $1 " ms" } END {
    if (n) printf "compactions (each on its own thread, deltas applied meanwhile): %d, taking %s", n, s; else print "compactions: none" }')

# The gate's counters agree with what was published.
PROBLEMS=()
served=$(metric icp_gate_registry_serial)
[[ $served == "$SERIAL" ]] || PROBLEMS+=("the gate serves serial $served, the feed is at $SERIAL")
applied=$(metric icp_gate_registry_deltas_applied_total)
[[ ${applied:-0} == $((SERIAL - 1)) ]] || PROBLEMS+=("the gate counted ${applied:-0} deltas applied for $((SERIAL - 1)) published")
entries=$(metric icp_gate_registry_entries)
want=$((RECORDS + (SERIAL - 1) * (1 + BULK)))
[[ $entries == "$want" ]] || PROBLEMS+=("the gate has $entries entries, expected $want")
if grep -q 'registry delta rejected' "$OUT/icp-gate.log"; then
    PROBLEMS+=("a delta was rejected: $(grep -m1 'registry delta rejected' "$OUT/icp-gate.log")")
fi

{
    echo
    echo "icp-gate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$RECORDS records in service; delta_interval_seconds = $DELTA_INTERVAL; requests every ${POLL_MS} ms; $((1 + BULK)) name(s) filed per delta"
    echo "$IDLE_LINE"
    if ((${#TIMES[@]})); then
        printf '%s\n' "${TIMES[@]}" | sort -g | awk -v n="$PUBLICATIONS" '{ v[NR] = $1 } END {
            med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            p90 = v[int(0.9 * (NR - 1) + 1.5)]
            printf "publication to first forwarded request, %d of %d passed: min %.3f s, median %.3f s, p90 %.3f s, worst %.3f s\n", NR, n, v[1], med, p90, v[NR] }'
    fi
    [[ -z $APPLY_LINE ]] || echo "$APPLY_LINE"
    echo "$COMPACT_LINE"
    for p in "${PROBLEMS[@]}"; do echo "PROBLEM: $p"; done
    ((FAILED == 0)) || echo "PROBLEM: $FAILED publication(s) did not pass within ${TIMEOUT}s"
} | if [[ -n $RESULTS ]]; then tee "$RESULTS"; else cat; fi

((FAILED == 0 && ${#PROBLEMS[@]} == 0))
