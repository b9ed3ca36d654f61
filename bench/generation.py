"""Generation benchmark: the in-process engine vs the served predictor, at 1 and 8 concurrent streams.

Run: python bench/generation.py [--model SmolLM2-135M-Instruct|tiny-random-llama|PATH]
                                [--backends transformers,vllm] [--torch-threads 1] [--max-tokens 64]
     python bench/generation.py --backends vllm --vs-vllm-server --concurrency 32 --out bench/results/generation_gpu.json
Writes bench/results/generation.json (``--out`` to change): the first backend's
figures at the top level, every other backend's in a block of the same keys
(``vllm_cpu``, or ``vllm_gpu`` on a CUDA machine). Every figure comes from this
one run on this one machine. Per backend, cold start to ready is timed first
(model cache warm, nothing else loaded). Then the same prompts go alternately
through the server (``/openai/v1/completions``, streamed) and straight to the
engine loaded in this process, round after round, so background load on shared
cores hits both sides alike. Generation ignores EOS so every stream produces
exactly ``--max-tokens`` tokens. ``--vs-vllm-server`` compares the served
predictor with vLLM's own OpenAI server (``vllm serve``) on the same model instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine import describe  # noqa: E402

TOPICS = ["kserve", "milvus", "retrieval", "vllm", "kubernetes", "embeddings", "batching", "prompts"]


def prompts(n: int) -> list[str]:
    return [f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} for a platform engineer." for i in range(n)]


async def one_round(one_stream, concurrency: int) -> dict:
    """``concurrency`` streams at once; each ``one_stream(prompt)`` returns ``(tokens, ttft_s)``."""
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one_stream(p) for p in prompts(concurrency)))
    return {"tokens": sum(n for n, _ in results), "wall_s": time.perf_counter() - t0, "ttft_s": [t for _, t in results]}


def summarize(runs: list[dict]) -> dict:
    """Aggregate tok/s over all rounds (tokens / wall) and the median time to first token."""
    tokens = sum(r["tokens"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    return {"tps": tokens / wall, "ttft_ms_p50": statistics.median(t for r in runs for t in r["ttft_s"]) * 1000}


def served_stream(client, port: int, max_tokens: int):
    url = f"http://127.0.0.1:{port}/openai/v1/completions"

    async def one_stream(prompt: str, tokens: int = max_tokens, url: str = url, model: str = "generator") -> tuple[int, float]:
        body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        ttft = None
        usage = 0
        async with client.stream("POST", url, json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                if ttft is None:
                    ttft = time.perf_counter() - t0
                if '"usage":{' in line:
                    usage = json.loads(line[6:])["usage"]["completion_tokens"]
        return usage, ttft

    return one_stream


def inprocess_stream(engine, max_tokens: int):
    from ragserve.predictors.backends import SamplingParams

    async def one_stream(prompt: str, tokens: int = max_tokens) -> tuple[int, float]:
        ids = engine.encode(prompt)
        t0 = time.perf_counter()
        ttft = None
        count = 0
        async for delta in engine.stream(ids, SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)):
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            count += delta.tokens
        return count, ttft

    return one_stream


async def compare(args, backend: str, port: int) -> tuple[dict, str]:
    import httpx

    from ragserve.predictors.generation import GenerationPredictor, GenerationSettings

    model = GenerationPredictor(
        GenerationSettings(model=args.model, backend=backend, torch_threads=args.torch_threads)
    )
    model.load()
    try:
        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=16)) as client:
            sides = {
                "served": served_stream(client, port, args.max_tokens),
                "inprocess": inprocess_stream(model.backend, args.max_tokens),
            }
            return await alternate(sides, args, (1, 8)), model.backend.name
    finally:
        model.stop()


async def alternate(sides: dict, args, levels) -> dict:
    """Each side at each concurrency level, alternately, ``args.rounds`` times: ``(side, c) -> summary``."""
    for one_stream in sides.values():
        await one_stream("warm up", 4)
    out = {}
    for c in levels:
        runs = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, one_stream in sides.items():
                runs[side].append(await one_round(one_stream, c))
        out.update({(side, c): summarize(r) for side, r in runs.items()})
    return out


def serve(args, backend: str, port: int, *extra: str):
    from ragserve.procs import ServerProcess

    return ServerProcess.ragserve(
        "generation",
        "--model", args.model,
        "--backend", backend,
        "--torch-threads", str(args.torch_threads),
        "--max-batch-size", str(max(16, args.concurrency)),
        "--log-level", "warning",
        *extra,
        http_port=port,
        env={"OMP_NUM_THREADS": str(args.torch_threads)},
        log_path=HERE / "results" / f".generation-server-{backend}.log",
    )


def measure(args, backend: str) -> dict:
    """One backend's block: cold start, then served vs in-process at 1 and 8 streams."""
    from ragserve.procs import free_port

    port = free_port()
    server = serve(args, backend, port)
    t0 = time.perf_counter()
    server.start()
    try:
        server.wait_ready(timeout=600)
        cold_start = time.perf_counter() - t0
        fig, name = asyncio.run(compare(args, backend, port))
    finally:
        server.stop()
    return {
        "backend": name,
        "model": args.model,
        "max_tokens_per_stream": args.max_tokens,
        "inprocess_tps_c1": round(fig["inprocess", 1]["tps"], 2),
        "inprocess_tps_c8": round(fig["inprocess", 8]["tps"], 2),
        "served_tps_c1": round(fig["served", 1]["tps"], 2),
        "served_tps_c8": round(fig["served", 8]["tps"], 2),
        "served_vs_inprocess_c8": round(fig["served", 8]["tps"] / fig["inprocess", 8]["tps"], 3),
        "batched_vs_single_c8": round(fig["served", 8]["tps"] / fig["served", 1]["tps"], 3),
        "inprocess_batched_vs_single_c8": round(fig["inprocess", 8]["tps"] / fig["inprocess", 1]["tps"], 3),
        "ttft_ms_p50": round(fig["served", 1]["ttft_ms_p50"], 1),
        "ttft_ms_p50_c8": round(fig["served", 8]["ttft_ms_p50"], 1),
        "inprocess_ttft_ms_p50": round(fig["inprocess", 1]["ttft_ms_p50"], 1),
        "cold_start_s": round(cold_start, 2),
        "torch_threads": args.torch_threads,
    }


