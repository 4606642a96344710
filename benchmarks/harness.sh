# Sourced by run.sh and workers.sh: find the shared side-by-side harness, set it up if this
# machine lacks it, and install this checkout into its virtual environment.
# Sets $here, $repo, $bench and $venv.
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
bench=${BENCH_DIR:-$repo/../shared/bench}
venv=${BENCH_VENV:-/tmp/benchvenv}
if [ ! -f "$bench/bench.py" ]; then
    echo "no benchmark harness at $bench (set BENCH_DIR)" >&2
    exit 2
fi
if ! command -v wrk >/dev/null || [ ! -x "$venv/bin/python" ]; then
    BENCH_VENV=$venv sh "$bench/setup.sh"
fi
# A normal (not editable) install: twistd must find twisted/plugins/twisted_rp_plugin.py.
"$venv/bin/pip" install --quiet "$repo"

# Time the hypervisor took from CPU 0 (the proxy's) while the harness ran: its noise check
# sees only other processes, and steal slows the cases of a run unevenly.
cpu0_times() {
    awk '$1 == "cpu0" { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat 2>/dev/null
}
report_steal() {
    echo "$1 $2" | awk '$4 > $2 { printf "steal on CPU 0 during the run: %.1f %%\n", 100 * ($3 - $1) / ($4 - $2) }'
}
