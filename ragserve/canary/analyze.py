"""Compare a canary with the stable predictor on Prometheus metrics and give a verdict.

Two numbers per side over the window ``W``: the error rate (5xx / requests)
and the p95 latency. The canary passes when its error rate is at most
``max_error_rate_delta`` above the stable one (absolute: 0.01 = one percentage
point) and its p95 at most ``max_p95_ratio`` times the stable p95. Either side
under ``min_requests`` requests, or a number without data, makes the verdict
*inconclusive* (nothing is applied); a failed check makes it *rollback*;
otherwise *promote*.

PromQL, Knative mode -- the queue-proxy's metrics, which see every request a
revision answers (labels ``namespace_name``, ``revision_name``,
``response_code_class``; latency in milliseconds). ``REV`` is the revision
tagged ``prev`` (stable) or the latest revision (canary) in
``status.components.predictor.traffic``::

    sum(increase(revision_app_request_count{namespace_name="NS",revision_name="REV"}[W]))
    sum(increase(revision_app_request_count{namespace_name="NS",revision_name="REV",response_code_class="5xx"}[W]))
    histogram_quantile(0.95, sum by (le) (rate(revision_app_request_latencies_bucket{namespace_name="NS",revision_name="REV"}[W])))

PromQL, Standard mode -- no queue-proxy: latency and volume from the model
server's ``request_predict_seconds`` histogram (KServe's, exported by every
ragserve server; seconds), selected by the pods of the workload ``WL``
(Deployment pods are named ``WL-<replicaset hash>-<suffix>``, so the pattern
does not also match a longer workload name); the error rate from Istio's
``istio_requests_total`` (the model server has no per-status counter), which
exists only when the workloads are in the mesh -- without it the verdict is
inconclusive. ``WL`` is ``{name}-predictor`` (stable) and
``{name}-{variant}-predictor`` for the variant in ``status.canaryStatuses[].name``
(canary), or the ``stable_workload`` /
``canary_workload`` settings::

    sum(increase(request_predict_seconds_count{namespace="NS",pod=~"WL-[a-z0-9]+-[a-z0-9]+"}[W]))
    sum(increase(istio_requests_total{reporter="destination",destination_workload_namespace="NS",destination_workload="WL"}[W]))
    sum(increase(istio_requests_total{reporter="destination",destination_workload_namespace="NS",destination_workload="WL",response_code=~"5.."}[W]))
    histogram_quantile(0.95, sum by (le) (rate(request_predict_seconds_bucket{namespace="NS",pod=~"WL-[a-z0-9]+-[a-z0-9]+"}[W])))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .ops import CanaryState
from .prometheus import Prometheus
from .target import NoCanary

Verdict = Literal["promote", "rollback", "inconclusive"]


class AnalysisSettings(BaseSettings):
    """Thresholds and data source of ``ragserve canary analyze`` (``RAGSERVE_CANARY_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="RAGSERVE_CANARY_", extra="forbid", use_attribute_docstrings=True, validate_default=True
    )

    prometheus: str = ""
    """Prometheus base URL, e.g. http://prometheus.monitoring:9090 (required unless ``local``)."""

    local: bool = False
    """Read per-revision metrics from ``ragserve up``'s control endpoint (the kubeconfig's server) instead of Prometheus."""

    window: str = Field("10m", pattern=r"^[0-9]+(ms|s|m|h|d|w|y)$")
    """PromQL range over which both sides are compared."""

    max_error_rate_delta: float = Field(0.01, ge=0)
    """Largest acceptable canary error rate minus stable error rate (0.01 = one percentage point)."""

    max_p95_ratio: float = Field(1.2, gt=0)
    """Largest acceptable canary p95 latency divided by stable p95 latency."""

    min_requests: int = Field(50, ge=1)
    """Requests each side must have served in the window for a verdict."""

    stable_workload: str = ""
    """Standard mode: the stable Deployment's name (default {name}-predictor)."""

    canary_workload: str = ""
    """Standard mode: the canary Deployment's name (default: from status.canaryStatuses)."""

    prometheus_timeout: float = Field(10.0, gt=0)
    """Seconds one Prometheus query may take."""


