"""``ragserve ingest`` end to end: the real CLI, the served embedder, each local Milvus engine on loopback."""

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import start_server
from milvus_server import chunk_ids, chunk_vectors, ingest_command, run_ingest
from ragserve.pipelines.ingest import IngestSettings, chunk_step, embed_step, upsert_step
from ragserve.transformers.milvus_store import MilvusSettings, MilvusStore

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "pipelines" / "samples"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def milvus(milvus_server):
    return milvus_server


@pytest.fixture(scope="module")
def sample_ingest(milvus, embedding_server):
    first = run_ingest(milvus, embedding_server.http_url, str(SAMPLES), "--collection", "samples")
    return first, chunk_ids(milvus, "samples")


def test_sample_corpus_ingests_and_reingest_is_a_no_op(milvus, embedding_server, sample_ingest):
    first, ids = sample_ingest
    assert first["documents"] == 13 and first["skipped"] == 0
    assert first["chunks_upserted"] == first["collection_chunks"] == len(ids) > 13  # some docs span chunks
    again = run_ingest(milvus, embedding_server.http_url, str(SAMPLES), "--collection", "samples")
    assert again["skipped"] == 13 and again["chunks_upserted"] == 0
    assert again["collection_chunks"] == first["collection_chunks"]
    assert chunk_ids(milvus, "samples") == ids


def test_ingest_sizes_its_requests_to_the_embedder(milvus, sample_ingest, tmp_path):
    """An embedder that takes 3 texts per request answers 413 to bigger batches; ingest splits them."""
    small = start_server("embedding", "embedder", tmp_path, "--torch-threads", "1", "--max-batch-size", "3", grpc=False)
    try:
        report = run_ingest(milvus, small.http_url, str(SAMPLES), "--collection", "small_requests", "--batch-size", "32")
    finally:
        small.process.stop()
    assert report["documents"] == 13 and report["chunks_upserted"] == len(sample_ingest[1])
    assert chunk_ids(milvus, "small_requests") == sample_ingest[1]


