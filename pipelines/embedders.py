"""Chunk embedders for ingestion: the served embedding predictor, or the same model in-process.

Both return L2-normalized float32 vectors, as the predictor serves them, so a
collection filled with ``--local`` answers the transformer's served queries
exactly as one filled through the predictor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ragserve.transformers.clients import EmbeddingClient, trace_headers


class Embedder(Protocol):
    async def dimension(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def aclose(self) -> None: ...


class RemoteEmbedder:
    """Batches of chunks through the embedding predictor's V2 endpoint."""

    def __init__(self, url: str, model: str, *, timeout_s: float, retries: int):
        self.client = EmbeddingClient(url, model, timeout_s=timeout_s, retries=retries)
        self._headers = trace_headers(None)  # one request id for the whole run, in the predictor's logs

    async def dimension(self) -> int:
        return await self.client.dimension()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return await self.client.embed(texts, self._headers)

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
