"""Clients for the two predictors the RAG transformer calls.

* :class:`EmbeddingClient`: question -> vector, V2 REST to the embedding predictor.
* :class:`GenerationClient`: prompts -> answers, V2 REST (``v2``) or V2 gRPC
  (``grpc-v2``) to the generation predictor, as KServe's ``--predictor_protocol``
  says; streaming always uses the predictor's OpenAI chat route over HTTP.

Both carry the caller's ``x-request-id`` and W3C trace context (KServe's own
transformer forwards only a few headers), retry a call that could not connect
``retries`` times with backoff, and turn "could not reach it" into a 503 that
names the predictor. A 4xx from a predictor is the request's fault and stays a 4xx.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np
import orjson

from ragserve.errors import BadRequest, DependencyUnavailable, Overloaded, PayloadTooLarge, RagserveError
from ragserve.metrics import DEPENDENCY_ERRORS

EMBEDDING = "embedding predictor"
GENERATION = "generation predictor"

# Forwarded to every downstream call. W3C trace context is what OpenTelemetry
# propagates; x-request-id ties the transformer's and predictors' logs together.
TRACE_HEADERS = ("x-request-id", "traceparent", "tracestate", "baggage")

_RETRY_STATUS = {502, 503, 504}
T = TypeVar("T")


def trace_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers downstream calls carry; a request without ``x-request-id`` gets one."""
    incoming = {k.lower(): v for k, v in (headers or {}).items()}
    out = {k: incoming[k] for k in TRACE_HEADERS if k in incoming}
    out.setdefault("x-request-id", uuid.uuid4().hex)
    return out


def base_url(host: str) -> str:
    """KServe passes ``--predictor_host`` without a scheme."""
    return host.rstrip("/") if "://" in host else f"http://{host}"


def _error_message(response: httpx.Response) -> str:
    try:
        err = response.json().get("error")
    except Exception:
        return response.text[:300] or response.reason_phrase
    if isinstance(err, dict):
        return str(err.get("message", err))
    return str(err)


def _raise_for_status(dependency: str, response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    message = _error_message(response)
    if status == 429:
        raise Overloaded(f"{dependency} is overloaded: {message}")
    if status == 413:
        raise PayloadTooLarge(f"{dependency} rejected the request as too large: {message}")
    if 400 <= status < 500:
        raise BadRequest(f"{dependency} rejected the request: {message}")
    raise DependencyUnavailable(dependency, f"HTTP {status}: {message}")


async def with_retries(dependency: str, retries: int, call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call``; retry connection failures and 502/503/504 ``retries`` times, then 503."""
    for attempt in range(retries + 1):
        try:
            return await call()
        except RagserveError:
            raise
        except _Retryable as exc:
            DEPENDENCY_ERRORS.labels(dependency=dependency).inc()
            detail = str(exc)
        except httpx.ConnectTimeout:
            DEPENDENCY_ERRORS.labels(dependency=dependency).inc()
            detail = "connect timeout"
        except httpx.TimeoutException as exc:
            # A slow answer is not retried: the retry would queue behind it.
            DEPENDENCY_ERRORS.labels(dependency=dependency).inc()
            raise DependencyUnavailable(dependency, f"no answer in time ({type(exc).__name__})") from None
        except (httpx.TransportError, OSError) as exc:
            DEPENDENCY_ERRORS.labels(dependency=dependency).inc()
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if attempt < retries:
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
    raise DependencyUnavailable(dependency, f"{detail} (after {retries + 1} attempts)")


class _Retryable(Exception):
    """A response worth retrying (502/503/504)."""


class _HttpDependency:
    """One downstream HTTP server: a pooled client made in the serving event loop."""

    name: str

    def __init__(self, url: str, *, timeout_s: float, retries: int):
        self.url = base_url(url)
        self.timeout_s = timeout_s
        self.retries = retries
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url, timeout=self.timeout_s, limits=httpx.Limits(max_keepalive_connections=32)
            )
        return self._client

    async def post_json(self, path: str, body: dict, headers: Mapping[str, str]) -> dict:
        async def call():
            r = await self.client.post(
                path, content=orjson.dumps(body), headers={**headers, "content-type": "application/json"}
            )
            if r.status_code in _RETRY_STATUS:
                raise _Retryable(f"HTTP {r.status_code}: {_error_message(r)}")
            _raise_for_status(self.name, r)
            return orjson.loads(r.content)

        return await with_retries(self.name, self.retries, call)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class EmbeddingClient(_HttpDependency):
    """Texts -> unit vectors from the embedding predictor (V2 ``text`` -> ``embedding``)."""

    name = EMBEDDING

    def __init__(self, url: str, model: str, *, timeout_s: float = 10.0, retries: int = 2):
        super().__init__(url, timeout_s=timeout_s, retries=retries)
        self.model = model

    async def dimension(self) -> int:
        """The vector size from the model's V2 metadata (a throwaway connection: ``load()`` runs outside the serving loop)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s) as client:

            async def call():
                r = await client.get(f"/v2/models/{self.model}")
                if r.status_code in _RETRY_STATUS:
                    raise _Retryable(f"HTTP {r.status_code}: {_error_message(r)}")
                if r.status_code == 404:
                    raise DependencyUnavailable(self.name, f"{self.url} does not serve model '{self.model}'")
                _raise_for_status(self.name, r)
                return r.json()

            meta = await with_retries(self.name, self.retries, call)
        return int(meta["outputs"][0]["shape"][-1])

    async def embed(self, texts: Sequence[str], headers: Mapping[str, str]) -> np.ndarray:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}]}
        out = (await self.post_json(f"/v2/models/{self.model}/infer", body, headers))["outputs"]
        emb = next((o for o in out if o["name"] == "embedding"), None)
        if emb is None:
            raise DependencyUnavailable(self.name, f"response has no 'embedding' output (got {[o['name'] for o in out]})")
        return np.asarray(emb["data"], dtype=np.float32).reshape(emb["shape"])


