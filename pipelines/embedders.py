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

from ragserve.errors import PayloadTooLarge
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
    """The packaged sentence-transformers model in this process (``--local``)."""

    def __init__(self, model: str, *, threads: int = 0):
        import torch
        from sentence_transformers import SentenceTransformer

        from ragserve.model_assets import resolve_embedding_model

        if threads:
            torch.set_num_threads(threads)
        self.model = SentenceTransformer(resolve_embedding_model(model), device="cpu")

    async def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await asyncio.to_thread(
            self.model.encode, list(texts), batch_size=len(texts), normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )

    async def aclose(self) -> None:
        pass
