#!/usr/bin/env bash
# icp-gate load harness: icp-gate against nginx (and against a plain Pingora pass-through, and a
# floor: a minimal server writing the gate's answers, proxy/examples/floor.rs) on one machine,
# same registry, same block page bytes, same origin, same load tool, same run.
# What it measures and how to read the output: benches/load/README.md.
#
#   benches/load/run.sh                      # 3 rounds of 10 s per (proxy, path)
#   ROUNDS=5 DURATION=30 benches/load/run.sh
#
# Environment (defaults in brackets): ROUNDS [3], DURATION seconds per run [10], WARMUP seconds
# per (proxy, path) before round 1 [2], CONNECTIONS [64], RECORDS [1000000], BASE_PORT [18080]
# (uses BASE_PORT..BASE_PORT+6), PROXY_CPU [0], LOAD_CPU [1], ORIGIN_CPU [LOAD_CPU, or "none"],
# BLOCK_HOST [unfiled-load-test.cn], FORWARD_HOST [a connected name from the registry],
# NGINX_BLOCK [auto: inline return when the page fits, else file], SKIP_BUILD [0], KEEP_TMP [0],
# RESULTS [benches/load/results-latest.txt], LOGS [on] (on: the gate's access and audit logs to
# files, nginx's access_log buffer=64k; off: no access log on either side; stderr: the gate's
# access lines through tracing on stderr, see lib.sh), FLOOR [1] (0: no floor), SUMMARY [none: a
# file to append the machine-readable summary to, see lib.sh].
#
# With LOGS=on, after every icp-gate run the audit log must hold exactly one line per block the
# gate counted (and at least one per block wrk read): anything else is a PROBLEM and the script
# exits 1.
#
# Everything runs on 127.0.0.1 in a temporary directory; every process started here is stopped
# when the script exits, however it exits.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
ROOT=$(cd "$HERE/../.." && pwd)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
RECORDS=${RECORDS:-1000000}
BASE_PORT=${BASE_PORT:-18080}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
ORIGIN_CPU=${ORIGIN_CPU:-$LOAD_CPU}
BLOCK_HOST=${BLOCK_HOST:-unfiled-load-test.cn}
FORWARD_HOST=${FORWARD_HOST:-}
NGINX_BLOCK=${NGINX_BLOCK:-auto}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS=${RESULTS:-$HERE/results-latest.txt}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

note() { echo "run.sh: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Checks before anything is started.

require_integers ROUNDS DURATION WARMUP CONNECTIONS RECORDS BASE_PORT PROXY_CPU LOAD_CPU
check_logs
check_floor
[[ $ORIGIN_CPU == none || $ORIGIN_CPU =~ ^[0-9]+$ ]] ||
    die "ORIGIN_CPU must be a CPU number or 'none' (got '$ORIGIN_CPU')"
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"
((DURATION >= 1)) || die "DURATION must be at least 1 second"
((CONNECTIONS >= 1)) || die "CONNECTIONS must be at least 1"
((BASE_PORT >= 1024 && BASE_PORT <= 65529)) || die "BASE_PORT must be from 1024 to 65529"
((PROXY_CPU != LOAD_CPU)) || die "PROXY_CPU and LOAD_CPU must be different cores"
[[ $NGINX_BLOCK == auto || $NGINX_BLOCK == inline || $NGINX_BLOCK == file ]] ||
    die "NGINX_BLOCK must be auto, inline or file (got '$NGINX_BLOCK')"
[[ $BLOCK_HOST =~ ^[a-z0-9.-]+$ ]] || die "BLOCK_HOST must be a lower-case ASCII host name"

missing=()
for tool in nginx wrk taskset curl awk; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    packages=()
    for tool in "${missing[@]}"; do
        case $tool in
            taskset) packages+=(util-linux) ;;
            awk) packages+=(mawk) ;;
            *) packages+=("$tool") ;;
        esac
    done
    die "missing: ${missing[*]}. Install with: apt-get install -y ${packages[*]}"
