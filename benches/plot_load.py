#!/usr/bin/env python3
"""Plots the load bench's concurrency sweep (requests/s and p99 against
connections) for baseline (b) and the gateway with one target.

    LOAD_SWEEP=1 cargo bench --bench load      # writes target/load-sweep.csv
    python3 -m pip install matplotlib          # once
    python3 benches/plot_load.py target/load-sweep.csv docs/load-sweep.png
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source: str, output: str) -> None:
    series = defaultdict(list)
    with open(source, newline="") as f:
        for row in csv.DictReader(f):
            series[row["server"]].append(
                (int(row["concurrency"]), float(row["requests_per_second"]), float(row["p99_ms"]))
            )
    fig, (rate, p99) = plt.subplots(1, 2, figsize=(10, 4))
    for name, points in sorted(series.items()):
        points.sort()
        xs = [p[0] for p in points]
        rate.plot(xs, [p[1] for p in points], marker="o", label=name)
        p99.plot(xs, [p[2] for p in points], marker="o", label=name)
    for axis, title, unit in ((rate, "Throughput", "requests/s"), (p99, "p99 latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("concurrent HTTPS connections")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    fig.suptitle("hookrelay ingest (durable acks, 1 target) vs bare hyper+rustls+HMAC, 2 cores shared")
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    print(f"wrote {output}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