def vllm_server_stream(client, port: int, max_tokens: int):
    """vLLM's own OpenAI server, asked exactly what ours is asked."""
    url = f"http://127.0.0.1:{port}/v1/completions"
    ours = served_stream(client, port, max_tokens)

    async def one_stream(prompt: str, tokens: int = max_tokens) -> tuple[int, float]:
        return await ours(prompt, tokens, url=url, model="reference")

    return one_stream


def measure_vs_vllm_server(args) -> dict:
    """The served vLLM backend vs ``vllm serve`` on the same model, at ``--concurrency`` streams."""
    import httpx

    from ragserve.model_assets import resolve_generation_model
    from ragserve.procs import ServerProcess, free_port

    try:
        path = resolve_generation_model(args.model)
    except Exception:
        path = args.model  # a model id vLLM finds itself
    ours_port, ref_port = free_port(), free_port()
    # both engines run at once: each gets the same 40 % of GPU memory
    ours = serve(args, "vllm", ours_port, "--gpu-memory-utilization", "0.4")
    reference = ServerProcess(
        [str(Path(sys.executable).parent / "vllm"), "serve", path, "--served-model-name", "reference",
         "--host", "127.0.0.1", "--port", str(ref_port), "--max-num-seqs", str(max(16, args.concurrency)),
         "--gpu-memory-utilization", "0.4", "--disable-log-stats"],
        ready_url=f"http://127.0.0.1:{ref_port}/health",
        log_path=HERE / "results" / ".vllm-serve.log",
        name="vllm serve",
    )
    ours.start()
    try:
        ours.wait_ready(timeout=600)
        reference.start()
        reference.wait_ready(timeout=600)

        async def run() -> dict:
            async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=args.concurrency * 2)) as client:
                sides = {"served": served_stream(client, ours_port, args.max_tokens),
                         "vllm_server": vllm_server_stream(client, ref_port, args.max_tokens)}
                return await alternate(sides, args, (args.concurrency,))

        fig = asyncio.run(run())
    finally:
        reference.stop()
        ours.stop()
    c = args.concurrency
    return {
        "backend": "vllm",
        "model": args.model,
        "max_tokens_per_stream": args.max_tokens,
        "concurrency": c,
        f"served_vs_vllm_server_c{c}": round(fig["served", c]["tps"] / fig["vllm_server", c]["tps"], 3),
        f"tps_c{c}": round(fig["served", c]["tps"], 2),
        f"vllm_server_tps_c{c}": round(fig["vllm_server", c]["tps"], 2),
        "ttft_ms_p50": round(fig["served", c]["ttft_ms_p50"], 1),
        "vllm_server_ttft_ms_p50": round(fig["vllm_server", c]["ttft_ms_p50"], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="packaged name, HF folder or (vllm) model id")
    parser.add_argument("--backends", default=None,
                        help="comma-separated, first one at the top level (default: transformers, and vllm when it imports)")
    parser.add_argument("--torch-threads", type=int, default=1, help="pinned for the server and the in-process engine")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of each concurrency level, per side")
    parser.add_argument("--vs-vllm-server", action="store_true", help="served vLLM backend vs `vllm serve` instead")
    parser.add_argument("--concurrency", type=int, default=32, help="streams at once for --vs-vllm-server")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "generation.json")
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import importlib.util

    import torch

    from ragserve.model_assets import resolve_generation_model

    try:  # cold start is measured with the model cache warm: convert packaged models first
        resolve_generation_model(args.model)
    except Exception:
        pass  # a vLLM model id: vLLM's own cache

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if args.vs_vllm_server:
        result = {**measure_vs_vllm_server(args), "gpu": gpu}
    else:
        default = "transformers,vllm" if importlib.util.find_spec("vllm") else "transformers"
        backends = (args.backends or default).split(",")
        result = measure(args, backends[0])
        for backend in backends[1:]:
            result[f"{backend}_{'gpu' if gpu else 'cpu'}"] = measure(args, backend)
    result["machine"] = {**describe(), "torch": torch.__version__, "gpu": gpu}
    result["measured_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
