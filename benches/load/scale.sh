#!/usr/bin/env bash
# The gate at national scale: a large synthetic registry (30 million records by default) against
# a small one (1,000), the same release binary, on this machine. Measures
#
#   - ready time: wall clock from the process's start to /readyz, the gate's own load duration
#     (icp_gate_registry_load_duration_seconds) and the process's CPU time when it got ready;
#   - memory: VmRSS and VmHWM (/proc/PID/status) once ready, and the resident bytes per record
#     beyond the names' text: (RSS of the large gate - RSS of the small gate - the names' bytes)
#     / records;
#   - a swap: the large registry replaced by the same records under serial 2 (SIGHUP), the peak
#     resident size seen while both are held, the CPU time of the reload, the size after it;
#   - block throughput, large against small, in alternating rounds (medians): `one`, every
#     request for the same unfiled host (the load harness's block path), and `spread`, hosts
#     spread over the whole registry (half misses `www.q<name>`, half inherited hits `www.<name>`
#     on blocked records), so that at scale nearly every decision goes to memory the caches do
#     not hold. Besides req/s (which on a two-core machine moves with the load generator's core)
#     the gate's CPU time per request, from /proc/PID/stat around each run.
#
#   benches/load/scale.sh                                  # 30M against 1k, 3 rounds x 10 s
#   RECORDS=10000000 ROUNDS=5 benches/load/scale.sh
#   CACHE=/var/tmp/icp-scale benches/load/scale.sh         # keep the generated snapshots
#
# Environment (defaults in brackets): RECORDS [30000000], SMALL_RECORDS [1000], ROUNDS [3],
# DURATION seconds per run [10], WARMUP [2], CONNECTIONS [64], HOSTS [20000] (hosts of the
# spread load), BASE_PORT [18580] (uses BASE_PORT..BASE_PORT+4), PROXY_CPU [0], LOAD_CPU [1],
# CACHE [none: snapshots are generated in the scratch directory and removed], SKIP_BUILD [0],
# KEEP [0], RESULTS [benches/load/results-scale-latest.txt].
#
# Both gates run as the load harness runs the gate (benches/load/lib.sh: one thread, logs off,
# a file source), pinned to PROXY_CPU; wrk runs on LOAD_CPU. Needs wrk, curl, awk, shuf and
# taskset; a 30M-record snapshot is 1.45 GB on disk (two of them, for the swap) and the large
# gate holds about 1.1 GB, 2.2 GB during the swap.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
ROOT=$(cd "$HERE/../.." && pwd)

