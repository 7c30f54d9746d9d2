#!/usr/bin/env bash
# The whole comparison in one command: icp-gate against nginx and against the floor (a minimal
# server writing the gate's bytes, proxy/examples/floor.rs) on every path the targets of
# ../shared/design.md name, HTTP and TLS, logs on as operators run them. It builds once (release:
# icp-gate, the passthrough, hello_replay and floor examples), runs run.sh, tls.sh and
# terminate.sh one after the other with the same settings, and prints one table from their
# machine-readable summaries. How to read it: benches/load/README.md, "The whole comparison".
#
#   benches/load/compare.sh                                   # 3 rounds x 10 s per (proxy, path)
#   SKIP_BUILD=1 ROUNDS=1 DURATION=2 WARMUP=1 RECORDS=10000 benches/load/compare.sh   # a smoke run
#
# Environment (defaults in brackets), passed on to the three harnesses: ROUNDS [3], DURATION
# [10], WARMUP [2], RECORDS [1000000], LOGS [on], PROXY_CPU [0], LOAD_CPU [1], FLOOR [1],
# KEEP_TMP [0]; its own: SKIP_BUILD [0] (1: use the binaries in the target directory as they
# are), HARNESSES [run tls terminate] (which to run), RESULTS
# [benches/load/results-compare-latest.txt] (the table, then each harness's own results).
#
# It exits 1 when a harness reported a problem or failed (each harness's own checks: answers,
# counters, every log line, the byte-identity of the floor's answers); the table is still
# printed and written, with "-" where a harness gave no figure.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
ROOT=$(cd "$HERE/../.." && pwd)

export ROUNDS=${ROUNDS:-3}
export DURATION=${DURATION:-10}
export WARMUP=${WARMUP:-2}
export RECORDS=${RECORDS:-1000000}
export LOGS PROXY_CPU=${PROXY_CPU:-0} LOAD_CPU=${LOAD_CPU:-1} FLOOR KEEP_TMP=${KEEP_TMP:-0}
HARNESSES=${HARNESSES:-run tls terminate}
RESULTS=${RESULTS:-$HERE/results-compare-latest.txt}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

note() { echo "compare.sh: $*" >&2; }

require_integers ROUNDS DURATION WARMUP RECORDS PROXY_CPU LOAD_CPU
check_logs
check_floor
for h in $HARNESSES; do
    [[ $h == run || $h == tls || $h == terminate ]] || die "HARNESSES may hold run, tls and terminate (got '$h')"
done

read -r LOAD1 LOAD5 LOAD15 _ </proc/loadavg
note "load average at start: $LOAD1 $LOAD5 $LOAD15 (1, 5, 15 min)"
warn_if_busy note

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    note "building icp-gate and the passthrough, hello_replay and floor examples (release)"
    (cd "$ROOT" && cargo build --release -q -p icp-gate --bin icp-gate &&
        cargo build --release -q -p icp-gate-proxy --example passthrough --example hello_replay --example floor)
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/icp-gate-compare.XXXXXX")
CHILD=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CHILD ]]; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SUMMARY=$TMP/summary.tsv
: >"$SUMMARY"
STATUS=()   # one line per harness
PROBLEMS=() # the problems each reported
for h in $HARNESSES; do
    note "running $h.sh"
    # In the background and waited for, so that a signal to this script reaches it at once.
    SKIP_BUILD=1 SUMMARY=$SUMMARY RESULTS=$TMP/results-$h.txt "$HERE/$h.sh" &
    CHILD=$!
    rc=0
    wait "$CHILD" || rc=$?
    CHILD=
    if ((rc == 0)); then
        STATUS+=("$h.sh: ok")
    elif [[ -f $TMP/results-$h.txt ]]; then
        STATUS+=("$h.sh: exit $rc, problems reported (below)")
        while IFS= read -r line; do PROBLEMS+=("$h.sh: $line"); done < <(sed -n '/^problems:$/,$p' "$TMP/results-$h.txt" | tail -n +2 | sed 's/^  //')
    else
        STATUS+=("$h.sh: exit $rc before its table (its error is in the output above)")
        PROBLEMS+=("$h.sh: exited $rc before its table")
    fi
done

# ---------------------------------------------------------------------------------------------
# The table: one line per path, from the summaries (lib.sh, summary_line).

# row KEY: the summary line of KEY ("suite<TAB>path"), or nothing.
row() { awk -F '\t' -v k="$1" '$1 "\t" $2 == k { print; exit }' "$SUMMARY"; }

