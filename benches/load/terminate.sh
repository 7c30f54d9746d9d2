#!/usr/bin/env bash
# icp-gate TLS termination load harness: a `protocol = "tls"` listener of icp-gate holding a
# certificate (so it terminates) against nginx `listen ... ssl http2` with the same ECDSA P-256
# certificate, TLS 1.3 only, the same registry as a `map $host`, the same block page, both
# forwarding to the same cleartext HTTP/1.1 origin with upstream keep-alive; one core each, one
# run, logs on for both; and a floor (proxy/examples/floor.rs `tls`: rustls with the same
# certificate, writing the gate's answer for the path, parsing nothing). Four paths:
#   handshake  full TLS 1.3 handshakes, one forwarded request per connection (h2load --h1, Connection: close)
#   h1         HTTP/1.1 requests over kept-alive TLS connections, forwarded (h2load --h1)
#   h2         HTTP/2 requests over kept-alive TLS connections, forwarded (h2load, -m streams)
#   block      the block page over kept-alive TLS connections for a held but unfiled name (h2load --h1)
# How to read the output: benches/load/README.md, section "TLS termination".
#
#   benches/load/terminate.sh                      # 3 rounds of 10 s per (proxy, path)
#   ROUNDS=5 DURATION=30 benches/load/terminate.sh
#   PATHS="handshake block" ROUNDS=1 DURATION=3 benches/load/terminate.sh
#
# Environment (defaults in brackets): ROUNDS [3], DURATION seconds per run [10], WARMUP seconds
# per (proxy, path) before round 1 [2], PATHS [handshake h1 h2 block], RECORDS [1000000],
# BASE_PORT [18460] (uses BASE_PORT..BASE_PORT+6), PROXY_CPU [0], LOAD_CPU [1],
# HANDSHAKE_CLIENTS [32], H1_CLIENTS [64], H2_CLIENTS [16], H2_STREAMS [10],
# BLOCK_HOST [unfiled-load-test.cn], FORWARD_HOST [a connected name from the registry],
# LOGS [on: see lib.sh], SKIP_BUILD [0], KEEP_TMP [0],
# RESULTS [benches/load/results-terminate-latest.txt], FLOOR [1] (0: no floor), SUMMARY [none: a
# file to append the machine-readable summary to, see lib.sh].
#
# It installs nothing. Everything runs on 127.0.0.1 in a temporary directory; every process
# started here is stopped when the script exits, however it exits.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
ROOT=$(cd "$HERE/../.." && pwd)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
PATHS=${PATHS:-handshake h1 h2 block}
RECORDS=${RECORDS:-1000000}
BASE_PORT=${BASE_PORT:-18460}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
HANDSHAKE_CLIENTS=${HANDSHAKE_CLIENTS:-32}
H1_CLIENTS=${H1_CLIENTS:-64}
H2_CLIENTS=${H2_CLIENTS:-16}
H2_STREAMS=${H2_STREAMS:-10}
BLOCK_HOST=${BLOCK_HOST:-unfiled-load-test.cn}
FORWARD_HOST=${FORWARD_HOST:-}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS=${RESULTS:-$HERE/results-terminate-latest.txt}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

note() { echo "terminate.sh: $*" >&2; }

check_logs
check_floor
require_integers ROUNDS DURATION WARMUP RECORDS BASE_PORT PROXY_CPU LOAD_CPU HANDSHAKE_CLIENTS \
    H1_CLIENTS H2_CLIENTS H2_STREAMS
((ROUNDS >= 1)) || die "ROUNDS must be at least 1"
((DURATION >= 1)) || die "DURATION must be at least 1 second"
((BASE_PORT >= 1024 && BASE_PORT <= 65529)) || die "BASE_PORT must be from 1024 to 65529"
((PROXY_CPU != LOAD_CPU)) || die "PROXY_CPU and LOAD_CPU must be different cores"
for p in $PATHS; do
    [[ $p == handshake || $p == h1 || $p == h2 || $p == block ]] ||
        die "PATHS may hold handshake, h1, h2 and block (got '$p')"
