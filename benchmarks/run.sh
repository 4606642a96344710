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
. "$(dirname "$0")/harness.sh"
only=${BENCH_ONLY:-direct,haproxy,twisted,twisted-l4,twisted_rp}
before=$(cpu0_times)
status=0
"$bench/run.sh" --only "$only" \
    --proxy 'twisted_rp=twistd -n --pidfile= reverseproxy --listen tcp:{port}:interface={host} --backend {backend_url}' \
    "$@" || status=$?
report_steal "$before" "$(cpu0_times)"
exit $status