PATHS_TABLE=(
    "http	block	HTTP block	1.2x"
    "http	forward	HTTP forward	1.0x"
    "tls	refuse	TLS passthrough refusal	1.5x"
    "tls	newconn	passthrough new conns	1.0x"
    "tls	keepalive	passthrough kept-alive	1.0x"
    "terminate	handshake	termination handshakes	1.0x"
    "terminate	h1	h1 kept-alive	1.0x"
    "terminate	h2	h2 kept-alive	1.0x"
    "terminate	block	block over TLS	1.2x"
)
FORMAT='%-24s %-10s %10s %10s %10s %10s %7s %10s %9s %9s %8s %-10s %-10s\n'
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain 2>/dev/null || true) ]]; then GIT_REV+="+uncommitted"; fi
CPUS=$(nproc --all 2>/dev/null || getconf _NPROCESSORS_ONLN)
HEADER="icp-gate against nginx and the floor, $(date -u +%Y-%m-%dT%H:%M:%SZ), icp-gate $GIT_REV
machine: $CPUS CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(uname -sr), $(nginx -v 2>&1 | sed 's/^nginx version: //')
load average at start: $LOAD1 $LOAD5 $LOAD15 (1, 5, 15 min; above 0.5 something else was running and the figures are noisy)
settings: ROUNDS=$ROUNDS DURATION=${DURATION}s WARMUP=${WARMUP}s RECORDS=$RECORDS LOGS=$LOGS FLOOR=$FLOOR, proxies on cpu $PROXY_CPU, load generators and origins on cpu $LOAD_CPU
harnesses: $(printf '%s; ' "${STATUS[@]}" | sed 's/; $//')"

TABLE=$(
    # shellcheck disable=SC2059
    printf "$FORMAT" path unit icp-gate nginx floor gate/nginx target gate/floor "cpu gate" "cpu nginx" "cpu g/n" "ceil gate" "ceil nginx"
    for entry in "${PATHS_TABLE[@]}"; do
        IFS=$'\t' read -r suite path label target <<<"$entry"
        line=$(row "$suite	$path")
        if [[ -z $line ]]; then
            why=-
            [[ " $HARNESSES " == *" ${suite/http/run} "* ]] || why="not run"
            # shellcheck disable=SC2059
            printf "$FORMAT" "$label" "$why" - - - - "$target" - - - - - -
            continue
        fi
        IFS=$'\t' read -r _ _ unit _ g gc gp gl n nc np nl f _ _ _ <<<"$line"
        for v in g gc gp gl n nc np nl f; do [[ ${!v} == - ]] && printf -v "$v" '%s' ""; done
        # shellcheck disable=SC2059
        printf "$FORMAT" "$label" "$unit" "$(num %.0f "$g")" "$(num %.0f "$n")" "$(num %.0f "$f")" \
            "$(ratio "$g" "$n")" "$target" "$(ratio "$g" "$f")" "$(num %.2fus "$gc")" "$(num %.2fus "$nc")" \
            "$(ratio "$gc" "$nc")" "$(ceiling "$gp" "$gl")" "$(ceiling "$np" "$nl")"
    done
    echo
    echo "medians over $ROUNDS round(s) of ${DURATION}s; each harness's own table and every run are below (and in its section of benches/load/README.md)."
    echo "icp-gate, nginx, floor: answers (refusals, connections) per second, one core each (cpu $PROXY_CPU), one at a time, in the same rounds."
    echo "gate/nginx against target: the design's targets (../shared/design.md, performance), logs on both sides."
    echo "gate/floor: against a minimal server writing the gate's bytes and parsing nothing (proxy/examples/floor.rs): how close the gate is to what this rig allows."
    echo "cpu gate, cpu nginx: CPU time of the proxy process (user and system, every thread; nginx: its worker) per answer; cpu g/n below 1: the gate spends less."
    echo "ceil: which core was 95% busy or more in that proxy's runs (proxy core, load core, both cores, neither). 'load core' or 'both cores': the load generator (and the origin) set the figure, and gate/nginx understates the difference; compare cpu per answer."
)

echo
echo "$HEADER"
echo
echo "$TABLE"
{
    echo "$HEADER"
    echo
    echo "$TABLE"
    if ((${#PROBLEMS[@]})); then
        echo
        echo "problems:"
        printf '  %s\n' "${PROBLEMS[@]}"
    fi
    for h in $HARNESSES; do
        echo
        echo "==================== $h.sh ===================="
        if [[ -f $TMP/results-$h.txt ]]; then cat "$TMP/results-$h.txt"; else echo "(no results: it stopped before its table)"; fi
    done
} >"$RESULTS"
note "table and the harnesses' results written to $RESULTS"
if ((${#PROBLEMS[@]})); then
    echo
    echo "problems seen during the run:"
    printf '  %s\n' "${PROBLEMS[@]}"
    exit 1
fi
