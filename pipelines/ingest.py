"""Ingestion: documents -> chunks -> embeddings -> Milvus, idempotent and resumable.

Every chunk's id is ``hash(doc id, chunk text)`` and every write is an upsert,
so running the same ingestion twice leaves the same collection, and a run that
was killed half-way is completed by running it again: documents whose chunks
are all stored with the current content hash are skipped, the rest are
(re)embedded and upserted, and each group of documents is flushed before the
next starts. ``sync`` additionally deletes the stale chunks of changed
documents and every chunk of documents that are no longer in the given paths,
so the collection mirrors them exactly.

The steps (:func:`chunk_documents`, :func:`embed_rows`, :meth:`Ingester.write`)
are also what the Kubeflow pipeline's components run (``kfp_pipeline.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ragserve.model_assets import PACKAGED_EMBEDDING
from ragserve.transformers import milvus_store as ms
from ragserve.transformers.milvus_store import MilvusSettings, MilvusStore

from .chunker import chunk_id, chunk_text, load_tokenizer
from .loaders import Document, find_files, load_file

if TYPE_CHECKING:
    from .embedders import Embedder

logger = logging.getLogger("ragserve.ingest")

_SCHEMA_FIELDS = {ms.ID, ms.DOC_ID, ms.DOC_HASH, ms.CHUNK_INDEX, ms.TITLE, ms.URI, ms.TEXT, ms.VECTOR}


class IngestSettings(MilvusSettings):
    """Settings of ``ragserve ingest`` (env prefix ``RAGSERVE_INGEST_``)."""

    model_config = SettingsConfigDict(env_prefix="RAGSERVE_INGEST_")

    embedding_url: str = "http://127.0.0.1:8080"
    """Base URL of the embedding predictor (ignored with ``local``)."""

    embedding_model: str = "embedder"
    """Model name at the embedding predictor."""

    local: bool = False
    """Embed in this process with ``local_model`` instead of calling the predictor."""

    local_model: str = PACKAGED_EMBEDDING
    """Embedding model run with ``local``, and the tokenizer that sizes chunks: the served embedder's model."""

    chunk_tokens: int = Field(128, gt=8)
    """Most tokens per chunk; MiniLM is trained on texts of up to 128 tokens and truncates at 256."""

    chunk_overlap: int = Field(24, ge=0)
    """Tokens each chunk repeats from the end of the previous one."""

    batch_size: int = Field(32, gt=0)
    """Chunks per embedding request and per Milvus upsert."""

    sync: bool = False
    """Delete chunks of changed documents and of documents no longer under the given paths."""

    hnsw_m: int = Field(16, gt=1)
    """HNSW graph degree, when ingestion creates an HNSW collection."""

    ef_construction: int = Field(200, gt=0)
    """HNSW build breadth, when ingestion creates an HNSW collection."""

    nlist: int = Field(128, gt=0)
    """IVF clusters, when ingestion creates an IVF_FLAT collection."""

    local_engine: Literal["auto", "torch", "onnx"] = "auto"
    """Engine of ``local`` embedding, as the embedding predictor's ``engine`` (auto: ONNX Runtime on CPU)."""

    threads: int = Field(0, ge=0)
    """Threads of ``local`` embedding (0 = the engine's default)."""

    progress: bool = True
    """Show a progress bar on stderr."""

    def index_params(self) -> dict:
        return {"HNSW": {"M": self.hnsw_m, "efConstruction": self.ef_construction}, "IVF_FLAT": {"nlist": self.nlist}}.get(
            self.index_type, {}
        )


@dataclass
class IngestReport:
    documents: int = 0
    skipped: int = 0
    chunks_upserted: int = 0
    chunks_deleted: int = 0
    collection_chunks: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def chunk_documents(docs: Iterable[Document], tokenizer, *, chunk_tokens: int, overlap: int) -> list[dict]:
    """Milvus rows (without vectors) for every chunk of ``docs``."""
    rows = []
    for doc in docs:
        digest = doc.content_hash
        extra = {k: v for k, v in doc.metadata.items() if k not in _SCHEMA_FIELDS}
        for c in chunk_text(doc.text, tokenizer, chunk_tokens=chunk_tokens, overlap=overlap):
            rows.append({
                ms.ID: chunk_id(doc.doc_id, c.text), ms.DOC_ID: doc.doc_id, ms.DOC_HASH: digest,
                ms.CHUNK_INDEX: c.index, ms.TITLE: doc.title, ms.URI: doc.uri,
                ms.TEXT: c.text.encode()[: ms.MAX_TEXT].decode(errors="ignore"), **extra,
            })
    return rows


