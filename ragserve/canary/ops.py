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
``{trafficPercent, predictor}``, its ``predictor`` a full predictor spec (the
CRD requires ``name`` under ``predictor.model``; ``""`` does). *set* rewrites
the canary's ``trafficPercent``; *promote* makes ``spec.predictor`` exactly the
canary's predictor and removes ``spec.canary``; *rollback* removes
``spec.canary`` (the stable predictor was never changed). ``spec.canary`` is an
atomic list, so a patch that changes it carries the whole list. ragserve
drives one canary entry at a time.

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

from .target import InferenceService, NoCanary

Mode = Literal["Knative", "Standard"]
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
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
    spec = isvc.get("spec") or {}
    if spec.get("canary"):
        return "Standard"
    if "canaryTrafficPercent" in (spec.get("predictor") or {}) or _predictor_status(isvc).get("traffic"):
        return "Knative"
    raise UnsupportedMode(
        f"cannot tell the deployment mode of inferenceservice {_name(isvc)!r}; "
        f"set the {DEPLOYMENT_MODE_ANNOTATION} annotation"
    )


def canary_state(isvc: InferenceService) -> CanaryState:
    mode = deployment_mode(isvc)
    meta = isvc.get("metadata") or {}
    ready, message = _readiness(isvc)
    common = {"name": meta.get("name", ""), "namespace": meta.get("namespace", ""), "mode": mode, "ready": ready,
              "ready_message": message}
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
        return CanaryState(**common, in_progress=percent is not None, canary_percent=percent, traffic=tuple(traffic),
                           revisions=revisions)
    canaries = (isvc.get("spec") or {}).get("canary") or []
    statuses = (isvc.get("status") or {}).get("canaryStatuses") or []
    stable_name = f"{common['name']}-predictor"
    shown = []
    for i, c in enumerate(canaries):
        # the status says what is serving; the spec what was asked for
        st = statuses[i] if i < len(statuses) else {}
        percent = int(st.get("trafficPercent", c.get("trafficPercent")) or 0)
        shown.append(TrafficTarget(st.get("name") or f"{stable_name}-canary", percent, "canary", st.get("ready")))
    traffic = [TrafficTarget(stable_name, 100 - sum(t.percent for t in shown), "stable", ready), *shown]
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


def promote_patch(isvc: InferenceService) -> dict[str, Any]:
    state = require_canary(isvc)
    if state.mode == "Knative":
        return _patch(isvc, {"predictor": {"canaryTrafficPercent": None}})
    canary = _single_canary(isvc, "promote")
    stable = (isvc.get("spec") or {}).get("predictor") or {}
    return _patch(isvc, {"predictor": merge_patch_diff(stable, canary.get("predictor") or {}), "canary": None})


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


def merge_patch_diff(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into exactly ``new``."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for k, v in new.items():
        if k not in old:
            patch[k] = copy.deepcopy(v)
        elif old[k] != v:
            patch[k] = merge_patch_diff(old[k], v)
    return patch


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
    if state.in_progress:
        lines.append(f"canary: in progress, {state.canary_percent}% configured")
    else:
        lines.append("canary: none in progress")
    lines.append("traffic:")
    for t in state.traffic:
        extra = f"  tag {t.tag}" if t.tag else ""
        if t.ready is not None:
            extra += f"  ready {t.ready}"
        lines.append(f"  {t.role:<7} {t.name:<40} {t.percent:>3}%{extra}")
    if state.revisions:
        lines.append("revisions: " + ", ".join(f"{k}={v}" for k, v in state.revisions.items()))
    return "\n".join(lines)