@dataclass
class Generation:
    texts: list[str]
    prompt_tokens: int
    completion_tokens: int


class GenerationClient(_HttpDependency):
    """Prompts -> answers from the generation predictor over V2 REST; chat streams over its OpenAI route."""

    name = GENERATION

    def __init__(self, host: str, model: str, *, timeout_s: float = 60.0, retries: int = 2, http_host: str | None = None):
        super().__init__(http_host or host, timeout_s=timeout_s, retries=retries)
        self.host = host
        self.model = model

    async def generate(self, prompts: Sequence[str], parameters: Mapping[str, Any], headers: Mapping[str, str]) -> Generation:
        body = {
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [len(prompts)], "data": list(prompts)}],
            "parameters": dict(parameters),
        }
        resp = await self.post_json(f"/v2/models/{self.model}/infer", body, headers)
        out = next((o for o in resp.get("outputs", []) if o["name"] == "text_output"), None)
        if out is None:
            raise DependencyUnavailable(self.name, "response has no 'text_output' output")
        usage = resp.get("parameters") or {}
        return Generation(list(out["data"]), int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))

    async def stream_chat(self, body: dict, headers: Mapping[str, str]) -> AsyncIterator[dict]:
        """The predictor's ``/openai/v1/chat/completions`` SSE stream, one parsed event at a time."""
        request = self.client.build_request(
            "POST",
            "/openai/v1/chat/completions",
            content=orjson.dumps({**body, "model": self.model, "stream": True}),
            headers={**headers, "content-type": "application/json", "accept": "text/event-stream"},
        )

        async def start():
            r = await self.client.send(request, stream=True)
            if r.status_code >= 400:
                await r.aread()
                await r.aclose()
                if r.status_code in _RETRY_STATUS:
                    raise _Retryable(f"HTTP {r.status_code}: {_error_message(r)}")
                _raise_for_status(self.name, r)
            return r

        response = await with_retries(self.name, self.retries, start)
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = orjson.loads(data)
                if "error" in event:
                    err = event["error"]
                    raise DependencyUnavailable(self.name, str(err.get("message", err) if isinstance(err, dict) else err))
                yield event
        except httpx.TransportError as exc:
            raise DependencyUnavailable(self.name, f"stream broke: {type(exc).__name__}") from None
        finally:
            await response.aclose()


class GrpcGenerationClient(GenerationClient):
    """``--predictor_protocol grpc-v2``: V2 inference over gRPC (streaming still uses ``http_host``)."""

    def __init__(self, host: str, model: str, *, timeout_s: float = 60.0, retries: int = 2, http_host: str | None = None):
        super().__init__(host, model, timeout_s=timeout_s, retries=retries, http_host=http_host)
        self._grpc = None

    async def generate(self, prompts: Sequence[str], parameters: Mapping[str, Any], headers: Mapping[str, str]) -> Generation:
        import grpc

        from ragserve.kserve_compat import InferInput, InferRequest
        from ragserve.v2 import grpc_parameters
        from kserve.inference_client import InferenceGRPCClient

        if self._grpc is None:  # a grpc.aio channel belongs to the running loop
            self._grpc = InferenceGRPCClient(self.host.split("://")[-1], timeout=self.timeout_s, retries=0)
        inp = InferInput("text_input", [len(prompts)], "BYTES", data=[p.encode() for p in prompts])
        request = InferRequest(self.model, infer_inputs=[inp], parameters=grpc_parameters(parameters))

        async def call():
            try:
                return await self._grpc.infer(request, headers=tuple(headers.items()))
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAVAILABLE:
                    raise _Retryable(exc.details() or "unavailable") from None
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise BadRequest(f"{self.name} rejected the request: {exc.details()}") from None
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise Overloaded(f"{self.name} is overloaded: {exc.details()}") from None
                raise DependencyUnavailable(self.name, f"gRPC {code.name}: {exc.details()}") from None

        response = await with_retries(self.name, self.retries, call)
        out = next((o for o in response.outputs if o.name == "text_output"), None)
        if out is None:
            raise DependencyUnavailable(self.name, "response has no 'text_output' output")
        texts = [t.decode() if isinstance(t, bytes) else str(t) for t in out.as_numpy().reshape(-1)]
        usage = {k: getattr(v, v.WhichOneof("parameter_choice")) if hasattr(v, "WhichOneof") else v
                 for k, v in (response.parameters or {}).items()}
        return Generation(texts, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))

    async def aclose(self) -> None:
        await super().aclose()
        if self._grpc is not None:
            await self._grpc.close()
            self._grpc = None
