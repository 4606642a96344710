#!/bin/sh
# HTTPS benchmark: twisted_rp next to nginx, both terminating TLS in front of the same
# plain-HTTP nginx backend (see the docstring of tls_bench.py).
#
#   benchmarks/tls_run.sh                  # keep-alive, resumed and full handshakes, about 2.5 min
#   benchmarks/tls_run.sh -d 5 --plain     # any tls_bench.py option is passed through
#
# twisted_rp runs from $BENCH_PYTHON (default /tmp/venv/bin/python, which needs Twisted,
# pyOpenSSL, attrs and service-identity) with this checkout on PYTHONPATH; the harness itself
# needs only python3, nginx, wrk, openssl and taskset.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${BENCH_PYTHON:-/tmp/venv/bin/python}
for tool in nginx wrk openssl taskset python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "$tool not found (nginx and wrk: ../shared/bench/setup.sh installs them)" >&2
        exit 2
    fi
done
if ! "$python" -c "import OpenSSL, twisted, attrs" 2>/dev/null; then
    echo "$python cannot import Twisted and pyOpenSSL (set BENCH_PYTHON)" >&2
    exit 2
fi
exec python3 "$here/tls_bench.py" --python "$python" "$@"
