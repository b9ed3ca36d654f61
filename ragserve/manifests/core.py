"""What the Kubernetes API server itself validates beyond the OpenAPI schema.

``kubernetes-validate`` checks objects against Kubernetes' JSON schemas only:
types, required fields, unknown fields. The API server also runs hand-written
validation (``k8s.io/apimachinery/pkg/util/validation`` and each kind's
``validation.go``) that no schema expresses -- and no maintained Python package
reimplements. These are the rules for the kinds this project ships:

- object names: a DNS-1123 subdomain (a DNS-1123 label for Namespaces, a
  DNS-1035 label for Services); ``metadata.namespace`` a DNS-1123 label;
- label keys and annotation keys: qualified names (``[prefix/]name``, prefix a
  DNS-1123 subdomain, name at most 63 characters of ``[A-Za-z0-9-_.]`` that
  start and end alphanumeric); label values: at most 63 such characters, or
  empty; all annotations together at most 256 KiB;
- label selectors: ``matchLabels`` as labels; ``matchExpressions`` operators
  In / NotIn (with values) and Exists / DoesNotExist (without);
- tolerations: operator Exists (no value) or Equal;
- ports: numbers 1-65535, names IANA service names (at most 15 characters of
  ``[a-z0-9-]``, at least one letter, no leading, trailing or double ``-``);
  a NetworkPolicy ``endPort`` needs a numeric ``port`` no larger;
- NetworkPolicy ``ipBlock``: ``cidr`` and each ``except`` are CIDRs, every
  ``except`` inside ``cidr``;
- PodDisruptionBudget: ``minAvailable`` and ``maxUnavailable`` are mutually
  exclusive; each an integer >= 0 or a percentage;
- PriorityClass: ``value`` at most 1000000000 (higher is reserved for system
  classes), names not starting with ``system-``;
- ConfigMap / Secret keys: ``[-._a-zA-Z0-9]+``, at most 253, not ``.``/``..``,
  no key in both ``data`` and ``binaryData``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator

from .problem import Problem, field_path, ref

_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_PERCENT = re.compile(r"^[0-9]+%$")
SELECTOR_KEYS = ("podSelector", "namespaceSelector", "selector", "labelSelector")
SELECTOR_OPERATORS = {"In": True, "NotIn": True, "Exists": False, "DoesNotExist": False}  # -> values required
PORT_KEYS = ("containerPort", "port", "targetPort", "hostPort", "endPort")
MAX_USER_PRIORITY = 1_000_000_000
MAX_ANNOTATIONS_BYTES = 256 * 1024
# top-level fields that hold no pod or selector (data maps may have keys named like fields)
_NOT_WALKED = ("apiVersion", "kind", "metadata", "status", "data", "stringData", "binaryData")


def dns1123_subdomain(value: str) -> str | None:
    """None if valid, else why not."""
    if not value or len(value) > 253:
        return "must be 1-253 characters"
    if not all(_DNS1123_LABEL.match(part) for part in value.split(".")):
        return "must be lowercase alphanumerics, '-' or '.', starting and ending alphanumeric (RFC 1123 subdomain)"
    return None


def qualified_name(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if "/" in prefix:
        return "has more than one '/'"
    if slash and not prefix:
        return "has an empty prefix before '/'"
    if prefix and dns1123_subdomain(prefix):
        return f"prefix {prefix!r} {dns1123_subdomain(prefix)}"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return "name part must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
    return None


def label_value(value) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        return "must be at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric (or empty)"
    return None


def check_core_rules(obj: dict) -> list[Problem]:
    o = ref(obj)
    problems = list(_metadata(o, obj))
    for key, value in obj.items():
        if key not in _NOT_WALKED:
            problems += _walk(o, value, [key])
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "PodDisruptionBudget":
        problems += _pdb(o, spec)
    elif kind == "PriorityClass":
        problems += _priority_class(o, obj)
    elif kind in ("ConfigMap", "Secret"):
        problems += _config_keys(o, obj)
    elif kind == "NetworkPolicy":
        problems += _network_policy(o, spec)
    return problems


def _metadata(o: str, obj: dict) -> Iterator[Problem]:
    meta = obj.get("metadata") or {}
    kind, name = obj.get("kind"), meta.get("name", "")
    if kind == "Service":
        if not _DNS1035_LABEL.match(name) or len(name) > 63:
            yield Problem(o, "metadata.name", f"{name!r}: a Service name must be a DNS-1035 label (1-63, a-z0-9-, starting with a letter)")
    elif kind == "Namespace":
        if not _DNS1123_LABEL.match(name) or len(name) > 63:
            yield Problem(o, "metadata.name", f"{name!r}: a Namespace name must be a DNS-1123 label (1-63 characters)")
    elif why := dns1123_subdomain(name):
        yield Problem(o, "metadata.name", f"{name!r} {why}")
    namespace = meta.get("namespace")
    if namespace is not None and (not _DNS1123_LABEL.match(namespace) or len(namespace) > 63):
        yield Problem(o, "metadata.namespace", f"{namespace!r} must be a DNS-1123 label (1-63 characters)")
    yield from _labels(o, "metadata.labels", meta.get("labels") or {})
    notes = meta.get("annotations") or {}
    for key in notes:
        if why := qualified_name(key):
            yield Problem(o, field_path("metadata", "annotations", key), f"annotation key {key!r} {why}")
    size = sum(len(k) + len(str(v)) for k, v in notes.items())
    if size > MAX_ANNOTATIONS_BYTES:
        yield Problem(o, "metadata.annotations", f"{size} bytes in total, more than the API server's 256 KiB")


def _labels(o: str, path: str, labels: dict) -> Iterator[Problem]:
    for key, value in labels.items():
        if why := qualified_name(key):
            yield Problem(o, f"{path}.{key}", f"label key {key!r} {why}")
        if why := label_value(value):
            yield Problem(o, f"{path}.{key}", f"label value {value!r} {why}")


def _walk(o: str, node, path: list) -> Iterator[Problem]:
    """Selectors, node selectors, tolerations and ports wherever they sit (pods nest deeply)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(o, item, [*path, i])
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        here = [*path, key]
        if key in SELECTOR_KEYS and isinstance(value, dict) and set(value) <= {"matchLabels", "matchExpressions"}:
            yield from _selector(o, field_path(here), value)
        elif key == "nodeSelector" and isinstance(value, dict) and "nodeSelectorTerms" not in value:
            yield from _labels(o, field_path(here), value)
        elif key == "tolerations" and isinstance(value, list):
            yield from _tolerations(o, here, value)
        elif key in PORT_KEYS and isinstance(value, (int, str)) and not isinstance(value, bool):
            yield from _port(o, field_path(here), key, value)
        elif key == "labels" and isinstance(value, dict):
            yield from _labels(o, field_path(here), value)
        elif key == "annotations" and isinstance(value, dict):
            for name in value:
                if why := qualified_name(name):
                    yield Problem(o, field_path(here, name), f"annotation key {name!r} {why}")
        elif key == "ports" and isinstance(value, list):
            for i, port in enumerate(value):
                if isinstance(port, dict) and isinstance(port.get("name"), str):
                    yield from _port_name(o, field_path(here, i, "name"), port["name"])
        yield from _walk(o, value, here)