@dataclass(frozen=True)
class SideQueries:
    requests: str
    error_total: str
    errors: str
    p95: str
    latency_unit: float  # seconds per unit of the p95 query's result


@dataclass(frozen=True)
class Measurement:
    target: str
    requests: float | None
    errors: float | None
    error_total: float | None
    p95_seconds: float | None

    @property
    def error_rate(self) -> float | None:
        if not self.error_total:
            return None
        return (self.errors or 0.0) / self.error_total


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: no data to decide
    detail: str


@dataclass(frozen=True)
class Analysis:
    state: CanaryState
    window: str
    stable: Measurement
    canary: Measurement
    checks: tuple[Check, ...]
    verdict: Verdict
    queries: dict[str, SideQueries]


def knative_queries(namespace: str, revision: str, window: str) -> SideQueries:
    sel = f'namespace_name="{namespace}",revision_name="{revision}"'
    total = f"sum(increase(revision_app_request_count{{{sel}}}[{window}]))"
    return SideQueries(
        requests=total,
        error_total=total,
        errors=f'sum(increase(revision_app_request_count{{{sel},response_code_class="5xx"}}[{window}]))',
        p95=f"histogram_quantile(0.95, sum by (le) (rate(revision_app_request_latencies_bucket{{{sel}}}[{window}])))",
        latency_unit=0.001,
    )


def standard_queries(namespace: str, workload: str, window: str) -> SideQueries:
    pods = f'namespace="{namespace}",pod=~"{workload}-[a-z0-9]+-[a-z0-9]+"'
    mesh = f'reporter="destination",destination_workload_namespace="{namespace}",destination_workload="{workload}"'
    return SideQueries(
        requests=f"sum(increase(request_predict_seconds_count{{{pods}}}[{window}]))",
        error_total=f"sum(increase(istio_requests_total{{{mesh}}}[{window}]))",
        errors=f'sum(increase(istio_requests_total{{{mesh},response_code=~"5.."}}[{window}]))',
        p95=f"histogram_quantile(0.95, sum by (le) (rate(request_predict_seconds_bucket{{{pods}}}[{window}])))",
        latency_unit=1.0,
    )


def plan(state: CanaryState, settings: AnalysisSettings) -> dict[str, tuple[str, SideQueries]]:
    """``{"stable": (target, queries), "canary": (target, queries)}`` for ``state``."""
    if not state.in_progress or state.canary is None or state.stable is None:
        raise NoCanary(
            f"no canary in progress for inferenceservice {state.name!r}: "
            f"{'only one revision is serving' if state.in_progress else 'no canary is configured'}"
        )
    if state.mode == "Knative":
        targets = {"stable": state.stable.name, "canary": state.canary.name}
        build = knative_queries
    else:
        # KServe names the canary by its variant; its pods belong to the Deployment
        # {isvc}-{variant}-predictor (`ragserve up` reports its revisions by name)
        def workload(t):
            return t.name if settings.local else t.workload or t.name

        targets = {
            "stable": settings.stable_workload or workload(state.stable),
            "canary": settings.canary_workload or workload(state.canary),
        }
        build = standard_queries
    return {role: (target, build(state.namespace, target, settings.window)) for role, target in targets.items()}


class LocalRevisions:
    """Per-revision request counts, 5xx counts and p95 kept by ``ragserve up``'s local ingress
    (``GET /ragserve/revisions`` on its control endpoint): the same measurement without Prometheus."""

    def __init__(self, client):
        self.client = client

    def measure(self, target: str, q: SideQueries) -> Measurement:
        stats = self.client.get("/ragserve/revisions").raise_for_status().json()
        row = next((r for revisions in stats.values() for r in revisions if r["revision"] == target), None)
        if row is None and stats.get(target):
            row = stats[target][0]  # Standard mode names the stable side by its workload: the ingress's stable revision
        if row is None:
            return Measurement(target, None, None, None, None)
        return Measurement(target, row["requests"], row["errors"], row["requests"] or None, row["p95_s"])