fi
if [[ $SKIP_BUILD != 1 ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found (or set SKIP_BUILD=1 with binaries already built in $TARGET_DIR/release)"
fi

CPUS=$(nproc --all 2>/dev/null || getconf _NPROCESSORS_ONLN)
((PROXY_CPU < CPUS && LOAD_CPU < CPUS)) ||
    die "PROXY_CPU=$PROXY_CPU and LOAD_CPU=$LOAD_CPU must be below the number of CPUs ($CPUS)"
if [[ $ORIGIN_CPU != none ]]; then
    ((ORIGIN_CPU < CPUS)) || die "ORIGIN_CPU=$ORIGIN_CPU must be below the number of CPUs ($CPUS)"
fi

GATE_PORT=$BASE_PORT
ADMIN_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
ORIGIN_PORT=$((BASE_PORT + 3))
PASS_PORT=$((BASE_PORT + 4))
# The floor: one process per path, each writing that path's answer.
FLOOR_BLOCK_PORT=$((BASE_PORT + 5))
FLOOR_FORWARD_PORT=$((BASE_PORT + 6))
PORTS=("$GATE_PORT" "$ADMIN_PORT" "$NGINX_PORT" "$ORIGIN_PORT" "$PASS_PORT")
((FLOOR == 1)) && PORTS+=("$FLOOR_BLOCK_PORT" "$FLOOR_FORWARD_PORT")

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "${PORTS[@]}"; do
    if port_in_use "$port"; then
        die "127.0.0.1:$port is already in use (the harness uses BASE_PORT..BASE_PORT+6; set BASE_PORT)"
    fi
done

read -r LOAD1 _ </proc/loadavg
if awk -v l="$LOAD1" 'BEGIN { exit !(l > 0.5) }'; then
    note "warning: the 1-minute load average is $LOAD1: something else is running; figures will be noisy"
fi

# ---------------------------------------------------------------------------------------------
# Temporary directory and cleanup: every process started below is registered in PROCS and
# stopped on exit (Pingora processes with SIGINT, nginx with SIGTERM: both are fast shutdowns),
# then killed if it is still there after 5 s.

TMP=$(mktemp -d "${TMPDIR:-/tmp}/icp-gate-load.XXXXXX")
chmod 755 "$TMP" # nginx workers run as nobody when the harness runs as root
PROCS=()         # "name pid signal"
WRK_PID=         # the wrk run in progress, if any

stop_all() {
    local entry name pid sig kids i
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
            note "$name (pid $pid) did not stop on SIG$sig: killing it"
            kill -KILL "$pid" 2>/dev/null || true
            # nginx workers do not follow a killed master.
            for pid in $kids; do
                kill -KILL "$pid" 2>/dev/null || true
            done
        fi
    done
    PROCS=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n ${WRK_PID:-} ]]; then kill -TERM "$WRK_PID" 2>/dev/null || true; fi
    stop_all
    wait 2>/dev/null || true
    if [[ $KEEP_TMP == 1 ]]; then
        note "kept $TMP (configurations, logs, raw wrk output)"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME SIGNAL CPU|none COMMAND...: runs COMMAND in the background (pinned to CPU), output
# to $TMP/NAME.out; the pid is left in STARTED_PID.
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

# wait_http NAME PID URL [HOST] [SECONDS]: waits until URL answers at all (any status).
wait_http() {
    local name=$1 pid=$2 url=$3 host=${4:-localhost} secs=${5:-120} i
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || {
            cat "$TMP/$name.out" >&2 || true
            die "$name exited while starting (output above)"
        }
        if curl -s -o /dev/null -m 2 -H "Host: $host" "$url"; then return 0; fi
        sleep 0.1
    done
    die "$name did not answer on $url within ${secs}s"
}

# ---------------------------------------------------------------------------------------------
# Build.

GATE=$TARGET_DIR/release/icp-gate
PASS=$TARGET_DIR/release/examples/passthrough
FLOOR_BIN=$TARGET_DIR/release/examples/floor
if [[ $SKIP_BUILD != 1 ]]; then
    note "building icp-gate and the passthrough and floor examples (release)"
    (cd "$ROOT" && cargo build --release -q -p icp-gate --bin icp-gate &&
        cargo build --release -q -p icp-gate-proxy --example passthrough --example floor)
fi
[[ -x $GATE ]] || die "$GATE not found: run cargo build --release"
[[ -x $PASS ]] || die "$PASS not found: run cargo build --release -p icp-gate-proxy --examples"
if ((FLOOR == 1)); then
    [[ -x $FLOOR_BIN ]] || die "$FLOOR_BIN not found: run cargo build --release -p icp-gate-proxy --example floor (or FLOOR=0)"
fi

# ---------------------------------------------------------------------------------------------
# Registry: one synthetic snapshot for the gate, converted to an nginx map for nginx.

registry_with_map
if awk -F '\t' -v h="$BLOCK_HOST" '$1 == h { found = 1 } END { exit !found }' "$REGISTRY"; then
    die "BLOCK_HOST $BLOCK_HOST is in the registry: pick a name that is not"
fi

# ---------------------------------------------------------------------------------------------
# The origin: a second nginx, a small fixed 200 body, keep-alive without a request limit.

write_origin_conf "$TMP/origin" "$ORIGIN_PORT"
note "starting the origin (nginx) on 127.0.0.1:$ORIGIN_PORT, cpu $ORIGIN_CPU"
start origin TERM "$ORIGIN_CPU" nginx -e "$TMP/origin/error.log" -p "$TMP/origin" -c "$TMP/origin/nginx.conf"
ORIGIN_PID=$STARTED_PID
wait_http origin "$ORIGIN_PID" "http://127.0.0.1:$ORIGIN_PORT/"

# ---------------------------------------------------------------------------------------------
# icp-gate.

write_gate_conf "$TMP/icp-gate.toml" "$TMP" "$GATE_PORT" "$ADMIN_PORT" "$ORIGIN_PORT" "$REGISTRY"
GATE_AUDIT=$TMP/gate-audit.log
GATE_ACCESS=$TMP/gate-access.log
case $LOGS in
    on) LOGS_NOTE="on: icp-gate access log (JSON) and audit log to files, [log] level info; nginx access_log combined buffer=64k; passthrough none" ;;
    stderr) LOGS_NOTE="stderr: icp-gate access lines through tracing (text) on stderr to a file, no audit log; nginx access_log combined buffer=64k; passthrough none" ;;
    off) LOGS_NOTE="off: no access log on either side" ;;
