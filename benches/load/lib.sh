# Shared by the load scripts (run.sh, tls.sh, terminate.sh, compare.sh, profile.sh, instructions.sh,
# scale.sh, freshness.sh): the configurations of the origin and of the gate under test, so that
# every script measures the same setup. Source it.

ORIGIN_BODY="hello from the icp-gate load-test origin"

# die MESSAGE: the script's name, the message, exit 1.
die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 1
}

# require_integers VAR...: each named variable holds a non-negative integer, or the script ends.
require_integers() {
    local var
    for var in "$@"; do
        [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a non-negative integer (got '${!var}')"
    done
}

# nginx_preamble DIR: the start of an nginx.conf for a one-worker nginx in the foreground whose
# pid, logs and temporary files stay in DIR, up to and including the opening of `http {`, with
# keep-alive without a request limit (nginx's default of 1000 would make wrk and the upstream
# pools reconnect every 1000 requests). Used for the origin and for nginx under test.
nginx_preamble() {
    local dir=$1
    cat <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server_tokens off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
CONF
}

# require_tools HINT TOOL...: each tool is on PATH, or the script ends naming the missing one and
# HINT (how to install it).
require_tools() {
    local hint=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found ($hint)"
    done
}

# write_origin_conf DIR PORT: DIR/nginx.conf for the origin, a second nginx answering every
# request 200 with ORIGIN_BODY, keep-alive without a request limit.
write_origin_conf() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    {
        nginx_preamble "$dir"
        cat <<CONF
    server {
        listen 127.0.0.1:$port;
        location / {
            default_type text/plain;
            return 200 "$ORIGIN_BODY\n";
        }
    }
}
CONF
    } >"$dir/nginx.conf"
}

# LOGS (on, off or stderr): how the gate under test (and nginx in run.sh) log. `on` (the default)
# as an operator runs them: the gate's access log and audit log to files (`[log]
# access_log_file`, `audit_log`, through its buffered writers), nginx's `access_log FILE combined
# buffer=64k`. `off`: no access log on either side (the comparison before logs were on).
# `stderr`: the gate's access lines as `tracing` events on standard error (redirected to a
# file), no audit log, as the gate logged before it had log files; nginx as with `on`.
LOGS=${LOGS:-on}
check_logs() {
    [[ $LOGS == on || $LOGS == off || $LOGS == stderr ]] || die "LOGS must be on, off or stderr (got '$LOGS')"
}

# gate_log_section DIR: the gate's [log] section for LOGS; its files are DIR/gate-access.log and
# DIR/gate-audit.log.
gate_log_section() {
    local dir=$1
    case $LOGS in
        on) printf '[log]\nlevel = "info"\naccess_log_file = "%s/gate-access.log"\naudit_log = "%s/gate-audit.log"\n' "$dir" "$dir" ;;
        stderr) printf '[log]\nlevel = "info"\naccess_log = true\n' ;;
        off) printf '[log]\nlevel = "warn"\naccess_log = false\n' ;;
    esac
}

# write_gate_conf FILE DIR GATE_PORT ADMIN_PORT ORIGIN_PORT REGISTRY: the gate under test, one
# thread, logging as LOGS says, a `require = "connected"` listener, no reconnects in a round.
write_gate_conf() {
    local file=$1 dir=$2 gate_port=$3 admin_port=$4 origin_port=$5 registry=$6
    cat >"$file" <<CONF
[[listener]]
name = "load"
address = "127.0.0.1:$gate_port"
require = "connected"
# As nginx (keepalive_requests 1000000): no reconnects in the middle of a round.
max_requests_per_connection = 1000000
keepalive_timeout_seconds = 300
mode = "enforce"

[upstream]
servers = ["127.0.0.1:$origin_port"]

$(gate_common_sections "$dir" "$registry" "$admin_port")
CONF
}

# gate_common_sections DIR REGISTRY ADMIN_PORT: the end of every load harness's gate
# configuration: the registry file (no reloads in a run), the admin listener, the [log] section
# for LOGS, one thread, a fast shutdown, the pid file and upgrade socket in DIR.
gate_common_sections() {
    local dir=$1 registry=$2 admin_port=$3
    cat <<CONF
[registry]
source = "file://$registry"
refresh_interval_seconds = 86400

[admin]
address = "127.0.0.1:$admin_port"

$(gate_log_section "$dir")

[server]
threads = 1
grace_period_seconds = 0
shutdown_timeout_seconds = 1
pid_file = "$dir/icp-gate.pid"
upgrade_sock = "$dir/icp-gate-upgrade.sock"
CONF
}

