"""What KServe's admission webhooks (and a few known KServe pitfalls) reject
that no schema can: one predictor implementation, canary ranges, graph shape,
runtime fit, and settings that KServe or Knative silently ignore."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from .bundle import (
    PREDICTOR_IMPLEMENTATIONS,
    Bundle,
    component_pod,
    deployment_mode,
    isvc_components,
)
from .pods import gpu_resources
from .problem import Problem, field_path, ref

GPU_TYPES_ANNOTATION = "serving.kserve.io/gpu-resource-types"
AUTOSCALER_ANNOTATION = "serving.kserve.io/autoscalerClass"
PROGRESS_DEADLINE = "serving.knative.dev/progress-deadline"
KNATIVE_TARGET = "autoscaling.knative.dev/target"
# resource names KServe recognises as GPUs without the annotation
KSERVE_GPU_TYPES = {"nvidia.com/gpu", "amd.com/gpu", "intel.com/gpu", "gpu.intel.com/i915", "habana.ai/gaudi"}
MODEL_READY = re.compile(r"^/v[12]/models/[^/]+(/ready)?$")
ROUTER_DATA = ("$request", "$response")


def check_rules(obj: dict, bundle: Bundle) -> list[Problem]:
    kind = obj.get("kind")
    if kind == "InferenceService":
        return list(_inference_service(obj, bundle))
    if kind == "InferenceGraph":
        return list(_inference_graph(obj, bundle))
    return []


def _inference_service(isvc: dict, bundle: Bundle) -> Iterator[Problem]:
    obj, mode = ref(isvc), deployment_mode(isvc)
    isvc_notes = (isvc.get("metadata") or {}).get("annotations") or {}
    for path, comp in isvc_components(isvc):
        if path.endswith("predictor"):
            yield from _one_implementation(obj, path, comp)
            yield from _runtime_fit(obj, path, comp, bundle)
        elif path == "spec.transformer" and not comp.get("containers"):
            yield Problem(obj, f"{path}.containers", "a transformer needs a container")
        pod = component_pod(isvc, path, comp, bundle)
        # a ServingRuntime's spec.annotations reach the pods it serves, like the component's own
        runtimes = [c.runtime for c in pod.containers if c.runtime is not None]
        runtime_notes = ((runtimes[0].get("spec") or {}).get("annotations") or {}) if runtimes else {}
        notes = {**isvc_notes, **runtime_notes, **(comp.get("annotations") or {})}
        yield from _replicas(obj, path, comp, mode, notes)
        yield from _canary_percent(obj, path, comp, mode)
        gpus = set().union(*(gpu_resources(c.spec) for c in pod.containers)) if pod.containers else set()
        yield from _gpu_types(obj, gpus, isvc_notes)
        if comp.get("minReplicas") == 0 and mode == "Knative":
            yield from _scale_from_zero(obj, path, pod, gpus, notes)
    total = sum(c.get("trafficPercent") or 0 for c in (isvc.get("spec") or {}).get("canary") or [])
    if total > 100:
        yield Problem(obj, "spec.canary", f"trafficPercent values add up to {total}, more than 100")


def _one_implementation(obj: str, path: str, comp: dict) -> Iterator[Problem]:
    found = [k for k in PREDICTOR_IMPLEMENTATIONS if comp.get(k)] + (["containers"] if comp.get("containers") else [])
    if len(found) != 1:
        what = f"{', '.join(found)} given" if found else "none given"
        yield Problem(obj, path, f"exactly one predictor implementation is required ({what})")


def _runtime_fit(obj: str, path: str, comp: dict, bundle: Bundle) -> Iterator[Problem]:
    model = comp.get("model")
    if not isinstance(model, dict) or not model.get("runtime"):
        return
    runtime = bundle.runtime(model["runtime"])
    if runtime is None:
        yield Problem(obj, f"{path}.model.runtime", f"ServingRuntime {model['runtime']!r} is not in this bundle; it must exist in the cluster", "warning")
        return
    spec = runtime.get("spec") or {}
    formats = {f.get("name") for f in spec.get("supportedModelFormats") or []}
    fmt = (model.get("modelFormat") or {}).get("name")
    if fmt not in formats:
        yield Problem(obj, f"{path}.model.modelFormat.name", f"{fmt!r} is not supported by runtime {model['runtime']!r} ({sorted(formats)})")
    protocol = model.get("protocolVersion", "v1")
    if spec.get("protocolVersions") and protocol not in spec["protocolVersions"]:
        yield Problem(obj, f"{path}.model.protocolVersion", f"{protocol!r} is not among runtime {model['runtime']!r}'s {spec['protocolVersions']}")
    if spec.get("disabled"):
        yield Problem(obj, f"{path}.model.runtime", f"runtime {model['runtime']!r} is disabled")


def _replicas(obj: str, path: str, comp: dict, mode: str, notes: dict) -> Iterator[Problem]:
    low, high = comp.get("minReplicas"), comp.get("maxReplicas")
    if isinstance(low, int) and isinstance(high, int) and high > 0 and low > high:
        yield Problem(obj, f"{path}.minReplicas", f"{low} is above maxReplicas {high}")
    if low == 0 and mode == "Standard" and notes.get(AUTOSCALER_ANNOTATION) not in ("keda", "none", "external"):
        yield Problem(
            obj, f"{path}.minReplicas",
            f"0 in Standard mode: the default HPA silently runs 1 replica; set {AUTOSCALER_ANNOTATION}: keda",
        )
    if comp.get("scaleTarget") is not None and KNATIVE_TARGET in notes:
        yield Problem(obj, f"{path}.scaleTarget", f"KServe overwrites the {KNATIVE_TARGET} annotation with scaleTarget; set one", "warning")


def _canary_percent(obj: str, path: str, comp: dict, mode: str) -> Iterator[Problem]:
    if "canaryTrafficPercent" not in comp:
        return
    percent = comp["canaryTrafficPercent"]
    if not isinstance(percent, int) or not 0 <= percent <= 100:
        yield Problem(obj, f"{path}.canaryTrafficPercent", f"{percent!r} is not a percentage (0-100)")
    elif mode == "Standard":
        yield Problem(obj, f"{path}.canaryTrafficPercent", "only Knative mode splits traffic by revision; in Standard mode use spec.canary[]")


def _gpu_types(obj: str, gpus: set[str], notes: dict) -> Iterator[Problem]:
    unusual = sorted(g for g in gpus if g not in KSERVE_GPU_TYPES)
    if not unusual:
        return
    try:
        declared = set(json.loads(notes.get(GPU_TYPES_ANNOTATION, "[]")))
    except (ValueError, TypeError):
        yield Problem(obj, f"metadata.annotations.{GPU_TYPES_ANNOTATION}", "must be a JSON list of resource names")
        return
    for name in unusual:
        if name not in declared:
            yield Problem(
                obj, f"metadata.annotations.{GPU_TYPES_ANNOTATION}",
                f"must list {name!r}: without it KServe silently creates no pods (kserve#4505)",
            )


def _scale_from_zero(obj: str, path: str, pod, gpus: set[str], notes: dict) -> Iterator[Problem]:
    serving = [c for c in pod.containers if not c.path.split(".")[-1].startswith("initContainers")]
    for container in serving[:1]:
        probe = ((container.spec.get("readinessProbe") or {}).get("httpGet") or {}).get("path", "")
        if not MODEL_READY.match(probe):
            origin = ""
            if container.runtime is not None and "readinessProbe" not in container.own:
                origin = f" (set by ServingRuntime {ref(container.runtime).split('/')[1]})"
            yield Problem(
                obj, f"{container.path}.readinessProbe",
                f"{probe or 'none'}{origin}: with minReplicas 0 readiness must be the model's (/v2/models/NAME/ready), "
                "or the request that wakes the pod can meet 'model not ready' (kserve#2882)",
            )
    if gpus and PROGRESS_DEADLINE not in notes:
        yield Problem(
            obj, f"{path}.annotations",
            f"a GPU predictor scaling from zero needs {PROGRESS_DEADLINE} sized for GPU node scale-up plus model "
            "load, or Knative fails the revision while the pod is Pending (kserve#1247)",
        )


def _inference_graph(graph: dict, bundle: Bundle) -> Iterator[Problem]:
    obj = ref(graph)
    nodes = (graph.get("spec") or {}).get("nodes") or {}
    if "root" not in nodes:
        yield Problem(obj, "spec.nodes.root", f"missing: the router starts at the node named root (have {sorted(nodes)})")
    services = bundle.names("InferenceService")
    for node_name, node in nodes.items():
        base = field_path("spec", "nodes", node_name)
        steps = node.get("steps") or []
        router = node.get("routerType")
        names = [s.get("name") for s in steps if s.get("name")]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            yield Problem(obj, f"{base}.steps", f"step name {dup!r} is used twice")
        for i, step in enumerate(steps):
            yield from _graph_step(obj, f"{base}.steps[{i}]", step, router, nodes, services)
        if router == "Splitter":
            weights = [s.get("weight") or 0 for s in steps]
            if sum(weights) != 100:
                yield Problem(obj, f"{base}.steps", f"Splitter weights {weights} add up to {sum(weights)}, not 100")
    yield from _graph_cycles(obj, nodes)


def _graph_step(obj: str, path: str, step: dict, router: str, nodes: dict, services: set[str]) -> Iterator[Problem]:
    targets = [k for k in ("serviceName", "serviceUrl", "nodeName") if step.get(k)]
    if len(targets) != 1:
        yield Problem(obj, path, f"a step needs exactly one of serviceName, serviceUrl, nodeName (has {targets or 'none'})")
    if step.get("nodeName") and step["nodeName"] not in nodes:
        yield Problem(obj, f"{path}.nodeName", f"no node {step['nodeName']!r} in this graph")
    if step.get("serviceName") and step["serviceName"] not in services:
        yield Problem(obj, f"{path}.serviceName", f"no InferenceService {step['serviceName']!r} in this bundle ({sorted(services)})")
    if router == "Splitter" and step.get("weight") is None:
        yield Problem(obj, f"{path}.weight", "every Splitter step needs a weight")
    if router == "Switch" and not step.get("condition"):
        yield Problem(obj, f"{path}.condition", "every Switch step needs a GJSON condition")
    if step.get("data") and step["data"] not in ROUTER_DATA:
        yield Problem(obj, f"{path}.data", f"the router passes only {' or '.join(ROUTER_DATA)}, not {step['data']!r}")


def _graph_cycles(obj: str, nodes: dict) -> Iterator[Problem]:
    edges = {n: [s["nodeName"] for s in (v.get("steps") or []) if s.get("nodeName") in nodes] for n, v in nodes.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in edges[node]:
            if state.get(nxt) == 1:
                return trail + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [node])):
                return cycle
        state[node] = 2
        return None

    for start in nodes:
        if start not in state and (cycle := visit(start, [])):
            yield Problem(obj, field_path("spec", "nodes", cycle[-1]), f"nodes form a cycle: {' -> '.join(cycle)}")
            return
