"""Ingestion at scale: ``ragserve ingest`` of 100k chunks into a local Milvus, and time until searchable.

Run: python bench/ingest_scale.py [--chunks 100000] [--engine milvus-standalone] [--files 100]
Writes bench/results/ingest_scale.json. The corpus is ``--files`` JSONL files
of short one-chunk documents (a sentence each: the embedding of 100k long
chunks would take this 2-core machine hours, and what is measured here is
the path into Milvus). The real CLI runs with its progress bar (its stderr is
kept in bench/results/.ingest-scale.log) and embeds in-process (``--local``,
one torch thread). Then: how long Milvus takes to index every row (a server
builds the HNSW index in the background after the flushes), to load, and the
first search. Reported: ingest_s (load, chunk, embed, upsert, flush),
chunks_per_s, index_build_s, load_s, time_to_searchable_s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import save  # noqa: E402

WORDS = ("pager", "rotation", "milvus", "canary", "index", "gpu", "token", "release", "policy", "backup", "latency",
         "replica", "secret", "shard", "quota", "budget", "tenant", "schema", "vector", "answer")  # fmt: skip


def corpus(root: Path, chunks: int, files: int) -> None:
    per_file = -(-chunks // files)
    n = 0
    for f in range(files):
        with open(root / f"part{f:04d}.jsonl", "w") as out:
            for _ in range(min(per_file, chunks - n)):
                w = [WORDS[(n * k + f) % len(WORDS)] for k in (1, 3, 7, 11, 13)]
                text = f"Note {n}: the {w[0]} of {w[1]} depends on {w[2]}, {w[3]} and {w[4]}."
                out.write(json.dumps({"id": f"note-{n}", "title": f"note {n}", "text": text}) + "\n")
                n += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--engine", default="")
    ap.add_argument("--batch-size", type=int, default=256, help="ragserve ingest --batch-size")
    ap.add_argument("--output", default=str(HERE / "results" / "ingest_scale.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ragserve.pipelines.milvus_engines import DEFAULT_ENGINE, local_milvus
    from ragserve.transformers.milvus_store import MilvusSettings, MilvusStore

    engine = args.engine or DEFAULT_ENGINE
    log = HERE / "results" / ".ingest-scale.log"
    with tempfile.TemporaryDirectory() as tmp, local_milvus(engine, Path(tmp) / "milvus",
                                                            log_path=Path(tmp) / "milvus.log") as milvus:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        corpus(docs, args.chunks, args.files)
        argv = [sys.executable, "-m", "ragserve", "ingest", str(docs), "--collection", "scale", "--milvus-uri", milvus.uri,
                "--local", "--threads", "1", "--batch-size", str(args.batch_size), "--timeout-s", "120"]  # fmt: skip
        t0 = time.perf_counter()
        with open(log, "w") as err:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        ingest_s = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"ragserve ingest failed ({proc.returncode}); see {log}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        store = MilvusStore(MilvusSettings(milvus_uri=milvus.uri, collection="scale", timeout_s=120))
        t1 = time.perf_counter()
        index_build_s = store.wait_for_index(3600)
        t2 = time.perf_counter()
        store.load()
        load_s = time.perf_counter() - t2
        [hits] = store.search([[1.0] + [0.0] * 383], top_k=10, search_params={"ef": 64})
        searchable_s = time.perf_counter() - t0
        count = store.count(consistency="Strong")
        store.close()
        assert len(hits) == 10 and count == args.chunks, (len(hits), count)
    result = {
        "engine": engine,
        "n_chunks": count,
        "files": args.files,
        "ingest_s": round(ingest_s, 1),
        "chunks_per_s": round(count / ingest_s, 1),
        "index_build_after_ingest_s": round(index_build_s, 1),
        "load_s": round(load_s, 2),
        "time_to_searchable_s": round(searchable_s, 1),
        "waited_after_ingest_s": round(time.perf_counter() - t1, 1),
        "ingest_report": report,
        "embedding": "in-process (--local), 1 torch thread, all-MiniLM-L6-v2",
        "progress_bar_log": str(log.relative_to(HERE.parent)),
    }
    save(result, args.output)


if __name__ == "__main__":
    main()
