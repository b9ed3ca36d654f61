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

Answer quality (optional, ``eval_dataset``): both sides answer a labeled question
set (``ragserve eval``'s format) and the canary's answer accuracy may be at most
``max_answer_accuracy_drop`` below the stable one. Each side is reached through its
own URL (``eval_stable_url`` / ``eval_canary_url``: Knative's tagged ``prev-`` /
``latest-`` routes, or port-forwards), or both through ``eval_url``, where each
answer counts for the revision its response header names (``ragserve up``'s
ingress sets ``x-ragserve-revision``); the set is then asked ``eval_rounds`` times
so that the smaller side gets answers too.
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

    eval_dataset: str = ""
    """A ``ragserve eval`` question set (JSONL): when set, answer accuracy is a check too."""

    eval_url: str = ""
    """One V2 base URL in front of both revisions; answers are told apart by ``eval_revision_header``."""

    eval_stable_url: str = ""
    """A V2 base URL that reaches only the stable revision (instead of ``eval_url``)."""

    eval_canary_url: str = ""
    """A V2 base URL that reaches only the canary revision (instead of ``eval_url``)."""

    eval_model: str = "rag"
    """Model name in the eval's inference path (``/v2/models/{eval_model}/infer``)."""

    eval_revision_header: str = "x-ragserve-revision"
    """Response header naming the revision that answered (with ``eval_url``)."""

    eval_rounds: int = Field(3, ge=1)
    """Times the set is asked through ``eval_url`` (a split sends each side only its share)."""

    eval_concurrency: int = Field(4, ge=1)
    """Eval questions in flight at once."""

    eval_min_answers: int = Field(10, ge=1)
    """Answers each side must give for a quality verdict."""

    max_answer_accuracy_drop: float = Field(0.05, ge=0, le=1)
    """Largest acceptable stable answer accuracy minus canary answer accuracy."""


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
class Quality:
    """One side's answers to the eval set."""

    target: str
    answers: int
    answer_accuracy: float | None
    source_hit_at_1: float | None


@dataclass(frozen=True)
class Analysis:
    state: CanaryState
    window: str
    stable: Measurement
    canary: Measurement
    checks: tuple[Check, ...]
    verdict: Verdict
    queries: dict[str, SideQueries]
    quality: dict[str, Quality] | None = None


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


def measure_quality(targets: dict[str, str], settings: AnalysisSettings, **eval_kwargs) -> dict[str, Quality]:
    """Ask the eval set of each side; ``targets`` maps ``stable``/``canary`` to revision names."""
    from ragserve.eval.dataset import load_dataset
    from ragserve.eval.metrics import summarize
    from ragserve.eval.runner import EvalSettings, evaluate

    cases = load_dataset(settings.eval_dataset)

    def ask(url: str, rounds: int):
        eval_settings = EvalSettings(
            url=url, model=settings.eval_model, concurrency=settings.eval_concurrency,
            revision_header=settings.eval_revision_header,
        )
        return evaluate(list(cases) * rounds, eval_settings, **eval_kwargs)

    if settings.eval_url:
        results = ask(settings.eval_url, settings.eval_rounds)
        by_role = {role: [r for r in results if r.revision == name] for role, name in targets.items()}
    else:
        urls = {"stable": settings.eval_stable_url, "canary": settings.eval_canary_url}
        by_role = {role: ask(urls[role], 1) for role in targets}
    quality = {}
    for role, results in by_role.items():
        answered = [r for r in results if r.status != "error"]
        summary = summarize(results) if results else None
        quality[role] = Quality(
            targets[role], len(answered),
            summary.answer_accuracy if summary else None, summary.source_hit_at_1 if summary else None,
        )
    return quality


def judge_quality(quality: dict[str, Quality], settings: AnalysisSettings) -> Check:
    stable, canary = quality["stable"], quality["canary"]
    short = [f"{role} gave {q.answers}" for role, q in quality.items() if q.answers < settings.eval_min_answers]
    if short:
        return Check("answers", None, f"{' and '.join(short)} eval answers; need {settings.eval_min_answers} each")
    drop = stable.answer_accuracy - canary.answer_accuracy
    return Check(
        "answers",
        drop <= settings.max_answer_accuracy_drop,
        f"canary accuracy {canary.answer_accuracy:.3f} ({canary.answers} answers) vs stable "
        f"{stable.answer_accuracy:.3f} ({stable.answers}): {-drop:+.3f} (max -{settings.max_answer_accuracy_drop:.3f})",
    )


def analyze(
    state: CanaryState, source: Prometheus | LocalRevisions, settings: AnalysisSettings, **eval_kwargs
) -> Analysis:
    planned = plan(state, settings)
    if isinstance(source, LocalRevisions):
        stable, canary = (source.measure(*planned[role]) for role in ("stable", "canary"))
    else:
        stable, canary = (measure(source, *planned[role]) for role in ("stable", "canary"))
    checks = judge(stable, canary, settings)
    quality = None
    if settings.eval_dataset:
        quality = measure_quality({role: target for role, (target, _) in planned.items()}, settings, **eval_kwargs)
        checks = (*checks, judge_quality(quality, settings))
    return Analysis(
        state=state,
        window=settings.window,
        stable=stable,
        canary=canary,
        checks=checks,
        verdict=verdict(checks),
        queries={role: q for role, (_, q) in planned.items()},
        quality=quality,
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