done
[[ $BLOCK_HOST =~ ^[a-z0-9.-]+$ ]] || die "BLOCK_HOST must be a lower-case ASCII host name"
require_tools "apt-get install -y nginx nghttp2-client openssl util-linux curl" \
    nginx h2load openssl taskset curl awk
nginx -V 2>&1 | grep -q -- '--with-http_v2_module' || die "this nginx has no HTTP/2 module"

CPUS=$(nproc --all 2>/dev/null || getconf _NPROCESSORS_ONLN)
((PROXY_CPU < CPUS && LOAD_CPU < CPUS)) ||
    die "PROXY_CPU=$PROXY_CPU and LOAD_CPU=$LOAD_CPU must be below the number of CPUs ($CPUS)"

GATE_PORT=$BASE_PORT
ADMIN_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
ORIGIN_PORT=$((BASE_PORT + 3))
# The floor: one process per answer (handshake: the answer to `Connection: close`; h1 and h2:
# the forwarded answer; block: the block page).
FLOOR_HANDSHAKE_PORT=$((BASE_PORT + 4))
FLOOR_FORWARD_PORT=$((BASE_PORT + 5))
FLOOR_BLOCK_PORT=$((BASE_PORT + 6))
PORTS=("$GATE_PORT" "$ADMIN_PORT" "$NGINX_PORT" "$ORIGIN_PORT")
((FLOOR == 1)) && PORTS+=("$FLOOR_HANDSHAKE_PORT" "$FLOOR_FORWARD_PORT" "$FLOOR_BLOCK_PORT")
for port in "${PORTS[@]}"; do
    port_in_use "$port" && die "127.0.0.1:$port is already in use (the harness uses BASE_PORT..BASE_PORT+6; set BASE_PORT)"
done
warn_if_busy note

TMP=$(mktemp -d "${TMPDIR:-/tmp}/icp-gate-terminate.XXXXXX")
chmod 755 "$TMP" # nginx workers run as nobody when the harness runs as root
PROCS=()
LOAD_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n ${LOAD_PID:-} ]]; then kill -TERM "$LOAD_PID" 2>/dev/null || true; fi
    stop_all note
    wait 2>/dev/null || true
    if [[ $KEEP_TMP == 1 ]]; then note "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

GATE=$TARGET_DIR/release/icp-gate
FLOOR_BIN=$TARGET_DIR/release/examples/floor
if [[ $SKIP_BUILD != 1 ]]; then
    note "building icp-gate and the floor example (release)"
    (cd "$ROOT" && cargo build --release -q -p icp-gate --bin icp-gate &&
        cargo build --release -q -p icp-gate-proxy --example floor)
fi
[[ -x $GATE ]] || die "$GATE not found: run cargo build --release"
if ((FLOOR == 1)); then
    [[ -x $FLOOR_BIN ]] || die "$FLOOR_BIN not found: run cargo build --release -p icp-gate-proxy --example floor (or FLOOR=0)"
fi

# ---------------------------------------------------------------------------------------------
# Registry (the gate's snapshot, nginx's map), one certificate for both names, the origin.

registry_with_map
if awk -F '\t' -v h="$BLOCK_HOST" '$1 == h { found = 1 } END { exit !found }' "$REGISTRY"; then
    die "BLOCK_HOST $BLOCK_HOST is in the registry: pick a name that is not"
fi

mkdir -p "$TMP/certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$TMP/certs/site.key" -out "$TMP/certs/site.crt" -subj "/CN=$FORWARD_HOST" \
    -addext "subjectAltName=DNS:$FORWARD_HOST,DNS:$BLOCK_HOST" >/dev/null 2>&1 ||
    die "openssl could not make the certificate"

write_origin_conf "$TMP/origin" "$ORIGIN_PORT"
note "starting the origin (nginx, cleartext HTTP/1.1) on 127.0.0.1:$ORIGIN_PORT, cpu $LOAD_CPU"
start origin TERM "$LOAD_CPU" nginx -e "$TMP/origin/error.log" -p "$TMP/origin" -c "$TMP/origin/nginx.conf"
ORIGIN_PID=$STARTED_PID
wait_until origin "$ORIGIN_PID" 60 curl -sf -o /dev/null -m 2 "http://127.0.0.1:$ORIGIN_PORT/"