async def embed_rows(rows: list[dict], embedder: Embedder, batch_size: int) -> None:
    """Add ``vector`` to each row, ``batch_size`` chunks per embedding call."""
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        vectors = await embedder.embed([r[ms.TEXT] for r in batch])
        for row, vec in zip(batch, vectors):
            row[ms.VECTOR] = vec.tolist()


def stale_ids(stored: dict[str, dict[str, str]], rows: Sequence[dict]) -> list[str]:
    """Stored chunk ids of the rows' documents that the rows no longer contain."""
    wanted = {r[ms.ID] for r in rows}
    docs = {r[ms.DOC_ID] for r in rows}
    return sorted(cid for doc in docs for cid in stored.get(doc, {}) if cid not in wanted)


def pending(stored: dict[str, dict[str, str]], docs: Sequence[Document], rows: Sequence[dict]) -> tuple[list[dict], int]:
    """The rows of documents not yet fully stored with their current hash, and how many documents are done."""
    by_doc: dict[str, list[dict]] = {}
    for r in rows:
        by_doc.setdefault(r[ms.DOC_ID], []).append(r)
    todo, done = [], 0
    for doc in docs:
        have = stored.get(doc.doc_id, {})
        mine = by_doc.get(doc.doc_id, [])
        if mine and all(have.get(r[ms.ID]) == r[ms.DOC_HASH] for r in mine):
            done += 1
        else:
            todo.extend(mine)
    return todo, done


class Ingester:
    """Runs an ingestion with injected ``store``/``embedder``/``tokenizer`` (defaults from settings)."""

    # Documents processed (chunked, embedded, upserted, flushed) per step: a
    # killed run loses at most one group of work.
    group_docs = 16

    def __init__(self, settings: IngestSettings, *, store: MilvusStore | None = None,
                 embedder: Embedder | None = None, tokenizer=None):
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.tokenizer = tokenizer

    async def open(self, dimension: int | None = None) -> None:
        """Load the tokenizer and embedder, connect, and create the collection if missing.

        With ``dimension`` (rows that already carry vectors) no embedder is needed.
        """
        s = self.settings
        if self.tokenizer is None and dimension is None:
            self.tokenizer = load_tokenizer(s.local_model)
        if self.embedder is None and dimension is None:
            from .embedders import LocalEmbedder, RemoteEmbedder

            self.embedder = (
                LocalEmbedder(s.local_model, threads=s.threads, engine=s.local_engine) if s.local
                else RemoteEmbedder(s.embedding_url, s.embedding_model, timeout_s=s.timeout_s, retries=s.retries)
            )
        if self.store is None:
            self.store = MilvusStore(s)
        if dimension is None:
            dimension = await self.embedder.dimension()
        self.store.ensure_collection(dimension, s.index_params())

    def store_rows(self, rows: list[dict]) -> IngestReport:
        """Write already embedded rows as one run over exactly their documents (the pipeline's last step)."""
        t0 = time.perf_counter()
        upserted, deleted = self.write(rows)
        if self.settings.sync:
            deleted += self.remove_missing({r[ms.DOC_ID] for r in rows})
        return IngestReport(
            documents=len({r[ms.DOC_ID] for r in rows}), chunks_upserted=upserted, chunks_deleted=deleted,
            collection_chunks=self.store.count(), seconds=round(time.perf_counter() - t0, 3),
        )

    async def close(self) -> None:
        if self.embedder is not None:
            await self.embedder.aclose()
        if self.store is not None:
            self.store.close()

    def write(self, rows: list[dict], *, keep: Sequence[dict] | None = None, stored: dict | None = None) -> tuple[int, int]:
        """Upsert embedded ``rows``; with ``sync``, then delete the stale chunks of the documents in
        ``keep`` (default ``rows``: every chunk that should exist); flush. Returns (upserted, deleted)."""
        s = self.settings
        keep = rows if keep is None else keep
        for start in range(0, len(rows), s.batch_size):
            self.store.upsert(rows[start : start + s.batch_size])
        deleted = 0
        if s.sync and keep:
            if stored is None:
                stored = self.store.chunks_of(sorted({r[ms.DOC_ID] for r in keep}))
            # After the upsert: a reader never sees a changed document with no chunks.
            deleted = self.store.delete_ids(stale_ids(stored, keep))
        if rows or deleted:
            self.store.flush()
        return len(rows), deleted

    def remove_missing(self, seen: set[str]) -> int:
        """``sync``: delete every chunk of documents that were not seen in this run."""
        gone = {doc: ids for doc, ids in self.store.chunks_of(None).items() if doc not in seen}
        deleted = self.store.delete_ids(sorted(cid for ids in gone.values() for cid in ids))
        if gone:
            logger.info("removed %d documents no longer present (%d chunks)", len(gone), deleted)
            self.store.flush()
        return deleted

    async def run(self, paths: Sequence[str | Path]) -> IngestReport:
        s = self.settings
        report = IngestReport()
        t0 = time.perf_counter()
        files = find_files(paths)
        seen: set[str] = set()
        bar = _progress(len(files), s.progress)
        group: list[Document] = []
        try:
            for path, doc_id in files:
                group.extend(load_file(path, doc_id))
                bar.update(1)
                if len(group) >= self.group_docs:
                    await self._ingest_group(group, seen, report)
                    group = []
                    _show_rates(bar, report, t0)
            if group:
                await self._ingest_group(group, seen, report)
                _show_rates(bar, report, t0)
            if s.sync:
                report.chunks_deleted += self.remove_missing(seen)
        finally:
            bar.close()
        report.collection_chunks = self.store.count()
        report.seconds = round(time.perf_counter() - t0, 3)
        return report

    async def _ingest_group(self, docs: list[Document], seen: set[str], report: IngestReport) -> None:
        s = self.settings
        seen.update(d.doc_id for d in docs)
        rows = chunk_documents(docs, self.tokenizer, chunk_tokens=s.chunk_tokens, overlap=s.chunk_overlap)
        stored = self.store.chunks_of([d.doc_id for d in docs])
        todo, done = pending(stored, docs, rows)
        report.documents += len(docs)
        report.skipped += done
        if todo:
            await embed_rows(todo, self.embedder, s.batch_size)
        upserted, deleted = self.write(todo, keep=rows, stored=stored)
        report.chunks_upserted += upserted
        report.chunks_deleted += deleted


