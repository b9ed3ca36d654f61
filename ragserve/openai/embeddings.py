"""Request and response types of ``POST /openai/v1/embeddings`` (OpenAI API shape)."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, gt=0)
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> list[list[float] | str]:
    """Floats as JSON numbers, or base64 of little-endian float32 as OpenAI defines it."""
    vectors = np.asarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        return [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
    return vectors.tolist()