def _selector(o: str, path: str, selector: dict) -> Iterator[Problem]:
    yield from _labels(o, f"{path}.matchLabels", selector.get("matchLabels") or {})
    for i, expr in enumerate(selector.get("matchExpressions") or []):
        where = f"{path}.matchExpressions[{i}]"
        if why := qualified_name(expr.get("key", "")):
            yield Problem(o, f"{where}.key", f"{expr.get('key')!r} {why}")
        operator = expr.get("operator")
        if operator not in SELECTOR_OPERATORS:
            yield Problem(o, f"{where}.operator", f"{operator!r} is not a valid selector operator ({', '.join(SELECTOR_OPERATORS)})")
        elif SELECTOR_OPERATORS[operator] and not expr.get("values"):
            yield Problem(o, f"{where}.values", f"must be non-empty when operator is {operator}")
        elif not SELECTOR_OPERATORS[operator] and expr.get("values"):
            yield Problem(o, f"{where}.values", f"may not be specified when operator is {operator}")


def _tolerations(o: str, path: list, tolerations: list) -> Iterator[Problem]:
    for i, tol in enumerate(tolerations):
        operator = tol.get("operator", "Equal")
        if operator not in ("Exists", "Equal"):
            yield Problem(o, field_path(path, i, "operator"), f"{operator!r} is not a toleration operator (Exists, Equal)")
        elif operator == "Exists" and tol.get("value"):
            yield Problem(o, field_path(path, i, "value"), "must be empty when operator is Exists")


