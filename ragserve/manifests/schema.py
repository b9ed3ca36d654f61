"""Schema validation: custom resources against their CRD's openAPIV3Schema,
core objects against Kubernetes' schemas (PyPI ``kubernetes-validate``,
which ships them, so this works offline).

A CRD schema is an OpenAPI v3 *structural* schema. The API server prunes or
(with ``kubectl apply``'s field validation) rejects fields a schema does not
list; JSON Schema accepts them unless told otherwise. :func:`to_jsonschema`
closes that gap and translates the ``x-kubernetes-*`` extensions.
"""

from __future__ import annotations

import re

import jsonschema

from .crds import CrdCatalog
from .problem import Problem, field_path, ref

# Kubernetes version whose core schemas core objects are checked against.
K8S_VERSION = "1.32"
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
_QUANTITY_HINT = "KMGTPE"


def to_jsonschema(node: dict) -> dict:
    """An OpenAPI v3 structural schema as JSON Schema (draft 2020-12).

    - objects that list ``properties`` reject other fields, unless they set
      ``x-kubernetes-preserve-unknown-fields`` or ``additionalProperties``;
    - ``x-kubernetes-int-or-string`` accepts an integer or a string;
    - ``x-kubernetes-embedded-resource`` admits apiVersion/kind/metadata;
    - ``nullable`` admits null.
    """
    out: dict = {}
    for key, value in node.items():
        if key == "description" or key.startswith("x-kubernetes-"):
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(sub) for sub in value]
        elif key != "nullable":
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", _INT_OR_STRING)
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        for name in ("apiVersion", "kind"):
            props.setdefault(name, {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _crd_validator(catalog: CrdCatalog, api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    # converting the InferenceService schema takes a while: once per catalog and kind
    key = (api_version, kind)
    if key not in catalog.validators:
        schema = to_jsonschema(catalog.schema(api_version, kind))
        catalog.validators[key] = jsonschema.Draft202012Validator(schema)
    return catalog.validators[key]


def check_custom(obj: dict, catalog: CrdCatalog) -> list[Problem]:
    """A KServe object against its CRD; an unknown kind or version is itself a problem."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    if catalog.schema(api_version, kind) is None:
        known = sorted(f"{v} {k}" for v, k in catalog.schemas if v.split("/")[0] == api_version.split("/")[0])
        return [Problem(ref(obj), "apiVersion", f"{api_version} {kind} is not served by these CRDs ({', '.join(known)})")]
    validator = _crd_validator(catalog, api_version, kind)
    problems = [p for err in validator.iter_errors(obj) for p in _problems(ref(obj), err)]
    return sorted(set(problems))


def check_core(obj: dict, k8s_version: str = K8S_VERSION) -> list[Problem]:
    """A core (non-CRD) object against Kubernetes' strict schemas.

    kubernetes-validate stops at the first error; fixing it reveals the next.
    Kinds it has no schema for (Istio, KEDA, ...) are reported as warnings.
    """
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return _problems(ref(obj), err)
    except kubernetes_validate.SchemaNotFoundError:
        group = obj.get("apiVersion", "").rpartition("/")[0]
        core = "." not in group or group.endswith(".k8s.io")
        message = f"Kubernetes {k8s_version} has no {obj.get('apiVersion')} {obj.get('kind')}"
        if core:
            return [Problem(ref(obj), "kind", message)]
        return [Problem(ref(obj), "kind", message + "; its schema is not checked", "warning")]
    except kubernetes_validate.VersionNotSupportedError:
        return [Problem(ref(obj), "", f"kubernetes-validate has no schemas for Kubernetes {k8s_version}")]
    return []


def check_metadata(obj: dict, k8s_version: str = K8S_VERSION) -> list[Problem]:
    """``metadata`` of a custom resource against ObjectMeta (CRDs leave it open)."""
    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata") or {}}
    return [
        Problem(ref(obj), p.path, p.message, p.severity)
        for p in check_core(probe, k8s_version)
        if p.path.startswith("metadata")
    ]


def _problems(obj_ref: str, err: jsonschema.ValidationError) -> list[Problem]:
    path = list(err.absolute_path)
    if err.validator == "additionalProperties" and err.validator_value is False and isinstance(err.instance, dict):
        allowed = set((err.schema or {}).get("properties", {}))
        extra = sorted(k for k in err.instance if k not in allowed) or ["?"]
        return [Problem(obj_ref, field_path(path, name), "unknown field (not in the schema)") for name in extra]
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = [name for name in err.validator_value if name not in err.instance]
        return [Problem(obj_ref, field_path(path, name), "required field is missing") for name in missing]
    if err.validator == "anyOf" and err.validator_value == _INT_OR_STRING:
        return [Problem(obj_ref, field_path(path), f"{err.instance!r} must be an integer or a string")]
    if err.validator == "pattern" and _QUANTITY_HINT in str(err.validator_value):
        return [Problem(obj_ref, field_path(path), f"{err.instance!r} is not a Kubernetes quantity (e.g. 500m, 2Gi)")]
    return [Problem(obj_ref, field_path(path), _short(err.message))]


def _short(message: str) -> str:
    # jsonschema quotes whole sub-objects in some messages; keep lines readable
    return re.sub(r"\s+", " ", message)[:300]
