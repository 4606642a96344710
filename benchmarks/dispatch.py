"""
How the proxy's reactor spends a loaded run: events per poll, the time between two polls
(the dispatch of one batch), the longest such gaps, and the garbage collector's pauses.

The proxy runs in this process, as quick mode builds it, pinned to CPU 0; wrk sends
101-byte-response requests through it from CPU 1, on 50 connections like ``run.sh``:

    python benchmarks/dispatch.py --backend 127.0.0.1:28080 [--duration 10] [--path /small]

With every connection busy, a request waits for the batch being dispatched to end, then
for its own batch, and its response the same again: latency follows the batch time, which
follows the work per event (and, closed-loop, 50 connections over the request rate).  A
stall, a single long gap, would show in the maximum gaps, which is where a tail latency that
the work per request does not explain would come from.

Needs wrk and a backend answering on ``--backend`` (nginx, as in ``../shared/bench``).
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True, help="host:port of the backend")
    parser.add_argument("--port", type=int, default=28099, help="the proxy's port")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--path", default="/small")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from twisted_rp.config import quick_config
    from twisted_rp.service import build_service

    config = quick_config([f"tcp:{args.port}:interface=127.0.0.1"], [args.backend])
    build_service(config, reactor).startService()

    clock = time.perf_counter
    poller: Any = reactor._poller  # type: ignore[attr-defined]
    gaps: list[float] = []
    batches: list[int] = []
    pauses: list[tuple[int, float]] = []
    last: list[float] = []
    collecting = [0.0]

    class TimedPoller:
        def poll(self, timeout: float, most: int) -> list[tuple[int, int]]:
            if last:
                gaps.append(clock() - last[0])
            events: list[tuple[int, int]] = poller.poll(timeout, most)
            last[:] = [clock()]
            batches.append(len(events))
            return events

        def __getattr__(self, name: str) -> Any:
            return getattr(poller, name)

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collecting[0] = clock()
        else:
            pauses.append((info["generation"], clock() - collecting[0]))

    url = f"http://127.0.0.1:{args.port}{args.path}"
    wrk = ["taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}", "--latency", url]

    def load() -> None:
        subprocess.run([*wrk, "-d2"], capture_output=True, check=True)  # warm-up
        reactor.callFromThread(measure_from_now)  # type: ignore[attr-defined]
        out = subprocess.run([*wrk, f"-d{args.duration}"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if line.strip().startswith(("50%", "90%", "99%", "Requests/sec")):
                print("wrk", line.strip())
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    def measure_from_now() -> None:
        gaps.clear()
        batches.clear()
        pauses.clear()
        reactor._poller = TimedPoller()  # type: ignore[attr-defined]
        gc.callbacks.append(on_gc)

    reactor.callWhenRunning(reactor.callInThread, load)  # type: ignore[attr-defined]
    reactor.run()
    report(gaps, batches, pauses)


def report(gaps: list[float], batches: list[int], pauses: list[tuple[int, float]]) -> None:
    gaps.sort()
    print(f"polls {len(batches)}, events per poll {sum(batches) / max(len(batches), 1):.1f}")
    for q in (0.5, 0.9, 0.99, 0.999):
        print(f"gap between polls, p{q * 100:g}: {gaps[int(len(gaps) * q)] * 1000:.2f} ms")
    print("longest gaps, ms:", ", ".join(f"{g * 1000:.2f}" for g in gaps[-5:]))
    for generation in (0, 1, 2):
        times = [t for g, t in pauses if g == generation]
        if times:
            print(
                f"gc generation {generation}: {len(times)} collections, "
                f"longest {max(times) * 1000:.2f} ms"
            )


if __name__ == "__main__":
    main()
