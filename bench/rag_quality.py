"""RAG answer quality: `ragserve up` (the packaged default) asked our own eval set.

Run: python bench/rag_quality.py [--generator NAME] [--url URL] [--concurrency 4]
Writes bench/results/rag_quality.json. Starts `ragserve up --base-port 0` in a
temporary state folder (Milvus Lite, the embedder, the generator and the
transformer with the local overlay's settings; pipelines/samples ingested),
asks pipelines/eval/samples.jsonl through the InferenceGraph with `ragserve
eval`'s runner, and stops it. ``--url`` evaluates a stack that is already
running instead. Quality has no same-run baseline to divide by: the figures are
rates on a fixed labeled set (greedy decoding, so reruns agree), and latency is
what the client saw at the given concurrency on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from report import save  # noqa: E402

DATASET = REPO / "pipelines" / "eval" / "samples.jsonl"


def start_up(state_dir: Path, log_path: Path, env: dict) -> tuple[subprocess.Popen, str]:
    log = open(log_path, "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragserve", "up", "--base-port", "0", "--state-dir", str(state_dir)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
    )
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        log.seek(0)
        text = log.read()
        if "is running" in text:
            return proc, re.search(r"^  graph\s+\S+\s+(http://\S+)$", text, re.M).group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"ragserve up exited {proc.returncode}:\n{text[-3000:]}")
        time.sleep(1)
    proc.kill()
    raise TimeoutError("ragserve up did not come up in 15 minutes")


def stop_up(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    from ragserve.eval.dataset import load_dataset
    from ragserve.eval.metrics import summarize
    from ragserve.eval.report import render_table
    from ragserve.eval.runner import EvalSettings, evaluate
    from ragserve.model_assets import PACKAGED_GENERATION

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", default="", help="RAGSERVE_GENERATION_MODEL for `ragserve up` (default: the overlay's)")
    ap.add_argument("--url", default="", help="evaluate this running graph instead of starting `ragserve up`")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=None, help="per-request top_k (default: the transformer's)")
    ap.add_argument("--output", default=str(HERE / "results" / "rag_quality.json"))
    args = ap.parse_args()

    env = {"RAGSERVE_GENERATION_MODEL": args.generator} if args.generator else {}
    model = args.generator or os.environ.get("RAGSERVE_GENERATION_MODEL") or PACKAGED_GENERATION
    cases = load_dataset(DATASET)
    proc = None
    with tempfile.TemporaryDirectory(prefix="rag-quality-") as work:
        try:
            url = args.url
            if not url:
                proc, url = start_up(Path(work) / "state", HERE / "results" / ".rag-quality-up.log", env)
            settings = EvalSettings(url=url, concurrency=args.concurrency, top_k=args.top_k)
            evaluate(cases[:2], settings)  # warm-up: first requests pay for lazy initialization
            t0 = time.perf_counter()
            results = evaluate(cases, settings)
            wall = time.perf_counter() - t0
        finally:
            if proc is not None:
                stop_up(proc)
    summary = summarize(results)
    print(render_table(results, summary), file=sys.stderr)
    save({
        "benchmark": "rag_quality",
        "dataset": str(DATASET.relative_to(REPO)),
        "model": model,
        "top_k": args.top_k or summary.k,
        "concurrency": args.concurrency,
        **dataclasses.asdict(summary),
        "wall_s": round(wall, 2),
        "per_question": {r.id: r.status for r in results},
    }, args.output)


if __name__ == "__main__":
    main()