# -- the same steps through files: the Kubeflow components (kfp_pipeline.py) ---
def chunk_step(paths: Sequence[str | Path], out: str | Path, settings: IngestSettings) -> int:
    """Load and chunk ``paths``; write the rows as JSONL to ``out``; returns the row count."""
    from .loaders import load_documents

    tokenizer = load_tokenizer(settings.local_model)
    rows = chunk_documents(load_documents(paths), tokenizer, chunk_tokens=settings.chunk_tokens, overlap=settings.chunk_overlap)
    _write_jsonl(out, rows)
    return len(rows)


async def embed_step(inp: str | Path, out: str | Path, settings: IngestSettings) -> int:
    """Add vectors to the rows in ``inp`` through the embedding predictor; write them to ``out``."""
    from .embedders import RemoteEmbedder

    rows = _read_jsonl(inp)
    embedder = RemoteEmbedder(settings.embedding_url, settings.embedding_model, timeout_s=settings.timeout_s, retries=settings.retries)
    try:
        await embed_rows(rows, embedder, settings.batch_size)
    finally:
        await embedder.aclose()
    _write_jsonl(out, rows)
    return len(rows)


async def upsert_step(inp: str | Path, settings: IngestSettings) -> IngestReport:
    """Upsert the embedded rows in ``inp`` (creating the collection if needed)."""
    rows = _read_jsonl(inp)
    ingester = Ingester(settings)
    try:
        await ingester.open(dimension=len(rows[0][ms.VECTOR]) if rows else None)
        return ingester.store_rows(rows)
    finally:
        await ingester.close()


def _write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_jsonl(path: str | Path) -> list[dict]:
    import json

    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="file", desc="ingest", mininterval=0.5, dynamic_ncols=True)


def _show_rates(bar, report: IngestReport, t0: float) -> None:
    dt = max(time.perf_counter() - t0, 1e-9)
    bar.set_postfix_str(
        f"{report.documents / dt:.1f} docs/s, {report.chunks_upserted / dt:.1f} chunks/s, "
        f"{report.chunks_upserted} chunks, {report.skipped} unchanged",
    )
