"""Retrieval benchmark: each local Milvus engine on the same 100k chunks -- recall@10, search latency,
time to searchable, memory.

Run: python bench/retrieval.py [--engines milvus-standalone,milvus-lite] [--n 100000] [--queries 200]
     [--extra FILE.json ...]
Writes bench/results/retrieval.json. A synthetic collection of ``--n`` 384-d
unit vectors drawn around 1000 cluster centres (chunks of similar documents
cluster like this), loaded into each engine through pymilvus as ingestion
does (batches of 5000, flush), indexed with the configured HNSW (M=16,
efConstruction=200; searched with ef=64 as the transformer does). Queries are
perturbed data points; recall@10 is against exact search in numpy. Per
engine: insert_s, flush_s, index_build_s (flush until the index covers every
row: a Milvus server builds it in the background), load_s, their sum
(time_to_searchable_s), search p50/p95 over single-query calls, and the
server's RSS once loaded.

``milvus-lite-2.5`` (the last C++ Milvus Lite) cannot share a venv with
Milvus Lite 3.x (same module name): measure it from a throwaway venv with
``--engines milvus-lite-2.5 --output /tmp/x.json`` (this file needs only numpy,
pymilvus and psutil there), then pass ``--extra /tmp/x.json`` to the main run.
It opens its database by path (no server mode) and its local mode only takes
FLAT/IVF_FLAT/AUTOINDEX: it is measured with AUTOINDEX.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DIM = 384
M, EF_CONSTRUCTION, EF = 16, 200, 64
BATCH = 5000  # rows per insert call; --insert-batch
DEFAULT_ENGINES = "milvus-standalone,milvus-lite"


def synthetic(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    data = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, DIM)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    # a question lands near, not on, the chunk that answers it (noise norm ~0.4)
    queries = data[rng.integers(0, n, n_queries)] + 0.02 * rng.normal(size=(n_queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return data, queries


def exact_top10(data: np.ndarray, queries: np.ndarray) -> list[list[int]]:
    sims = queries @ data.T
    return [list(map(int, np.argsort(-row)[:10])) for row in sims]


def rss_mib(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def index_done(client, name: str) -> bool:
    infos = [client.describe_index(name, i) for i in client.list_indexes(name)]
    # Milvus Lite 3.x reports no progress: its index is built at insert
    return all(int(i.get("indexed_rows", 0) or 0) >= int(i.get("total_rows", 0) or 0) for i in infos)


def load_and_index(client, name: str, index_type: str, data: np.ndarray, index_timeout_s: float, batch: int) -> dict:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    params = {"M": M, "efConstruction": EF_CONSTRUCTION} if index_type == "HNSW" else {}
    index.add_index(field_name="vector", index_type=index_type, metric_type="COSINE", params=params)
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Session")
    times = {}
    t0 = time.perf_counter()
    for start in range(0, len(data), batch):
        client.insert(name, [{"id": i, "vector": data[i].tolist()} for i in range(start, min(start + batch, len(data)))])
    times["insert_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    client.flush(name)
    times["flush_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    while not index_done(client, name):
        if time.perf_counter() - t0 > index_timeout_s:
            raise TimeoutError(f"index of {name} not built in {index_timeout_s:.0f}s")
        time.sleep(1)
    times["index_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    client.load_collection(name)
    times["load_s"] = time.perf_counter() - t0
    times["time_to_searchable_s"] = sum(times.values())
    return {k: round(v, 1) for k, v in times.items()}


def search(client, name: str, queries: np.ndarray, params: dict) -> tuple[list[list[int]], list[float]]:
    ids, ms = [], []
    search_params = {"metric_type": "COSINE", "params": params}
    for q in queries[:5]:  # warm up
        client.search(name, data=[q.tolist()], limit=10, search_params=search_params)
    for q in queries:
        t0 = time.perf_counter()
        [hits] = client.search(name, data=[q.tolist()], limit=10, search_params=search_params)
        ms.append((time.perf_counter() - t0) * 1000)
        ids.append([int(h["id"]) for h in hits])
    return ids, ms


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@contextlib.contextmanager
def engine_client(engine: str, tmp: Path):
    """(client, server pid, how it is reached) for ``engine``, data under ``tmp``."""
    from pymilvus import MilvusClient

    if engine == "milvus-lite-2.5":
        import milvus_lite  # the C++ build, from a throwaway venv: by path, a child server on a unix socket

        client = MilvusClient(uri=str(tmp / "bench.db"), timeout=600)
        import psutil

        child = next(p for p in psutil.Process().children(recursive=True) if "milvus" in p.name())
        yield client, child.pid, f"milvus-lite {milvus_lite.__version__} by path (AUTOINDEX: local mode has no HNSW)"
        client.close()
        return
    from ragserve.pipelines.milvus_engines import local_milvus

    with local_milvus(engine, tmp / "milvus", log_path=tmp / "milvus.log") as milvus:
        client = MilvusClient(uri=milvus.uri, timeout=600)
        yield client, milvus.process.proc.pid, f"{engine} server on loopback, via pymilvus MilvusClient"
        client.close()


def measure(engine: str, data: np.ndarray, queries: np.ndarray, exact: list[list[int]], index_timeout_s: float,
            batch: int) -> dict:
    index_type = "AUTOINDEX" if engine == "milvus-lite-2.5" else "HNSW"
    with tempfile.TemporaryDirectory() as tmp, engine_client(engine, Path(tmp)) as (client, pid, how):
        print(f"[{engine}] loading {len(data)} chunks ({index_type})", flush=True)
        times = load_and_index(client, "bench", index_type, data, index_timeout_s, batch)
        print(f"[{engine}] {times}; searching", flush=True)
        ids, ms = search(client, "bench", queries, {"ef": EF} if index_type == "HNSW" else {})
        result = {
            "n_chunks": len(data),
            "recall_at_10": round(recall(ids, exact), 4),
            "search_ms_p50": round(statistics.median(ms), 2),
            "search_ms_p95": round(statistics.quantiles(ms, n=100)[94], 2),
            **times,
            "rss_mib": round(rss_mib(pid)),
            "index": index_type,
            "insert_batch": batch,
            "store": how,
        }
    print(f"[{engine}] {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default=DEFAULT_ENGINES, help="comma-separated engines to measure in this venv")
    ap.add_argument("--n", type=int, default=100_000, help="chunks in the synthetic collection")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--index-timeout-s", type=float, default=1800)
    ap.add_argument("--insert-batch", type=int, default=BATCH, help="rows per insert (milvus-lite-2.5 slows sharply with big ones)")
    ap.add_argument("--extra", action="append", default=[], help="engines measured elsewhere (this script's output)")
    ap.add_argument("--output", default=str(HERE / "results" / "retrieval.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    data, queries = synthetic(args.n, args.queries)
    exact = exact_top10(data, queries)
    engines = {}
    for engine in filter(None, args.engines.split(",")):
        engines[engine] = measure(engine, data, queries, exact, args.index_timeout_s, args.insert_batch)
    for extra in args.extra:
        engines.update(json.loads(Path(extra).read_text())["engines"])

    try:
        from ragserve.pipelines.milvus_engines import DEFAULT_ENGINE as default
    except ImportError:  # the throwaway venv of milvus-lite-2.5 has no ragserve
        default = None
    result = {"engines": engines, "default_engine": default, "n_chunks": args.n, "queries": args.queries,
              "index": {"type": "HNSW", "M": M, "efConstruction": EF_CONSTRUCTION, "ef": EF, "metric": "COSINE", "dim": DIM},
              "recall_against": "exact search in numpy"}
    if default in engines:  # the headline figures are the default engine's
        result.update({k: engines[default][k] for k in ("recall_at_10", "search_ms_p50", "search_ms_p95")})
        lite = engines.get("milvus-lite")
        if lite and default != "milvus-lite":
            result["default_vs_milvus_lite_search_latency"] = round(engines[default]["search_ms_p50"] / lite["search_ms_p50"], 4)
    from report import save

    save(result, args.output)
    for name, r in engines.items():
        print(f"{name:18} recall@10 {r['recall_at_10']:.3f}  p50 {r['search_ms_p50']:7.1f} ms  p95 {r['search_ms_p95']:7.1f} ms"
              f"  searchable after {r['time_to_searchable_s']:6.1f} s  RSS {r['rss_mib']} MiB")


if __name__ == "__main__":
    main()
