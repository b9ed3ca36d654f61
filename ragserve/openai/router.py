"""The ``/openai/v1`` router: one set of routes, dispatched to models by name."""

from __future__ import annotations

import time
from typing import TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError

from ..errors import BadRequest, NotFound, describe_validation_errors
from ..kserve_compat import ModelRepository
from .embeddings import EmbeddingRequest

T = TypeVar("T", bound=BaseModel)

# A model serves an OpenAI route when it has the method of that name.
CAPABILITIES = {
    "embeddings": "create_embedding",
}


def _models_with(repository: ModelRepository, method: str) -> dict:
    return {name: m for name, m in repository.get_models().items() if callable(getattr(m, method, None))}


def resolve_model(repository: ModelRepository, name: str, capability: str):
    method = CAPABILITIES[capability]
    candidates = _models_with(repository, method)
    model = candidates.get(name)
    if model is None:
        served = sorted(candidates) or "none"
        if name in repository.get_models():
            raise BadRequest(f"model '{name}' does not serve {capability}; models that do: {served}", param="model")
        raise NotFound(f"model '{name}' not found; models serving {capability}: {served}", param="model")
    if not model.ready:
        from ..errors import NotReady

        raise NotReady(f"model '{name}' is not ready")
    return model


async def parse_body(request: Request, model_cls: type[T]) -> T:
    """Validate a JSON body whatever its content type (``curl -d`` sends form encoding)."""
    raw = await request.body()
    if not raw:
        raise BadRequest("request body is empty; send a JSON object")
    try:
        return model_cls.model_validate_json(raw)
    except ValidationError as exc:
        raise BadRequest(describe_validation_errors(exc.errors(include_url=False))) from None


def build_openai_router(repository: ModelRepository) -> APIRouter:
    router = APIRouter(prefix="/openai/v1", tags=["OpenAI"])

    @router.get("/models")
    async def list_models() -> dict:
        names = set()
        for method in CAPABILITIES.values():
            names.update(_models_with(repository, method))
        created = int(time.time())
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": created, "owned_by": "ragserve"} for n in sorted(names)],
        }

    @router.post("/embeddings")
    async def embeddings(request: Request) -> dict:
        body = await parse_body(request, EmbeddingRequest)
        model = resolve_model(repository, body.model, "embeddings")
        response = await model.create_embedding(body, dict(request.headers))
        return response.model_dump()

    return router
