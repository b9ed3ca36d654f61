"""Chunk embedders for ingestion: the served embedding predictor, or the same model in-process.

Both return L2-normalized float32 vectors, as the predictor serves them, so a
collection filled with ``--local`` answers the transformer's served queries
exactly as one filled through the predictor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ragserve.batching import plan_forward_passes
from ragserve.errors import PayloadTooLarge
from ragserve.predictors.encoders import Engine
from ragserve.transformers.clients import EmbeddingClient, trace_headers

logger = logging.getLogger("ragserve.ingest")


class Embedder(Protocol):
    async def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def aclose(self) -> None: ...


class RemoteEmbedder:
    """Batches of chunks through the embedding predictor's V2 endpoint.

    A predictor refuses a request over its own limits (``max_batch_size``,
    ``max_body_bytes``) with 413; the batch is then halved until it fits, and
    every later request is sent at the size that fitted.
    """

    def __init__(self, url: str, model: str, *, timeout_s: float, retries: int):
        self.client = EmbeddingClient(url, model, timeout_s=timeout_s, retries=retries)
        self._headers = trace_headers(None)  # one request id for the whole run, in the predictor's logs
        self.request_limit: int | None = None
        """Most texts per request the predictor accepted after a 413 (None: none refused yet)."""

    async def dimension(self) -> int:
        return await self.client.dimension()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        step = self.request_limit or len(texts)
        parts = [await self._fitting(texts[i : i + step]) for i in range(0, len(texts), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _fitting(self, texts: Sequence[str]) -> np.ndarray:
        try:
            return await self.client.embed(texts, self._headers)
        except PayloadTooLarge:
            if len(texts) == 1:
                raise  # one text alone is over the limit: nothing to split
            half = (len(texts) + 1) // 2
            if self.request_limit is None or half < self.request_limit:
                logger.info("the embedding predictor refused %d texts per request: sending %d", len(texts), half)
                self.request_limit = half
            return np.concatenate([await self._fitting(texts[:half]), await self._fitting(texts[half:])])

    async def aclose(self) -> None:
        await self.client.aclose()


class LocalEmbedder:
    """The embedding model in this process (``--local``): the predictor's encoder and engine
    choice (ONNX Runtime on CPU by default) and its length grouping, without the server."""

    def __init__(self, model: str, *, threads: int = 0, engine: Engine = "auto", max_batch_tokens: int = 8192):
        from ragserve.model_assets import resolve_embedding_model
        from ragserve.predictors.encoders import counting_tokenizer, load_encoder

        self.encoder = load_encoder(
            resolve_embedding_model(model), "cpu", engine=engine, intra_op_threads=threads, inter_op_threads=1 if threads else 0
        )
        self._tokenizer = counting_tokenizer(self.encoder)
        self.max_batch_tokens = max_batch_tokens

    async def dimension(self) -> int:
        return int(self.encoder.encode(["dimension"]).shape[1])

    def _encode(self, texts: list[str]) -> np.ndarray:
        limit = self.encoder.max_seq_length
        lengths = [min(len(e.ids), limit) for e in self._tokenizer.encode_batch(texts, add_special_tokens=True)]
        vectors: list[np.ndarray | None] = [None] * len(texts)
        for indices in plan_forward_passes(lengths, self.max_batch_tokens, len(texts)):
            for i, v in zip(indices, self.encoder.encode([texts[i] for i in indices])):
                vectors[i] = v
        out = np.stack(vectors).astype(np.float32, copy=False)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(self._encode, list(texts))

    async def aclose(self) -> None:
        pass
