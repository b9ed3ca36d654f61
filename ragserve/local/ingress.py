"""A local stand-in for a Knative route: one address per InferenceService component.

Behind it run one or two *revisions* (local processes). Requests go to the
canary with probability ``canary_percent`` and to the stable revision
otherwise -- as Knative splits traffic for ``canaryTrafficPercent`` -- and
each response names the revision that served it in ``x-ragserve-revision``.
Bodies stream both ways, so SSE passes through unbuffered. Per-revision
request counts, 5xx counts and latencies are kept for ``ragserve canary``.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

REVISION_HEADER = "x-ragserve-revision"
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}


@dataclass
class RevisionStats:
    requests: int = 0
    errors: int = 0  # 5xx answers and unreachable revisions
    latencies_s: deque = field(default_factory=lambda: deque(maxlen=10_000))

    def record(self, status: int, seconds: float) -> None:
        self.requests += 1
        self.errors += status >= 500
        self.latencies_s.append(seconds)

    def p95_s(self) -> float | None:
        if not self.latencies_s:
            return None
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


@dataclass
class Revision:
    name: str
    url: str
    stats: RevisionStats = field(default_factory=RevisionStats)


class ComponentIngress:
    def __init__(
        self,
        name: str,
        stable: Revision,
        *,
        client: httpx.AsyncClient,
        canary: Revision | None = None,
        canary_percent: int = 0,
        rng: random.Random | None = None,
    ):
        self.name = name
        self.stable = stable
        self.canary = canary
        self.canary_percent = canary_percent if canary else 0
        self.client = client
        self.rng = rng or random.Random()
        self.app = Starlette(
            routes=[
                Route("/{path:path}", self.proxy, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
            ]
        )

    def set_split(self, canary: Revision | None, percent: int) -> None:
        self.canary, self.canary_percent = canary, (percent if canary else 0)

    def pick(self) -> Revision:
        if self.canary is not None and self.rng.random() * 100 < self.canary_percent:
            return self.canary
        return self.stable

    def traffic(self) -> list[dict]:
        """Shaped like ``status.components.<component>.traffic`` of a Knative-mode InferenceService."""
        entries = [{"revisionName": self.stable.name, "percent": 100 - self.canary_percent, "latestRevision": self.canary is None}]
        if self.canary is not None:
            entries[0]["tag"] = "prev"
            entries.append({"revisionName": self.canary.name, "percent": self.canary_percent, "latestRevision": True, "tag": "latest"})
        return entries

    async def proxy(self, request: Request):
        revision = self.pick()
        url = revision.url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        start = time.perf_counter()
        try:
            upstream = await self.client.send(
                self.client.build_request(request.method, url, headers=headers, content=await request.body()),
                stream=True,
            )
        except httpx.HTTPError as exc:
            revision.stats.record(503, time.perf_counter() - start)
            return JSONResponse(
                {"error": f"revision {revision.name} of {self.name} is unreachable: {type(exc).__name__}"},
                status_code=503,
                headers={REVISION_HEADER: revision.name},
            )
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
        out_headers[REVISION_HEADER] = revision.name

        async def done():
            await upstream.aclose()
            revision.stats.record(upstream.status_code, time.perf_counter() - start)

        return StreamingResponse(
            upstream.aiter_raw(), status_code=upstream.status_code, headers=out_headers, background=BackgroundTask(done)
        )
