"""KServe's validating webhooks, as rules: what the API server refuses once KServe is installed.

Facts from KServe's ``pkg/apis/serving/v1beta1/inference_service_validation.go``
(and ``component.go``, ``v1alpha1/inference_graph_validation.go``); the checks
the CRD schema already makes (enums, the canary's ``trafficPercent`` range,
``predictor.name``'s pattern) are left to :mod:`.schema`.

InferenceService
- ``metadata.name`` matches ``[a-z]([-a-z0-9]*[a-z0-9])?`` (a DNS-1035 label);
- ``serving.kserve.io/autoscalerClass`` is one of hpa, keda, external, none;
- per component, by mode and autoscaler: Standard + hpa: ``scaleMetric`` cpu or
  memory (default cpu), cpu ``scaleTarget`` 1-100, ``autoScaling`` only
  Resource metrics; Standard + keda: no ``scaleMetric`` ("ScaleMetric is not
  supported for KEDA"), ``autoScaling`` metrics Resource / External (query and
  target value set) / PodMetric; Knative (KServe's default, KPA):
  ``scaleMetric`` concurrency or rps, rps ``scaleTarget`` >= 1, no
  ``deploymentStrategy``;
- ``minReplicas`` >= 0, ``maxReplicas`` >= 0, ``containerConcurrency`` >= 0;
- the stable predictor's ``model.name`` is empty ("the 'name' field is not
  allowed in standard predictor");
- ``spec.canary[]`` only in Standard mode, on a stable predictor with a model;
  each canary names its variant in ``predictor.name`` (required, unique, not
  the stable's), uses fixed replicas (no ``maxReplicas``, ``scaleMetric``,
  ``scaleTarget``, ``autoScaling``, ``workerSpec``), and its ``minReplicas``
  does not exceed the stable's (1 when unset).

InferenceGraph: ``metadata.name`` as above (the rest -- root node, unique step
names, one target per step, Splitter weights -- is in :mod:`.rules`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from .bundle import deployment_mode, isvc_components
from .problem import Problem, ref

NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
AUTOSCALER_ANNOTATION = "serving.kserve.io/autoscalerClass"
AUTOSCALER_CLASSES = ("hpa", "keda", "external", "none")
KNATIVE_CLASS_ANNOTATION = "autoscaling.knative.dev/class"
HPA_METRICS = ("cpu", "memory")
KPA_METRICS = ("concurrency", "rps")
CANARY_FIXED_REPLICAS = ("maxReplicas", "scaleMetric", "scaleTarget", "autoScaling", "workerSpec")
_KEDA_METRIC_TYPES = ("Resource", "External", "PodMetric")


def check_webhook(obj: dict) -> list[Problem]:
    kind = obj.get("kind")
    if kind == "InferenceService":
        return list(_inference_service(obj))
    if kind == "InferenceGraph":
        return list(_name(obj, "InferenceGraph"))
    return []


def _name(obj: dict, kind: str) -> Iterator[Problem]:
    name = (obj.get("metadata") or {}).get("name", "")
    if not NAME.match(name):
        yield Problem(ref(obj), "metadata.name",
                      f"{name!r}: an {kind} name must be lowercase alphanumerics or '-' and start with a letter "
                      f"(KServe's webhook: {NAME.pattern})")


def _inference_service(isvc: dict) -> Iterator[Problem]:
    obj = ref(isvc)
    yield from _name(isvc, "InferenceService")
    notes = (isvc.get("metadata") or {}).get("annotations") or {}
    autoscaler = notes.get(AUTOSCALER_ANNOTATION)
    if autoscaler is not None and autoscaler not in AUTOSCALER_CLASSES:
        yield Problem(obj, f"metadata.annotations.{AUTOSCALER_ANNOTATION}",
                      f"{autoscaler!r} is not a supported autoscaler class ({', '.join(AUTOSCALER_CLASSES)})")
        autoscaler = None
    mode = deployment_mode(isvc)
    for path, comp in isvc_components(isvc):
        yield from _extension(obj, path, comp)
        if path.startswith("spec.canary"):
            continue  # KServe applies the autoscaler rules to predictor, transformer and explainer
        if mode == "Standard" and autoscaler == "keda":
            yield from _keda(obj, path, comp)
        elif mode == "Standard" and autoscaler == "hpa":
            yield from _hpa(obj, path, comp)
        elif mode == "Knative":
            yield from (_hpa if notes.get(KNATIVE_CLASS_ANNOTATION, "").endswith("hpa.autoscaling.knative.dev")
                        else _kpa)(obj, path, comp)
    stable = (isvc.get("spec") or {}).get("predictor") or {}
    if (stable.get("model") or {}).get("name"):
        yield Problem(obj, "spec.predictor.model.name",
                      "must be empty: KServe's webhook refuses a 'name' in the stable predictor's model "
                      "(a canary's variant name goes in spec.canary[].predictor.name)")
    yield from _canaries(obj, isvc, mode, stable)


def _extension(obj: str, path: str, comp: dict) -> Iterator[Problem]:
    for key in ("minReplicas", "maxReplicas", "containerConcurrency"):
        value = comp.get(key)
        if isinstance(value, int) and value < 0:
            yield Problem(obj, f"{path}.{key}", f"{value} is negative: KServe's webhook requires {key} >= 0")


def _keda(obj: str, path: str, comp: dict) -> Iterator[Problem]:
    if comp.get("scaleMetric") is not None:
        yield Problem(obj, f"{path}.scaleMetric",
                      "not supported with autoscalerClass keda (KServe's webhook: \"ScaleMetric is not supported "
                      "for KEDA\"); scale with autoScaling.metrics")
    for i, metric in enumerate(((comp.get("autoScaling") or {}).get("metrics")) or []):
        where = f"{path}.autoScaling.metrics[{i}]"
        kind = metric.get("type")
        if kind not in _KEDA_METRIC_TYPES:
            yield Problem(obj, f"{where}.type", f"{kind!r} is not a KEDA metric type ({', '.join(_KEDA_METRIC_TYPES)})")
        elif kind in ("External", "PodMetric"):
            block = metric.get("external" if kind == "External" else "podmetric") or {}
            if not (block.get("metric") or {}).get("query"):
                yield Problem(obj, f"{where}.metric.query", f"a KEDA {kind} metric needs a query")
            if (block.get("target") or {}).get("value") is None:
                yield Problem(obj, f"{where}.target.value", f"a KEDA {kind} metric needs a target value")


def _hpa(obj: str, path: str, comp: dict) -> Iterator[Problem]:
    metric = comp.get("scaleMetric") or "cpu"
    if metric not in HPA_METRICS:
        yield Problem(obj, f"{path}.scaleMetric", f"{metric!r} is not an HPA metric ({', '.join(HPA_METRICS)})")
    target = comp.get("scaleTarget")
    if isinstance(target, int) and metric == "cpu" and not 1 <= target <= 100:
        yield Problem(obj, f"{path}.scaleTarget", f"{target}: a cpu utilization target is a percentage (1-100)")
    for i, spec in enumerate(((comp.get("autoScaling") or {}).get("metrics")) or []):
        if spec.get("type") != "Resource":
            yield Problem(obj, f"{path}.autoScaling.metrics[{i}].type",
                          f"{spec.get('type')!r}: the HPA autoscaler takes only Resource metrics")


def _kpa(obj: str, path: str, comp: dict) -> Iterator[Problem]:
    metric = comp.get("scaleMetric") or "concurrency"
    if metric not in KPA_METRICS:
        yield Problem(obj, f"{path}.scaleMetric",
                      f"{metric!r} is not a Knative (KPA) metric ({', '.join(KPA_METRICS)}); cpu and memory need "
                      "the HPA autoscaler")
    target = comp.get("scaleTarget")
    if metric == "rps" and isinstance(target, int) and target < 1:
        yield Problem(obj, f"{path}.scaleTarget", f"{target}: an rps target must be at least 1")
    if comp.get("deploymentStrategy") is not None:
        yield Problem(obj, f"{path}.deploymentStrategy", "customizing deploymentStrategy needs Standard mode")


def _canaries(obj: str, isvc: dict, mode: str, stable: dict) -> Iterator[Problem]:
    canaries = (isvc.get("spec") or {}).get("canary") or []
    if not canaries:
        return
    if mode != "Standard":
        yield Problem(obj, "spec.canary",
                      "only supported in Standard deployment mode (KServe's webhook); Knative mode uses "
                      "spec.predictor.canaryTrafficPercent")
        return
    if not isinstance(stable.get("model"), dict):
        yield Problem(obj, "spec.canary", "KServe's canary requires a stable predictor with a model (spec.predictor.model)")
    stable_min = stable.get("minReplicas")
    stable_min = 1 if stable_min is None else stable_min
    seen: set[str] = set()
    for i, canary in enumerate(canaries):
        predictor = canary.get("predictor") or {}
        path = f"spec.canary[{i}].predictor"
        name = predictor.get("name")
        if not name:
            yield Problem(obj, f"{path}.name",
                          f"canary[{i}] predictor.name is required (the variant name; KServe's Deployment is "
                          "NAME-VARIANT-predictor); model.name is a different field")
        elif name in seen:
            yield Problem(obj, f"{path}.name", f"{name!r} is duplicated: canary variant names must be unique")
        elif name == stable.get("name"):
            yield Problem(obj, f"{path}.name", f"{name!r} conflicts with stable predictor's name")
        seen.add(name or "")
        for key in CANARY_FIXED_REPLICAS:
            if predictor.get(key) is not None:
                yield Problem(obj, f"{path}.{key}",
                              f"must not set {key}: a KServe canary uses fixed replicas (no autoscaling)")
        low = predictor.get("minReplicas")
        if isinstance(low, int) and isinstance(stable_min, int) and low > stable_min:
            yield Problem(obj, f"{path}.minReplicas",
                          f"{low} must not exceed stable predictor's minReplicas ({stable_min}); leave it unset "
                          "and KServe derives it from trafficPercent")
