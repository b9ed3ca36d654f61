"""A rendered bundle indexed by kind and name, and the pods its objects become.

KServe builds a predictor pod from the InferenceService *and* the
ServingRuntime it names: the runtime's container is merged with the ``model``
block (InferenceService fields win, args are appended), the runtime's volumes
join the pod's, and ``{{.Name}}`` becomes the InferenceService name. Checks
that are about the pod that will run see that merged view here.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

# ModelSpec fields that say which model to serve, not how to run the container
_MODEL_ONLY_FIELDS = ("modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage")
PREDICTOR_IMPLEMENTATIONS = (
    "model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton",
    "onnx", "huggingface", "pmml", "lightgbm", "paddle",
)
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
RUNTIME_KINDS = ("ServingRuntime", "ClusterServingRuntime")
STANDARD_MODES = ("Standard", "RawDeployment")
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"


class Bundle:
    def __init__(self, objects: list[dict]):
        self.objects = objects
        self._by_kind: dict[str, dict[str, dict]] = defaultdict(dict)
        for obj in objects:
            self._by_kind[obj.get("kind", "")][(obj.get("metadata") or {}).get("name", "")] = obj

    def get(self, kind: str, name: str) -> dict | None:
        return self._by_kind.get(kind, {}).get(name)

    def names(self, kind: str) -> set[str]:
        return set(self._by_kind.get(kind, {}))

    def runtime(self, name: str) -> dict | None:
        """A namespaced ServingRuntime wins over a ClusterServingRuntime, as in KServe."""
        return self.get("ServingRuntime", name) or self.get("ClusterServingRuntime", name)


def deployment_mode(obj: dict) -> str:
    """``Standard`` or ``Knative`` (KServe's default when no annotation says otherwise)."""
    mode = ((obj.get("metadata") or {}).get("annotations") or {}).get(MODE_ANNOTATION, "")
    return "Standard" if mode in STANDARD_MODES else mode if mode == "ModelMesh" else "Knative"


def isvc_components(isvc: dict) -> Iterator[tuple[str, dict]]:
    """(path, component spec) of the predictor, transformer, explainer and canary predictors."""
    spec = isvc.get("spec") or {}
    for name in ("predictor", "transformer", "explainer"):
        if isinstance(spec.get(name), dict):
            yield f"spec.{name}", spec[name]
    for i, canary in enumerate(spec.get("canary") or []):
        if isinstance(canary, dict) and isinstance(canary.get("predictor"), dict):
            yield f"spec.canary[{i}].predictor", canary["predictor"]


@dataclass
class Container:
    path: str
    """Field path of the container (for a runtime-backed model: of the ``model`` block)."""
    spec: dict
    """The container as it will run (runtime merged with the model block)."""
    own: dict
    """What this object itself sets (the model block, or the container)."""
    runtime: dict | None = None
    """The ServingRuntime it was merged with, if any."""


@dataclass
class Pod:
    obj: dict
    path: str
    """Field path of the pod spec (``spec.predictor``, ``spec.template.spec``, ...)."""
    spec: dict
    containers: list[Container]
    volumes: list[dict]
    pod_level: bool = True
    """False for a ServingRuntime: the pod-level security context comes from the InferenceService."""


def merge_container(runtime_container: dict, override: dict) -> dict:
    """KServe's merge: override wins field by field, dicts merge, args are appended."""
    merged = copy.deepcopy(runtime_container)
    for key, value in override.items():
        if key in _MODEL_ONLY_FIELDS or (key == "name" and not value):
            continue
        if key == "args":
            merged["args"] = list(runtime_container.get("args") or []) + list(value or [])
        elif key in ("env", "volumeMounts", "envFrom", "ports"):
            merged[key] = list(runtime_container.get(key) or []) + list(value or [])
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge_dicts(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_dicts(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge_dicts(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def runtime_container(runtime: dict) -> dict:
    containers = (runtime.get("spec") or {}).get("containers") or [{}]
    return next((c for c in containers if c.get("name") == "kserve-container"), containers[0])


def component_pod(isvc: dict, path: str, comp: dict, bundle: Bundle) -> Pod:
    name = (isvc.get("metadata") or {}).get("name", "")
    volumes = list(comp.get("volumes") or [])
    containers = _own_containers(path, comp)
    model = comp.get("model")
    if isinstance(model, dict):
        runtime = bundle.runtime(model.get("runtime", "")) if model.get("runtime") else None
        base = _placeholders(runtime_container(runtime), name) if runtime else {}
        if runtime:
            volumes = list((runtime.get("spec") or {}).get("volumes") or []) + volumes
        containers.insert(0, Container(f"{path}.model", merge_container(base, model), model, runtime))
    return Pod(isvc, path, comp, containers, volumes)


def _placeholders(container: dict, name: str) -> dict:
    """KServe renders runtime containers as Go templates of the InferenceService metadata."""
    def sub(value):
        if isinstance(value, str):
            return value.replace("{{.Name}}", name)
        if isinstance(value, list):
            return [sub(v) for v in value]
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        return value

    return sub(container)


def pods(obj: dict, bundle: Bundle) -> Iterator[Pod]:
    """Every pod (or runtime pod fragment) an object will run."""
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "InferenceService":
        for path, comp in isvc_components(obj):
            yield component_pod(obj, path, comp, bundle)
    elif kind in RUNTIME_KINDS:
        yield Pod(obj, "spec", spec, _own_containers("spec", spec), list(spec.get("volumes") or []), pod_level=False)
    elif kind in POD_TEMPLATE_KINDS or kind == "CronJob":
        template_path = "spec.jobTemplate.spec.template.spec" if kind == "CronJob" else "spec.template.spec"
        pod_spec = obj
        for key in template_path.split("."):
            pod_spec = (pod_spec or {}).get(key) or {}
        yield _plain_pod(obj, template_path, pod_spec)
    elif kind == "Pod":
        yield _plain_pod(obj, "spec", spec)


def _plain_pod(obj: dict, path: str, pod_spec: dict) -> Pod:
    return Pod(obj, path, pod_spec, _own_containers(path, pod_spec), list(pod_spec.get("volumes") or []))


def _own_containers(path: str, pod_spec: dict) -> list[Container]:
    return [
        Container(f"{path}.{key}[{i}]", c, c)
        for key in ("initContainers", "containers")
        for i, c in enumerate(pod_spec.get(key) or [])
    ]
