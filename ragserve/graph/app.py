"""The InferenceGraph router as an HTTP server: settings, app factory, runner.

Routes, as KServe's router serves them:

- ``GET|HEAD /v2/health/live`` -> ``{"live": true}``;
- ``GET|HEAD /v2/health/ready`` -> ``{"ready": true}``, or 503
  ``{"error": "Router is not ready", "cause": "shutting down"}`` while draining;
- ``/readyz`` (the router's readiness probe) -> 200, or 503 ``shutting down``;
- anything else, any method and path -> the graph, with the request body as
  input. The response is the graph's body and status (``Content-Type:
  application/json`` when the body is JSON); a routing failure is
  ``{"error": "Failed to process request", "cause": "..."}`` with its status.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Literal

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .resolver import ServiceAddress, StaticResolver
from .router import GraphRouter, RoutingError
from .spec import GraphSpec, GraphSpecError, load_graph, parse_graph

logger = logging.getLogger("ragserve.graph")

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class GraphSettings(BaseSettings):
    """Settings of the InferenceGraph router (``RAGSERVE_GRAPH_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="RAGSERVE_GRAPH_", extra="forbid", use_attribute_docstrings=True, validate_default=True
    )

    graph_file: str = ""
    """Path of an InferenceGraph manifest (YAML or JSON). One of graph_file / graph_json is required."""

    graph_json: str = ""
    """The InferenceGraph (or its spec) as JSON, like KServe's router ``--graph-json``."""

    services: dict[str, ServiceAddress] = {}
    """serviceName -> {"url", "modelName", "protocol"} for steps that name an InferenceService."""

    propagate_headers: list[str] = []
    """Regular expressions of request headers sent on to every step (KServe's PROPAGATE_HEADERS)."""

    step_timeout: float | None = Field(None, gt=0)
    """Seconds a step call may take if the graph sets no routerTimeouts.serviceClient (unset: no limit, as KServe)."""

    host: str = "127.0.0.1"
    """Address to bind."""

    http_port: int = Field(8080, ge=0, le=65535)
    """HTTP port (KServe's router listens on 8080)."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level for ragserve and uvicorn."""

    def load(self) -> GraphSpec:
        if bool(self.graph_file) == bool(self.graph_json):
            raise GraphSpecError("set exactly one of graph_file and graph_json")
        if self.graph_file:
            return load_graph(self.graph_file)
        try:
            return parse_graph(json.loads(self.graph_json))
        except json.JSONDecodeError as exc:
            raise GraphSpecError(f"graph_json is not valid JSON: {exc}") from None


def build_app(router: GraphRouter, *, lifespan=None) -> Starlette:
    """Serve ``router``; ``app.state.draining = True`` fails readiness (for a graceful stop)."""

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        if request.app.state.draining:
            return JSONResponse({"error": "Router is not ready", "cause": "shutting down"}, status_code=503)
        return JSONResponse({"ready": True})

    async def readyz(request: Request) -> Response:
        if request.app.state.draining:
            return PlainTextResponse("shutting down\n", status_code=503)
        return Response(status_code=200)

    async def run_graph(request: Request) -> Response:
        body = await request.body()
        try:
            result = await router.route(body, request.headers.raw)
        except RoutingError as exc:
            logger.info("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.message)
            return JSONResponse(
                {"error": "Failed to process request", "cause": exc.message}, status_code=int(exc.status_code)
            )
        media_type = "application/json" if _is_json(result.body) else "text/plain; charset=utf-8"
        return Response(result.body, status_code=result.status, media_type=media_type)

    app = Starlette(
        routes=[
            Route("/v2/health/live", live, methods=["GET", "HEAD"]),
            Route("/v2/health/ready", ready, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=_ALL_METHODS),
            Route("/{path:path}", run_graph, methods=_ALL_METHODS),
        ],
        lifespan=lifespan,
    )
    app.state.draining = False
    app.state.router = router
    return app


def create_app(
    settings: GraphSettings,
    *,
    client: httpx.AsyncClient | None = None,
    resolver=None,
) -> Starlette:
    """Load the graph from ``settings`` and serve it.

    ``client`` carries every step call; without one the app opens its own
    (no timeout, like Go's default client) for its lifetime. ``resolver``
    defaults to ``settings.services``.
    """
    graph = settings.load()
    owned = client is None
    client = client or httpx.AsyncClient(timeout=None)
    router = GraphRouter(
        graph,
        client,
        resolver=resolver or StaticResolver(settings.services),
        propagate_headers=settings.propagate_headers,
        step_timeout=settings.step_timeout,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            yield
        finally:
            app.state.draining = True
            if owned:
                await client.aclose()

    return build_app(router, lifespan=lifespan)


class GraphServer:
    """Runs :func:`create_app` under uvicorn (``ragserve serve``-style ``run()``)."""

    def __init__(self, settings: GraphSettings):
        self.settings = settings
        self.app = create_app(settings)

    def run(self) -> None:
        import uvicorn

        uvicorn.run(self.app, host=self.settings.host, port=self.settings.http_port, log_config=None)


def create_server(settings: GraphSettings) -> GraphServer:
    return GraphServer(settings)


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True
