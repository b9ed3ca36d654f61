"""Runs an InferenceGraph the way KServe's router does (``cmd/router/main.go``).

- **Sequence**: steps in order. A step gets the graph's input unless its
  ``data`` is ``$response`` (and it is not the first), then the previous
  step's response. A step ``condition`` is tested on the previous response:
  if it does not match, the sequence stops and returns that response with 200
  (an unparsable previous response is an error). A ``Hard`` step answering
  non-2xx stops the sequence and its status and body are returned; a ``Soft``
  one does not. The sequence returns the last step's body and status.
- **Switch**: the first step whose ``condition`` matches the *input* runs;
  none matching (or an input that is not JSON) is a 404 error.
- **Splitter**: one step picked at random by ``weight`` (a draw in [0, 100)).
- **Ensemble**: all steps at once on the same input. Each answer must be a
  JSON object; they are merged into one object keyed by step name (index
  when unnamed). A ``Hard`` step answering non-2xx decides the result (status
  and body); the first in step order wins.
- A step that cannot be called (connection refused, timeout, unknown
  service) is an error whatever its ``dependency``: the graph answers 500.
  Errors of a nested node surface as 500 too (only a Switch at the root
  answers 404), as in KServe.
- Headers: the incoming headers whose canonical name matches one of the
  configured regular expressions (KServe's ``PROPAGATE_HEADERS`` /
  router config ``headers.propagate``; searched, not anchored) are sent to
  every step; ``Content-Type: application/json`` is added when none was
  propagated. Nothing is propagated from step responses back to the client.

Errors are :class:`RoutingError`; :mod:`ragserve.graph.app` renders them as
KServe's ``{"error": "Failed to process request", "cause": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

import httpx

from ragserve.errors import RagserveError

from .gjson import compile_path
from .resolver import ServiceNotFound, ServiceResolver, StaticResolver, step_url
from .spec import ROOT_NODE, GraphSpec, InferenceRouter, InferenceStep

logger = logging.getLogger("ragserve.graph")

# Framing and hop-by-hop headers describe the incoming connection, not the step
# call: Go's client drops Host/Content-Length/Transfer-Encoding from req.Header,
# and httpx must compute these (and manage its pooled connections) itself.
_NOT_PROPAGATED = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"})


class RoutingError(RagserveError):
    """The graph could not produce a response; ``message`` is KServe's ``cause``."""

    error_type = "routing_error"

    def __init__(self, status_code: int, cause: str):
        super().__init__(cause)
        self.status_code = status_code


@dataclass(frozen=True)
class StepResult:
    body: bytes
    status: int

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299


def compile_header_patterns(patterns: Iterable[str]) -> list[re.Pattern]:
    """Compile header patterns; like KServe, an invalid one is logged and skipped."""
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as exc:
            logger.error("ignoring header pattern %r: %s", p, exc)
    return compiled


