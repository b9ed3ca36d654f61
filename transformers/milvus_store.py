"""The chunk collection in Milvus: its schema, and every call ragserve makes to it.

One layout is shared by the ingestion pipeline (create, upsert, delete) and
the RAG transformer (check at load, search per request), so both always agree
on field names. Calls go through pymilvus ``MilvusClient`` with a URI from
settings: a Milvus Lite path (``./x.db``, in-process), ``http://127.0.0.1:PORT``
of a local Milvus (``milvus-lite server`` or the Milvus standalone server), or
a Milvus cluster with a token.

Failures are mapped once, here: unreachable Milvus -> ``DependencyUnavailable``
("milvus", 503) after bounded retries; a bad filter expression -> ``BadRequest``
naming ``filter`` (Milvus servers report it as the catch-all code 65535);
a collection that is missing or does not match the embedding model ->
:class:`CollectionMismatch` at load, never at query time.

What a real Milvus needs that Milvus Lite hides: collections are created
with Session consistency (a Bounded collection shows a writer its own rows
1-3 s late; Strong costs ~200 ms per search), ingestion's own reads ask for
Session explicitly (collections created elsewhere keep their level), and the
transformer waits for the index build and loads the collection before it
reports ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ragserve.errors import BadRequest, DependencyUnavailable, RagserveError
from ragserve.metrics import DEPENDENCY_ERRORS

logger = logging.getLogger("ragserve.milvus")

DEPENDENCY = "milvus"

# Field names of the chunk collection. Extra document metadata (JSONL keys)
# lands in Milvus' dynamic field, so filters such as `lang == "en"` work
# without a schema change.
ID, DOC_ID, DOC_HASH, CHUNK_INDEX, TITLE, URI, TEXT, VECTOR = (
    "id", "doc_id", "doc_hash", "chunk_index", "title", "uri", "text", "vector",
)
OUTPUT_FIELDS = [DOC_ID, CHUNK_INDEX, TITLE, URI, TEXT]
MAX_TEXT = 65535  # Milvus' VARCHAR limit, in bytes

# pymilvus codes (and the gRPC status names they wrap) that mean "cannot reach Milvus".
_UNREACHABLE_CODES = {2}  # "Fail connecting to server"
_NOT_LOADED_CODES = {101}
_MISSING_COLLECTION_CODES = {100}
_BAD_EXPRESSION_CODES = {6, 1100}
# Milvus 2.3+ servers return a bad expression as the catch-all 65535; only its message tells.
_BAD_EXPRESSION_MESSAGES = ("cannot parse expression", "failed to create query plan", "invalid expression")
READ_CONSISTENCY = "Session"


class MilvusSettings(BaseSettings):
    """Where the chunk collection lives and how it is indexed (shared by transformer and ingestion)."""

    model_config = SettingsConfigDict(use_attribute_docstrings=True, extra="forbid", protected_namespaces=())

    milvus_uri: str = "./.ragserve/milvus.db"
    """Milvus Lite path (one process per file), ``http://host:port`` of a Milvus (Lite) server, or a cluster URI."""

    milvus_token: SecretStr = SecretStr("")
    """Milvus token (``user:password`` or an API key); from a Kubernetes Secret in production."""

    collection: str = "ragserve_docs"
    """Collection holding the chunks."""

    index_type: Literal["HNSW", "IVF_FLAT", "FLAT", "AUTOINDEX"] = "HNSW"
    """Vector index the collection is built with (ingestion creates it; the transformer tunes searches for it)."""

    metric: Literal["COSINE", "IP"] = "COSINE"
    """Similarity metric; scores are similarities (higher is closer) for both."""

    timeout_s: float = Field(10.0, gt=0)
    """Timeout in seconds of one call to Milvus or the embedding predictor."""

    retries: int = Field(2, ge=0)
    """Retries of a dependency call that could not connect, with exponential backoff."""

    index_wait_s: float = Field(900.0, ge=0)
    """Longest the transformer waits at load for Milvus to finish building the collection's index
    (a Milvus server builds it in the background after a flush; searches before that scan)."""


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk; ``score`` is a similarity (higher is closer)."""

    chunk_id: str
    doc_id: str
    chunk_index: int
    title: str
    uri: str
    text: str
    score: float


class CollectionMismatch(RagserveError):
    """The configured collection is missing or was built for another embedding model."""


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def _unreachable(exc: BaseException) -> bool:
    import grpc

    if isinstance(exc, grpc.RpcError):
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    message = str(getattr(exc, "message", "") or exc).lower()
    return _code(exc) in _UNREACHABLE_CODES or "unavailable" in message or "deadline exceeded" in message


class MilvusStore:
    """Synchronous access to the chunk collection (the transformer calls it from a worker thread).

    ``client_factory(uri, token, timeout)`` builds the pymilvus client; tests
    may pass another factory. A client that lost its server is dropped and
    rebuilt on the next call, so Milvus coming back needs no restart.
    """

    def __init__(self, settings: MilvusSettings, client_factory: Callable[..., Any] | None = None):
        self.settings = settings
        self._factory = client_factory
        self._client = None
        self._lock = threading.Lock()  # searches run on worker threads: connect and drop once

    # -- connection ------------------------------------------------------------
    def _connect(self):
        with self._lock:
            return self._connect_locked()

    def _connect_locked(self):
        if self._client is None:
            factory = self._factory
            if factory is None:
                from pymilvus import MilvusClient

                # pymilvus logs a traceback per failed call on its own handler;
                # ours is one line that names the dependency (see call()).
                logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
                factory = MilvusClient
            uri = self.settings.milvus_uri
            if "://" not in uri:
                # Milvus Lite creates the .db folder but not its parents.
                from pathlib import Path

                Path(uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            self._client = factory(
                uri=uri, token=self.settings.milvus_token.get_secret_value(), timeout=self.settings.timeout_s
            )
        return self._client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a client whose server is gone
                pass

    def call(self, what: str, fn: Callable[[Any], Any]):
        """Run ``fn(client)`` with bounded retries; unreachable Milvus -> 503 naming it."""
        attempts = self.settings.retries + 1
        attempt, reload = 0, False
        while True:
            try:
                client = self._connect()
                if reload:
                    self._load(client)
                return fn(client)
            except RagserveError:
                raise
            except Exception as exc:
                if _code(exc) in _NOT_LOADED_CODES and not reload:
                    # A restarted Milvus (Lite) brings its collections back released.
                    reload = True
                    continue
                if not _unreachable(exc):
                    raise
                DEPENDENCY_ERRORS.labels(dependency=DEPENDENCY).inc()
                self.close()
                attempt += 1
                if attempt >= attempts:
                    raise DependencyUnavailable(
                        DEPENDENCY, f"{what} at {self.settings.milvus_uri} failed after {attempts} attempts: {_brief(exc)}"
                    ) from None
                time.sleep(min(0.1 * 2 ** (attempt - 1), 1.0))

    def _load(self, client) -> None:
        client.load_collection(self.settings.collection, timeout=self.settings.timeout_s)

    def load(self) -> None:
        """Load the collection into memory (Milvus serves searches only from loaded collections)."""
        self.call("load collection", self._load)

    # -- schema ----------------------------------------------------------------
    def describe(self) -> dict | None:
        """The collection's vector dimension, metric and index type, or None when it does not exist."""
        name = self.settings.collection

        def describe(client):
            if not client.has_collection(name):
                return None
            info = client.describe_collection(name)
            fields = {f["name"]: f for f in info["fields"]}
            if VECTOR not in fields or DOC_ID not in fields:
                raise CollectionMismatch(
                    f"collection '{name}' at {self.settings.milvus_uri} is not a ragserve chunk collection "
                    f"(fields {sorted(fields)}); ingest into another collection name"
                )
            index = {}
            for index_name in client.list_indexes(name):
                index = client.describe_index(name, index_name)
            return {
                "dimension": int(fields[VECTOR]["params"]["dim"]),
                "metric": index.get("metric_type"),
                "index_type": index.get("index_type"),
            }

        return self.call("describe collection", describe)

    def check_collection(self, dimension: int, embedding_model: str) -> dict:
        """Fail at load, clearly, unless the collection exists and holds ``dimension``-d vectors."""
        s = self.settings
        info = self.describe()
        if info is None:
            raise CollectionMismatch(
                f"collection '{s.collection}' does not exist at {s.milvus_uri}; "
                f"fill it first: ragserve ingest PATH... --collection {s.collection}"
            )
        if info["dimension"] != dimension:
            raise CollectionMismatch(
                f"collection '{s.collection}' holds {info['dimension']}-d vectors but embedding model "
                f"'{embedding_model}' returns {dimension}-d vectors; re-ingest with this model or set --collection"
            )
        if info["metric"] and info["metric"] != s.metric:
            raise CollectionMismatch(
                f"collection '{s.collection}' is indexed for {info['metric']} similarity, settings say {s.metric}"
            )
        if info["index_type"] and info["index_type"] != s.index_type:
            logger.warning(
                "collection %s has a %s index, settings say %s; searching with %s parameters",
                s.collection, info["index_type"], s.index_type, info["index_type"],
            )
        self.wait_for_index(s.index_wait_s)
        self.load()
        return info

    def index_progress(self) -> tuple[int, int]:
        """``(indexed_rows, total_rows)`` of the vector index (Milvus Lite reports neither: ``(0, 0)``)."""
        name = self.settings.collection

        def progress(client):
            indexed = total = 0
            for index_name in client.list_indexes(name):
                info = client.describe_index(name, index_name)
                indexed += int(info.get("indexed_rows", 0) or 0)
                total += int(info.get("total_rows", 0) or 0)
            return indexed, total

        return self.call("describe index", progress)

    def wait_for_index(self, timeout_s: float, poll_s: float = 1.0) -> float:
        """Block until the index covers every flushed row; seconds waited. A slow build is a clear error."""
        start, logged = time.monotonic(), False
        while True:
            indexed, total = self.index_progress()
            if indexed >= total:
                return time.monotonic() - start
            if time.monotonic() - start >= timeout_s:
                raise CollectionMismatch(
                    f"collection '{self.settings.collection}': Milvus indexed {indexed} of {total} rows in "
                    f"{timeout_s:.0f}s; raise index_wait_s or wait for the build to finish"
                )
            if not logged:
                logger.info("waiting for Milvus to index %s: %d/%d rows", self.settings.collection, indexed, total)
                logged = True
            time.sleep(poll_s)

    def ensure_collection(self, dimension: int, index_params: dict[str, Any]) -> None:
        """Create the collection if missing (ingestion); an existing one must match ``dimension``."""
        s = self.settings
        info = self.describe()
        if info is not None:
            if info["dimension"] != dimension:
                raise CollectionMismatch(
                    f"collection '{s.collection}' holds {info['dimension']}-d vectors, the embedder returns "
                    f"{dimension}-d; use another --collection or drop this one"
                )
            self.call("load collection", self._load)
            return

        def create(client):
            from pymilvus import DataType, MilvusClient

            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
            schema.add_field(ID, DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field(DOC_ID, DataType.VARCHAR, max_length=1024)
            schema.add_field(DOC_HASH, DataType.VARCHAR, max_length=64)
            schema.add_field(CHUNK_INDEX, DataType.INT64)
            schema.add_field(TITLE, DataType.VARCHAR, max_length=1024)
            schema.add_field(URI, DataType.VARCHAR, max_length=2048)
            schema.add_field(TEXT, DataType.VARCHAR, max_length=MAX_TEXT)
            schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dimension)
            index = client.prepare_index_params()
            index.add_index(field_name=VECTOR, index_type=s.index_type, metric_type=s.metric, params=index_params)
            client.create_collection(
                s.collection, schema=schema, index_params=index, consistency_level=READ_CONSISTENCY, timeout=s.timeout_s
            )

        self.call("create collection", create)
        logger.info("created collection %s (%d-d, %s/%s)", s.collection, dimension, s.index_type, s.metric)

    # -- search (transformer) --------------------------------------------------
    def search(
        self,
        vectors: Sequence[Sequence[float]],
        *,
        top_k: int,
        filter: str = "",
        score_threshold: float | None = None,
        search_params: dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Top-``top_k`` chunks per query vector, best first, at or above ``score_threshold``."""
        s = self.settings

        def search(client):
            return client.search(
                s.collection,
                data=[list(map(float, v)) for v in vectors],
                limit=top_k,
                filter=filter,
                output_fields=OUTPUT_FIELDS,
                search_params={"metric_type": s.metric, "params": search_params or {}},
                anns_field=VECTOR,
                timeout=s.timeout_s,
            )

        try:
            results = self.call("search", search)
        except RagserveError:
            raise
        except Exception as exc:
            raise self._request_error(exc, filter) from None
        out = []
        for hits in results:
            row = []
            for h in hits:
                e = h["entity"]
                hit = Hit(
                    chunk_id=str(h["id"]),
                    doc_id=e.get(DOC_ID, ""),
                    chunk_index=int(e.get(CHUNK_INDEX, 0)),
                    title=e.get(TITLE, ""),
                    uri=e.get(URI, ""),
                    text=e.get(TEXT, ""),
                    score=float(h["distance"]),
                )
                if score_threshold is None or hit.score >= score_threshold:
                    row.append(hit)
            out.append(row)
        return out

    def _request_error(self, exc: BaseException, filter: str) -> RagserveError:
        code, message = _code(exc), getattr(exc, "message", str(exc))
        bad_expression = code in _BAD_EXPRESSION_CODES or any(m in str(message) for m in _BAD_EXPRESSION_MESSAGES)
        if bad_expression and filter:
            return BadRequest(f"filter expression {filter!r} is invalid: {message}", param="filter")
        if code in _MISSING_COLLECTION_CODES:
            return DependencyUnavailable(DEPENDENCY, f"collection '{self.settings.collection}' is gone: {message}")
        return DependencyUnavailable(DEPENDENCY, f"search failed (code {code}): {message}")

    # -- writes (ingestion) ----------------------------------------------------
    def upsert(self, rows: list[dict]) -> None:
        if rows:
            self.call("upsert", lambda c: c.upsert(self.settings.collection, rows, timeout=self.settings.timeout_s))

    def delete_ids(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        if not ids:
            return 0
        self.call("delete", lambda c: c.delete(self.settings.collection, ids=ids, timeout=self.settings.timeout_s))
        return len(ids)

    def flush(self) -> None:
        self.call("flush", lambda c: c.flush(self.settings.collection, timeout=self.settings.timeout_s))

    def chunks_of(
        self, doc_ids: Sequence[str] | None = None, *, consistency: str = READ_CONSISTENCY
    ) -> dict[str, dict[str, str]]:
        """``{doc_id: {chunk_id: doc_hash}}`` for the given documents, or for every document when None.

        Session consistency sees this client's own writes; a reader that must see
        another process' writes (a test checking a finished ingestion) asks for Strong.
        """
        expr = f"{DOC_ID} in {_string_list(doc_ids)}" if doc_ids is not None else f'{ID} != ""'
        if doc_ids is not None and not doc_ids:
            return {}
        out: dict[str, dict[str, str]] = {}

        def query(client):
            it = client.query_iterator(
                self.settings.collection, batch_size=1000, filter=expr, output_fields=[DOC_ID, DOC_HASH],
                timeout=self.settings.timeout_s, consistency_level=consistency,
            )
            rows = []
            try:
                while batch := it.next():
                    rows.extend(batch)
            finally:
                it.close()
            return rows

        for row in self.call("query", query):
            out.setdefault(row[DOC_ID], {})[row[ID]] = row[DOC_HASH]
        return out

    def count(self, *, consistency: str = READ_CONSISTENCY) -> int:
        rows = self.call(
            "count",
            lambda c: c.query(self.settings.collection, filter="", output_fields=["count(*)"],
                              timeout=self.settings.timeout_s, consistency_level=consistency),
        )
        return int(rows[0]["count(*)"])


def _string_list(values: Iterable[str]) -> str:
    # Milvus expressions take JSON-style string literals.
    import json

    return json.dumps(list(values), ensure_ascii=False)


def _brief(exc: BaseException) -> str:
    text = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