# start_gate_ready CONF CPU ADMIN_PORT: checks CONF with `-t`, starts the gate on CPU (as
# `start`, named icp-gate, stopped with SIGINT) and waits up to 120 s for its /readyz;
# GATE_PID is its pid.
start_gate_ready() {
    local conf=$1 cpu=$2 admin_port=$3
    "$GATE" -t -c "$conf" >/dev/null || die "the generated icp-gate configuration is invalid"
    start icp-gate INT "$cpu" "$GATE" -c "$conf"
    GATE_PID=$STARTED_PID
    wait_until icp-gate "$GATE_PID" 120 curl -sf -o /dev/null -m 2 "http://127.0.0.1:$admin_port/readyz"
}

# setup_scratch NAME: OUT (a new temporary directory unless OUT is set) and PIDS; on exit every
# process in PIDS is stopped and OUT removed (kept when KEEP=1).
setup_scratch() {
    local name=$1
    OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/icp-gate-$name.XXXXXX")}
    mkdir -p "$OUT"
    chmod 755 "$OUT" # nginx workers run as nobody when the scripts run as root
    PIDS=()
    SCRATCH_NAME=$name
    trap cleanup_scratch EXIT
}

cleanup_scratch() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${KEEP:-0} != 1 ]]; then rm -rf "$OUT"; else echo "$SCRATCH_NAME.sh: kept $OUT" >&2; fi
}

# release_gate ROOT TARGET_DIR: GATE, the release binary, built first unless SKIP_BUILD=1.
release_gate() {
    local root=$1 target_dir=$2
    GATE=$target_dir/release/icp-gate
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        (cd "$root" && cargo build --release -q -p icp-gate --bin icp-gate)
    fi
    [[ -x $GATE ]] || die "$GATE not found"
}

# generate_registry RECORDS: OUT/registry.tsv, and FORWARD_HOST, a connected name from its middle.
generate_registry() {
    local records=$1
    "$GATE" registry generate "$OUT/registry.tsv" --records "$records" >/dev/null
    FORWARD_HOST=$(awk -F '\t' -v from=$((records / 2)) 'NR > from && $2 == "connected" { print $1; exit }' "$OUT/registry.tsv")
}

# ---------------------------------------------------------------------------------------------
# Processes and measurements of the harnesses that start their own proxies (tls.sh). They use
# TMP (the scratch directory) and PROCS ("name pid signal" entries), set by the caller.

# port_in_use PORT: something accepts connections on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# warn_if_busy NOTE_FUNCTION: a warning when the 1-minute load average is above 0.5.
warn_if_busy() {
    local load1
    read -r load1 _ </proc/loadavg
    if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
        "$1" "warning: the 1-minute load average is $load1: something else is running; figures will be noisy"
    fi
}

# start NAME SIGNAL CPU|none COMMAND...: runs COMMAND in the background (pinned to CPU), output
# to TMP/NAME.out, registered in PROCS; the pid is left in STARTED_PID.
start() {
    local name=$1 sig=$2 cpu=$3
    shift 3
    if [[ $cpu == none ]]; then
        "$@" >"$TMP/$name.out" 2>&1 &
    else
        taskset -c "$cpu" "$@" >"$TMP/$name.out" 2>&1 &
    fi
    STARTED_PID=$!
    PROCS+=("$name $STARTED_PID $sig")
}

# wait_until NAME PID SECONDS COMMAND...: waits until COMMAND succeeds; the script ends if the
# process PID exits first or SECONDS pass.
wait_until() {
    local name=$1 pid=$2 secs=$3 i
    shift 3
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || {
            cat "$TMP/$name.out" >&2 || true
            die "$name exited while starting (output above)"
        }
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "$name not ready within ${secs}s ($*)"
}