RECORDS=${RECORDS:-30000000}
SMALL_RECORDS=${SMALL_RECORDS:-1000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
HOSTS=${HOSTS:-20000}
BASE_PORT=${BASE_PORT:-18580}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
CACHE=${CACHE:-}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
RESULTS=${RESULTS:-$HERE/results-scale-latest.txt}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

note() { echo "scale.sh: $*" >&2; }

require_integers RECORDS SMALL_RECORDS ROUNDS DURATION WARMUP CONNECTIONS HOSTS BASE_PORT PROXY_CPU LOAD_CPU
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"
((DURATION >= 1)) || die "DURATION must be at least 1 second"
((HOSTS >= 2)) || die "HOSTS must be at least 2"
((SMALL_RECORDS >= 100)) || die "SMALL_RECORDS must be at least 100 (the spread load needs blocked records)"
((RECORDS > SMALL_RECORDS)) || die "RECORDS ($RECORDS) must be above SMALL_RECORDS ($SMALL_RECORDS)"
((PROXY_CPU != LOAD_CPU)) || die "PROXY_CPU and LOAD_CPU must be different cores"
((BASE_PORT >= 1024 && BASE_PORT <= 65530)) || die "BASE_PORT must be from 1024 to 65530"
require_tools "apt-get install -y wrk curl mawk coreutils util-linux" wrk curl awk shuf taskset
for port in $((BASE_PORT)) $((BASE_PORT + 1)) $((BASE_PORT + 2)) $((BASE_PORT + 3)) $((BASE_PORT + 4)); do
    ! port_in_use "$port" || die "127.0.0.1:$port is in use (the script uses BASE_PORT..BASE_PORT+4; set BASE_PORT)"
done
warn_if_busy note

setup_scratch scale
release_gate "$ROOT" "$TARGET_DIR"
TICKS=$(getconf CLK_TCK)
SNAPS=${CACHE:-$OUT}
mkdir -p "$SNAPS"

# snapshot RECORDS SERIAL: prints the path of a synthetic snapshot (seed 1), generated unless
# CACHE already holds a complete one.
snapshot() {
    local file=$SNAPS/registry-$1-s$2.tsv
    if ! tail -c 100 "$file" 2>/dev/null | grep -q "^end count=$1 "; then
        note "generating $file ($1 records, serial $2)"
        "$GATE" registry generate "$file" --records "$1" --serial "$2" >/dev/null
    fi
    echo "$file"
}

# facts RECORDS FILE: FILE.facts (name bytes, in the first line) and FILE.hosts (the spread
# load's hosts, shuffled, exactly HOSTS lines), made in one pass over the snapshot unless cached.
facts() {
    local records=$1 file=$2
    [[ -s $file.facts && -s $file.hosts ]] && return 0
    note "reading $file for its name bytes and the spread hosts"
    awk -F '\t' -v half=$((HOSTS / 2)) -v records="$records" '
        BEGIN {
            miss_every = int(records / half); if (miss_every < 1) miss_every = 1
            hit_every = int(records * 0.14 / half); if (hit_every < 1) hit_every = 1
        }
        NR == 1 || /^end count=/ { next }
        {
            bytes += length($1); n++
            if (n % miss_every == 0) print "www.q" $1 > (FILENAME ".hosts.tmp")
            if ($2 != "connected" && ++blocked % hit_every == 0) print "www." $1 > (FILENAME ".hosts.tmp")
        }
        END { print bytes > (FILENAME ".facts") }' "$file"
    # Shuffled (a fixed seed), then cycled to exactly HOSTS lines: both registries' lists are
    # the same length, so wrk's own work per request is the same.
    shuf --random-source=<(yes) "$file.hosts.tmp" >"$file.hosts.shuf"
    awk -v want="$HOSTS" '{ h[n++] = $0 } END { for (i = 0; i < want; i++) print h[i % n] }' \
        "$file.hosts.shuf" >"$file.hosts"
    rm -f "$file.hosts.tmp" "$file.hosts.shuf"
}

BIG1=$(snapshot "$RECORDS" 1)
BIG2=$(snapshot "$RECORDS" 2)
SMALL=$(snapshot "$SMALL_RECORDS" 1)
facts "$RECORDS" "$BIG1"
facts "$SMALL_RECORDS" "$SMALL"
NAME_BYTES=$(head -1 "$BIG1.facts")
SMALL_NAME_BYTES=$(head -1 "$SMALL.facts")

cat >"$OUT/hosts.lua" <<'LUA'
-- Requests for the hosts in $SCALE_HOSTS, one after the other, formatted once at start.
local requests = {}
for host in io.lines(os.getenv("SCALE_HOSTS")) do
    requests[#requests + 1] = wrk.format("GET", "/", { Host = host })
end
local i = 0
request = function()
    i = i + 1
    if i > #requests then i = 1 end
    return requests[i]
end
LUA

# The gates: the large one reads its snapshot through a symbolic link, so that the swap can
# point it at serial 2.
ln -sfn "$BIG1" "$OUT/big.tsv"
SMALL_PORT=$BASE_PORT SMALL_ADMIN=$((BASE_PORT + 1))
BIG_PORT=$((BASE_PORT + 2)) BIG_ADMIN=$((BASE_PORT + 3))
UNUSED_ORIGIN=$((BASE_PORT + 4)) # the block path never forwards
mkdir -p "$OUT/small" "$OUT/big"
write_gate_conf "$OUT/small/icp-gate.toml" "$OUT/small" "$SMALL_PORT" "$SMALL_ADMIN" "$UNUSED_ORIGIN" "$SMALL"
write_gate_conf "$OUT/big/icp-gate.toml" "$OUT/big" "$BIG_PORT" "$BIG_ADMIN" "$UNUSED_ORIGIN" "$OUT/big.tsv"

# status_kb PID FIELD: a field of /proc/PID/status, in kB.
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
# cpu_ticks PID: user + system time of the process so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# metric ADMIN NAME: a metric's value (the first line with that name).
metric() { curl -s -m 5 "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m && !found { print $2; found = 1 }'; }

# start_gate NAME ADMIN: starts the gate, waits for /readyz; sets PID_<NAME> and READY_<NAME>
# ("wall_s cpu_s").
start_gate() {
    local name=$1 admin=$2 pid t0 t1 i
    t0=$(date +%s%N)
    taskset -c "$PROXY_CPU" "$GATE" -c "$OUT/$name/icp-gate.toml" >"$OUT/$name/icp-gate.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for ((i = 0; ; i++)); do
        curl -sf -o /dev/null -m 2 "http://127.0.0.1:$admin/readyz" && break
        kill -0 "$pid" 2>/dev/null || die "the $name gate exited: $(tail -5 "$OUT/$name/icp-gate.out")"
        ((i < 6000)) || die "the $name gate was not ready within 10 minutes"
        sleep 0.05
    done
    t1=$(date +%s%N)
    printf -v "PID_$name" '%s' "$pid"
    printf -v "READY_$name" '%s' "$(awk -v a="$t0" -v b="$t1" -v c="$(cpu_ticks "$pid")" -v t="$TICKS" \
        'BEGIN { printf "%.2f %.2f", (b - a) / 1e9, c / t }')"
}

note "starting the small gate ($SMALL_RECORDS records)"
start_gate small "$SMALL_ADMIN"
note "starting the large gate ($RECORDS records)"
start_gate big "$BIG_ADMIN"
[[ $(metric "$BIG_ADMIN" icp_gate_registry_entries) == "$RECORDS" ]] || die "the large gate does not serve $RECORDS records"
BIG_LOAD_S=$(metric "$BIG_ADMIN" icp_gate_registry_load_duration_seconds)
SMALL_RSS=$(status_kb "$PID_small" VmRSS)
BIG_RSS=$(status_kb "$PID_big" VmRSS)
BIG_HWM=$(status_kb "$PID_big" VmHWM)
BIG_HUGE=$(awk '$1 == "AnonHugePages:" { print $2 }' "/proc/$PID_big/smaps_rollup" 2>/dev/null || echo 0)

# The swap: serial 2 of the same records, in service after SIGHUP; resident size sampled meanwhile.
note "swapping in serial 2 of the large registry"
ln -sfn "$BIG2" "$OUT/big.tsv.new" && mv -T "$OUT/big.tsv.new" "$OUT/big.tsv"
SWAP_CPU0=$(cpu_ticks "$PID_big")
SWAP_T0=$(date +%s%N)
kill -HUP "$PID_big"
SWAP_PEAK_SEEN=0
for ((i = 0; ; i++)); do
    rss=$(status_kb "$PID_big" VmRSS)
    ((rss > SWAP_PEAK_SEEN)) && SWAP_PEAK_SEEN=$rss
    [[ $(metric "$BIG_ADMIN" icp_gate_registry_serial) == 2 ]] && break
    ((i < 12000)) || die "serial 2 not in service within 10 minutes"
    sleep 0.05
done
SWAP_WALL=$(awk -v a="$SWAP_T0" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
sleep 1 # the old registry is freed on the sync thread after the swap
SWAP_CPU=$(awk -v a="$SWAP_CPU0" -v b="$(cpu_ticks "$PID_big")" -v t="$TICKS" 'BEGIN { printf "%.2f", (b - a) / t }')
SWAP_HWM=$(status_kb "$PID_big" VmHWM)
AFTER_RSS=$(status_kb "$PID_big" VmRSS)

# Every load answers as it should before it is measured.
for size in small big; do
    port=SMALL_PORT
    [[ $size == big ]] && port=BIG_PORT
    hosts=$SMALL.hosts
    [[ $size == big ]] && hosts=$BIG1.hosts
    st=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: unfiled-load-test.cn" "http://127.0.0.1:${!port}/")
    [[ $st == 403 ]] || die "the $size gate answered $st for unfiled-load-test.cn"
    while read -r host; do
        st=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $host" "http://127.0.0.1:${!port}/")
        [[ $st == 403 ]] || die "the $size gate answered $st for $host (a spread host must be blocked)"
    done < <(head -20 "$hosts")
done

RAW=$OUT/rounds.tsv
: >"$RAW"
LINES=()
# load ROUND SIZE KIND: one wrk run against one gate.
load() {
    local round=$1 size=$2 kind=$3 port pid hosts secs=$DURATION out c0 c1 b a
    port=$SMALL_PORT pid=$PID_small hosts=$SMALL.hosts
    if [[ $size == big ]]; then port=$BIG_PORT pid=$PID_big hosts=$BIG1.hosts; fi
    [[ $round == warmup ]] && secs=$WARMUP
    out=$OUT/wrk-$round-$size-$kind.txt
    local args=(-H "Host: unfiled-load-test.cn")
    [[ $kind == spread ]] && args=(-s "$OUT/hosts.lua")
    c0=$(cpu_ticks "$pid")
    b=$(cpu_snapshot "$PROXY_CPU" "$LOAD_CPU")
    SCALE_HOSTS=$hosts taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" "${args[@]}" \
        "http://127.0.0.1:$port/" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
    a=$(cpu_snapshot "$PROXY_CPU" "$LOAD_CPU")
    c1=$(cpu_ticks "$pid")
    [[ $round == warmup ]] && return 0
    local rps req non line us
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    req=$(awk '/ requests in / { print $1 }' "$out")
    non=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    [[ -n $rps && -n $req ]] || die "unreadable wrk output: $(cat "$out")"
    [[ ${non:-0} == "$req" ]] || die "$size $kind: $((req - ${non:-0})) of $req answers were not blocked"
    us=$(awk -v c=$((c1 - c0)) -v t="$TICKS" -v r="$req" 'BEGIN { printf "%.2f", c / t * 1e6 / r }')
    line=$(printf 'round %s/%s  %-5s %-6s %10.1f req/s  %6s us CPU/request  %s' "$round" "$ROUNDS" \
        "$size" "$kind" "$rps" "$us" "$(cpu_report "$b" "$a" "$PROXY_CPU" "$LOAD_CPU")")
    echo "$line"
    LINES+=("$line")
    printf '%s\t%s\t%s\t%s\n' "$size" "$kind" "$rps" "$us" >>"$RAW"
}

note "warming up"
for kind in one spread; do
    load warmup small "$kind"
    load warmup big "$kind"
done
for ((r = 1; r <= ROUNDS; r++)); do
    for kind in one spread; do
        if ((r % 2)); then
            load "$r" small "$kind"
            load "$r" big "$kind"
        else
            load "$r" big "$kind"
            load "$r" small "$kind"
        fi
    done
done

# median SIZE KIND COLUMN (3: req/s, 4: us per request)
median() {
    awk -F '\t' -v s="$1" -v k="$2" -v c="$3" '$1 == s && $2 == k { print $c }' "$RAW" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k * 1024 / 1e6 }'; }
{
    echo "icp-gate at scale, $(date -u +%Y-%m-%dT%H:%M:%SZ), icp-gate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "registries: $RECORDS records (names $NAME_BYTES bytes) against $SMALL_RECORDS (names $SMALL_NAME_BYTES bytes); gates on cpu $PROXY_CPU, wrk -t1 -c$CONNECTIONS on cpu $LOAD_CPU"
    echo
    read -r wall cpu <<<"$READY_big"
    echo "ready, $RECORDS records: $wall s wall from start to /readyz, $cpu s CPU (the process, start included); load $BIG_LOAD_S s wall (icp_gate_registry_load_duration_seconds)"
    echo "resident: $(mb "$BIG_RSS") (small gate $(mb "$SMALL_RSS")); peak during the load (VmHWM) $(mb "$BIG_HWM"); AnonHugePages $(mb "$BIG_HUGE")"
    awk -v big="$BIG_RSS" -v small="$SMALL_RSS" -v names="$NAME_BYTES" -v sn="$SMALL_NAME_BYTES" -v n="$RECORDS" -v s="$SMALL_RECORDS" 'BEGIN {
        grown = (big - small) * 1024 - (names - sn)
        printf "resident beyond the names: %.1f bytes per record ((RSS - small RSS - name bytes) / records; names %.1f bytes per record)\n", grown / (n - s), names / n }'
    echo "swap to serial 2: $SWAP_WALL s wall, $SWAP_CPU s CPU; peak resident (VmHWM) $(mb "$SWAP_HWM"), highest VmRSS sampled $(mb "$SWAP_PEAK_SEEN"); after: $(mb "$AFTER_RSS")"
    echo
    printf '%s\n' "${LINES[@]}"
    echo
    printf '%-7s %14s %14s %8s %16s %16s %8s\n' load "req/s small" "req/s large" ratio "us/req small" "us/req large" ratio
    for kind in one spread; do
        rs=$(median small "$kind" 3) rb=$(median big "$kind" 3)
        us=$(median small "$kind" 4) ub=$(median big "$kind" 4)
        awk -v k="$kind" -v rs="$rs" -v rb="$rb" -v us="$us" -v ub="$ub" 'BEGIN {
            printf "%-7s %14.1f %14.1f %7.3fx %16.2f %16.2f %7.3fx\n", k, rs, rb, rb / rs, us, ub, ub / us }'
    done
    echo "(medians of $ROUNDS rounds of ${DURATION}s; ratio large/small: req/s above 0.9 and CPU per request below 1.11 are within 10%)"
} | tee "$RESULTS"