def test_without_a_graph_ingest_says_what_to_start(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ragserve", "ingest", str(SAMPLES / "security.txt"), "--milvus-uri", str(tmp_path / "m.db"),
         "--embedding-url", "http://127.0.0.1:9", "--retries", "0", "--progress", "false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "embedding predictor unavailable" in proc.stderr and "ragserve up" in proc.stderr and "--local" in proc.stderr


def test_sync_mirrors_changed_and_removed_documents(milvus, embedding_server, tmp_path):
    tree = tmp_path / "samples"
    shutil.copytree(SAMPLES, tree)
    run_ingest(milvus, embedding_server.http_url, str(tree), "--collection", "mirror", "--sync")
    (tree / "release-notes.md").unlink()
    sec = tree / "security.txt"
    sec.write_text(sec.read_text().replace("every 45 days", "every 30 days"))
    report = run_ingest(milvus, embedding_server.http_url, str(tree), "--collection", "mirror", "--sync")
    assert report["documents"] == 12 and report["skipped"] == 11 and report["chunks_deleted"] >= 2
    # the result is exactly a fresh ingestion of the edited tree
    run_ingest(milvus, embedding_server.http_url, str(tree), "--collection", "fresh")
    assert chunk_ids(milvus, "mirror") == chunk_ids(milvus, "fresh")


def _corpus(root: Path, n: int) -> Path:
    root.mkdir()
    for i in range(n):
        body = " ".join(f"Document {i} sentence {s} describes component {i * 7 % 13} and setting {s}." for s in range(25))
        (root / f"doc{i:03d}.txt").write_text(f"Synthetic document {i}\n\n{body}\n")
    return root


def test_killed_run_is_completed_by_a_rerun_with_identical_ids(milvus, embedding_server, tmp_path):
    corpus = _corpus(tmp_path / "corpus", 48)
    args = (str(corpus), "--batch-size", "4")
    run_ingest(milvus, embedding_server.http_url, *args, "--collection", "reference")
    reference = chunk_ids(milvus, "reference")

    store = MilvusStore(MilvusSettings(milvus_uri=milvus.uri, collection="killed"))
    proc = subprocess.Popen(ingest_command(milvus, embedding_server.http_url, *args, "--collection", "killed"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if store.count(consistency="Strong") > 0:  # another process writes: Session would lag
                    break
            except Exception:  # the collection does not exist yet
                pass
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = store.count(consistency="Strong")
    finally:
        store.close()
    assert 0 < partial < len(reference), f"the kill must land mid-run ({partial} of {len(reference)})"

    report = run_ingest(milvus, embedding_server.http_url, *args, "--collection", "killed")
    assert report["skipped"] > 0, "documents finished before the kill are not embedded again"
    assert chunk_ids(milvus, "killed") == reference
    # and the same vectors: nothing half-written survives the kill
    killed, expected = chunk_vectors(milvus, "killed"), chunk_vectors(milvus, "reference")
    assert killed.keys() == expected.keys()
    assert max(float(np.max(np.abs(np.subtract(killed[k], expected[k])))) for k in expected) < 1e-5


def test_collection_of_another_dimension_is_a_clear_error(milvus, embedding_server):
    store = MilvusStore(MilvusSettings(milvus_uri=milvus.uri, collection="dim8"))
    store.ensure_collection(8, {"M": 8, "efConstruction": 32})
    store.close()
    proc = run_ingest(milvus, embedding_server.http_url, str(SAMPLES / "security.txt"), "--collection", "dim8", check=False)
    assert proc.returncode == 2
    assert "collection 'dim8' holds 8-d vectors, the embedder returns 384-d" in proc.stderr


def test_embedder_down_is_a_clear_error(milvus):
    proc = run_ingest(milvus, "http://127.0.0.1:9", str(SAMPLES / "security.txt"), "--retries", "0", check=False)
    assert proc.returncode == 2
    assert "embedding predictor unavailable" in proc.stderr


def test_local_embedding_matches_the_served_one(milvus, embedding_server, sample_ingest):
    run_ingest(milvus, embedding_server.http_url, str(SAMPLES / "security.txt"), "--collection", "local", "--local",
               "--threads", "1")
    question = asyncio.run(_embed(embedding_server.http_url, "How often are the Milvus credentials rotated?"))
    scores = []
    for collection in ("local", "samples"):
        store = MilvusStore(MilvusSettings(milvus_uri=milvus.uri, collection=collection))
        assert store.count(consistency="Strong") > 0  # and the server has caught up with the ingester's writes
        [hits] = store.search([question], top_k=1, filter='doc_id == "security.txt" or doc_id == "samples/security.txt"')
        scores.append(hits[0].score)
        store.close()
    assert abs(scores[0] - scores[1]) < 1e-4


async def _embed(url: str, text: str) -> list[float]:
    from ragserve.transformers.clients import EmbeddingClient

    client = EmbeddingClient(url, "embedder")
    try:
        return (await client.embed([text], {}))[0].tolist()
    finally:
        await client.aclose()


def test_pipeline_steps_through_files_equal_the_cli(milvus, embedding_server, sample_ingest, tmp_path):
    settings = IngestSettings(milvus_uri=milvus.uri, collection="kfp_steps", embedding_url=embedding_server.http_url)
    chunks, embedded = tmp_path / "chunks.jsonl", tmp_path / "embedded.jsonl"
    n = chunk_step([SAMPLES], chunks, settings)
    assert asyncio.run(embed_step(chunks, embedded, settings)) == n
    report = asyncio.run(upsert_step(embedded, settings))
    assert report.collection_chunks == n
    assert chunk_ids(milvus, "kfp_steps") == sample_ingest[1]


def test_compiled_kfp_pipeline_is_current(tmp_path):
    pytest.importorskip("kfp")
    from ragserve.pipelines.kfp_pipeline import compile_pipeline

    compile_pipeline(tmp_path / "p.yaml")
    committed = REPO / "pipelines" / "ingest_pipeline.yaml"
    assert committed.read_text().startswith("# Generated from pipelines/kfp_pipeline.py")

    def spec(path):
        docs = list(yaml.safe_load_all(path.read_text()))
        for d in docs:
            d.pop("sdkVersion", None)
        return docs

    assert spec(tmp_path / "p.yaml") == spec(committed), "regenerate: python -m ragserve.pipelines.kfp_pipeline"
    [pipeline, platform] = spec(committed)
    assert list(pipeline["root"]["dag"]["tasks"]) == ["chunk-documents", "embed-chunks", "upsert-chunks"]
    secrets = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-upsert-chunks"]["secretAsEnv"]
    assert {e["envVar"] for e in secrets[0]["keyToEnv"]} == {"RAGSERVE_INGEST_MILVUS_URI", "RAGSERVE_INGEST_MILVUS_TOKEN"}


def test_ingest_job_manifest_is_valid_and_runs_the_cli():
    import kubernetes_validate

    from ragserve.cli import build_parser

    from ragserve.manifests.render import render

    [job] = render(REPO / "inferenceservices" / "jobs")
    kubernetes_validate.validate(job, "1.30", strict=True)
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][-1] == "ingest"
    args = build_parser().parse_args(["ingest", *container["args"]])
    assert args.paths == ["/data"] and args.sync is True
    env = {e["name"] for e in container["env"]}
    assert {f"RAGSERVE_INGEST_{n.upper()}" for n in ("milvus_uri", "milvus_token")} <= env
    assert all(n.removeprefix("RAGSERVE_INGEST_").lower() in IngestSettings.model_fields for n in env)
