"""Canary state and the exact patches, as pure functions of an InferenceService object.

Two deployment modes, told apart by ``status.deploymentMode``, else the
``serving.kserve.io/deploymentMode`` annotation, else the object's shape:

**Knative** (``Serverless`` / ``Knative``): every spec change makes a revision;
``spec.predictor.canaryTrafficPercent`` splits traffic between the latest
ready revision and the last one rolled out to 100%
(``status.components.predictor.traffic``, tags ``latest`` / ``prev``). As
KServe's docs prescribe: *set* writes ``canaryTrafficPercent``; *promote*
removes it (the latest revision takes 100% and becomes the rolled-out one);
*rollback* sets it to 0 (100% pinned to the previous revision, the canary's
revision kept). A canary is in progress while ``canaryTrafficPercent`` is set.

**Standard** (``Standard`` / ``RawDeployment``): the stable predictor is
``spec.predictor``; a canary is an entry of ``spec.canary[]``:
``{trafficPercent, predictor}``, its ``predictor`` derived from the stable one
(:mod:`.derive`: KServe requires the variant name in ``predictor.name`` and
refuses autoscaling fields on it). KServe reports it by that name in
``status.canaryStatuses[]`` and runs it as the Deployment
``{isvc}-{name}-predictor``. *start* adds it; *set* rewrites its
``trafficPercent``; *promote* copies into ``spec.predictor`` only what the
canary runs differently (:func:`.derive.promotion`: the stable predictor keeps
its scheduling, autoscaling, storage and annotations) and removes
``spec.canary``; *rollback* removes ``spec.canary`` (the stable predictor was
never changed). ``spec.canary`` is an atomic list, so a patch that changes it
carries the whole list. ragserve drives one canary entry at a time.

An InferenceService KServe has not reconciled yet has no ``status``: its mode
is the annotation's, else KServe's default (Knative), and ``canary status``
says it is not reconciled instead of failing.

Every patch is a JSON merge patch (RFC 7386, ``application/merge-patch+json``)
that carries the ``metadata.resourceVersion`` it was computed from: if the
object changed in between, the API server answers 409 instead of applying a
decision made on stale state.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

from ragserve.errors import BadRequest

from .derive import DEFAULT_VARIANT, CanaryChange, canary_from_stable, knative_change, promotion
from .target import InferenceService, NoCanary

Mode = Literal["Knative", "Standard"]
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
_KNATIVE = {"Serverless", "Knative"}
_STANDARD = {"Standard", "RawDeployment"}
_REVISION_FIELDS = (
    "latestCreatedRevision",
    "latestReadyRevision",
    "latestRolledoutRevision",
    "previousRolledoutRevision",
)


class UnsupportedMode(NoCanary):
    pass


@dataclass(frozen=True)
class TrafficTarget:
    """One revision (Knative) or workload (Standard) and its share of traffic."""

    name: str
    percent: int
    role: Literal["stable", "canary"]
    ready: bool | None = None
    tag: str = ""
    workload: str = ""
    """Standard mode: the Deployment serving it (``{isvc}-predictor``, ``{isvc}-{variant}-predictor``)."""


@dataclass(frozen=True)
class CanaryState:
    name: str
    namespace: str
    mode: Mode
    in_progress: bool
    canary_percent: int | None
    """The configured canary share (spec), None when no canary is configured."""
    traffic: tuple[TrafficTarget, ...] = ()
    """What the status reports is serving, stable first."""
    ready: bool | None = None
    ready_message: str = ""
    revisions: dict[str, str] = field(default_factory=dict)
    """Knative: latestCreated / latestReady / latestRolledout / previousRolledout revision names."""
    reconciled: bool = True
    """False while the object has no status (KServe has not reconciled it yet)."""

    @property
    def stable(self) -> TrafficTarget | None:
        return next((t for t in self.traffic if t.role == "stable"), None)

    @property
    def canary(self) -> TrafficTarget | None:
        return next((t for t in self.traffic if t.role == "canary"), None)


def deployment_mode(isvc: InferenceService) -> Mode:
    status_mode = (isvc.get("status") or {}).get("deploymentMode")
    declared = status_mode or _annotations(isvc).get(DEPLOYMENT_MODE_ANNOTATION, "")
    if declared in _KNATIVE:
        return "Knative"
    if declared in _STANDARD:
        return "Standard"
    if declared:
        raise UnsupportedMode(f"inferenceservice {_name(isvc)!r} runs in {declared} mode, which has no canary rollout")
    # nothing declared: Standard if shaped like it, else KServe's default mode
    return "Standard" if (isvc.get("spec") or {}).get("canary") else "Knative"


def canary_state(isvc: InferenceService) -> CanaryState:
    mode = deployment_mode(isvc)
    meta = isvc.get("metadata") or {}
    ready, message = _readiness(isvc)
    common = {"name": meta.get("name", ""), "namespace": meta.get("namespace", ""), "mode": mode, "ready": ready,
              "ready_message": message, "reconciled": bool(isvc.get("status"))}
    if mode == "Knative":
        percent = (isvc.get("spec") or {}).get("predictor", {}).get("canaryTrafficPercent")
        pstatus = _predictor_status(isvc)
        traffic = [
            TrafficTarget(
                name=t.get("revisionName", ""),
                percent=int(t.get("percent") or 0),
                role="canary" if t.get("latestRevision") and len(pstatus.get("traffic", [])) > 1 else "stable",
                tag=t.get("tag", ""),
            )
            for t in pstatus.get("traffic", [])
        ]
        traffic.sort(key=lambda t: t.role != "stable")
        revisions = {
            k: pstatus[k]
            for k in _REVISION_FIELDS
            if pstatus.get(k)
        }
        # canaryTrafficPercent stays set after `kubectl apply` of a kustomization that has it: with
        # one revision rolled out and nothing newer, it only arms the next rollout
        latest = pstatus.get("latestCreatedRevision") or pstatus.get("latestReadyRevision")
        status_current = (isvc.get("status") or {}).get("observedGeneration") == meta.get("generation")
        armed_only = status_current and latest and latest == pstatus.get("latestRolledoutRevision")
        return CanaryState(**common, in_progress=percent is not None and not armed_only, canary_percent=percent,
                           traffic=tuple(traffic),
                           revisions=revisions)
    canaries = (isvc.get("spec") or {}).get("canary") or []
    statuses = (isvc.get("status") or {}).get("canaryStatuses") or []
    stable_name = f"{common['name']}-predictor"
    shown = []
    for i, c in enumerate(canaries):
        # the status says what is serving (by variant name); the spec what was asked for
        variant = (c.get("predictor") or {}).get("name") or ""
        st = next((s for s in statuses if variant and s.get("name") == variant), None)
        st = st or (statuses[i] if i < len(statuses) else {})
        name = st.get("name") or variant or f"{stable_name}-canary"
        percent = int(st.get("trafficPercent", c.get("trafficPercent")) or 0)
        shown.append(TrafficTarget(name, percent, "canary", st.get("ready"), workload=f"{common['name']}-{name}-predictor"))
    traffic = [TrafficTarget(stable_name, 100 - sum(t.percent for t in shown), "stable", ready, workload=stable_name),
               *shown]
    canary_total = sum(int(c.get("trafficPercent") or 0) for c in canaries)
    return CanaryState(**common, in_progress=bool(canaries), canary_percent=canary_total if canaries else None,
                       traffic=tuple(traffic))


# -- patches -------------------------------------------------------------------


def set_traffic_patch(isvc: InferenceService, percent: int) -> dict[str, Any]:
    if not 0 <= percent <= 100:
        raise BadRequest(f"percent must be between 0 and 100, got {percent}", param="percent")
    if deployment_mode(isvc) == "Knative":
        return _patch(isvc, {"predictor": {"canaryTrafficPercent": percent}})
    canary = _single_canary(isvc, "set the traffic of")
    return _patch(isvc, {"canary": [{**canary, "trafficPercent": percent}]})


def start_patch(isvc: InferenceService, change: CanaryChange, percent: int = 10,
                variant: str = DEFAULT_VARIANT) -> dict[str, Any]:
    """Start a canary running ``change``: Knative, a new revision with ``canaryTrafficPercent``;
    Standard, a ``spec.canary[]`` entry derived from the stable predictor."""
    if not 0 <= percent <= 100:
        raise BadRequest(f"percent must be between 0 and 100, got {percent}", param="percent")
    if change.empty():
        raise BadRequest("say what the canary changes: --image, --runtime-version, --args, --env or --storage-uri",
                         param="change")
    state = canary_state(isvc)
    if state.in_progress:
        raise NoCanary(f"inferenceservice {state.name!r} already has a canary in progress; promote or roll it back first")
    stable = (isvc.get("spec") or {}).get("predictor") or {}
    if state.mode == "Knative":
        return _patch(isvc, {"predictor": {"canaryTrafficPercent": percent, **knative_change(stable, change)}})
    canary = canary_from_stable(stable, variant, change)
    return _patch(isvc, {"canary": [{"trafficPercent": percent, "predictor": canary}]})


def promote_patch(isvc: InferenceService) -> dict[str, Any]:
    state = require_canary(isvc)
    if state.mode == "Knative":
        return _patch(isvc, {"predictor": {"canaryTrafficPercent": None}})
    canary = _single_canary(isvc, "promote")
    stable = (isvc.get("spec") or {}).get("predictor") or {}
    return _patch(isvc, {"predictor": promotion(stable, canary.get("predictor") or {}), "canary": None})


def reverted_by_apply(isvc: InferenceService, patch: dict[str, Any]) -> list[str]:
    """Fields of ``patch`` that the next ``kubectl apply`` would set back: those the object's
    last-applied configuration (``kubectl apply``'s annotation) holds with another value."""
    import json

    raw = _annotations(isvc).get(LAST_APPLIED_ANNOTATION)
    try:
        applied = (json.loads(raw) or {}).get("spec") if raw else None
    except ValueError:
        return []
    if not isinstance(applied, dict):
        return []
    out: list[str] = []

    def walk(p: Any, a: Any, path: str) -> None:
        if isinstance(p, dict) and isinstance(a, dict):
            for k, v in p.items():
                if k in a:
                    walk(v, a[k], f"{path}.{k}")
        elif p != a:
            out.append(path)

    walk(patch.get("spec") or {}, applied, "spec")
    return out


def rollback_patch(isvc: InferenceService) -> dict[str, Any]:
    state = require_canary(isvc)
    if state.mode == "Knative":
        return _patch(isvc, {"predictor": {"canaryTrafficPercent": 0}})
    return _patch(isvc, {"canary": None})


def require_canary(isvc: InferenceService) -> CanaryState:
    state = canary_state(isvc)
    if not state.in_progress:
        where = "spec.predictor.canaryTrafficPercent is not set" if state.mode == "Knative" else "spec.canary is empty"
        raise NoCanary(f"no canary in progress for inferenceservice {state.name!r} ({state.mode} mode: {where})")
    return state


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 applied to plain JSON values (for targets that keep objects in memory)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = apply_merge_patch(result.get(k), v)
    return result


def _patch(isvc: InferenceService, spec: dict[str, Any]) -> dict[str, Any]:
    version = (isvc.get("metadata") or {}).get("resourceVersion")
    patch: dict[str, Any] = {"metadata": {"resourceVersion": version}} if version else {}
    patch["spec"] = spec
    return patch


def _single_canary(isvc: InferenceService, action: str) -> dict[str, Any]:
    canaries = (isvc.get("spec") or {}).get("canary") or []
    if not canaries:
        require_canary(isvc)  # raises: no canary in progress
    if len(canaries) > 1:
        raise NoCanary(f"inferenceservice {_name(isvc)!r} has {len(canaries)} canaries; ragserve can only {action} one")
    return canaries[0]


def _readiness(isvc: InferenceService) -> tuple[bool | None, str]:
    for cond in (isvc.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True", cond.get("message") or cond.get("reason") or ""
    return None, "no Ready condition yet"


def _predictor_status(isvc: InferenceService) -> dict[str, Any]:
    return ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}


def _annotations(isvc: InferenceService) -> dict[str, str]:
    return (isvc.get("metadata") or {}).get("annotations") or {}


def _name(isvc: InferenceService) -> str:
    return (isvc.get("metadata") or {}).get("name", "")


def render_state(state: CanaryState) -> str:
    ready = {True: "True", False: "False", None: "Unknown"}[state.ready]
    lines = [f"inferenceservice/{state.name} (namespace {state.namespace}, {state.mode} mode) ready: {ready}"]
    if state.ready is False and state.ready_message:
        lines[0] += f" ({state.ready_message})"
    if not state.reconciled:
        lines.append("not reconciled yet: KServe has written no status (is its controller running?); "
                     "the mode shown is the annotation's, else KServe's default (Knative)")
    if state.in_progress:
        lines.append(f"canary: in progress, {state.canary_percent}% configured")
    elif state.canary_percent is not None:
        lines.append(f"canary: none in progress (canaryTrafficPercent {state.canary_percent} is set: the next "
                     f"spec change starts as a canary at {state.canary_percent}%)")
    else:
        lines.append("canary: none in progress")
    lines.append("traffic:")
    for t in state.traffic:
        extra = f"  tag {t.tag}" if t.tag else ""
        if t.ready is not None:
            extra += f"  ready {t.ready}"
        if t.workload and t.workload != t.name:
            extra += f"  deployment {t.workload}"
        lines.append(f"  {t.role:<7} {t.name:<40} {t.percent:>3}%{extra}")
    if state.revisions:
        lines.append("revisions: " + ", ".join(f"{k}={v}" for k, v in state.revisions.items()))
    return "\n".join(lines)