esac
"$GATE" -t -c "$TMP/icp-gate.toml" >/dev/null || die "the generated icp-gate configuration is invalid"
note "starting icp-gate on 127.0.0.1:$GATE_PORT (admin $ADMIN_PORT), cpu $PROXY_CPU"
start icp-gate INT "$PROXY_CPU" "$GATE" -c "$TMP/icp-gate.toml"
GATE_PID=$STARTED_PID
for ((i = 0; ; i++)); do
    kill -0 "$GATE_PID" 2>/dev/null || {
        cat "$TMP/icp-gate.out" >&2
        die "icp-gate exited while starting (output above)"
    }
    curl -sf -o /dev/null -m 2 "http://127.0.0.1:$ADMIN_PORT/readyz" && break
    ((i < 1200)) || die "icp-gate not ready (/readyz) within 120 s"
    sleep 0.1
done
wait_http icp-gate "$GATE_PID" "http://127.0.0.1:$GATE_PORT/" "$FORWARD_HOST"

# The gate's block page for the block host, once: nginx serves exactly these bytes.
curl -s -o "$TMP/block.html" -D "$TMP/block.headers" -H "Host: $BLOCK_HOST" "http://127.0.0.1:$GATE_PORT/"
grep -qi '^HTTP/1.1 403' "$TMP/block.headers" || die "icp-gate did not answer 403 for $BLOCK_HOST: $(head -1 "$TMP/block.headers")"
grep -qi '^x-icp-block-reason: unfiled' "$TMP/block.headers" ||
    die "icp-gate's answer for $BLOCK_HOST is not X-ICP-Block-Reason: unfiled"
BLOCK_BYTES=$(wc -c <"$TMP/block.html")

# ---------------------------------------------------------------------------------------------
# nginx in front: the same map decision, the same 403 bytes and headers, proxy_pass with
# upstream keep-alive for what passes.

NGX=$TMP/nginx
mkdir -p "$NGX"
BLOCK_HEADERS=$(
    cat <<'EOF'
            add_header Cache-Control no-store always;
            add_header X-ICP-Block-Reason unfiled always;
            add_header X-Request-Id $request_id always;
            add_header Content-Security-Policy "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'" always;
            add_header X-Content-Type-Options nosniff always;
            add_header Referrer-Policy no-referrer always;
EOF
)
# The page goes inline into `return 403 '...'` (one write, nginx's cheapest way) when it can:
# nginx reads a configuration token into a 4 KiB buffer and `$` would start a variable. Otherwise
# it is served from a file through error_page and an internal location.
INLINE_OK=0
if ((BLOCK_BYTES < 3800)) && ! grep -q '\$' "$TMP/block.html"; then INLINE_OK=1; fi
if [[ $NGINX_BLOCK == inline && $INLINE_OK == 0 ]]; then
    die "NGINX_BLOCK=inline: the block page ($BLOCK_BYTES bytes) cannot go into an nginx return (over ~3.8 KB or contains \$)"
fi
if [[ $NGINX_BLOCK != file && $INLINE_OK == 1 ]]; then
    NGINX_BLOCK_STYLE="inline return 403"
    {
        printf "            return 403 '"
        sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g" "$TMP/block.html"
        printf "';\n"
    } >"$NGX/block-return.conf"
    BLOCK_IN_IF="$BLOCK_HEADERS
            include $NGX/block-return.conf;"
    BLOCK_LOCATION=""
else
    NGINX_BLOCK_STYLE="return 403 + error_page file"
    cp "$TMP/block.html" "$NGX/__icp_blocked.html"
    BLOCK_IN_IF="            return 403;"
    BLOCK_LOCATION="        error_page 403 /__icp_blocked.html;
        location = /__icp_blocked.html {
            internal;
            root $NGX;
            types { }
            default_type \"text/html; charset=utf-8\";
            open_file_cache max=16 valid=3600s;
            etag off;
$BLOCK_HEADERS
        }"
fi

# nginx's access log as operators run it (its default combined format, 64 KiB buffer).
NGINX_ACCESS_LOG=""
if [[ $LOGS != off ]]; then
    NGINX_ACCESS_LOG="        access_log $NGX/access.log combined buffer=64k;"
