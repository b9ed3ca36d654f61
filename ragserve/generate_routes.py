"""The V2 generate extension (Triton's LLM endpoints), which KServe 0.21 does not serve.

``POST /v2/models/{m}[/versions/{v}]/generate`` answers one JSON object,
``.../generate_stream`` the same objects as server-sent events. The body is
``{"text_input": "...", "parameters": {...}}``; as in Triton, other top-level
fields are taken as parameters too (``{"text_input": ..., "max_tokens": 20}``).
A model serves these routes when it has ``generate(prompt, parameters)`` and
``generate_stream(prompt, parameters)`` methods.
"""

from __future__ import annotations

from contextlib import aclosing

from fastapi import APIRouter, Request

from .errors import BadRequest, NotReady
from .kserve_compat import ModelNotFound, ModelRepository
from .sse import sse_response
from .v2 import as_text

_ENVELOPE = ("text_input", "parameters", "id")


def _resolve(repository: ModelRepository, name: str):
    model = repository.get_model(name)
    if model is None:
        raise ModelNotFound(name)
    if not callable(getattr(model, "generate", None)):
        raise BadRequest(f"model '{name}' does not serve the generate extension")
    if not model.ready:
        raise NotReady(f"model '{name}' is not ready")
    return model


async def _read(request: Request) -> tuple[str, dict, str | None]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object {"text_input": "...", "parameters": {...}}')
    if "text_input" not in body:
        raise BadRequest("field 'text_input' is required", param="text_input")
    prompt = as_text(body["text_input"], "text_input")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("field 'parameters' must be an object", param="parameters")
    extra = {k: v for k, v in body.items() if k not in _ENVELOPE}
    return prompt, {**parameters, **extra}, body.get("id")


def build_generate_router(repository: ModelRepository) -> APIRouter:
    router = APIRouter(tags=["V2 generate extension"])

    def envelope(model_name: str, version: str | None, request_id) -> dict:
        head = {"model_name": model_name, "model_version": version or "1"}
        return {"id": request_id, **head} if request_id is not None else head

    async def generate(request: Request, model_name: str, model_version: str | None = None) -> dict:
        model = _resolve(repository, model_name)
        prompt, parameters, request_id = await _read(request)
        result = await model.generate(prompt, parameters)
        return {**envelope(model_name, model_version, request_id), **result}

    async def generate_stream(request: Request, model_name: str, model_version: str | None = None):
        model = _resolve(repository, model_name)
        prompt, parameters, request_id = await _read(request)
        head = envelope(model_name, model_version, request_id)

        async def events():
            async with aclosing(model.generate_stream(prompt, parameters)) as stream:
                async for event in stream:
                    yield {**head, **event}

        return await sse_response(events(), request.url.path, done_marker=False)

    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        router.add_api_route(f"{prefix}/generate", generate, methods=["POST"])
        router.add_api_route(f"{prefix}/generate_stream", generate_stream, methods=["POST"])
    return router
