"""Draw bench/results/benchmarks.png from the JSON results (the README shows it).

Run: python bench/plot.py   (after the benchmarks; missing results are left out)
Left: every headline ratio against its target (each ratio compares two
figures measured in the same run). Right: where a RAG request's time goes.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# (file, key, label, target, higher_is_better)
RATIOS = [
    ("embedding.json", "served_vs_inprocess_c32", "embed: served / in-process (c32)", 0.9, True),
    ("embedding.json", "batching_recovers_of_inprocess_gain", "embed: batching gain recovered", 0.8, True),
    ("generation.json", "served_vs_inprocess_c8", "generate: served / in-process (c8)", 0.9, True),
    ("generation.json", "batched_vs_single_c8", "generate: 8 streams / 1 stream", 2.0, True),
    ("retrieval.json", "recall_at_10", "retrieval: recall@10 vs exact", 0.95, True),
    ("rag.json", "e2e_vs_baseline_c1", "RAG: served / direct pipeline (c1)", None, False),
]


def load(name: str) -> dict:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    rows = [(label, load(f).get(key), target, up) for f, key, label, target, up in RATIOS if key in load(f)]
    for i, (label, value, target, up) in enumerate(rows):
        ok = target is None or (value >= target if up else value <= target)
        left.barh(i, value, color="#3b7dd8" if ok else "#d8503b")
        left.text(value, i, f" {value:.2f}", va="center")
        if target is not None:
            left.plot([target, target], [i - 0.4, i + 0.4], color="black", lw=2)
    left.set_yticks(range(len(rows)), [r[0] for r in rows])
    left.invert_yaxis()
    left.set_title("ratios within one run (black bar: target)")

    rag = load("rag.json")
    stages = ["embed", "search", "prompt", "generate"]
    for j, level in enumerate(("c1", "c8")):
        base = 0.0
        for k, stage in enumerate(stages):
            value = rag.get(f"{stage}_ms_p50_{level}", 0.0)
            right.bar(j, value, bottom=base, color=f"C{k}", label=stage if j == 0 else None)
            base += value
        overhead = rag.get("overhead_ms_p50" if level == "c1" else "overhead_ms_p50_c8", 0.0)
        right.bar(j, overhead, bottom=base, color="black", label="transformer overhead" if j == 0 else None)
    right.set_xticks([0, 1], ["1 client", "8 clients"])
    right.set_ylabel("ms (p50)")
    right.set_title(f"RAG request, generator {rag.get('generator', '?')}")
    right.legend(fontsize=8)
    machine = next((load(f).get("machine") for f, *_ in RATIOS if load(f).get("machine")), {})
    fig.suptitle(f"ragserve benchmarks on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores")
    fig.tight_layout()
    out = RESULTS / "benchmarks.png"
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
