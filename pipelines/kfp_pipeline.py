"""The ingestion as a Kubeflow Pipeline (kfp v2): chunk -> embed -> upsert, one component each.

Compile (and commit the result; the YAML's first line repeats this command)::

    python -m ragserve.pipelines.kfp_pipeline --output pipelines/ingest_pipeline.yaml

Each component runs the same code as ``ragserve ingest`` (ragserve.pipelines.ingest)
in the ingest image. Documents come from the PVC ``docs_pvc`` mounted at
``/data``; the Milvus URI and token come from the Secret ``ragserve-milvus``
(keys ``uri``, ``token``), the rest from the ``ragserve-settings`` ConfigMap,
exactly as for the one-shot Job in ``inferenceservices/jobs/``.
"""

# kfp reads the component signatures at run time: no `from __future__ import annotations` here.
import argparse
from pathlib import Path

from kfp import compiler, dsl, kubernetes

IMAGE = "ghcr.io/ragserve/ingest:0.1.0"
DOCS_MOUNT = "/data"
MILVUS_SECRET = "ragserve-milvus"
SETTINGS_CONFIGMAP = "ragserve-settings"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def chunk_documents(source: str, chunk_tokens: int, chunk_overlap: int, chunks: dsl.Output[dsl.Dataset]) -> int:
    """Load and chunk every document under ``source``; write the rows (JSONL) to ``chunks``."""
    from ragserve.pipelines.ingest import IngestSettings, chunk_step

    settings = IngestSettings(chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, progress=False)
    return chunk_step([source], chunks.path, settings)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def embed_chunks(chunks: dsl.Input[dsl.Dataset], batch_size: int, embedded: dsl.Output[dsl.Dataset]) -> int:
    """Add a vector to every row through the embedding predictor (``RAGSERVE_INGEST_EMBEDDING_URL``)."""
    import asyncio

    from ragserve.pipelines.ingest import IngestSettings, embed_step

    return asyncio.run(embed_step(chunks.path, embedded.path, IngestSettings(batch_size=batch_size, progress=False)))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def upsert_chunks(embedded: dsl.Input[dsl.Dataset], collection: str, sync: bool) -> str:
    """Upsert the rows into Milvus (and with ``sync`` delete what the documents no longer contain)."""
    import asyncio
    import json

    from ragserve.pipelines.ingest import IngestSettings, upsert_step

    report = asyncio.run(upsert_step(embedded.path, IngestSettings(collection=collection, sync=sync, progress=False)))
    return json.dumps(report.as_dict())


def _configure(task: dsl.PipelineTask, *, milvus: bool = False) -> dsl.PipelineTask:
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=SETTINGS_CONFIGMAP,
        config_map_key_to_env={
            "RAGSERVE_INGEST_EMBEDDING_URL": "RAGSERVE_INGEST_EMBEDDING_URL",
            "RAGSERVE_INGEST_COLLECTION": "RAGSERVE_INGEST_COLLECTION",
        },
    )
    if milvus:
        kubernetes.use_secret_as_env(
            task,
            secret_name=MILVUS_SECRET,
            secret_key_to_env={"uri": "RAGSERVE_INGEST_MILVUS_URI", "token": "RAGSERVE_INGEST_MILVUS_TOKEN"},
        )
    task.set_cpu_limit("1").set_memory_limit("2G")
    return task


@dsl.pipeline(name="ragserve-ingest", description="Documents on a PVC -> chunks -> embeddings -> Milvus.")
def ingest_pipeline(
    docs_pvc: str = "ragserve-docs",
    collection: str = "ragserve_docs",
    chunk_tokens: int = 128,
    chunk_overlap: int = 24,
    batch_size: int = 32,
    sync: bool = False,
):
    chunk = _configure(chunk_documents(source=DOCS_MOUNT, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap))
    kubernetes.mount_pvc(chunk, pvc_name=docs_pvc, mount_path=DOCS_MOUNT)
    embed = _configure(embed_chunks(chunks=chunk.outputs["chunks"], batch_size=batch_size))
    upsert = _configure(upsert_chunks(embedded=embed.outputs["embedded"], collection=collection, sync=sync), milvus=True)
    # The PVC's content is not an input KFP can see: a cached step would
    # replay last run's chunks. Ingestion is idempotent, so rerunning is cheap.
    for task in (chunk, embed, upsert):
        task.set_caching_options(False)


def compile_pipeline(output: Path) -> None:
    compiler.Compiler().compile(ingest_pipeline, str(output))
    header = (
        "# Generated from pipelines/kfp_pipeline.py -- do not edit. Regenerate with:\n"
        "#   python -m ragserve.pipelines.kfp_pipeline --output pipelines/ingest_pipeline.yaml\n"
    )
    output.write_text(header + output.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description="Compile the ingestion pipeline to KFP v2 YAML.")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "ingest_pipeline.yaml")
    compile_pipeline(parser.parse_args().output)


if __name__ == "__main__":
    main()
