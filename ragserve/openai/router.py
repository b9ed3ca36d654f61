"""The ``/openai/v1`` router: one set of routes, dispatched to models by name."""

from __future__ import annotations

import json
import time
from typing import TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError

from ..errors import BadRequest, NotFound, describe_validation_errors
from ..kserve_compat import ModelRepository
from ..sse import sse_response
from .completions import ChatCompletionRequest, CompletionRequest
from .embeddings import EmbeddingRequest
from .spec import openapi_spec

T = TypeVar("T", bound=BaseModel)

# A model serves an OpenAI route when it has the method of that name.
CAPABILITIES = {
    "embeddings": "create_embedding",
    "completions": "create_completion",
    "chat.completions": "create_chat_completion",
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


def request_type(repository: ModelRepository, raw: bytes, capability: str, default: type[T]) -> type[T]:
    """The body type for the addressed model: a model may extend an OpenAI request with its
    own fields by mapping the capability to a subclass in ``request_types`` (e.g. RAG's ``retrieval``)."""
    try:
        name = json.loads(raw).get("model")
    except (ValueError, AttributeError):
        return default  # parse_body reports it
    model = repository.get_models().get(name) if isinstance(name, str) else None
    return getattr(model, "request_types", {}).get(capability, default)


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

    @router.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict:
        return openapi_spec()

    @router.post("/embeddings")
    async def embeddings(request: Request) -> dict:
        body = await parse_body(request, EmbeddingRequest)
        model = resolve_model(repository, body.model, "embeddings")
        response = await model.create_embedding(body, dict(request.headers))
        return response.model_dump()

    @router.post("/completions")
    async def completions(request: Request):
        body = await parse_body(request, CompletionRequest)
        model = resolve_model(repository, body.model, "completions")
        return await _respond(await model.create_completion(body, dict(request.headers)), request)

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        body = await parse_body(request, request_type(repository, await request.body(), "chat.completions", ChatCompletionRequest))
        model = resolve_model(repository, body.model, "chat.completions")
        return await _respond(await model.create_chat_completion(body, dict(request.headers)), request)

    return router


async def _respond(result, request: Request):
    """A pydantic response as JSON, or a stream of chunk dicts as SSE ending in ``[DONE]``."""
    if isinstance(result, BaseModel):
        return result.model_dump()
    return await sse_response(result, request.url.path, done_marker=True)
