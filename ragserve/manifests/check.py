"""Every check over a rendered bundle: schema, KServe rules, pod rules."""

from __future__ import annotations

from .bundle import Bundle
from .core import check_core_rules
from .crds import CrdCatalog
from .pods import check_pods
from .problem import Problem
from .quota import check_quota
from .rules import check_rules
from .schema import K8S_VERSION, check_core, check_custom, check_metadata
from .webhook import check_webhook


def check_objects(objects: list[dict], catalog: CrdCatalog, k8s_version: str = K8S_VERSION) -> list[Problem]:
    """All problems of a bundle, errors first; an object that fails its schema
    skips the rules (they would only repeat the schema error in other words).

    Layers: the schema (CRD or Kubernetes'), the API server's own validation of
    names, labels, selectors, ports, ... (:mod:`.core`), KServe's webhooks
    (:mod:`.webhook`), then this project's rules (:mod:`.rules`, :mod:`.pods`,
    :mod:`.quota`)."""
    bundle = Bundle(objects)
    problems: list[Problem] = []
    for obj in objects:
        if catalog.owns(obj.get("apiVersion", "")):
            schema = check_custom(obj, catalog) + check_metadata(obj, k8s_version)
        else:
            schema = check_core(obj, k8s_version)
        problems += schema
        if not any(p.severity == "error" for p in schema):
            problems += check_core_rules(obj) + check_webhook(obj) + check_rules(obj, bundle) + check_pods(obj, bundle)
    problems += check_quota(bundle)
    return sorted(set(problems), key=lambda p: (p.severity != "error", p.obj, p.path, p.message))