# ---------------------------------------------------------------------------------------------
# icp-gate: one `tls` listener terminating with the certificate, one thread, logging as LOGS says
# (lib.sh: by default the access log and the audit log to files, as an operator runs it).

cat >"$TMP/icp-gate.toml" <<CONF
[[listener]]
name = "tls"
address = "127.0.0.1:$GATE_PORT"
protocol = "tls"
require = "connected"
mode = "enforce"
upstream = ["127.0.0.1:$ORIGIN_PORT"]
# As nginx (keepalive_requests 1000000): no reconnects in the middle of a round.
max_requests_per_connection = 1000000
keepalive_timeout_seconds = 300

[tls]
certificates = "$TMP/certs"

$(gate_common_sections "$TMP" "$REGISTRY" "$ADMIN_PORT")
CONF
note "starting icp-gate on 127.0.0.1:$GATE_PORT (admin $ADMIN_PORT), cpu $PROXY_CPU"
start_gate_ready "$TMP/icp-gate.toml" "$PROXY_CPU" "$ADMIN_PORT"

# The gate's block page over TLS, once: nginx serves exactly these bytes.
curl -sk --http1.1 -o "$TMP/block.html" -D "$TMP/block.headers" --resolve "$BLOCK_HOST:$GATE_PORT:127.0.0.1" \
    "https://$BLOCK_HOST:$GATE_PORT/"
grep -qi '^HTTP/1.1 403' "$TMP/block.headers" || die "icp-gate did not answer 403 over TLS for $BLOCK_HOST: $(head -1 "$TMP/block.headers")"
BLOCK_BYTES=$(wc -c <"$TMP/block.html")
((BLOCK_BYTES < 3800)) && ! grep -q '\$' "$TMP/block.html" ||
    die "the block page ($BLOCK_BYTES bytes) cannot go into an nginx return"

# ---------------------------------------------------------------------------------------------
# nginx: the same certificate, TLS 1.3, h2 and http/1.1, the same map and page, proxy_pass with
# upstream keep-alive, access_log buffered.

