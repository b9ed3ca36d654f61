"""Embedding benchmark: in-process encode vs the served predictor, batching on vs off.

Run: python bench/embedding.py [--threads 1] [--requests 640]
Writes bench/results/embedding.json. Every served figure is compared with an
in-process figure measured in the same run on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import post_request, run_load  # noqa: E402
from report import save  # noqa: E402

WORDS = (
    "kserve serves models on kubernetes while milvus stores vectors for retrieval and the transformer "
    "builds prompts from the retrieved chunks before the generator answers with its sources attached"
).split()


def sentences(n: int) -> list[str]:
    # varied lengths (6..40 words) so padding and length grouping matter
    return [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(6 + (i * 13) % 35)) + f" #{i}" for i in range(n)]


def bench_inprocess(texts: list[str], threads: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from ragserve.model_assets import PACKAGED_EMBEDDING, resolve_embedding_model

    torch.set_num_threads(threads)
    model = SentenceTransformer(resolve_embedding_model(PACKAGED_EMBEDDING), device="cpu")
    model.encode(texts[:32], batch_size=32)  # warm up
    n1 = min(len(texts), 160)
    t0 = time.perf_counter()
    for t in texts[:n1]:
        model.encode([t], batch_size=1)
    b1 = n1 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.encode(texts, batch_size=32)
    b32 = len(texts) / (time.perf_counter() - t0)
    return {"inprocess_sps_b1": b1, "inprocess_sps": b32}


def served(texts: list[str], threads: int, batching: bool, concurrencies: list[int], total: int) -> dict:
    from ragserve.procs import ServerProcess, free_port

    port = free_port()
    proc = ServerProcess.ragserve(
        "embedding",
        "--torch-threads", str(threads),
        "--batching", str(batching).lower(),
        "--log-level", "warning",
        http_port=port,
        log_path=HERE / "results" / ".embedding-server.log",
    )
    t0 = time.perf_counter()
    proc.start()
    try:
        proc.wait_ready(timeout=300)
        cold = time.perf_counter() - t0
        reqs = [
            post_request("127.0.0.1", port, "/v2/models/embedder/infer",
                         {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [t]}]})
            for t in texts
        ]
        asyncio.run(run_load("127.0.0.1", port, reqs, concurrency=8, total=64))  # warm up
        out = {"cold_start_s": cold}
        for c in concurrencies:
            res = asyncio.run(run_load("127.0.0.1", port, reqs, concurrency=c, total=total))
            if res.errors:
                raise RuntimeError(f"{res.errors} errors at concurrency {c}")
            out[f"c{c}"] = {"sps": res.rps, "p50_ms": res.pct(50), "p95_ms": res.pct(95)}
        return out
    finally:
        proc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, in-process and in the server")
    ap.add_argument("--requests", type=int, default=640, help="requests per served measurement")
    ap.add_argument("--output", default=str(HERE / "results" / "embedding.json"))
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    texts = sentences(512)
    inproc = bench_inprocess(texts, args.threads)
    on = served(texts, args.threads, True, [1, 8, 32], args.requests)
    off = served(texts, args.threads, False, [32], args.requests)
    gain = inproc["inprocess_sps"] / inproc["inprocess_sps_b1"]
    result = {
        **{k: round(v, 1) for k, v in inproc.items()},
        "served_sps_c1": round(on["c1"]["sps"], 1),
        "served_sps_c8": round(on["c8"]["sps"], 1),
        "served_sps_c32": round(on["c32"]["sps"], 1),
        "served_sps_c32_batching_off": round(off["c32"]["sps"], 1),
        "served_p50_ms_c32": round(on["c32"]["p50_ms"], 1),
        "served_p95_ms_c32": round(on["c32"]["p95_ms"], 1),
        "served_vs_inprocess_c32": round(on["c32"]["sps"] / inproc["inprocess_sps"], 3),
        "batching_on_vs_off_c32": round(on["c32"]["sps"] / off["c32"]["sps"], 3),
        "inprocess_batch_gain": round(gain, 3),
        "batching_recovers_of_inprocess_gain": round((on["c32"]["sps"] / off["c32"]["sps"]) / gain, 3),
        "cold_start_s": round(on["cold_start_s"], 2),
        "torch_threads": args.threads,
    }
    save(result, args.output)
    print(
        f"\nserved/in-process at c32: {result['served_vs_inprocess_c32']:.2f} (target >= 0.9)\n"
        f"batching on/off at c32: {result['batching_on_vs_off_c32']:.2f} "
        f"(target >= 0.8 x in-process gain {gain:.2f} = {0.8 * gain:.2f})\n"
        f"cold start: {result['cold_start_s']:.1f} s (target <= 5)"
    )


if __name__ == "__main__":
    main()
