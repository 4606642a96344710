#!/bin/bash
# The cost of rewriting, as ratios against the same proxy without it, measured in one run.
#
#   benchmarks/rewrite_bench.sh                  # 10 s runs, 1 round
#   benchmarks/rewrite_bench.sh -d 5 -r 2        # 5 s runs, 2 rounds (medians)
#   MODES="plain headers gzip" benchmarks/rewrite_bench.sh
#   benchmarks/rewrite_bench.sh --callgrind      # instructions per request instead (no wrk)
#
# Same tools and CPU split as the shared harness (/work/shared/bench): an nginx backend (one
# worker) and wrk on CPU 1, the proxy on CPU 0.  The backend serves a 20 KiB HTML page; wrk
# asks for it with "Accept-Encoding: gzip" in every mode, so only what is installed on the
# route differs (benchmarks/rewrite_proxy.py: plain, headers, gzip, gzip-6, substitute,
# substitute-gzip).  Modes run in turn within each round, so noise on the machine spreads over
# all of them; before each, it waits (up to QUIET_WAIT=60 s) until the machine is less than
# QUIET=10 % busy.  Everything listens on 127.0.0.1; processes are stopped by PID.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
python=${PYTHON:-/tmp/venv/bin/python}
duration=10
callgrind=
rounds=1
conns=50
warmup=2
quiet=${QUIET:-10}
quiet_wait=${QUIET_WAIT:-60}
while [ $# -gt 0 ]; do
    case $1 in
        -d) duration=$2; shift 2 ;;
        -r) rounds=$2; shift 2 ;;
        -c) conns=$2; shift 2 ;;
        --callgrind) callgrind=1; shift ;;
        *) echo "usage: $0 [-d SECONDS] [-r ROUNDS] [-c CONNECTIONS] [--callgrind]" >&2; exit 2 ;;
    esac
done
modes=${MODES:-plain headers gzip gzip-6 substitute substitute-gzip}
backend_port=${BACKEND_PORT:-28180}
proxy_port=${PROXY_PORT:-28190}
for tool in wrk nginx taskset curl; do
    command -v $tool >/dev/null || { echo "$tool is needed (see /work/shared/bench/setup.sh)" >&2; exit 2; }
done

work=$(mktemp -d /tmp/rewrite-bench-XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

wait_port() {  # port pid: up to 15 s
    for _ in $(seq 150); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        kill -0 "$2" 2>/dev/null || { echo "process $2 exited" >&2; return 1; }
        sleep 0.1
    done
    echo "nothing on port $1" >&2
    return 1
}

busy_percent() {  # CPU use of the whole machine over one second, 100 = all CPUs
    read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ < /proc/stat
    sleep 1
    read -r _ u2 n2 s2 i2 w2 q2 sq2 st2 _ < /proc/stat
    local busy=$(( (u2 + n2 + s2 + q2 + sq2 + st2) - (u1 + n1 + s1 + q1 + sq1 + st1) ))
    local idle=$(( (i2 + w2) - (i1 + w1) ))
    echo $(( 100 * busy / (busy + idle + 1) ))
}

cpu_ticks() {  # utime + stime of process $1, in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

wait_quiet() {  # until the machine is below quiet% busy, for at most quiet_wait seconds
    local waited=0 busy
    while busy=$(busy_percent); [ "$busy" -gt "$quiet" ] && [ "$waited" -lt "$quiet_wait" ]; do
        waited=$((waited + 1))
    done
    [ "$busy" -le "$quiet" ] || echo "  (machine still ${busy}% busy after ${quiet_wait}s)" >&2
}

# A page of varied HTML (about 6:1 under gzip, a little more than most real pages), with the backend's URL in
# links for the substitution modes.
mkdir -p "$work/www" "$work/tmp"
"$python" - "$work/www/page.html" <<'PY'
import random, sys
rng = random.Random(6)
words = "proxy backend route stream chunk header value rewrite cache page item user list".split()
parts = ["<!doctype html><html><head><title>Items</title></head><body><ul>\n"]
size = len(parts[0])
while size < 20 * 1024 - 64:
    text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
    line = f'<li><a href="http://backend.internal/items/{rng.randint(1, 99999)}">{text}</a></li>\n'
    parts.append(line)
    size += len(line)
parts.append("</ul></body></html>\n")
open(sys.argv[1], "w").write("".join(parts))
PY
if [ -n "$callgrind" ]; then
    # The same page proxied in memory (benchmarks/rewrite_proxy.py --in-memory) under
    # callgrind: the instructions of 100 requests, the difference of a run of 110 and one of
    # 10 (start-up cancels out).  Deterministic, so valid on a busy machine.
    command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 2; }
    instructions() {  # mode count
        PYTHONPATH=$repo valgrind --tool=callgrind --callgrind-out-file=/dev/null \
            "$python" "$here/rewrite_proxy.py" "$1" --in-memory "$2" "$work/www/page.html" 2>&1 \
            | awk '/Collected :/ {print $4}'
    }
    echo "page: $(stat -c %s "$work/www/page.html") bytes, in 16 KiB reads; instructions per request"
    echo
    echo "| mode | instructions/request | vs plain |"
    echo "|---|---|---|"
    for mode in $modes; do
        per=$(( ($(instructions "$mode" 110) - $(instructions "$mode" 10)) / 100 ))
        [ "$mode" = plain ] && plain_per=$per
        printf '| %s | %d | %s |\n' "$mode" "$per" \
            "$(awk -v a="$per" -v b="${plain_per:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }')"
    done
    exit 0
fi

# nginx's worker may run as another user (when this runs as root): let it read the page.
chmod 755 "$work" "$work/www"
chmod 644 "$work/www/page.html"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    client_body_temp_path $work/tmp;
    proxy_temp_path $work/tmp;
    fastcgi_temp_path $work/tmp;
    uwsgi_temp_path $work/tmp;
    scgi_temp_path $work/tmp;
    server {
        listen 127.0.0.1:$backend_port backlog=4096;
        root $work/www;
        location = /page.html { default_type text/html; }
    }
}
CONF
taskset -c 1 nginx -e "$work/error.log" -p "$work" -c "$work/nginx.conf" &
pids+=($!)
wait_port "$backend_port" "${pids[-1]}"
page_size=$(stat -c %s "$work/www/page.html")
echo "page: $page_size bytes; wrk -t1 -c$conns -d${duration}s after ${warmup}s warm-up; $rounds round(s)"