def measure(prometheus: Prometheus, target: str, q: SideQueries) -> Measurement:
    error_total = prometheus.value(q.error_total)
    errors = prometheus.value(q.errors) if error_total else None
    p95 = prometheus.value(q.p95)
    return Measurement(
        target=target,
        requests=error_total if q.requests == q.error_total else prometheus.value(q.requests),
        errors=(errors or 0.0) if error_total else None,  # no 5xx series yet: none happened
        error_total=error_total,
        p95_seconds=None if p95 is None or math.isinf(p95) else p95 * q.latency_unit,
    )


def analyze(state: CanaryState, source: Prometheus | LocalRevisions, settings: AnalysisSettings) -> Analysis:
    planned = plan(state, settings)
    if isinstance(source, LocalRevisions):
        stable, canary = (source.measure(*planned[role]) for role in ("stable", "canary"))
    else:
        stable, canary = (measure(source, *planned[role]) for role in ("stable", "canary"))
    checks = judge(stable, canary, settings)
    return Analysis(
        state=state,
        window=settings.window,
        stable=stable,
        canary=canary,
        checks=checks,
        verdict=verdict(checks),
        queries={role: q for role, (_, q) in planned.items()},
    )


def judge(stable: Measurement, canary: Measurement, settings: AnalysisSettings) -> tuple[Check, ...]:
    short = [
        f"{role} served {m.requests or 0:.0f}"
        for role, m in (("stable", stable), ("canary", canary))
        if (m.requests or 0) < settings.min_requests
    ]
    traffic = Check(
        "traffic",
        None if short else True,
        f"{' and '.join(short)} requests in {settings.window}; need {settings.min_requests} each"
        if short
        else f"stable {stable.requests:.0f}, canary {canary.requests:.0f} requests in {settings.window}",
    )
    if stable.error_rate is None or canary.error_rate is None:
        errors = Check("error rate", None, "no request-status data for both sides")
    else:
        delta = canary.error_rate - stable.error_rate
        errors = Check(
            "error rate",
            delta <= settings.max_error_rate_delta,
            f"canary {_pct(canary.error_rate)} vs stable {_pct(stable.error_rate)}: "
            f"{delta * 100:+.2f} pp (max +{settings.max_error_rate_delta * 100:.2f} pp)",
        )
    if stable.p95_seconds is None or canary.p95_seconds is None:
        latency = Check("p95 latency", None, "no latency data for both sides")
    else:
        if stable.p95_seconds:
            ratio = canary.p95_seconds / stable.p95_seconds
        else:
            ratio = math.inf if canary.p95_seconds else 1.0
        latency = Check(
            "p95 latency",
            ratio <= settings.max_p95_ratio,
            f"canary {_ms(canary.p95_seconds)} vs stable {_ms(stable.p95_seconds)}: "
            f"x{ratio:.2f} (max x{settings.max_p95_ratio:.2f})",
        )
    return traffic, errors, latency


def verdict(checks: tuple[Check, ...]) -> Verdict:
    traffic, *rest = checks
    if traffic.ok is None:
        return "inconclusive"  # too few requests: a difference means nothing yet
    if any(c.ok is False for c in rest):
        return "rollback"
    if any(c.ok is None for c in rest):
        return "inconclusive"
    return "promote"


def render(a: Analysis) -> str:
    s = a.state
    lines = [
        f"canary analysis: inferenceservice/{s.name} (namespace {s.namespace}, {s.mode} mode, window {a.window})",
        f"  {'':8}{'target':<34}{'requests':>10}{'errors':>8}{'error rate':>12}{'p95':>12}",
    ]
    for role, m in (("stable", a.stable), ("canary", a.canary)):
        lines.append(
            f"  {role:<8}{m.target:<34}{_num(m.requests):>10}{_num(m.errors):>8}"
            f"{_pct(m.error_rate):>12}{_ms(m.p95_seconds):>12}"
        )
    for c in a.checks:
        mark = {True: "ok", False: "FAIL", None: "n/a"}[c.ok]
        lines.append(f"  {c.name + ':':<13}{mark:<5} {c.detail}")
    lines.append(f"verdict: {a.verdict}")
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f} ms"
