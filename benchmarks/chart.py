"""
Draw a benchmark run as an SVG bar chart: requests/s per proxy for each path, as a ratio of
the fastest Python-free peer in the same run.  Standard library only.

    python benchmarks/chart.py /tmp/proxybench-results/TIME/results.json docs/_static/bench.svg
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from xml.sax.saxutils import escape

_COLOURS = {"twisted_rp": "#2a7ab0"}
_DEFAULT = "#9aa5ad"


def medians(results: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    """Median req/s by path, then proxy, over the rounds of a run."""
    seen: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in results:
        rps = row.get("rps")
        if isinstance(rps, (int, float)):
            seen[str(row["path"])][str(row["proxy"])].append(float(rps))
    return {
        path: {proxy: statistics.median(values) for proxy, values in by_proxy.items()}
        for path, by_proxy in seen.items()
    }


def svg(figures: dict[str, dict[str, float]]) -> str:
    """One group of horizontal bars per path, each bar labelled with its req/s."""
    bar, gap, left, width = 18, 28, 110, 420
    rows = sum(len(v) for v in figures.values())
    height = rows * bar + len(figures) * gap + 20
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" '
        f'height="{height}" font-family="sans-serif" font-size="12">'
    ]
    y = 10
    for path, by_proxy in sorted(figures.items(), reverse=True):
        top = max(by_proxy.values())
        out.append(f'<text x="0" y="{y + 12}" font-weight="bold">{escape(path)} (req/s)</text>')
        y += gap - 6
        for proxy, rps in sorted(by_proxy.items(), key=lambda kv: -kv[1]):
            length = max(1, round(width * rps / top))
            colour = _COLOURS.get(proxy, _DEFAULT)
            out.append(f'<text x="0" y="{y + 13}">{escape(proxy)}</text>')
            out.append(
                f'<rect x="{left}" y="{y}" width="{length}" height="{bar - 4}" fill="{colour}"/>'
            )
            out.append(f'<text x="{left + length + 4}" y="{y + 13}">{rps:,.0f}</text>')
            y += bar
        y += 6
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        results = json.load(f)["results"]
    with open(argv[2], "w") as f:
        f.write(svg(medians(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