declare -A results cpu
for round in $(seq "$rounds"); do
    for mode in $modes; do
        PYTHONPATH=$repo taskset -c 0 "$python" "$here/rewrite_proxy.py" "$mode" \
            --listen "127.0.0.1:$proxy_port" --backend "127.0.0.1:$backend_port" \
            2>"$work/proxy-$mode.log" &
        proxy=$!
        pids+=($proxy)
        wait_port "$proxy_port" "$proxy"
        # Check what the mode does before measuring it.
        url="http://127.0.0.1:$proxy_port/page.html"
        encoding=$(curl -s -o "$work/got" -H 'Accept-Encoding: gzip' -D - "$url" \
            | tr -d '\r' | awk -F': ' 'tolower($1)=="content-encoding" {print $2}')
        curl -s --compressed -o "$work/decoded" "$url"
        case $mode in
            *gzip*) [ "$encoding" = gzip ] || { echo "$mode: not compressed" >&2; exit 1; } ;;
            *) [ -z "$encoding" ] || { echo "$mode: unexpectedly encoded" >&2; exit 1; } ;;
        esac
        case $mode in
            substitute*) sed 's|http://backend.internal|https://www.example.com|g' "$work/www/page.html" > "$work/want" ;;
            *) cp "$work/www/page.html" "$work/want" ;;
        esac
        cmp "$work/decoded" "$work/want" >&2 || { echo "$mode: wrong body" >&2; head -c 300 "$work/decoded" >&2; cat "$work/proxy-$mode.log" >&2; exit 1; }
        got_size=$(stat -c %s "$work/got")
        wait_quiet
        taskset -c 1 wrk -t1 -c"$conns" -d"${warmup}s" -H 'Accept-Encoding: gzip' "$url" >/dev/null
        before=$(cpu_ticks "$proxy")
        out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" -H 'Accept-Encoding: gzip' "$url")
        after=$(cpu_ticks "$proxy")
        rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
        requests=$(echo "$out" | awk '/requests in/ {print $1}')
        # The proxy's CPU time per request: steadier than req/s on a machine others use.
        cpu_us=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" \
            'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
        errors=$(echo "$out" | grep -E 'Socket errors|Non-2xx' || true)
        [ -z "$errors" ] || echo "$mode: $errors" >&2
        results[$mode,$round]=$rps
        cpu[$mode,$round]=$cpu_us
        printf '  round %d  %-16s %10s req/s  %6s us CPU/request  (%d bytes on the wire)\n' \
            "$round" "$mode" "$rps" "$cpu_us" "$got_size"
        kill "$proxy"
        wait "$proxy" 2>/dev/null || true
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END { if (NR % 2) print v[(NR+1)/2]; else printf "%.3f\n", (v[NR/2] + v[NR/2+1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
echo
echo "Medians; ratios are taken per round against plain, then the median of those."
echo
echo "| mode | req/s | req/s vs plain | proxy CPU us/request | CPU vs plain |"
echo "|---|---|---|---|---|"
for mode in $modes; do
    values="" ratios="" cpus="" cpu_ratios=""
    for round in $(seq "$rounds"); do
        values="$values ${results[$mode,$round]}"
        ratios="$ratios $(ratio "${results[$mode,$round]}" "${results[plain,$round]:-0}")"
        cpus="$cpus ${cpu[$mode,$round]}"
        cpu_ratios="$cpu_ratios $(ratio "${cpu[$mode,$round]}" "${cpu[plain,$round]:-0}")"
    done
    printf '| %s | %s | %s | %s | %s |\n' "$mode" "$(echo "$values" | median)" \
        "$(echo "$ratios" | median)" "$(echo "$cpus" | median)" "$(echo "$cpu_ratios" | median)"
done
