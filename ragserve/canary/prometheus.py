"""Instant queries against Prometheus' HTTP API (``GET /api/v1/query``) through an injected client."""

from __future__ import annotations

import math

import httpx

from ragserve.errors import DependencyUnavailable, RagserveError


class PrometheusError(RagserveError):
    """Prometheus answered, but not with a result (bad query, timeout on its side)."""


class Prometheus:
    """``Prometheus(httpx.Client(base_url=URL)).value(promql)``."""

    def __init__(self, client: httpx.Client):
        self.client = client

    def query(self, promql: str) -> list[dict]:
        """The ``data.result`` of an instant query (a vector: ``[{"metric": {...}, "value": [t, "v"]}]``)."""
        where = str(self.client.base_url)
        try:
            response = self.client.get("/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise DependencyUnavailable(f"Prometheus at {where}", str(exc) or type(exc).__name__) from None
        try:
            payload = response.json()
        except ValueError:
            raise PrometheusError(f"Prometheus at {where} answered {response.status_code} without JSON") from None
        if payload.get("status") != "success":
            kind = payload.get("errorType", response.status_code)
            raise PrometheusError(f"Prometheus rejected {promql!r}: {kind}: {payload.get('error', '')}")
        data = payload.get("data") or {}
        if data.get("resultType") == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data.get("result") or []

    def value(self, promql: str) -> float | None:
        """The single value of a query that aggregates to one series; None when there is no data (or NaN)."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"expected one series from {promql!r}, got {len(result)}")
        number = float(result[0]["value"][1])
        return None if math.isnan(number) else number
