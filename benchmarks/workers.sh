#!/bin/sh
# Requests/s of twisted_rp with 1 and 2 worker processes, in one run of the shared harness.
#
#   benchmarks/workers.sh                  # /small, 10 s runs, 3 rounds (3 to 10 minutes)
#   benchmarks/workers.sh -d 5 --rounds 1  # any other bench.py option is passed through
#
# The harness pins the proxy to CPU 0 and the backend and wrk to CPU 1.  One process
# (--workers 1, today's twisted_rp) stays on CPU 0; two workers are let onto both CPUs
# (taskset -c 0,1 inside the proxy's command), so on a two-core machine they share CPU 1
# with the load generator and the backend: the ratio printed at the end is what this machine
# shows, not what two free cores would (close to 2x with the load generator elsewhere).
# BENCH_ONLY=direct,twisted_rp-1,twisted_rp-2,twisted_rp-2-cpu0 adds two workers both kept on
# CPU 0, which shows what running as workers costs on one core.
set -eu
. "$(dirname "$0")/harness.sh"
out=${BENCH_OUT:-/tmp/proxybench-results/workers-$(date +%Y%m%d-%H%M%S)}
quick='reverseproxy --listen tcp:{port}:interface={host} --backend {backend_url}'
status=0
"$bench/run.sh" --only "${BENCH_ONLY:-direct,twisted_rp-1,twisted_rp-2}" --paths small \
    --rounds 3 --out "$out" \
    --proxy "twisted_rp-1=twistd -n --pidfile= $quick" \
    --proxy "twisted_rp-2=taskset -c 0,1 twistd -n --pidfile= $quick --workers 2" \
    --proxy "twisted_rp-2-cpu0=twistd -n --pidfile= $quick --workers 2" \
    "$@" || status=$?
[ -f "$out/results.json" ] || { echo "no results in $out" >&2; exit 1; }
python3 - "$out/results.json" <<'EOF'
import json, statistics, sys

records = json.load(open(sys.argv[1]))["results"]
rates = {}
for record in records:
    if "rps" in record:
        rates.setdefault((record["proxy"], record["path"]), []).append(record["rps"])
for path in sorted({path for _, path in rates}):
    one = rates.get(("twisted_rp-1", path))
    for case in ("twisted_rp-2", "twisted_rp-2-cpu0"):
        two = rates.get((case, path))
        if one and two:
            one_rate, two_rate = statistics.median(one), statistics.median(two)
            print(f"{path}: twisted_rp-1 {one_rate:.0f} req/s, {case} {two_rate:.0f} req/s "
                  f"(medians of {len(one)} and {len(two)} rounds): {two_rate / one_rate:.2f}x")
EOF
exit $status