# stop_all NOTE_FUNCTION: stops every process in PROCS with its signal (Pingora processes: SIGINT,
# nginx: SIGTERM, both fast shutdowns), and kills it (and an nginx master's workers) after 5 s.
stop_all() {
    local say=$1 entry name pid sig kids i
    for entry in "${PROCS[@]}"; do
        read -r name pid sig <<<"$entry"
        kill -0 "$pid" 2>/dev/null || continue
        kids=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
        kill -s "$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            "$say" "$name (pid $pid) did not stop on SIG$sig: killing it"
            kill -KILL "$pid" 2>/dev/null || true
            for pid in $kids; do
                kill -KILL "$pid" 2>/dev/null || true
            done
        fi
    done
    PROCS=()
}

# cpu_snapshot PROXY_CPU LOAD_CPU: "total steal busy(PROXY) total(PROXY) busy(LOAD) total(LOAD)"
# from /proc/stat.
cpu_snapshot() {
    awk -v p="cpu$1" -v l="cpu$2" '
        function tot() { return $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }
        function busy() { return $2 + $3 + $4 + $7 + $8 }
        $1 == "cpu" { t = tot(); s = $9 }
        $1 == p { pb = busy(); pt = tot() }
        $1 == l { lb = busy(); lt = tot() }
        END { print t, s, pb, pt, lb, lt }' /proc/stat
}

# cpu_busy BEFORE AFTER BUSY_FIELD TOTAL_FIELD: percent busy between two cpu_snapshots (fields 3
# and 4: the proxy core, 5 and 6: the load core).
cpu_busy() {
    awk -v b="$1" -v a="$2" -v f="$3" -v g="$4" 'BEGIN {
        split(b, x, " "); split(a, y, " "); t = y[g] - x[g]
        printf "%.1f\n", t ? 100 * (y[f] - x[f]) / t : 0 }'
}

# cpu_report BEFORE AFTER PROXY_CPU LOAD_CPU: "cpuP  NN%  cpuL  NN%  steal N.N%".
cpu_report() {
    awk -v b="$1" -v a="$2" -v pc="$3" -v lc="$4" 'BEGIN {
        split(b, x, " "); split(a, y, " ")
        t = y[1] - x[1]; pt = y[4] - x[4]; lt = y[6] - x[6]
        printf "cpu%s %3.0f%%  cpu%s %3.0f%%  steal %.1f%%",
            pc, pt ? 100 * (y[3] - x[3]) / pt : 0,
            lc, lt ? 100 * (y[5] - x[5]) / lt : 0,
            t ? 100 * (y[2] - x[2]) / t : 0 }'
}

