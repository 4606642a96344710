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
