"""RAG latency benchmark: the transformer end to end, split into embed, search, generate and overhead.

Run: python bench/rag.py [--generator tiny-random-llama] [--requests 80] [--engine milvus-standalone]
     [--large 100000]
Writes bench/results/rag.json. Starts the embedding and generation predictors,
the local Milvus engine filled with pipelines/samples by ``ragserve ingest``, and
the transformer, all on loopback. Then ``--large`` synthetic chunks (bench/retrieval.py's
clustered vectors) join the same collection, and once Milvus has indexed them the
single-client run is repeated: e2e p50 at ``--large`` chunks minus the small-corpus
p50 of the same run is what collection size costs a question. Each answer reports the embed/search/generate
times the transformer measured; overhead = client-seen latency minus those, so
it holds HTTP in and out, request decoding, prompt building and the transformer's
own scheduling. Baseline in the same run: a client calling the same three
dependencies itself, in sequence, with the same prompt (no transformer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from loadgen import post_request, run_load  # noqa: E402
from questions import SAMPLE_QUESTIONS as QUESTIONS  # noqa: E402
from report import save  # noqa: E402

STAGES = ("embed_ms", "search_ms", "prompt_ms", "generate_ms")


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def start_stack(work: Path, generator: str, engine: str):
    from ragserve.pipelines.milvus_engines import local_milvus
    from ragserve.procs import ServerProcess, free_port

    logs = HERE / "results"
    emb_port, gen_port, rag_port = free_port(), free_port(), free_port()
    procs = [
        ServerProcess.ragserve("embedding", "--torch-threads", "1", "--log-level", "warning",
                               http_port=emb_port, log_path=logs / ".rag-embedding.log"),
        ServerProcess.ragserve("generation", "--model", generator, "--model-name", "generator", "--torch-threads", "1",
                               "--log-level", "warning", http_port=gen_port, log_path=logs / ".rag-generation.log"),
    ]  # fmt: skip
    for p in procs:
        p.start()
    milvus = local_milvus(engine, work / "milvus", log_path=logs / ".rag-milvus.log").start()
    for p in procs:
        p.wait_ready(timeout=300)
    emb_url = f"http://127.0.0.1:{emb_port}"
    subprocess.run(
        [sys.executable, "-m", "ragserve", "ingest", str(REPO / "pipelines" / "samples"), "--milvus-uri", milvus.uri,
         "--embedding-url", emb_url, "--collection", "bench", "--progress", "false"],
        check=True, capture_output=True,
    )  # fmt: skip
    tokenizer = generator if generator in ("tiny-random-llama", "SmolLM2-135M-Instruct") else "SmolLM2-135M-Instruct"
    rag = ServerProcess.ragserve(
        "rag-transformer", "--predictor-host", f"127.0.0.1:{gen_port}", "--predictor-model-name", "generator",
        "--embedding-url", emb_url, "--milvus-uri", milvus.uri, "--collection", "bench", "--tokenizer", tokenizer,
        "--log-level", "warning", http_port=rag_port, log_path=logs / ".rag-transformer.log",
    ).start()  # fmt: skip
    rag.wait_ready(timeout=300)
    return procs + [rag], milvus, {"embedding": emb_url, "generation": f"http://127.0.0.1:{gen_port}", "rag": rag_port}


def add_filler(milvus_uri: str, n: int) -> float:
    """``n`` synthetic chunks into the bench collection; seconds until Milvus has indexed them."""
    from pymilvus import MilvusClient

    from retrieval import synthetic
    from ragserve.transformers.milvus_store import MilvusSettings, MilvusStore

    data, _ = synthetic(n, 1, seed=1)
    client = MilvusClient(uri=milvus_uri, timeout=600)
    t0 = time.perf_counter()
    for start in range(0, n, 5000):
        client.insert("bench", [
            {"id": f"filler-{i}", "doc_id": f"filler/{i // 8}", "doc_hash": "0" * 16, "chunk_index": i % 8,
             "title": "filler", "uri": "", "text": f"synthetic chunk {i}", "vector": data[i].tolist()}
            for i in range(start, min(start + 5000, n))
        ])  # fmt: skip
    client.flush("bench")
    client.close()
    store = MilvusStore(MilvusSettings(milvus_uri=milvus_uri, collection="bench"))
    store.wait_for_index(1800)
    store.close()
    return time.perf_counter() - t0


def rag_load(port: int, sampling: dict, concurrency: int, total: int) -> dict:
    reqs = [
        post_request("127.0.0.1", port, "/v2/models/rag/infer", {
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [q]}], "parameters": sampling,
        })
        for q in QUESTIONS
    ]  # fmt: skip
    stages: list[dict] = []

    def keep(status: int, body: bytes) -> bool:
        if status == 200:
            stages.append(json.loads(body)["parameters"])
        return status == 200

    asyncio.run(run_load("127.0.0.1", port, reqs, concurrency=concurrency, total=max(8, concurrency * 2)))  # warm up
    stages.clear()
    res = asyncio.run(run_load("127.0.0.1", port, reqs, concurrency=concurrency, total=total, check=keep))
    if res.errors:
        raise RuntimeError(f"{res.errors} failed RAG requests at concurrency {concurrency}")
    # loadgen appends latency before check: the i-th latency and i-th stages belong to one request
    overhead = [e - s["embed_ms"] - s["search_ms"] - s["generate_ms"] for e, s in zip(res.latencies_ms, stages)]
    out = {"e2e_p50": pct(res.latencies_ms, 50), "e2e_p95": pct(res.latencies_ms, 95), "rps": res.rps,
           "overhead_p50": pct(overhead, 50), "overhead_p95": pct(overhead, 95)}  # fmt: skip
    for k in STAGES:
        out[f"{k}_p50"] = pct([s[k] for s in stages], 50)
    return out


async def direct_pipeline(urls: dict, milvus_uri: str, sampling: dict, tokenizer_name: str, n: int) -> list[float]:
    """Embed -> search -> generate, called in sequence by a client (the same work, no transformer)."""
    import httpx
    from pymilvus import MilvusClient

    from ragserve.transformers.milvus_store import Hit, OUTPUT_FIELDS
    from ragserve.model_assets import generation_tokenizer
    from ragserve.transformers.prompt import DEFAULT_TEMPLATE, PromptBuilder

    builder = PromptBuilder(generation_tokenizer(tokenizer_name), DEFAULT_TEMPLATE)
    milvus = MilvusClient(uri=milvus_uri)
    milvus.load_collection("bench")
    times = []
    async with httpx.AsyncClient(timeout=120) as client:
        for i in range(n + 4):
            q = QUESTIONS[i % len(QUESTIONS)]
            t0 = time.perf_counter()
            r = await client.post(f"{urls['embedding']}/v2/models/embedder/infer",
                                  json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [q]}]})
            vec = r.json()["outputs"][0]["data"]
            [hits] = milvus.search("bench", data=[vec], limit=5, output_fields=OUTPUT_FIELDS,
                                   search_params={"metric_type": "COSINE", "params": {"ef": 64}})
            prompt = builder.render(q, [Hit(str(h["id"]), h["entity"]["doc_id"], 0, h["entity"]["title"], "",
                                            h["entity"]["text"], h["distance"]) for h in hits])[0]
            r = await client.post(f"{urls['generation']}/v2/models/generator/infer", json={
                "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [prompt]}],
                "parameters": sampling})  # fmt: skip
            r.raise_for_status()
            if i >= 4:  # first few warm the connections
                times.append((time.perf_counter() - t0) * 1000)
    milvus.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", default="tiny-random-llama", help="generation model (tiny-random-llama: fast plumbing)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--requests", type=int, default=80, help="requests per concurrency level")
    ap.add_argument("--engine", default="", help="local Milvus engine (default: ragserve up's default)")
    ap.add_argument("--large", type=int, default=100_000, help="chunks added for the large-collection run (0: skip)")
    ap.add_argument("--output", default=str(HERE / "results" / "rag.json"))
    args = ap.parse_args()
    from ragserve.pipelines.milvus_engines import DEFAULT_ENGINE

    engine = args.engine or DEFAULT_ENGINE
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # ignore_eos + greedy: every answer is exactly max_tokens long, so runs compare
    sampling = {"max_tokens": args.max_tokens, "temperature": 0.0, "ignore_eos": True}

    with tempfile.TemporaryDirectory() as tmp:
        procs, milvus, urls = start_stack(Path(tmp), args.generator, engine)
        try:
            c1 = rag_load(urls["rag"], sampling, 1, args.requests)
            c8 = rag_load(urls["rag"], sampling, 8, args.requests)
            tok = args.generator if args.generator in ("tiny-random-llama", "SmolLM2-135M-Instruct") else "SmolLM2-135M-Instruct"
            direct = asyncio.run(direct_pipeline(urls, milvus.uri, sampling, tok, args.requests // 2))
            large = {}
            if args.large:
                print(f"adding {args.large} chunks", flush=True)
                large["searchable_s"] = add_filler(milvus.uri, args.large)
                large.update(rag_load(urls["rag"], sampling, 1, args.requests))
        finally:
            for p in procs:
                p.stop()
            milvus.stop()

    direct_p50 = pct(direct, 50)
    result = {
        "overhead_ms_p50": round(c1["overhead_p50"], 2),
        "overhead_ms_p95": round(c1["overhead_p95"], 2),
        "overhead_ms_p50_c8": round(c8["overhead_p50"], 2),
        "e2e_ms_p50_c1": round(c1["e2e_p50"], 1),
        "e2e_ms_p95_c1": round(c1["e2e_p95"], 1),
        "e2e_ms_p50_c8": round(c8["e2e_p50"], 1),
        "e2e_ms_p95_c8": round(c8["e2e_p95"], 1),
        "rps_c1": round(c1["rps"], 2),
        "rps_c8": round(c8["rps"], 2),
        **{f"{k.removesuffix('_ms')}_ms_p50_c1": round(c1[f"{k}_p50"], 2) for k in STAGES},
        **{f"{k.removesuffix('_ms')}_ms_p50_c8": round(c8[f"{k}_p50"], 2) for k in STAGES},
        "baseline_direct_pipeline_ms_p50_c1": round(direct_p50, 1),
        "e2e_vs_baseline_c1": round(c1["e2e_p50"] / direct_p50, 3),
        "generator": args.generator,
        "max_tokens": args.max_tokens,
        "requests_per_level": args.requests,
        "milvus": f"{engine} on loopback, HNSW ef=64, 13 sample documents",
    }
    if large:
        result.update({
            "large_n_chunks": args.large,
            "large_searchable_s": round(large["searchable_s"], 1),
            "large_e2e_ms_p50_c1": round(large["e2e_p50"], 1),
            "large_e2e_ms_p95_c1": round(large["e2e_p95"], 1),
            **{f"large_{k.removesuffix('_ms')}_ms_p50_c1": round(large[f"{k}_p50"], 2) for k in STAGES},
            "large_overhead_ms_p50_c1": round(large["overhead_p50"], 2),
            "large_minus_small_e2e_ms_p50_c1": round(large["e2e_p50"] - c1["e2e_p50"], 1),
            # the stage collection size can change; e2e also carries the machine's drift between the two runs
            "large_minus_small_search_ms_p50_c1": round(large["search_ms_p50"] - c1["search_ms_p50"], 2),
        })  # fmt: skip
    result = save(result, args.output)
    print(
        f"\ntransformer overhead p50: {result['overhead_ms_p50']:.1f} ms (target <= 15)\n"
        f"e2e p50 c1 / direct client pipeline p50 (baseline, same run): {result['e2e_vs_baseline_c1']:.2f}\n"
        f"e2e p50 c8 / c1: {c8['e2e_p50'] / c1['e2e_p50']:.2f}"
    )
    if large:
        print(f"e2e p50 c1 at {args.large} chunks minus small corpus: {result['large_minus_small_e2e_ms_p50_c1']:.1f} ms "
              f"(target <= 15; search stage {result['large_minus_small_search_ms_p50_c1']:+.2f} ms)")


if __name__ == "__main__":
    main()
