"""Ask every question of a set through a V2 endpoint and score the answers.

Any endpoint that takes ``text_input`` and returns ``text_output`` + ``sources``
works: the InferenceGraph (``/v2/models/rag/infer`` locally, ``/`` on a cluster),
the ``rag`` InferenceService, a port-forward. Questions go one per request,
``concurrency`` at a time; per-request parameters (``top_k``, ``filter``, ...)
ride along as V2 request parameters.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Literal

import httpx
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .dataset import EvalCase
from .metrics import CaseResult, score


class EvalSettings(BaseSettings):
    """Settings of ``ragserve eval`` (env prefix ``RAGSERVE_EVAL_``)."""

    model_config = SettingsConfigDict(
        env_prefix="RAGSERVE_EVAL_", extra="forbid", use_attribute_docstrings=True, validate_default=True,
        protected_namespaces=(),
    )

    url: str = "http://127.0.0.1:8080"
    """Base URL of the V2 endpoint (``ragserve up``'s graph by default)."""

    model: str = "rag"
    """Model name in the inference path."""

    infer_path: str = "/v2/models/{model}/infer"
    """Path appended to ``url``; ``{model}`` is replaced. A cluster InferenceGraph answers on ``/``."""

    headers: dict[str, str] = {}
    """Extra request headers as JSON, e.g. ``{"Host": "rag-graph.ns.example.com"}`` or an auth token."""

    concurrency: int = Field(1, ge=1, le=256)
    """Questions in flight at once."""

    top_k: int | None = Field(None, ge=1, le=100)
    """Sources retrieved per question (V2 parameter ``top_k``); default: the server's."""

    filter: str | None = None
    """Milvus filter expression sent with every question (V2 parameter ``filter``)."""

    parameters: dict = {}
    """More V2 request parameters as JSON, e.g. ``{"max_tokens": 64}``."""

    timeout_s: float = Field(300.0, gt=0)
    """Timeout of one question (the whole answer)."""

    reference_recall: float = Field(0.6, gt=0, le=1)
    """Share of a reference answer's content words an answer must contain to count as correct."""

    revision_header: str = "x-ragserve-revision"
    """Response header naming the revision that answered (``ragserve up``'s canary ingress sets it)."""

    limit: int = Field(0, ge=0)
    """Ask only the first N questions (0: all)."""

    min_answer_accuracy: float | None = Field(None, ge=0, le=1)
    """Exit 1 when the answer accuracy is below this (a CI or canary gate)."""

    min_hit_at_1: float | None = Field(None, ge=0, le=1)
    """Exit 1 when the source hit@1 is below this."""

    output: Literal["table", "json"] = "table"
    """``table`` (terminal, with a progress bar) or ``json``."""

    progress: bool = True
    """Show a progress bar on stderr while asking (table output on a terminal)."""

    @field_validator("infer_path")
    @classmethod
    def _path(cls, value: str) -> str:
        return value if value.startswith("/") else "/" + value

    def endpoint(self) -> str:
        return self.url.rstrip("/") + self.infer_path.replace("{model}", self.model)

    def request_parameters(self) -> dict:
        extra = {"top_k": self.top_k, "filter": self.filter}
        return {**self.parameters, **{k: v for k, v in extra.items() if v is not None}}


def infer_body(question: str, parameters: dict) -> dict:
    body: dict = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [question]}]}
    if parameters:
        body["parameters"] = parameters
    return body


def parse_answer(payload: dict) -> tuple[str, list[dict]]:
    """``text_output`` and the sources of the first (only) question of a V2 response."""
    outputs = {o.get("name"): o.get("data") or [] for o in payload.get("outputs") or []}
    if "text_output" not in outputs:
        raise ValueError(f"the response has no text_output output (outputs: {sorted(map(str, outputs))})")
    if "sources" not in outputs:
        raise ValueError("the response has no sources output: is this a RAG endpoint?")
    answer = outputs["text_output"][0] if outputs["text_output"] else ""
    sources = [json.loads(s) if isinstance(s, str) else s for s in outputs["sources"]]
    return str(answer), [s for s in sources if s.get("index", 0) == 0]


def _error_text(response: httpx.Response) -> str:
    try:
        detail = response.json().get("error") or response.text
    except ValueError:
        detail = response.text
    return f"HTTP {response.status_code}: {str(detail)[:300]}"


async def ask(client: httpx.AsyncClient, case: EvalCase, settings: EvalSettings) -> CaseResult:
    result = CaseResult(case.id, case.question)
    start = time.perf_counter()
    try:
        response = await client.post(
            settings.endpoint(), json=infer_body(case.question, settings.request_parameters()),
            headers=settings.headers, timeout=settings.timeout_s,
        )
        result.latency_s = round(time.perf_counter() - start, 4)
        result.revision = response.headers.get(settings.revision_header, "")
        if response.status_code != 200:
            result.error = _error_text(response)
            return result
        answer, sources = parse_answer(response.json())
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc or 'no detail'} ({settings.endpoint()})"
        return result
    except ValueError as exc:  # not JSON, or not a RAG response
        result.error = str(exc)
        return result
    for key, value in score(case, answer, sources, reference_recall_min=settings.reference_recall).items():
        setattr(result, key, value)
    return result


async def run_cases(
    cases: Sequence[EvalCase],
    settings: EvalSettings,
    *,
    client: httpx.AsyncClient | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Results in dataset order; ``on_result`` sees each as it arrives (progress)."""
    if settings.limit:
        cases = cases[: settings.limit]
    gate = asyncio.Semaphore(settings.concurrency)
    own = client is None
    client = client or httpx.AsyncClient(limits=httpx.Limits(max_connections=settings.concurrency))

    async def one(case: EvalCase) -> CaseResult:
        async with gate:
            result = await ask(client, case, settings)
        if on_result:
            on_result(result)
        return result

    try:
        return list(await asyncio.gather(*(one(c) for c in cases)))
    finally:
        if own:
            await client.aclose()


def evaluate(cases: Sequence[EvalCase], settings: EvalSettings, **kwargs) -> list[CaseResult]:
    return asyncio.run(run_cases(cases, settings, **kwargs))
