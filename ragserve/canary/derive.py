"""A canary derived from the stable predictor, and a promotion that keeps the stable whole.

KServe's Standard-mode canary (``spec.canary[]``) is a second predictor with
its own Deployment, ``{isvc}-{predictor.name}-predictor``. KServe's webhook
requires ``predictor.name`` (the variant name, unique, not the stable's) and
refuses what makes a canary scale by itself ("canary uses fixed replicas":
``maxReplicas``, ``scaleMetric``, ``scaleTarget``, ``autoScaling``,
``workerSpec``); ``minReplicas`` may not exceed the stable's, and without it
KServe derives the canary's replicas from its traffic share. The CRD wants a
container ``name`` under ``predictor.model`` (``""``; a different field).

:func:`canary_from_stable` copies ``spec.predictor`` -- placement, storage,
resources, security exactly as the environment's components left them -- drops
what KServe forbids, and applies the change under test (:class:`CanaryChange`).

:func:`promotion` is the inverse: the stable predictor takes over only what
the canary changed in what it runs (the ``model`` block, or the containers'
image/command/args/env), and keeps its own scheduling (nodeSelector,
tolerations, topologySpreadConstraints, priorityClassName, affinity),
autoscaling (min/maxReplicas, scaleMetric, scaleTarget, autoScaling),
annotations and labels, and every ``model`` field the canary does not set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ragserve.errors import BadRequest

# what KServe's webhook refuses on spec.canary[].predictor
CANARY_FORBIDDEN = ("maxReplicas", "scaleMetric", "scaleTarget", "autoScaling", "workerSpec")
# fields of the model block / a container that say what runs, carried over on promotion
CARRIED_CONTAINER_FIELDS = ("image", "command", "args", "env", "envFrom", "workingDir")
DEFAULT_VARIANT = "candidate"


@dataclass(frozen=True)
class CanaryChange:
    """What the canary runs differently from the stable predictor."""

    image: str = ""
    """Container image of the model server (for a ``model`` block: overrides the runtime's)."""
    runtime_version: str = ""
    """``model.runtimeVersion``: the runtime image's tag."""
    args: tuple[str, ...] | None = None
    """Replaces the model block's (or first container's) own args; None keeps them."""
    env: dict[str, str] = field(default_factory=dict)
    """Set (or replace) these env vars."""
    storage_uri: str = ""
    """``model.storageUri``: other model files."""

    def empty(self) -> bool:
        return not (self.image or self.runtime_version or self.args is not None or self.env or self.storage_uri)


def canary_from_stable(stable: dict[str, Any], variant: str, change: CanaryChange, *,
                       stable_name: str = "") -> dict[str, Any]:
    """``spec.canary[].predictor`` for ``change``, derived from the stable ``spec.predictor``."""
    if not variant:
        raise BadRequest("the canary needs a variant name (spec.canary[].predictor.name)", param="variant")
    if variant == (stable.get("name") or stable_name):
        raise BadRequest(f"variant {variant!r} is the stable predictor's name; pick another", param="variant")
    canary = copy.deepcopy(stable)
    for key in (*CANARY_FORBIDDEN, "minReplicas", "canaryTrafficPercent"):
        canary.pop(key, None)
    canary["name"] = variant
    if isinstance(canary.get("model"), dict):
        canary["model"]["name"] = ""
    _apply(canary, change)
    return canary


def knative_change(predictor: dict[str, Any], change: CanaryChange) -> dict[str, Any]:
    """The ``spec.predictor`` merge patch that makes ``change`` a new Knative revision."""
    after = copy.deepcopy(predictor)
    _apply(after, change)
    if isinstance(predictor.get("model"), dict):
        return {"model": _changed(predictor["model"], after["model"])}
    return {"containers": after["containers"]}  # a list is replaced whole by a merge patch


def _apply(predictor: dict[str, Any], change: CanaryChange) -> None:
    """Write ``change`` into the model block (or the first container) of ``predictor``."""
    if isinstance(predictor.get("model"), dict):
        target = predictor["model"]
        if change.runtime_version:
            target["runtimeVersion"] = change.runtime_version
        if change.storage_uri:
            target["storageUri"] = change.storage_uri
    elif predictor.get("containers"):
        target = predictor["containers"][0]
        if change.runtime_version or change.storage_uri:
            raise BadRequest("--runtime-version and --storage-uri need a predictor with a model block", param="model")
    else:
        raise BadRequest("KServe's canary needs a stable predictor with a model (or containers)", param="predictor")
    if change.image:
        target["image"] = change.image
    if change.args is not None:
        target["args"] = list(change.args)
    if change.env:
        env = [e for e in target.get("env") or [] if e.get("name") not in change.env]
        target["env"] = env + [{"name": k, "value": v} for k, v in change.env.items()]


def promotion(stable: dict[str, Any], canary: dict[str, Any]) -> dict[str, Any]:
    """The ``spec.predictor`` merge patch that promotes ``canary``: only what it runs differently."""
    patch: dict[str, Any] = {}
    if isinstance(canary.get("model"), dict):
        new_model = {k: v for k, v in canary["model"].items() if k != "name"}
        changed = _changed(stable.get("model") or {}, new_model)
        if changed:
            patch["model"] = changed
    if canary.get("containers") and canary["containers"] != stable.get("containers"):
        containers = copy.deepcopy(stable.get("containers") or canary["containers"])
        by_name = {c.get("name"): c for c in canary["containers"]}
        for c in containers:
            new = by_name.get(c.get("name")) or {}
            for key in CARRIED_CONTAINER_FIELDS:
                if key in new:
                    c[key] = copy.deepcopy(new[key])
        if containers != stable.get("containers"):
            patch["containers"] = containers
    return patch


def _changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Merge patch setting the keys of ``new`` that differ from ``old`` (nothing is removed)."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            # exact for this key: nested keys the canary dropped are removed
            out[key] = {**{k: None for k in old[key] if k not in value}, **_changed(old[key], value)}
        else:
            out[key] = copy.deepcopy(value)
    return out