NGX=$TMP/nginx
mkdir -p "$NGX"
{
    printf "            return 403 '"
    sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g" "$TMP/block.html"
    printf "';\n"
} >"$NGX/block-return.conf"
{
    nginx_preamble "$NGX"
    cat <<EOF
$([[ $LOGS == off ]] && echo "    access_log off;" || echo "    access_log $NGX/access.log combined buffer=64k;")
    map_hash_max_size 4194304;
    map_hash_bucket_size 128;
    map \$host \$icp_block {
        hostnames;
        default 1;
        include $TMP/nginx-map.conf;
    }
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl http2 backlog=4096;
        ssl_certificate $TMP/certs/site.crt;
        ssl_certificate_key $TMP/certs/site.key;
        ssl_protocols TLSv1.3;
        http2_max_requests 1000000;
        server_name _;
        default_type "text/html; charset=utf-8";
        location / {
            if (\$icp_block) {
            add_header Cache-Control no-store always;
            add_header X-ICP-Block-Reason unfiled always;
            add_header X-Request-Id \$request_id always;
            add_header Content-Security-Policy "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'" always;
            add_header X-Content-Type-Options nosniff always;
            add_header Referrer-Policy no-referrer always;
            include $NGX/block-return.conf;
            }
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
} >"$NGX/nginx.conf"
note "starting nginx (ssl http2) on 127.0.0.1:$NGINX_PORT, cpu $PROXY_CPU"
start nginx TERM "$PROXY_CPU" nginx -e "$NGX/error.log" -p "$NGX" -c "$NGX/nginx.conf"
NGINX_PID=$STARTED_PID
wait_until nginx "$NGINX_PID" 300 curl -skf -o /dev/null -m 2 --resolve "$FORWARD_HOST:$NGINX_PORT:127.0.0.1" \
    "https://$FORWARD_HOST:$NGINX_PORT/"

# Before any load: both proxies forward the filed name over h1 and h2 and answer the held
# unfiled one with the same page.
for pair in "icp-gate $GATE_PORT" "nginx $NGINX_PORT"; do
    read -r name port <<<"$pair"
    for v in --http1.1 --http2; do
        body=$(curl -sk $v -m 5 --resolve "$FORWARD_HOST:$port:127.0.0.1" "https://$FORWARD_HOST:$port/" || true)
        [[ $body == "$ORIGIN_BODY" ]] || die "$name: $FORWARD_HOST over TLS ($v) did not reach the origin (got '$body')"
    done
    curl -sk -o "$TMP/probe-$name.html" -w '%{http_code}' --resolve "$BLOCK_HOST:$port:127.0.0.1" \
        "https://$BLOCK_HOST:$port/" >"$TMP/probe-$name.code"
    [[ $(cat "$TMP/probe-$name.code") == 403 ]] || die "$name: $BLOCK_HOST got $(cat "$TMP/probe-$name.code"), expected 403"
    # The gate's page carries its request id; nginx serves the bytes taken above, one id.
    (($(wc -c <"$TMP/probe-$name.html") == BLOCK_BYTES)) || die "$name's block page is not $BLOCK_BYTES bytes"
done

# ---------------------------------------------------------------------------------------------
# The floor: `floor tls` with the certificate the gate holds, one process per answer, each the
# gate's answer for its path as the load's requests get it (status line, headers, body; over h2
# as curl shows it), captured now. Each checked: the floor writes those bytes, and they are the
# gate's but for request ids and dates.

# gate_answer FILE PORT HOST CURL_ARGS...: one answer over TLS from 127.0.0.1:PORT for HOST.
gate_answer() {
    local file=$1 port=$2 host=$3
    shift 3
    capture_answer "$file" -k "$@" --resolve "$host:$port:127.0.0.1" "https://$host:$port/"
}
FLOOR_NOTE="none"
if ((FLOOR == 1)); then
    CLOSE=(-H 'Connection: close')
    gate_answer "$TMP/floor-handshake.bin" "$GATE_PORT" "$FORWARD_HOST" --http1.1 "${CLOSE[@]}"
    gate_answer "$TMP/floor-h1.bin" "$GATE_PORT" "$FORWARD_HOST" --http1.1
    gate_answer "$TMP/floor-h2.txt" "$GATE_PORT" "$FORWARD_HOST" --http2
    gate_answer "$TMP/floor-block.bin" "$GATE_PORT" "$BLOCK_HOST" --http1.1
    grep -qi '^connection: close' "$TMP/floor-handshake.bin" ||
        die "the gate's answer to Connection: close does not say Connection: close"
    note "starting the floor (tls: handshake $FLOOR_HANDSHAKE_PORT, forward h1/h2 $FLOOR_FORWARD_PORT, block $FLOOR_BLOCK_PORT), cpu $PROXY_CPU"
    CERT=("$TMP/certs/site.crt" "$TMP/certs/site.key")
    start floor-handshake TERM "$PROXY_CPU" "$FLOOR_BIN" tls "127.0.0.1:$FLOOR_HANDSHAKE_PORT" "${CERT[@]}" "$TMP/floor-handshake.bin"
    FLOOR_HANDSHAKE_PID=$STARTED_PID
    start floor-forward TERM "$PROXY_CPU" "$FLOOR_BIN" tls "127.0.0.1:$FLOOR_FORWARD_PORT" "${CERT[@]}" "$TMP/floor-h1.bin" "$TMP/floor-h2.txt"
    FLOOR_FORWARD_PID=$STARTED_PID
    start floor-block TERM "$PROXY_CPU" "$FLOOR_BIN" tls "127.0.0.1:$FLOOR_BLOCK_PORT" "${CERT[@]}" "$TMP/floor-block.bin"
    FLOOR_BLOCK_PID=$STARTED_PID
    for entry in "handshake $FLOOR_HANDSHAKE_PID $FLOOR_HANDSHAKE_PORT" "forward $FLOOR_FORWARD_PID $FLOOR_FORWARD_PORT" \
        "block $FLOOR_BLOCK_PID $FLOOR_BLOCK_PORT"; do
        read -r name pid port <<<"$entry"
        wait_until "floor-$name" "$pid" 10 curl -sk -o /dev/null -m 2 "https://127.0.0.1:$port/"
    done
    for entry in "handshake $FLOOR_HANDSHAKE_PORT $FORWARD_HOST --http1.1 -H Connection:close .bin" \
        "h1 $FLOOR_FORWARD_PORT $FORWARD_HOST --http1.1 .bin" "h2 $FLOOR_FORWARD_PORT $FORWARD_HOST --http2 .txt" \
        "block $FLOOR_BLOCK_PORT $BLOCK_HOST --http1.1 .bin"; do
        read -r -a args <<<"$entry"
        name=${args[0]} port=${args[1]} host=${args[2]} ext=${args[-1]}
        extra=("${args[@]:3:${#args[@]}-4}")
        gate_answer "$TMP/probe-floor-$name" "$port" "$host" "${extra[@]}"
        cmp -s "$TMP/probe-floor-$name" "$TMP/floor-$name$ext" || die "the floor's $name answer is not the bytes it was given"
        gate_answer "$TMP/probe-gate-$name" "$GATE_PORT" "$host" "${extra[@]}"
        same_bytes_but_ids "$TMP/probe-gate-$name" "$TMP/probe-floor-$name" ||
            die "the floor's $name answer differs from the gate's (beyond request ids and dates)"
    done
    FLOOR_NOTE="proxy/examples/floor.rs tls (rustls, TLS 1.3, the same certificate), the gate's answers as captured: handshake $(wc -c <"$TMP/floor-handshake.bin") B, h1 $(wc -c <"$TMP/floor-h1.bin") B, h2 $(wc -c <"$TMP/floor-h2.txt") B as curl shows it, block $(wc -c <"$TMP/floor-block.bin") B (checked the same as the gate's but for ids and dates)"
fi

# ---------------------------------------------------------------------------------------------
# Load.

# h2load output -> "req/s done succeeded failed 2xx 4xx mean-time-for-request(us)"
parse_h2load() {
    awk '
        function us(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return (v + 0) * 1000
            if (v ~ /s$/) return (v + 0) * 1000000
            return v + 0
        }
        /^finished in/ { rps = $4 }
        /^requests:/ { done = $6; ok = $8; bad = $10 + $12 + $14 }
        /^status codes:/ { s2 = $3; s4 = $7 }
        /^time for request:/ { mean = us($6) }
        END { printf "%s %d %d %d %d %d %d\n", rps, done, ok, bad, s2, s4, mean }' "$1"
}


# The longest a load generator may run before it is killed and the run is a PROBLEM: h2load's
# -D has been seen to run on for good when its clients completed their connections only after
# the duration was over (on a loaded machine), instead of stopping.
LOAD_LIMIT=$((DURATION * 10 + 60))
ANOMALIES=()
ROUND_LINES=()
RAW=$TMP/rounds.tsv
: >"$RAW"
HANDSHAKE_REQUESTS=0

load() { # ROUND PROXY PATH
    local round=$1 proxy=$2 path=$3 port pid host
    case $proxy in
        icp-gate) port=$GATE_PORT pid=$GATE_PID ;;
        nginx) port=$NGINX_PORT pid=$NGINX_PID ;;
        floor)
            case $path in
                handshake) port=$FLOOR_HANDSHAKE_PORT pid=$FLOOR_HANDSHAKE_PID ;;
                h1 | h2) port=$FLOOR_FORWARD_PORT pid=$FLOOR_FORWARD_PID ;;
                block) port=$FLOOR_BLOCK_PORT pid=$FLOOR_BLOCK_PID ;;
            esac
            ;;
    esac
    host=$FORWARD_HOST
    [[ $path == block ]] && host=$BLOCK_HOST
    local secs=$DURATION
    [[ $round == warmup ]] && secs=$WARMUP
    local out=$TMP/load-$round-$proxy-$path.txt
    local url="https://$host:$port/" before after t0 t1
    t0=$(proc_ticks "$pid")
    before=$(cpu_snapshot "$PROXY_CPU" "$LOAD_CPU")
    case $path in
        handshake)
            local n=$HANDSHAKE_REQUESTS
            [[ $round == warmup ]] && n=$((HANDSHAKE_CLIENTS * 20))
            timeout -k 5 "$LOAD_LIMIT" taskset -c "$LOAD_CPU" h2load --h1 -H 'Connection: close' -n "$n" -c "$HANDSHAKE_CLIENTS" -m 1 \
                --connect-to "127.0.0.1:$port" "$url" >"$out" 2>&1 &
            ;;
        h1 | block)
            timeout -k 5 "$LOAD_LIMIT" taskset -c "$LOAD_CPU" h2load --h1 -D "$secs" -c "$H1_CLIENTS" -m 1 \
                --connect-to "127.0.0.1:$port" "$url" >"$out" 2>&1 &
            ;;
        h2)
            timeout -k 5 "$LOAD_LIMIT" taskset -c "$LOAD_CPU" h2load -D "$secs" -c "$H2_CLIENTS" -m "$H2_STREAMS" \
                --connect-to "127.0.0.1:$port" "$url" >"$out" 2>&1 &
            ;;
    esac
    LOAD_PID=$!
    local load_rc=0
    wait "$LOAD_PID" || load_rc=$?
    LOAD_PID=
    after=$(cpu_snapshot "$PROXY_CPU" "$LOAD_CPU")
    t1=$(proc_ticks "$pid")
    local rate done ok bad s2 s4 lat problems=()
    ((load_rc != 124 && load_rc != 137)) || problems+=("h2load had not finished after ${LOAD_LIMIT}s: killed")
    read -r rate done ok bad s2 s4 lat <<<"$(parse_h2load "$out")"
    if [[ -z $rate || $rate == 0 ]]; then
        problems+=("h2load output unreadable: $(tr '\n' ' ' <"$out" | head -c 300)")
        rate=0 done=0 lat=0
    fi
    # (The floor's warm-up does not size the runs: they last about DURATION for the gate and nginx.)
    if [[ $path == handshake && $round == warmup && $proxy != floor ]]; then
        HANDSHAKE_WARM_RATE=$(awk -v a="${HANDSHAKE_WARM_RATE:-0}" -v b="$rate" 'BEGIN { print (b > a) ? b : a }')
    fi
    [[ $round == warmup ]] && return 0
    # h2load counts a 4xx answer as failed: on the block path every answer is a 403.
    if [[ $path == block ]]; then
        ((s4 == done && s2 == 0)) || problems+=("h2load: $done done, $s2 2xx, $s4 4xx (every answer should be the 403)")
    else
        ((bad == 0 && ok == done && s2 == done)) ||
            problems+=("h2load: $done done, $ok succeeded, $bad failed, $s2 2xx, $s4 4xx")
    fi
    kill -0 "$pid" 2>/dev/null || problems+=("$proxy is no longer running")
    local us_per_req
    us_per_req=$(us_per "$((t1 - t0))" "$done")
    local line
    line=$(printf 'round %s/%s  %-8s %-9s  %10.1f %-8s  mean %8s  %9d done  %s  cpu/req %7s us' \
        "$round" "$ROUNDS" "$proxy" "$path" "$rate" "$([[ $path == handshake ]] && echo conn/s || echo req/s)" \
        "$(fmt_us "$lat")" \
        "$done" "$(cpu_report "$before" "$after" "$PROXY_CPU" "$LOAD_CPU")" "$us_per_req")
    if ((${#problems[@]})); then
        line+="  PROBLEM: ${problems[*]}"
        ANOMALIES+=("round $round $proxy $path: ${problems[*]}")
    fi
    echo "$line"
    ROUND_LINES+=("$line")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$proxy" "$path" "$rate" "$us_per_req" \
        "$(cpu_busy "$before" "$after" 3 4)" "$(cpu_busy "$before" "$after" 5 6)" >>"$RAW"
}

CONTENDERS=(icp-gate nginx)
((FLOOR == 1)) && CONTENDERS+=(floor)
run_pair() { # ROUND PATH: every contender, each round starting with the next one
    local proxy
    for proxy in $(round_order "$1" "${CONTENDERS[@]}"); do load "$1" "$proxy" "$2"; done
}

GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null || true) ]]; then GIT_REV+="+uncommitted"; fi
HEADER=$(
    cat <<EOF
icp-gate TLS termination load test, $(date -u +%Y-%m-%dT%H:%M:%SZ), icp-gate $GIT_REV
machine: $CPUS CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr), $(nginx -v 2>&1 | sed 's/^nginx version: //'), h2load $(h2load --version 2>&1 | awk 'NR == 1 { print $2 }'), $(openssl version | awk '{ print $1, $2 }')
registry: $RECORDS records (nginx map \$host: $MAP_ENTRIES entries, hostnames); certificate ECDSA P-256 for $FORWARD_HOST and $BLOCK_HOST, TLS 1.3
pinning: proxies on cpu $PROXY_CPU (one at a time under load), h2load and the HTTP origin on cpu $LOAD_CPU
rounds: $ROUNDS x ${DURATION}s per (proxy, path), warm-up ${WARMUP}s, each round starting with the next of: ${CONTENDERS[*]}
logging: LOGS=$LOGS (on: icp-gate access_log_file + audit_log, nginx access_log combined buffer=64k; off: neither)
handshake: h2load --h1 -c $HANDSHAKE_CLIENTS, Connection: close (a full handshake per request); h1 and block: h2load --h1 -c $H1_CLIENTS; h2: h2load -c $H2_CLIENTS -m $H2_STREAMS
floor: $FLOOR_NOTE
EOF
)
echo
echo "$HEADER"
echo
if ((WARMUP > 0)) || [[ " $PATHS " == *" handshake "* ]]; then
    note "warming up"
    for path in $PATHS; do WARMUP=$((WARMUP > 0 ? WARMUP : 1)) run_pair warmup "$path"; done
