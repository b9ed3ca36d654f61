"""Test helpers around a local Milvus on loopback (``ragserve.pipelines.milvus_engines``).

Reads here are Strong: they must see what another process (``ragserve ingest``) just wrote;
on a Milvus server a Session or Bounded read can miss it for a second or two.
"""

from __future__ import annotations

import json
import subprocess
import sys

from ragserve.pipelines.local_milvus import LocalMilvus


def chunk_ids(milvus: LocalMilvus, collection: str) -> list[str]:
    """Every chunk id in ``collection``, sorted (the collection's identity for these tests)."""
    from ragserve.transformers.milvus_store import MilvusSettings, MilvusStore

    store = MilvusStore(MilvusSettings(milvus_uri=milvus.uri, collection=collection))
    try:
        return sorted(cid for ids in store.chunks_of(None, consistency="Strong").values() for cid in ids)
    finally:
        store.close()


def chunk_vectors(milvus: LocalMilvus, collection: str) -> dict[str, list[float]]:
    """Every chunk's vector by chunk id."""
    from pymilvus import MilvusClient

    from ragserve.transformers.milvus_store import ID, VECTOR

    client = MilvusClient(uri=milvus.uri)
    try:
        rows = client.query(collection, filter=f'{ID} != ""', output_fields=[ID, VECTOR], consistency_level="Strong")
        return {row[ID]: list(row[VECTOR]) for row in rows}
    finally:
        client.close()


def ingest_command(milvus: LocalMilvus, embedding_url: str, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "ragserve", "ingest", *args,
        "--milvus-uri", milvus.uri, "--embedding-url", embedding_url, "--progress", "false",
    ]


def run_ingest(milvus: LocalMilvus, embedding_url: str, *args: str, check: bool = True) -> dict | subprocess.CompletedProcess:
    """``ragserve ingest`` in a child process; its JSON report (or the process, when ``check`` is False)."""
    proc = subprocess.run(ingest_command(milvus, embedding_url, *args), capture_output=True, text=True, timeout=300)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
