"""Soak: embed, generate (tiny model) and RAG at concurrency 32 for a bounded time.

Run: python bench/soak.py [--duration 60] [--warmup 10] [--concurrency 32]
Every worker loops over the three request kinds until the deadline (the loops
stop by themselves). Resident memory of every server is sampled when the
warm-up ends and when the load stops; growth is reported against the
warm-up sample, the baseline measured in this same run.
Writes bench/results/soak.json (``requests``, ``errors``, ``rss_growth_pct``, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import save  # noqa: E402

SAMPLES = HERE.parent / "pipelines" / "samples"
QUESTIONS = [
    "When does the pager rotation hand over?",
    "How often are the Milvus credentials rotated?",
    "Which formats does ingestion load?",
    "What does the embedding predictor return?",
]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def v2(name: str, text: str, **parameters) -> dict:
    body = {"inputs": [{"name": name, "datatype": "BYTES", "shape": [1], "data": [text]}]}
    return {**body, "parameters": parameters} if parameters else body


async def soak(urls: dict[str, str], concurrency: int, duration: float, warmup: float, pids: dict[str, int]) -> dict:
    kinds = list(urls)
    results: dict[str, list] = {k: [] for k in kinds}
    errors: list[str] = []
    start = time.monotonic()
    deadline = start + warmup + duration
    rss_warm: dict[str, float] = {}

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        n = i
        while time.monotonic() < deadline:
            kind = kinds[n % len(kinds)]
            question = QUESTIONS[n % len(QUESTIONS)]
            n += 1
            body = {
                "embed": v2("text", question),
                "generate": v2("text_input", question, max_tokens=16),
                "rag": v2("text_input", question, max_tokens=16),
            }[kind]
            t0 = time.monotonic()
            try:
                r = await client.post(urls[kind], json=body)
                ok = r.status_code == 200
                if not ok:
                    errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                ok = False
                errors.append(f"{kind}: {exc!r}")
            if t0 >= start + warmup:
                results[kind].append((time.monotonic() - t0) * 1000)

    async def sample_warm() -> None:
        await asyncio.sleep(warmup)
        rss_warm.update({name: rss_mib(pid) for name, pid in pids.items()})

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(sample_warm(), *(worker(i, client) for i in range(concurrency)))
    rss_end = {name: rss_mib(pid) for name, pid in pids.items()}
    growth = {name: 100 * (rss_end[name] - rss_warm[name]) / rss_warm[name] for name in pids}
    per_kind = {
        k: {"requests": len(v), "p50_ms": round(statistics.median(v), 1) if v else None,
            "p95_ms": round(statistics.quantiles(v, n=20)[-1], 1) if len(v) > 1 else None}
        for k, v in results.items()
    }
    return {
        "requests": sum(len(v) for v in results.values()),
        "errors": len(errors),
        "error_samples": errors[:5],
        "rss_growth_pct": round(max(growth.values()), 2),
        "rss_growth_pct_by_server": {k: round(v, 2) for k, v in growth.items()},
        "rss_mib_after_warmup": {k: round(v, 1) for k, v in rss_warm.items()},
        "rss_mib_at_end": {k: round(v, 1) for k, v in rss_end.items()},
        "per_kind": per_kind,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load after the warm-up")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the first memory sample")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--output", default=str(HERE / "results" / "soak.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from ragserve.pipelines.local_milvus import LocalMilvus
    from ragserve.procs import ServerProcess, free_port

    logs = HERE / "results"
    work = Path(tempfile.mkdtemp(prefix="ragserve-soak-"))
    milvus = LocalMilvus(work / "milvus", log_path=logs / ".soak-milvus.log").start()
    servers = {}
    try:
        def serve(component: str, *options: str) -> ServerProcess:
            port = free_port()
            proc = ServerProcess.ragserve(component, "--log-level", "warning", *options, http_port=port,
                                          log_path=logs / f".soak-{component}.log").start()
            proc.wait_ready(300)
            proc.port = port
            servers[component] = proc
            return proc

        emb = serve("embedding", "--torch-threads", "1")
        gen = serve("generation", "--model", "tiny-random-llama", "--torch-threads", "1", "--max-batch-size", "32")
        import subprocess

        subprocess.run([sys.executable, "-m", "ragserve", "ingest", str(SAMPLES), "--collection", "soak",
                        "--milvus-uri", milvus.uri, "--embedding-url", f"http://127.0.0.1:{emb.port}",
                        "--progress", "false"], check=True, capture_output=True)
        rag = serve("rag-transformer", "--predictor-host", f"127.0.0.1:{gen.port}", "--predictor-model-name",
                    "generator", "--embedding-url", f"http://127.0.0.1:{emb.port}", "--milvus-uri", milvus.uri,
                    "--collection", "soak", "--tokenizer", "tiny-random-llama", "--top-k", "2")
        urls = {
            "embed": f"http://127.0.0.1:{emb.port}/v2/models/embedder/infer",
            "generate": f"http://127.0.0.1:{gen.port}/v2/models/generator/infer",
            "rag": f"http://127.0.0.1:{rag.port}/v2/models/rag/infer",
        }
        pids = {name: p.proc.pid for name, p in servers.items()} | {"milvus": milvus.process.proc.pid}
        result = asyncio.run(soak(urls, args.concurrency, args.duration, args.warmup, pids))
    finally:
        for proc in servers.values():
            proc.stop()
        milvus.stop()
    result.update(concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup,
                  generator="tiny-random-llama", torch_threads=1)
    save(result, args.output)
    print(f"\n{result['requests']} requests, {result['errors']} errors, "
          f"RSS growth after warm-up {result['rss_growth_pct']}% (target: 0 errors, <= 10%)")


if __name__ == "__main__":
    main()