fi
{
    nginx_preamble "$NGX"
    cat <<EOF

    map_hash_max_size 4194304;
    map_hash_bucket_size 128;
    # Converted from the gate's registry by registry-to-nginx-map.awk: 0 = connected (forward),
    # 1 = any other status; a host no record covers is unfiled (default 1).
    map \$host \$icp_block {
        hostnames;
        default 1;
        include $TMP/nginx-map.conf;
    }

    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive $CONNECTIONS;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }

    server {
        listen 127.0.0.1:$NGINX_PORT;
        server_name _;
$NGINX_ACCESS_LOG
        default_type "text/html; charset=utf-8";
$BLOCK_LOCATION
        location / {
            if (\$icp_block) {
$BLOCK_IN_IF
            }
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # What the gate does to a forwarded request: Host unchanged, its own forwarding headers.
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
} >"$NGX/nginx.conf"
note "starting nginx on 127.0.0.1:$NGINX_PORT, cpu $PROXY_CPU (loading a $MAP_ENTRIES-entry map takes a few seconds)"
start nginx TERM "$PROXY_CPU" nginx -e "$NGX/error.log" -p "$NGX" -c "$NGX/nginx.conf"
NGINX_PID=$STARTED_PID
wait_http nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/" "$FORWARD_HOST" 300

# ---------------------------------------------------------------------------------------------
# Plain Pingora pass-through.

note "starting the Pingora pass-through on 127.0.0.1:$PASS_PORT, cpu $PROXY_CPU"
start passthrough INT "$PROXY_CPU" "$PASS" "127.0.0.1:$PASS_PORT" "127.0.0.1:$ORIGIN_PORT"
PASS_PID=$STARTED_PID
wait_http passthrough "$PASS_PID" "http://127.0.0.1:$PASS_PORT/" "$FORWARD_HOST"

# ---------------------------------------------------------------------------------------------
# Every proxy answers each path as it should, before any load.

# probe PORT HOST FILE: prints "status header-bytes body-bytes", the body in FILE.
probe() {
    curl -s -o "$3" -w '%{http_code} %{size_header} %{size_download}' -H "Host: $2" "http://127.0.0.1:$1/"
}
read -r st hb bb <<<"$(probe "$GATE_PORT" "$BLOCK_HOST" "$TMP/probe-gate-block")"
[[ $st == 403 ]] || die "icp-gate block path: status $st, expected 403"
GATE_BLOCK_SIZES="$hb+$bb"
read -r st hb bb <<<"$(probe "$NGINX_PORT" "$BLOCK_HOST" "$TMP/probe-nginx-block")"
[[ $st == 403 ]] || die "nginx block path: status $st, expected 403"
((bb == BLOCK_BYTES)) || die "nginx's block page is $bb bytes, icp-gate's $BLOCK_BYTES"
cmp -s "$TMP/probe-nginx-block" "$TMP/block.html" || die "nginx's block page differs from icp-gate's"
NGINX_BLOCK_SIZES="$hb+$bb"
curl -s -D "$TMP/probe-nginx-block.headers" -o /dev/null -H "Host: $BLOCK_HOST" "http://127.0.0.1:$NGINX_PORT/"
grep -qi '^content-type: text/html; charset=utf-8' "$TMP/probe-nginx-block.headers" || die "nginx's block page has the wrong Content-Type"
grep -qi '^x-icp-block-reason: unfiled' "$TMP/probe-nginx-block.headers" || die "nginx's block page has no X-ICP-Block-Reason"
FWD_SIZES=()
for pair in "icp-gate $GATE_PORT" "nginx $NGINX_PORT" "passthrough $PASS_PORT"; do
    read -r name port <<<"$pair"
    read -r st hb bb <<<"$(probe "$port" "$FORWARD_HOST" "$TMP/probe-$name-forward")"
    [[ $st == 200 ]] || die "$name forward path ($FORWARD_HOST): status $st, expected 200"
    grep -qF "$ORIGIN_BODY" "$TMP/probe-$name-forward" || die "$name forward path: not the origin's body"
    FWD_SIZES+=("$name $hb+$bb")
done

# ---------------------------------------------------------------------------------------------
# The floor: one process per path, each answering every request with the gate's answer for that
# path, as wrk's request got it from the gate just now (status line, headers, body).

FLOOR_NOTE="none"
if ((FLOOR == 1)); then
    for path in block forward; do
        host=$BLOCK_HOST
        [[ $path == forward ]] && host=$FORWARD_HOST
        port=$FLOOR_BLOCK_PORT
        [[ $path == forward ]] && port=$FLOOR_FORWARD_PORT
        capture_answer "$TMP/floor-$path.bin" -H "Host: $host" "http://127.0.0.1:$GATE_PORT/" ||
            die "capturing the gate's $path answer failed"
        note "starting the floor ($path answer, $(wc -c <"$TMP/floor-$path.bin") bytes) on 127.0.0.1:$port, cpu $PROXY_CPU"
        start "floor-$path" TERM "$PROXY_CPU" "$FLOOR_BIN" http "127.0.0.1:$port" "$TMP/floor-$path.bin"
        printf -v "FLOOR_${path^^}_PID" '%s' "$STARTED_PID"
        wait_http "floor-$path" "$STARTED_PID" "http://127.0.0.1:$port/" "$host"
        # The floor writes the bytes it was given, and they are the gate's, but for ids and dates.
        capture_answer "$TMP/probe-floor-$path" -H "Host: $host" "http://127.0.0.1:$port/"
        cmp -s "$TMP/probe-floor-$path" "$TMP/floor-$path.bin" || die "the floor's $path answer is not the bytes it was given"
        capture_answer "$TMP/probe-gate-$path" -H "Host: $host" "http://127.0.0.1:$GATE_PORT/"
        same_bytes_but_ids "$TMP/probe-gate-$path" "$TMP/probe-floor-$path" ||
            die "the floor's $path answer differs from the gate's (beyond request ids and dates)"
    done
    FLOOR_NOTE="proxy/examples/floor.rs http, one process per path, the gate's answer as captured: block $(wc -c <"$TMP/floor-block.bin") bytes, forward $(wc -c <"$TMP/floor-forward.bin") bytes (checked the same as the gate's but for ids and dates)"
fi

# ---------------------------------------------------------------------------------------------
# Load.

# CPU counters from /proc/stat: "total steal busy(PROXY_CPU) total(PROXY_CPU) busy(LOAD_CPU) total(LOAD_CPU)".
cpu_snapshot() {
    awk -v p="cpu$PROXY_CPU" -v l="cpu$LOAD_CPU" '
        function tot() { return $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }
        function busy() { return $2 + $3 + $4 + $7 + $8 }
        $1 == "cpu" { t = tot(); s = $9 }
        $1 == p { pb = busy(); pt = tot() }
        $1 == l { lb = busy(); lt = tot() }
        END { print t, s, pb, pt, lb, lt }' /proc/stat
}

# proxy_sleeps PID: how often the proxy's threads (and an nginx master's workers) have blocked so
# far (voluntary context switches): each is a wake-up that the sender's core paid for.
proxy_sleeps() {
    local p t n=0
    for p in $1 $(pgrep -P "$1" || true); do
        for t in /proc/"$p"/task/*/status; do
            n=$((n + $(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t" 2>/dev/null || echo 0)))
        done
    done
    echo "$n"
}

# run_delay PID: nanoseconds the process's threads (and its children's: nginx's workers) have
# spent runnable but waiting for a CPU so far (/proc/PID/task/*/schedstat, second field).
run_delay() {
    local p t n=0
    for p in $1 $(pgrep -P "$1" || true); do
        for t in /proc/"$p"/task/*/schedstat; do
            n=$((n + $(awk '{ print $2 }' "$t" 2>/dev/null || echo 0)))
        done
    done
    echo "$n"
}

# TCP segments sent on the machine so far (loopback included), or 0 without nstat (iproute2).
tcp_segments() {
    nstat -az TcpOutSegs 2>/dev/null | awk '$1 == "TcpOutSegs" { print $2; f = 1 } END { if (!f) print 0 }'
}

# gate_counter DECISION REASON: the gate's icp_gate_requests_total for the load listener.
gate_counter() {
    curl -s -m 5 "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk -v d="$1" -v r="$2" '
            index($0, "icp_gate_requests_total{") == 1 && index($0, "decision=\"" d "\"") &&
                index($0, "listener=\"load\"") && index($0, "reason=\"" r "\"") { v = $NF }
            END { printf "%d\n", v }'
}

# gate_sum NAME [DECISION]: the sum of every series of the gate's metric NAME (of one decision).
gate_sum() {
    curl -s -m 5 "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk -v n="$1" -v d="${2:-}" '
            index($0, n "{") == 1 || index($0, n " ") == 1 {
                if (d == "" || index($0, "decision=\"" d "\"")) s += $NF
            }
            END { printf "%d\n", s }'
}

# gate_settled: waits (up to 5 s) until the gate has written the audit line of every block and
# the access line of every request it counted, so that a log file emptied now gets no line
# from before.
gate_settled() {
    local i
    for ((i = 0; i < 50; i++)); do
        (($(gate_sum icp_gate_audit_lines_total) == $(gate_sum icp_gate_requests_total blocked))) &&
            (($(gate_sum icp_gate_access_log_lines_total) == $(gate_sum icp_gate_requests_total))) &&
            return 0
        sleep 0.1
    done
    note "warning: the gate's log writers did not catch up with its counters within 5 s"
}

# wrk output -> "req/s p50(us) p99(us) requests non-2xx/3xx socket-errors"
parse_wrk() {
    awk '
        function us(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return (v + 0) * 1000
            if (v ~ /m$/) return (v + 0) * 60000000
            if (v ~ /s$/) return (v + 0) * 1000000
            return v + 0
        }
        /^Requests\/sec:/ { rps = $2 }
        $1 == "50%" { p50 = us($2) }
        $1 == "99%" { p99 = us($2) }
        / requests in / { req = $1 }
        /Non-2xx or 3xx responses:/ { non = $NF }
        /Socket errors:/ { gsub(",", ""); err = $4 + $6 + $8 + $10 }
        END { printf "%s %s %s %s %d %d\n", rps, p50, p99, req, non, err }' "$1"
}

fmt_lat() { awk -v u="$1" 'BEGIN { if (u >= 1000) printf "%.2fms", u / 1000; else printf "%.0fus", u }'; }

ANOMALIES=()
ROUND_LINES=()
HANGUP_PATTERN='Broken pipe|Connection reset|ConnectionClosed|Prematurely before response'
HANGUP_LINES=0
RAW=$TMP/rounds.tsv
: >"$RAW"

# load ROUND PROXY PATH: one wrk run; ROUND "warmup" is not recorded.
load() {
    local round=$1 proxy=$2 path=$3 port host pid out before after c0 c1
    local log log_before lines_before=0 lines_file=""
    case $proxy in
        icp-gate) port=$GATE_PORT pid=$GATE_PID log=$TMP/icp-gate.out ;;
        nginx) port=$NGINX_PORT pid=$NGINX_PID log=$NGX/error.log ;;
        passthrough) port=$PASS_PORT pid=$PASS_PID log=$TMP/passthrough.out ;;
        floor)
            if [[ $path == block ]]; then
                port=$FLOOR_BLOCK_PORT pid=$FLOOR_BLOCK_PID
            else
                port=$FLOOR_FORWARD_PORT pid=$FLOOR_FORWARD_PID
            fi
            log=$TMP/floor-$path.out
            ;;
    esac
    log_before=$(wc -l <"$log")
    # The log files under test (emptied after each run: a round writes gigabytes).
    case $proxy in
        icp-gate) [[ $LOGS == on ]] && lines_file=$GATE_AUDIT ;;
        nginx) [[ $LOGS != off ]] && lines_file=$NGX/access.log ;;
    esac
    if [[ $proxy == icp-gate && $LOGS == on ]]; then
        gate_settled
        : >"$GATE_ACCESS"
    fi
    if [[ -n $lines_file ]]; then : >"$lines_file"; fi
    case $path in
        block) host=$BLOCK_HOST ;;
        forward) host=$FORWARD_HOST ;;
    esac
    local secs=$DURATION
    [[ $round == warmup ]] && secs=$WARMUP
    out=$TMP/wrk-$round-$proxy-$path.txt
    if [[ $proxy == icp-gate ]]; then
        if [[ $path == block ]]; then c0=$(gate_counter blocked unfiled); else c0=$(gate_counter allowed ""); fi
    fi
    local sleeps0 segs0 queued0 ticks0
    sleeps0=$(proxy_sleeps "$pid")
    ticks0=$(proc_ticks "$pid")
    queued0=$(run_delay "$ORIGIN_PID")
    segs0=$(tcp_segments)
    before=$(cpu_snapshot)
    # In the background and waited for, so that a signal to the script is acted on at once.
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency -H "Host: $host" \
        "http://127.0.0.1:$port/" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || true
    WRK_PID=
    after=$(cpu_snapshot)
    local sleeps segs queued ticks
    ticks=$(($(proc_ticks "$pid") - ticks0))
    sleeps=$(($(proxy_sleeps "$pid") - sleeps0))
    queued=$(($(run_delay "$ORIGIN_PID") - queued0))
    segs=$(($(tcp_segments) - segs0))
    sleep 0.2 # let the proxy log what happened when wrk closed its connections
    [[ $round == warmup ]] && return 0

    local rps p50 p99 req non err problems=()
    read -r rps p50 p99 req non err <<<"$(parse_wrk "$out")"
    if [[ -z $rps || -z $req ]]; then
        problems+=("wrk output unreadable: $(tr '\n' ' ' <"$out" | head -c 300)")
        rps=0 p50=0 p99=0 req=0
    fi
    if [[ $path == block ]] && ((non != req)); then
        problems+=("$((req - non)) of $req answers were 2xx/3xx on the block path")
    fi
    if [[ $path == forward ]] && ((non != 0)); then
        problems+=("$non of $req answers were not 2xx/3xx on the forward path")
    fi
    ((err == 0)) || problems+=("wrk socket errors: $(grep 'Socket errors' "$out" | sed 's/^ *//')")
    kill -0 "$pid" 2>/dev/null || problems+=("$proxy is no longer running")
    local counted=""
    if [[ $proxy == icp-gate ]] && kill -0 "$pid" 2>/dev/null; then
        if [[ $path == block ]]; then c1=$(gate_counter blocked unfiled); else c1=$(gate_counter allowed ""); fi
        counted=$((c1 - c0))
        # The gate counts a request when it decides it; wrk counts answers it read before it stopped.
        if ((counted < req || counted > req + CONNECTIONS)); then
            problems+=("the gate counted $counted ${path} decisions for $req answers wrk read")
        fi
    fi
    # Every block the gate counted has exactly one audit line, and every request an access
    # line: waited for (the writers flush within [log] flush_interval_ms), then compared.
    local audited="" accessed=""
    if [[ $proxy == icp-gate && $LOGS == on && -n $counted ]]; then
        local want_audit=0 i
        [[ $path == block ]] && want_audit=$counted
        for ((i = 0; i < 50; i++)); do
            audited=$(wc -l <"$GATE_AUDIT")
            accessed=$(wc -l <"$GATE_ACCESS")
            ((audited >= want_audit && accessed >= counted)) && break
            sleep 0.1
        done
        sleep 0.3 # anything beyond the expected count would show now
        audited=$(wc -l <"$GATE_AUDIT")
        accessed=$(wc -l <"$GATE_ACCESS")
        if ((audited != want_audit)); then
            problems+=("AUDIT LOG MISMATCH: $audited audit lines for $want_audit blocks the gate counted ($non non-2xx answers wrk read)")
            note "AUDIT LOG MISMATCH in round $round ($path): $audited lines, $want_audit blocks counted, $non blocked answers read by wrk"
        elif [[ $path == block ]] && ((audited < non || audited > non + CONNECTIONS)); then
            problems+=("AUDIT LOG MISMATCH: $audited audit lines for $non blocked answers wrk read")
            note "AUDIT LOG MISMATCH in round $round: $audited lines for $non blocked answers read by wrk"
        fi
        if ((accessed != counted)); then
            problems+=("access log: $accessed lines for $counted requests the gate counted")
        fi
    fi
    local logged_lines=""
    if [[ $proxy == nginx && -n $lines_file ]]; then
        logged_lines=$(wc -l <"$lines_file")
    fi

    # What the proxy logged during the run. A client that closes its connection with a request
    # in flight (wrk does, when it stops) is logged by Pingora at ERROR level: counted apart.
    local logged hangups others
    # (With LOGS=stderr the gate's access lines are in this file too: left out.)
    logged=$(tail -n +$((log_before + 1)) "$log" | grep -v ' icp_gate::access: ' || true)
    hangups=$(grep -cE "$HANGUP_PATTERN" <<<"$logged" || true)
    others=$(grep -vE "$HANGUP_PATTERN" <<<"$logged" | grep -ciE 'error|panic|\[(crit|alert|emerg)\]' || true)
    HANGUP_LINES=$((HANGUP_LINES + hangups))
    if ((others > 0)); then
        problems+=("$proxy logged $others error lines, first: $(grep -vE "$HANGUP_PATTERN" <<<"$logged" | grep -iE -m1 'error|panic|\[(crit|alert|emerg)\]' | cut -c1-300)")
    fi

    local cpu
    cpu=$(awk -v b="$before" -v a="$after" -v pc="$PROXY_CPU" -v lc="$LOAD_CPU" 'BEGIN {
        split(b, x, " "); split(a, y, " ")
        t = y[1] - x[1]; pt = y[4] - x[4]; lt = y[6] - x[6]
        printf "cpu%s %3.0f%%  cpu%s %3.0f%%  steal %.1f%%",
            pc, pt ? 100 * (y[3] - x[3]) / pt : 0,
            lc, lt ? 100 * (y[5] - x[5]) / lt : 0,
            t ? 100 * (y[2] - x[2]) / t : 0 }')
    # Requests per second of busy proxy core: with two cores the load generator's core is busy
    # too, and a proxy that leaves its core partly idle is limited by wrk, not by itself.
    local per_core
    per_core=$(awk -v b="$before" -v a="$after" -v r="$rps" 'BEGIN {
        split(b, x, " "); split(a, y, " ")
        pt = y[4] - x[4]; busy = pt ? (y[3] - x[3]) / pt : 0
        if (busy > 0) printf "%.0f", r / busy }')
    local line
    # TCP segments per answer (2 for a request and its answer, 4 with the origin's leg: more
    # means pure ACKs or split writes) and the proxy's sleeps per second.
    local wire
    # On the forward path, how long the origin waited for its core (shared with wrk) per answer:
    # that wait is in every forwarded request's latency, whichever proxy is in front.
    wire=$(awk -v s="$segs" -v r="$req" -v z="$sleeps" -v d="$secs" -v q="$queued" -v p="$path" 'BEGIN {
        printf "segs/answer %s  sleeps %5.0f/s", (s > 0 && r > 0) ? sprintf("%.2f", s / r) : "-", z / d
        if (p == "forward" && r > 0) printf "  origin queued %.1fus/answer", q / r / 1000 }')
    line=$(printf 'round %s/%s  %-11s %-7s  %10.1f req/s  p50 %8s  p99 %8s  %9d answers  %s  %s' \
        "$round" "$ROUNDS" "$proxy" "$path" "$rps" "$(fmt_lat "$p50")" "$(fmt_lat "$p99")" "$req" "$cpu" "$wire")
    # CPU time of the proxy process per answer (all its threads; nginx: its worker).
    local cpu_us
    cpu_us=$(awk -v t="$ticks" -v r="$req" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        if (r > 0) printf "%.2f", t / hz * 1e6 / r }')
    line+="  cpu ${cpu_us:--}us/answer"
    if [[ -n $audited ]]; then line+="  audit $audited lines, access $accessed lines"; fi
    if [[ -n $logged_lines ]]; then line+="  access.log $logged_lines lines (64k buffer pending)"; fi
    if [[ -n $lines_file ]]; then : >"$lines_file"; fi
    if ((${#problems[@]})); then
        line+="  PROBLEM: $(
            IFS=';'
            echo "${problems[*]}"
        )"
        ANOMALIES+=("round $round $proxy $path: ${problems[*]}")
    fi
    echo "$line"
    ROUND_LINES+=("$line")
    # Fields: proxy path req/s p50 p99 req/core-s cpu/answer busy%(proxy core) busy%(load core).
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$proxy" "$path" "$rps" "$p50" "$p99" "$per_core" "$cpu_us" \
        "$(cpu_busy "$before" "$after" 3 4)" "$(cpu_busy "$before" "$after" 5 6)" >>"$RAW"
}

# The contenders of each path, in the order of round 1; each round starts with the next one.
BLOCK_CONTENDERS=(icp-gate nginx)
FORWARD_CONTENDERS=(icp-gate nginx passthrough)
if ((FLOOR == 1)); then
    BLOCK_CONTENDERS+=(floor)
    FORWARD_CONTENDERS+=(floor)
fi
# run_round ROUND: every contender on the block path, then on the forward path.
run_round() {
    local proxy
    for proxy in $(round_order "$1" "${BLOCK_CONTENDERS[@]}"); do load "$1" "$proxy" block; done
    for proxy in $(round_order "$1" "${FORWARD_CONTENDERS[@]}"); do load "$1" "$proxy" forward; done
}

GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null || true) ]]; then GIT_REV+="+uncommitted"; fi
NGINX_VERSION=$(nginx -v 2>&1 | sed 's/^nginx version: //')
WRK_VERSION=$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $2 }')
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
HEADER=$(
    cat <<EOF
icp-gate load test, $(date -u +%Y-%m-%dT%H:%M:%SZ), icp-gate $GIT_REV
machine: $CPUS CPUs ($CPU_MODEL), $(uname -sr), $NGINX_VERSION, wrk $WRK_VERSION
registry: $RECORDS records (nginx map: $MAP_ENTRIES entries, hostnames)
load: wrk -t1 -c$CONNECTIONS, keep-alive, $ROUNDS rounds x ${DURATION}s per (proxy, path), warm-up ${WARMUP}s
pinning: proxies on cpu $PROXY_CPU (one at a time under load), wrk on cpu $LOAD_CPU, origin on cpu $ORIGIN_CPU
logs: $LOGS_NOTE
block path: Host $BLOCK_HOST -> 403 unfiled, body $BLOCK_BYTES bytes (nginx: $NGINX_BLOCK_STYLE)
  response header+body bytes: icp-gate $GATE_BLOCK_SIZES, nginx $NGINX_BLOCK_SIZES
forward path: Host $FORWARD_HOST -> origin 200
  response header+body bytes: ${FWD_SIZES[*]}
floor: $FLOOR_NOTE
order: each path's contenders in turn, round 1 ${BLOCK_CONTENDERS[*]} / ${FORWARD_CONTENDERS[*]}, each round starting with the next one
EOF
)
echo
echo "$HEADER"
echo

