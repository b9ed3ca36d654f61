"""The OpenAPI document of ragserve's ``/openai/v1`` routes, built from the request models.

Served at ``GET /openai/v1/openapi.json``: the routes read their bodies
themselves (any content type), so FastAPI's generated schema cannot describe
them; this one does, from the same pydantic models that validate requests.
The fuzz tests drive schemathesis with it.
"""

from __future__ import annotations

from pydantic import BaseModel

from .completions import ChatCompletionRequest, CompletionRequest
from .embeddings import EmbeddingRequest

ROUTES: dict[str, tuple[type[BaseModel], str]] = {
    "/openai/v1/embeddings": (EmbeddingRequest, "Create embeddings"),
    "/openai/v1/completions": (CompletionRequest, "Create a completion"),
    "/openai/v1/chat/completions": (ChatCompletionRequest, "Create a chat completion"),
}

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"}}}},
}


def openapi_spec() -> dict:
    components: dict = {"Error": _ERROR}
    paths: dict = {
        "/openai/v1/models": {"get": {"summary": "List models", "responses": {"200": {"description": "OK"}}}},
    }
    for path, (model, summary) in ROUTES.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        paths[path] = {
            "post": {
                "summary": summary,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
                },
                "responses": {
                    "200": {"description": "OK"},
                    **{code: {"description": text, **error} for code, text in (
                        ("400", "invalid request"), ("404", "unknown model"), ("413", "too large"),
                        ("429", "overloaded"), ("503", "not ready or a dependency down"), ("504", "timeout"))},
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "ragserve OpenAI-compatible routes", "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }
