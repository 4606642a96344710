#!/bin/sh
# Run the shared side-by-side harness with twisted_rp plugged in next to its peers.
#
#   benchmarks/run.sh                      # twisted_rp vs direct, haproxy, twisted, twisted-l4
#   benchmarks/run.sh --rounds 3 -d 10     # any other bench.py option is passed through
#
# The proxy runs as `twistd -n reverseproxy` in quick mode, pinned to CPU 0 by the harness,
# with its default features on: strict parsing, X-Forwarded-*, Forwarded, Via, X-Request-ID.
# The figures that matter are ratios against the peers measured in the same run.
set -eu
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
only=${BENCH_ONLY:-direct,haproxy,twisted,twisted-l4,twisted_rp}
exec "$bench/run.sh" --only "$only" \
    --proxy 'twisted_rp=twistd -n --pidfile= reverseproxy --listen tcp:{port}:interface={host} --backend {backend_url}' \
    "$@"