if ((WARMUP > 0)); then
    note "warming up (${WARMUP}s per proxy and path)"
    run_round warmup
fi
for ((round = 1; round <= ROUNDS; round++)); do
    run_round "$round"
done

LIVE=("icp-gate $GATE_PID" "nginx $NGINX_PID" "passthrough $PASS_PID" "origin $ORIGIN_PID")
((FLOOR == 1)) && LIVE+=("floor-block $FLOOR_BLOCK_PID" "floor-forward $FLOOR_FORWARD_PID")
for pair in "${LIVE[@]}"; do
    read -r name pid <<<"$pair"
    kill -0 "$pid" 2>/dev/null || ANOMALIES+=("$name exited during the run (kept output: KEEP_TMP=1, $TMP/$name.out)")
done

# ---------------------------------------------------------------------------------------------
# Summary: medians over the rounds, side by side, and the ratios.

cell() { # FIELD PROXY PATH
    local v
    v=$(median "$1" "$2" "$3")
    if [[ -z $v ]]; then echo "-"; elif [[ $1 == 3 || $1 == 6 ]]; then printf '%.0f' "$v"; elif [[ $1 == 7 ]]; then printf '%.2fus' "$v"; else fmt_lat "$v"; fi
}

TABLE=$(
    printf '%-8s %-12s %11s %11s %11s %11s %10s %10s %10s\n' path metric icp-gate nginx floor passthrough \
        gate/nginx gate/floor gate/pass
    for path in block forward; do
        for f in 3 6 7 4 5; do
            case $f in 3) metric="req/s" ;; 6) metric="req/core-s" ;; 7) metric="cpu/answer" ;; 4) metric="p50 latency" ;; 5) metric="p99 latency" ;; esac
            g=$(median $f icp-gate $path)
            n=$(median $f nginx $path)
            fl=$(median $f floor $path)
            p=$(median $f passthrough $path)
            printf '%-8s %-12s %11s %11s %11s %11s %10s %10s %10s\n' "$path" "$metric" \
                "$(cell $f icp-gate $path)" "$(cell $f nginx $path)" "$(cell $f floor $path)" "$(cell $f passthrough $path)" \
                "$(ratio "$g" "$n")" "$(ratio "$g" "$fl")" "$(ratio "$g" "$p")"
        done
        printf '%-8s %-12s %11s %11s %11s %11s\n' "$path" "ceiling" \
            "$(ceiling "$(median 8 icp-gate $path)" "$(median 9 icp-gate $path)")" \
            "$(ceiling "$(median 8 nginx $path)" "$(median 9 nginx $path)")" \
            "$(ceiling "$(median 8 floor $path)" "$(median 9 floor $path)")" \
            "$(ceiling "$(median 8 passthrough $path)" "$(median 9 passthrough $path)")"
    done
    echo
    echo "medians over $ROUNDS round(s). req/s ratio above 1: icp-gate serves more; latency ratio below 1: icp-gate answers faster."
    echo "floor: proxy/examples/floor.rs writing the gate's answer for the path on every read, parsing nothing (on the forward path it answers itself: no origin); gate/floor is how close the gate gets to what this rig allows."
    echo "ceiling: the core 95% busy or more in the median run (proxy core, load core: wrk's, also the origin's unless ORIGIN_CPU says otherwise)."
    echo "req/core-s: req/s divided by the busy share of the proxy's core (what one fully busy core would serve, if the load generator kept up)."
    echo "cpu/answer: CPU time of the proxy process per answer (user and system, every thread; nginx: its worker), from /proc/PID/stat; below 1x the gate spends less CPU per answer."
    if ((HANGUP_LINES > 0)); then
        echo "note: $HANGUP_LINES ERROR lines logged by icp-gate for clients that closed a connection with a request in flight (wrk stopping); not counted as problems."
    fi
)
summary_line http block req/s 3 7 8 9
summary_line http forward req/s 3 7 8 9
finish_run note
