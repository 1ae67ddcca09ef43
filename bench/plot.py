"""Draw docs/img/performance.png from the JSON written by the benchmarks.

python bench/plot.py bench-results.json docs/img/performance.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(results_path: str, out_path: str) -> int:
    results = {r["bench"]: r for r in json.loads(Path(results_path).read_text())}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels, bridge, raw, same_work, targets, ratios = [], [], [], [], [], []
    for name in ("produce", "consume"):
        r = results.get(name)
        if r:
            labels.append(name)
            bridge.append(r["bridge_eps"] / 1000)
            raw.append(r["raw_eps"] / 1000)
            # consume: the raw loop that also reads the headers and calls the handler
            same_work.append(r.get("raw_dispatch_eps", 0) / 1000)
            targets.append(r["target"])
            ratios.append(r["ratio"])
    xs = range(len(labels))
    left.bar([x - 0.27 for x in xs], raw, width=0.27, label="raw confluent-kafka baseline")
    left.bar(
        list(xs),
        same_work,
        width=0.27,
        label="raw loop that also reads headers and calls the handler",
    )
    left.bar([x + 0.27 for x in xs], bridge, width=0.27, label="bridge")
    for x, b, q, t in zip(xs, bridge, ratios, targets, strict=True):
        left.text(x + 0.27, b, f"{q:.2f}x (target {t}x)", ha="center", va="bottom", fontsize=8)
    left.set_xticks(list(xs), labels)
    left.set_ylabel("thousand events / s")
    left.set_title("Throughput on a real broker (same run)")
    left.set_ylim(0, max(raw + bridge + same_work) * 1.45)  # room for the legend
    left.legend(fontsize=8, loc="upper left")
    memory = results.get("memory")
    if memory:
        steps = [
            memory["events"] * (i + 1) / len(memory["rss_mb"]) / 1e6
            for i in range(len(memory["rss_mb"]))
        ]
        right.plot(steps, memory["rss_mb"], marker="o")
        right.set_xlabel("million events emitted")
        right.set_ylabel("RSS (MiB)")
        right.set_ylim(0, max(memory["rss_mb"]) * 1.25)
        right.set_title("Memory while emitting through the bridge")
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
