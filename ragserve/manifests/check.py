"""Every check over a rendered bundle: schema, KServe rules, pod rules."""

from __future__ import annotations

from .bundle import Bundle
from .crds import CrdCatalog
from .pods import check_pods
from .problem import Problem
from .rules import check_rules
from .schema import K8S_VERSION, check_core, check_custom, check_metadata


def check_objects(objects: list[dict], catalog: CrdCatalog, k8s_version: str = K8S_VERSION) -> list[Problem]:
    """All problems of a bundle, errors first; an object that fails its schema
    skips the rules (they would only repeat the schema error in other words)."""
    bundle = Bundle(objects)
    problems: list[Problem] = []
    for obj in objects:
        if catalog.owns(obj.get("apiVersion", "")):
            schema = check_custom(obj, catalog) + check_metadata(obj, k8s_version)
        else:
            schema = check_core(obj, k8s_version)
        problems += schema
        if not any(p.severity == "error" for p in schema):
            problems += check_rules(obj, bundle) + check_pods(obj, bundle)
    return sorted(set(problems), key=lambda p: (p.severity != "error", p.obj, p.path, p.message))