# proxy_sleeps PID: how often the process's threads (and an nginx master's workers) have blocked
# so far (voluntary context switches).
proxy_sleeps() {
    local p t n=0
    for p in $1 $(pgrep -P "$1" || true); do
        for t in /proc/"$p"/task/*/status; do
            n=$((n + $(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t" 2>/dev/null || echo 0)))
        done
    done
    echo "$n"
}

# ---------------------------------------------------------------------------------------------
# Summaries of the harnesses that record one tab-separated line per run in RAW (proxy, path,
# then fields).

# median FIELD PROXY PATH: the median of FIELD over the runs of PROXY on PATH in RAW.
median() {
    awk -F '\t' -v f="$1" -v p="$2" -v k="$3" '$1 == p && $2 == k { print $f }' "$RAW" | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ratio A B: A / B as "1.23x", or "-" when either is missing or B is 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2fx", a / b }'; }

# ceiling BUSY_PROXY BUSY_LOAD: which core limited a run (95% busy or more; "neither": no core
# was, the run was latency-bound).
ceiling() {
    awk -v p="$1" -v l="$2" 'BEGIN {
        if (p == "" || l == "") print "-"
        else if (p >= 95 && l >= 95) print "both cores"
        else if (p >= 95) print "proxy core"
        else if (l >= 95) print "load core"
        else print "neither" }'
}

# fmt_us MICROSECONDS: "850us" or "1.25ms".
fmt_us() { awk -v u="$1" 'BEGIN { if (u >= 1000) printf "%.2fms", u / 1000; else printf "%.0fus", u }'; }

# finish_run NOTE_FUNCTION: prints TABLE, writes HEADER, the ROUND_LINES, TABLE and any ANOMALIES
# to RESULTS, and ends the script with status 1 when there were anomalies.
finish_run() {
    echo
    echo "$TABLE"
    {
        echo "$HEADER"
        echo
        printf '%s\n' "${ROUND_LINES[@]}"
        echo
        echo "$TABLE"
        if ((${#ANOMALIES[@]})); then
            echo
            echo "problems:"
            printf '  %s\n' "${ANOMALIES[@]}"
        fi
    } >"$RESULTS"
    "$1" "table written to $RESULTS"
    if ((${#ANOMALIES[@]})); then
        echo
        echo "problems seen during the run:"
        printf '  %s\n' "${ANOMALIES[@]}"
        exit 1
    fi
}

# ---------------------------------------------------------------------------------------------
# The floor (proxy/examples/floor.rs): a third contender in run.sh, tls.sh and terminate.sh, a
# minimal server that writes the same bytes as the gate and parses nothing, on the proxy core in
# the same rounds. FLOOR=0 leaves it out.

FLOOR=${FLOOR:-1}
check_floor() {
    [[ $FLOOR == 0 || $FLOOR == 1 ]] || die "FLOOR must be 0 or 1 (got '$FLOOR')"
}

# proc_ticks PID: CPU time (user + system, clock ticks) the process and its children (nginx's
# worker) have used so far, every thread included (the gate's log writer too). Unlike the
# core's busy time, other processes on the same core do not count.
proc_ticks() {
    local p n=0
    for p in $1 $(pgrep -P "$1" || true); do
        n=$((n + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$n"
}

# us_per TICKS COUNT: microseconds of CPU per unit ("1.23"), or nothing when COUNT is 0.
us_per() {
    awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n > 0) printf "%.2f", t / hz * 1e6 / n }'
}

# round_order ROUND NAME...: the names, one a line, rotated by ROUND - 1 (a warm-up: as given),
# so that each contender goes first in turn.
round_order() {
    local round=$1 k=0 i
    shift
    local names=("$@")
    [[ $round =~ ^[0-9]+$ ]] && k=$(((round - 1) % ${#names[@]}))
    for ((i = 0; i < ${#names[@]}; i++)); do
        echo "${names[(i + k) % ${#names[@]}]}"
    done
}

# capture_answer FILE CURL_ARGS...: FILE gets one answer as curl received it: the status line
# and headers (`-D`, as sent for HTTP/1.1; as curl shows them for h2) followed by the body.
capture_answer() {
    local file=$1
    shift
    curl -s -D "$file.head" -o "$file.body" "$@" || return 1
    cat "$file.head" "$file.body" >"$file"
    rm -f "$file.head" "$file.body"
}

# same_bytes_but_ids A B: A and B are the same length and differ in nothing but the values of
# X-Request-Id and Date headers and request ids in a block page (16 hex digits or more): a gate's
# answer and another one of the same path.
same_bytes_but_ids() {
    local a b
    (($(wc -c <"$1") == $(wc -c <"$2"))) || return 1
    a=$(sed -E -e 's/^(x-request-id|date):.*/\1: -/I' -e 's/[0-9a-f]{16,}/-/g' "$1" | od -An -c)
    b=$(sed -E -e 's/^(x-request-id|date):.*/\1: -/I' -e 's/[0-9a-f]{16,}/-/g' "$2" | od -An -c)
    [[ $a == "$b" ]]
}

# ---------------------------------------------------------------------------------------------
# The machine-readable summary (compare.sh reads it): with SUMMARY set, each harness appends one
# tab-separated line per path,
#   suite path unit rounds  rate cpu_us proxy_busy load_busy (icp-gate)  the same four (nginx)
#   the same four (floor)
# with medians over the rounds from RAW (rate: answers, refusals or connections per second;
# cpu_us: CPU time of the proxy process per answer; *_busy: percent busy of the proxy core and
# of the load core), "-" where there is no figure (FLOOR=0, or no run).