fi
HANDSHAKE_REQUESTS=$(awk -v r="${HANDSHAKE_WARM_RATE:-0}" -v d="$DURATION" -v c="$HANDSHAKE_CLIENTS" \
    'BEGIN { n = int(r * d); if (n < c * 10) n = c * 10; print n }')
for ((round = 1; round <= ROUNDS; round++)); do
    for path in $PATHS; do run_pair "$round" "$path"; done
done
LIVE=("icp-gate $GATE_PID" "nginx $NGINX_PID" "origin $ORIGIN_PID")
((FLOOR == 1)) && LIVE+=("floor-handshake $FLOOR_HANDSHAKE_PID" "floor-forward $FLOOR_FORWARD_PID" "floor-block $FLOOR_BLOCK_PID")
for pair in "${LIVE[@]}"; do
    read -r name pid <<<"$pair"
    kill -0 "$pid" 2>/dev/null || ANOMALIES+=("$name exited during the run")
done

target() { case $1 in block) echo 1.2x ;; *) echo 1.0x ;; esac }
TABLE=$(
    three_way_rows 4 1 "cpu/req gate/ngx/flr"
    echo
    echo "medians over $ROUNDS round(s). handshake: new TLS connections/s (a full TLS 1.3 handshake and one forwarded request each); h1, h2: forwarded requests/s on kept-alive connections; block: block pages/s on kept-alive connections."
    echo "gate/floor: against the floor (rustls with the same certificate writing the gate's answer, no origin), what this rig allows."
    echo "cpu/req: CPU time of the proxy process (user+system) per request or connection. ceiling: a core 95% busy or more ('load core': h2load and the origin limited the run, so the ratio understates the difference)."
)
for path in $PATHS; do
    unit="req/s"
    [[ $path == handshake ]] && unit="conn/s"
    summary_line terminate "$path" "$unit" 3 4 5 6
done
finish_run note