def canonical_header(name: str) -> str:
    """Go's ``textproto.CanonicalMIMEHeaderKey``: ``x-request-id`` -> ``X-Request-Id``."""
    if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class GraphRouter:
    """Executes one :class:`GraphSpec`; step calls go through the injected ``client``."""

    def __init__(
        self,
        graph: GraphSpec,
        client: httpx.AsyncClient,
        *,
        resolver: ServiceResolver | None = None,
        propagate_headers: Sequence[str] = (),
        step_timeout: float | None = None,
        rng: random.Random | None = None,
    ):
        self.graph = graph
        self.client = client
        self.resolver = resolver or StaticResolver({})
        self.header_patterns = compile_header_patterns(propagate_headers)
        timeouts = graph.router_timeouts
        seconds = timeouts.service_client if timeouts and timeouts.service_client else step_timeout
        # routerTimeouts.serviceClient, else the settings' limit, else the injected client's own
        self._timeout = httpx.Timeout(seconds) if seconds else httpx.USE_CLIENT_DEFAULT
        self._rng = rng or random.SystemRandom()
        self._conditions = {
            s.condition: compile_path(s.condition) for n in graph.nodes.values() for s in n.steps if s.condition
        }

    async def route(self, body: bytes, headers: Iterable[tuple[str | bytes, str | bytes]] = ()) -> StepResult:
        """Run the graph from its root node on one request."""
        return await self._route_node(ROOT_NODE, body, self._step_headers(headers))

    # -- nodes ---------------------------------------------------------------

    async def _route_node(self, name: str, body: bytes, headers: list[tuple[str, str]]) -> StepResult:
        node = self.graph.nodes[name]
        if node.router_type == "Splitter":
            return await self._single(self._pick_weighted(node), body, headers)
        if node.router_type == "Switch":
            step = self._pick_by_condition(node, body)
            if step is None:
                raise RoutingError(HTTPStatus.NOT_FOUND, "None of the routes matched with the switch condition")
            return await self._single(step, body, headers)
        if node.router_type == "Ensemble":
            return await self._ensemble(node, body, headers)
        return await self._sequence(node, body, headers)

    async def _single(self, step: InferenceStep, body: bytes, headers) -> StepResult:
        # Splitter/Switch: KServe only logs a failed Hard step; its answer is the node's either way
        result = await self._execute(step, body, headers)
        if step.hard and not result.ok:
            logger.info("hard dependency step %r answered %d", step.name, result.status)
        return result

    def _pick_weighted(self, node: InferenceRouter) -> InferenceStep:
        # KServe draws in [0, 100) and walks the cumulative weights (pickupRoute).
        point, end = self._rng.randrange(100), 0
        for step in node.steps:
            end += step.weight
            if point < end:
                return step
        raise AssertionError("splitter weights sum to 100 (checked when the graph was parsed)")

    def _pick_by_condition(self, node: InferenceRouter, body: bytes) -> InferenceStep | None:
        document = _parse_json(body)
        if document is _INVALID:
            return None
        for step in node.steps:
            # a step without condition never matches (GJSON's empty path finds nothing)
            if step.condition and self._conditions[step.condition].exists(document):
                return step
        return None

    async def _sequence(self, node: InferenceRouter, body: bytes, headers) -> StepResult:
        result = StepResult(b"", 0)
        for i, step in enumerate(node.steps):
            request = result.body if step.data == "$response" and i > 0 else body
            if step.condition:
                previous = _parse_json(result.body)
                if previous is _INVALID:
                    raise RoutingError(HTTPStatus.INTERNAL_SERVER_ERROR, "invalid response")
                if not self._conditions[step.condition].exists(previous):
                    # the condition is unmet: stop and hand back what we have
                    return StepResult(result.body, HTTPStatus.OK)
            result = await self._execute(step, request, headers)
            if step.hard and not result.ok:
                logger.info("hard dependency step %r answered %d; stopping the sequence", step.name, result.status)
                return result
        return result

    async def _ensemble(self, node: InferenceRouter, body: bytes, headers) -> StepResult:
        failed: asyncio.Future = asyncio.get_running_loop().create_future()

        async def run(step: InferenceStep) -> tuple[StepResult, dict | None]:
            try:
                result = await self._execute(step, body, headers)
                parsed = _parse_json(result.body)
                if parsed is not None and not isinstance(parsed, dict):
                    label = step.name or step.node_name or step.service_url or step.service_name
                    raise RoutingError(HTTPStatus.INTERNAL_SERVER_ERROR, f"step {label!r}: answer is not a JSON object")
                return result, parsed
            except RoutingError as exc:
                if not failed.done():
                    failed.set_exception(exc)
                raise

        tasks = [asyncio.create_task(run(step)) for step in node.steps]
        try:
            merged: dict[str, dict | None] = {}
            for i, (step, task) in enumerate(zip(node.steps, tasks)):
                # Go's select: this step's answer, or any step's error, whichever comes first
                await asyncio.wait({task, failed}, return_when=asyncio.FIRST_COMPLETED)
                if not task.done() or task.exception() is not None:
                    failed.result()  # raises the first error
                result, parsed = task.result()
                if step.hard and not result.ok:
                    logger.info("hard dependency step %r answered %d", step.name, result.status)
                    return StepResult(_go_json(parsed), result.status)
                merged[step.name or str(i)] = parsed
            return StepResult(_go_json(merged), HTTPStatus.OK)
        finally:
            # steps still running are abandoned (Go leaves them running); mark errors retrieved
            for task in tasks:
                if task.done() and not task.cancelled():
                    task.exception()
                task.cancel()
            if failed.done():
                failed.exception()

    # -- steps ---------------------------------------------------------------

    async def _execute(self, step: InferenceStep, body: bytes, headers) -> StepResult:
        if step.node_name:
            try:
                return await self._route_node(step.node_name, body, headers)
            except RoutingError as exc:
                raise RoutingError(HTTPStatus.INTERNAL_SERVER_ERROR, exc.message) from exc
        url = step.service_url or await self._service_url(step.service_name)
        return await self._call(url, body, headers)

    async def _service_url(self, service_name: str) -> str:
        try:
            return step_url(service_name, await self.resolver.resolve(service_name))
        except ServiceNotFound as exc:
            raise RoutingError(HTTPStatus.INTERNAL_SERVER_ERROR, exc.message) from exc

    async def _call(self, url: str, body: bytes, headers: list[tuple[str, str]]) -> StepResult:
        try:
            response = await self.client.post(
                url, content=body, headers=headers, timeout=self._timeout, follow_redirects=True
            )
        except httpx.HTTPError as exc:
            logger.error("calling %s failed: %s", url, exc)
            raise RoutingError(HTTPStatus.INTERNAL_SERVER_ERROR, f'Post "{url}": {exc or type(exc).__name__}') from exc
        return StepResult(response.content, response.status_code)

    def _step_headers(self, incoming: Iterable[tuple[str | bytes, str | bytes]]) -> list[tuple[str, str]]:
        pairs = [(_text(k), _text(v)) for k, v in incoming]
        names: dict[str, list[str]] = {}
        for k, v in pairs:
            key = canonical_header(k)
            if key.lower() not in _NOT_PROPAGATED:
                names.setdefault(key, []).append(v)
        out, matched = [], set()
        for pattern in self.header_patterns:
            for name, values in names.items():
                if name not in matched and pattern.search(name):
                    matched.add(name)
                    out.extend((name, v) for v in values)
        if "Content-Type" not in matched:
            out.append(("Content-Type", "application/json"))
        return out


_INVALID = object()


def _parse_json(body: bytes):
    try:
        return json.loads(body) if body else _INVALID
    except ValueError:
        return _INVALID


def _go_json(value) -> bytes:
    """Serialise like Go's ``json.Marshal`` of a map: compact, keys sorted."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value
