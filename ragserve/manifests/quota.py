"""A namespace's GPU quota against what the bundle may ask for at its maxima.

Extended resources are quota'd by requests. When the InferenceServices of a
bundle may together request more GPUs than a ResourceQuota in it allows, the
pod past the cap is refused "exceeded quota" -- typically mid-rollout, when a
canary revision runs next to the stable one. At its maxima a component asks
for ``maxReplicas`` (else ``minReplicas``, else 1) x its per-pod GPU request;
a Knative canary (``canaryTrafficPercent`` set) runs a second revision of the
predictor as large as the first; a Standard canary runs its traffic share of
the stable's replicas (at least one pod).
"""

from __future__ import annotations

import math
from collections import defaultdict

from .bundle import Bundle, component_pod, isvc_components
from .pods import is_gpu_resource
from .problem import Problem, ref


def check_quota(bundle: Bundle) -> list[Problem]:
    need, parts = _gpu_maxima(bundle)
    problems = []
    for quota in bundle.objects:
        if quota.get("kind") != "ResourceQuota":
            continue
        hard = ((quota.get("spec") or {}).get("hard")) or {}
        for key, value in hard.items():
            resource = key.removeprefix("requests.")
            if not is_gpu_resource(resource) or resource not in need:
                continue
            cap = _count(value)
            if cap is not None and cap < need[resource]:
                problems.append(Problem(
                    ref(quota), f"spec.hard.{key}",
                    f"{value} is below the {need[resource]} the bundle may request at its maxima "
                    f"({' + '.join(parts[resource])}); the pod past the cap is refused 'exceeded quota'",
                ))
    return problems


def _gpu_maxima(bundle: Bundle) -> tuple[dict[str, int], dict[str, list[str]]]:
    need: dict[str, int] = defaultdict(int)
    parts: dict[str, list[str]] = defaultdict(list)
    for isvc in bundle.objects:
        if isvc.get("kind") != "InferenceService":
            continue
        stable = ((isvc.get("spec") or {}).get("predictor")) or {}
        name = (isvc.get("metadata") or {}).get("name", "")
        for path, comp in isvc_components(isvc):
            per_pod: dict[str, int] = defaultdict(int)
            for container in component_pod(isvc, path, comp, bundle).containers:
                resources = container.spec.get("resources") or {}
                asked = resources.get("requests") or resources.get("limits") or {}
                for resource, qty in asked.items():
                    if is_gpu_resource(resource) and (n := _count(qty)):
                        per_pod[resource] += n
            if not per_pod:
                continue
            replicas = _replicas(comp)
            label = f"{name} {path.removeprefix('spec.')}"
            if path.startswith("spec.canary"):
                share = next((c.get("trafficPercent") or 0 for c in isvc["spec"]["canary"] if c.get("predictor") is comp), 0)
                replicas = max(1, math.ceil(_replicas(stable) * share / 100))
            for resource, n in per_pod.items():
                need[resource] += replicas * n
                parts[resource].append(f"{label} {replicas}x{n}")
                if comp.get("canaryTrafficPercent") is not None:  # Knative: a second revision
                    need[resource] += replicas * n
                    parts[resource].append(f"{label} canary revision {replicas}x{n}")
    return need, parts


def _replicas(comp: dict) -> int:
    return max(comp.get("maxReplicas") or 0, comp.get("minReplicas") or 0, 1)


def _count(qty) -> int | None:
    try:
        return math.ceil(float(str(qty)))
    except ValueError:
        return None