# summary_line SUITE PATH UNIT RATE_FIELD CPU_FIELD PROXY_BUSY_FIELD LOAD_BUSY_FIELD: appends the
# line of PATH to SUMMARY (when set).
summary_line() {
    [[ -n ${SUMMARY:-} ]] || return 0
    local suite=$1 path=$2 unit=$3 proxy f v line
    shift 3
    line="$suite"$'\t'"$path"$'\t'"$unit"$'\t'"$ROUNDS"
    for proxy in icp-gate nginx floor; do
        for f in "$@"; do
            v=$(median "$f" "$proxy" "$path")
            line+=$'\t'"${v:--}"
        done
    done
    echo "$line" >>"$SUMMARY"
}

# num FORMAT VALUE: VALUE printed with FORMAT, or "-" when it is empty.
num() {
    if [[ -z $2 || $2 == - ]]; then echo "-"; else printf "$1" "$2"; fi
}

# three_way_rows CPU_FIELD DECIMALS CPU_HEADER: the head and the rows of the tables of tls.sh and
# terminate.sh, one row per path in PATHS: icp-gate, nginx and the floor from RAW (field 3 the
# rate, CPU_FIELD the CPU per answer, printed with DECIMALS, 5 and 6 the proxy's and the load
# core's busy percent), against the caller's `target PATH`.
three_way_rows() {
    local cf=$1 d=$2 label=$3 path g n f gc nc fc gp np fp gl nl fl
    local row='%-10s %10s %10s %10s %10s %7s %10s %24s %10s %-10s %-10s %-10s\n'
    # shellcheck disable=SC2059 # the format is the row's layout, kept in one place
    printf "$row" path icp-gate nginx floor gate/nginx target gate/floor "$label" \
        "cpu$PROXY_CPU g/n" "ceil gate" "ceil nginx" "ceil floor"
    for path in $PATHS; do
        g=$(median 3 icp-gate "$path") n=$(median 3 nginx "$path") f=$(median 3 floor "$path")
        gc=$(median "$cf" icp-gate "$path") nc=$(median "$cf" nginx "$path") fc=$(median "$cf" floor "$path")
        gp=$(median 5 icp-gate "$path") np=$(median 5 nginx "$path") fp=$(median 5 floor "$path")
        gl=$(median 6 icp-gate "$path") nl=$(median 6 nginx "$path") fl=$(median 6 floor "$path")
        # shellcheck disable=SC2059
        printf "$row" "$path" \
            "$(num %.0f "$g")" "$(num %.0f "$n")" "$(num %.0f "$f")" "$(ratio "$g" "$n")" "$(target "$path")" \
            "$(ratio "$g" "$f")" "$(num "%.${d}f" "$gc")/$(num "%.${d}f" "$nc")/$(num "%.${d}f" "$fc")us" \
            "$(num %.0f "$gp")%/$(num %.0f "$np")%" \
            "$(ceiling "$gp" "$gl")" "$(ceiling "$np" "$nl")" "$(ceiling "$fp" "$fl")"
    done
}

# registry_with_map: TMP/registry.tsv, a synthetic registry of RECORDS records (REGISTRY), the
# same as an nginx `map` (TMP/nginx-map.conf, MAP_ENTRIES entries), and FORWARD_HOST, unless
# set, a connected name from the middle of the file (not its first line). Needs GATE, HERE, TMP
# and the caller's `note`.
registry_with_map() {
    REGISTRY=$TMP/registry.tsv
    note "generating a registry of $RECORDS records"
    "$GATE" registry generate "$REGISTRY" --records "$RECORDS" >/dev/null
    awk -f "$HERE/registry-to-nginx-map.awk" "$REGISTRY" >"$TMP/nginx-map.conf" 2>"$TMP/map.log" ||
        die "converting the registry failed: $(cat "$TMP/map.log")"
    MAP_ENTRIES=$(wc -l <"$TMP/nginx-map.conf")
    ((MAP_ENTRIES == RECORDS)) || note "warning: the nginx map has $MAP_ENTRIES entries for $RECORDS records ($(tr '\n' ' ' <"$TMP/map.log"))"
    if [[ -z $FORWARD_HOST ]]; then
        FORWARD_HOST=$(awk -F '\t' -v from=$((RECORDS / 2)) 'NR > from && $2 == "connected" { print $1; exit }' "$REGISTRY")
        [[ -n $FORWARD_HOST ]] || die "no connected record in the registry"
    fi
}