def _port(o: str, path: str, key: str, value) -> Iterator[Problem]:
    if isinstance(value, int):
        low = 0 if key == "hostPort" else 1
        if not low <= value <= 65535:
            yield Problem(o, path, f"{value} is not a valid port number (1-65535)")
    elif key in ("port", "targetPort"):
        if value.isdigit():
            yield Problem(o, path, f"{value!r}: a port number must be an integer, not a string")
        else:
            yield from _port_name(o, path, value)


def _port_name(o: str, path: str, name: str) -> Iterator[Problem]:
    if len(name) > 15 or not _PORT_NAME.match(name) or "--" in name or not re.search(r"[a-z]", name):
        yield Problem(o, path, f"{name!r} is not a valid port name (IANA service name: at most 15 characters of "
                               "a-z0-9-, at least one letter, no leading, trailing or double '-')")


def _network_policy(o: str, spec: dict) -> Iterator[Problem]:
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            for j, port in enumerate(rule.get("ports") or []):
                if port.get("endPort") is not None:
                    if not isinstance(port.get("port"), int):
                        yield Problem(o, f"spec.{direction}[{i}].ports[{j}].endPort", "needs a numeric port")
                    elif port["endPort"] < port["port"]:
                        yield Problem(o, f"spec.{direction}[{i}].ports[{j}].endPort", f"{port['endPort']} is below port {port['port']}")
            for j, peer in enumerate(rule.get(peers_key) or []):
                if isinstance(peer.get("ipBlock"), dict):
                    yield from _ip_block(o, f"spec.{direction}[{i}].{peers_key}[{j}].ipBlock", peer["ipBlock"])


def _ip_block(o: str, path: str, block: dict) -> Iterator[Problem]:
    try:
        cidr = ipaddress.ip_network(str(block.get("cidr", "")), strict=False)
    except ValueError:
        yield Problem(o, f"{path}.cidr", f"{block.get('cidr')!r} is not a valid CIDR (e.g. 10.0.0.0/8)")
        return
    for i, text in enumerate(block.get("except") or []):
        try:
            ex = ipaddress.ip_network(str(text), strict=False)
        except ValueError:
            yield Problem(o, f"{path}.except[{i}]", f"{text!r} is not a valid CIDR")
            continue
        if ex.version != cidr.version or not ex.subnet_of(cidr):
            yield Problem(o, f"{path}.except[{i}]", f"{text} is not inside cidr {block['cidr']}")


def _pdb(o: str, spec: dict) -> Iterator[Problem]:
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        yield Problem(o, "spec.maxUnavailable", "minAvailable and maxUnavailable cannot be both set (mutually exclusive)")
    for key in ("minAvailable", "maxUnavailable"):
        value = spec.get(key)
        if isinstance(value, int) and value < 0:
            yield Problem(o, f"spec.{key}", f"{value} must be >= 0")
        elif isinstance(value, str) and (not _PERCENT.match(value) or int(value[:-1]) > 100):
            yield Problem(o, f"spec.{key}", f"{value!r} must be an integer or a percentage (0%-100%)")


def _priority_class(o: str, obj: dict) -> Iterator[Problem]:
    name = (obj.get("metadata") or {}).get("name", "")
    if name.startswith("system-"):
        yield Problem(o, "metadata.name", "the 'system-' prefix is reserved for Kubernetes' own PriorityClasses")
    value = obj.get("value")
    if isinstance(value, int) and value > MAX_USER_PRIORITY:
        yield Problem(o, "value", f"{value} is above {MAX_USER_PRIORITY}, the highest user-definable priority")


def _config_keys(o: str, obj: dict) -> Iterator[Problem]:
    sections = [s for s in ("data", "binaryData", "stringData") if isinstance(obj.get(s), dict)]
    for section in sections:
        for key in obj[section]:
            if len(key) > 253 or key in (".", "..") or key.startswith("..") or not _CONFIG_KEY.match(key):
                yield Problem(o, f"{section}.{json.dumps(key)[1:-1]}",
                              f"key {key!r} must be 1-253 characters of [-._a-zA-Z0-9], not '.' or '..'")
    if obj.get("kind") == "ConfigMap":
        for key in sorted(set(obj.get("data") or {}) & set(obj.get("binaryData") or {})):
            yield Problem(o, f"binaryData.{key}", f"key {key!r} is also in data; keys must be unique across both")
