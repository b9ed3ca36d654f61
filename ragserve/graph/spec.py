"""An InferenceGraph (``serving.kserve.io/v1alpha1``) as typed, validated nodes and steps.

:func:`parse_graph` takes the object a YAML/JSON manifest decodes to (the whole
``InferenceGraph`` or just its ``spec``) and applies the checks KServe's
admission webhook makes (``inference_graph_validation.go``): a ``root`` node,
unique step names per node, exactly one of ``nodeName`` / ``serviceName`` /
``serviceUrl`` per step, Splitter weights present and summing to 100, a valid
graph name. Beyond the webhook, and because there is no controller here to
catch them later, it also rejects a ``nodeName`` that names no node, a node
without steps and a ``condition`` outside the supported GJSON subset
(:mod:`ragserve.graph.gjson`). Deployment fields (resources, affinity,
replicas, scaling) are accepted and ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from ragserve.errors import BadRequest, describe_validation_errors

from .gjson import GJSONSyntaxError, compile_path

ROOT_NODE = "root"  # v1alpha1.GraphRootNodeName
_GRAPH_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # v1alpha1.GraphNameFmt


class GraphSpecError(BadRequest):
    """The InferenceGraph is invalid; the message names the node and step."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")


class InferenceStep(_Model):
    """One step of a node (``v1alpha1.InferenceStep``)."""

    name: str = ""
    node_name: str = ""
    service_name: str = ""
    service_url: str = ""
    data: str = ""
    """``$request`` (the graph's input, also the default) or ``$response`` (the previous step's output)."""
    map_predictions_to_instances: bool = False
    """In the CRD, but KServe's router never reads it; accepted and ignored the same way."""
    weight: int | None = Field(None, ge=0)
    condition: str = ""
    dependency: Literal["", "Soft", "Hard"] = ""

    @property
    def hard(self) -> bool:
        return self.dependency == "Hard"

    def label(self, index: int) -> str:
        return f"step {index} ({self.name!r})" if self.name else f"step {index}"


class InferenceRouter(_Model):
    """One node (``v1alpha1.InferenceRouter``)."""

    router_type: Literal["Sequence", "Splitter", "Ensemble", "Switch"]
    steps: tuple[InferenceStep, ...] = ()


class RouterTimeouts(_Model):
    server_read: int | None = None
    server_write: int | None = None
    server_idle: int | None = None
    service_client: int | None = None
    """Seconds a step call may take; unset means no limit (Go's default client)."""


class GraphSpec(BaseModel):
    """The parts of ``InferenceGraphSpec`` the router runs."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")

    nodes: dict[str, InferenceRouter]
    router_timeouts: RouterTimeouts | None = None
    name: str = ""
    namespace: str = ""

    @model_validator(mode="after")
    def _check(self) -> GraphSpec:
        graph = self.name or "graph"
        if self.name and not _GRAPH_NAME.fullmatch(self.name):
            raise ValueError(f"InferenceGraph name {self.name!r} must match {_GRAPH_NAME.pattern}")
        if ROOT_NODE not in self.nodes:
            raise ValueError(
                "root node not found, InferenceGraph needs a node with name 'root' as the root node of the graph"
            )
        for node_name, node in self.nodes.items():
            where = f"node {node_name!r} of InferenceGraph {graph!r}"
            if not node.steps:
                raise ValueError(f"{where} has no steps")
            seen: set[str] = set()
            for i, step in enumerate(node.steps):
                if step.name:
                    if step.name in seen:
                        raise ValueError(f"{where} contains more than one step with name {step.name!r}")
                    seen.add(step.name)
                targets = [t for t in (step.node_name, step.service_name, step.service_url) if t]
                if not targets:
                    raise ValueError(f"{step.label(i)} in {where} does not specify an inference target")
                if len(targets) > 1:
                    raise ValueError(
                        f"{step.label(i)} in {where} specifies more than one of nodeName, serviceName, serviceUrl"
                    )
                if step.node_name and step.node_name not in self.nodes:
                    raise ValueError(f"{step.label(i)} in {where} names node {step.node_name!r}, which does not exist")
                if step.condition:
                    try:
                        compile_path(step.condition)
                    except GJSONSyntaxError as exc:
                        raise ValueError(f"{step.label(i)} in {where}: condition {step.condition!r}: {exc}") from None
            if node.router_type == "Splitter":
                for i, step in enumerate(node.steps):
                    if step.weight is None:
                        raise ValueError(f"{step.label(i)} in {where} is missing the 'weight'")
                if sum(s.weight for s in node.steps) != 100:
                    raise ValueError(
                        f"{where}: splitter node: the sum of traffic weights for all routing targets should be 100"
                    )
        return self


def parse_graph(obj: dict[str, Any]) -> GraphSpec:
    """Build a :class:`GraphSpec` from an InferenceGraph object or its ``spec``."""
    if not isinstance(obj, dict):
        raise GraphSpecError("an InferenceGraph must be a mapping")
    if "spec" in obj:
        kind = obj.get("kind", "InferenceGraph")
        if kind != "InferenceGraph":
            raise GraphSpecError(f"expected kind InferenceGraph, got {kind!r}")
        meta = obj.get("metadata") or {}
        spec = {**obj["spec"], "name": meta.get("name", ""), "namespace": meta.get("namespace", "")}
    else:
        spec = obj
    try:
        return GraphSpec.model_validate(spec)
    except ValidationError as exc:
        # graph-level checks raise ValueError with a message that already says where
        parts = [
            str(e["ctx"]["error"]) if e["type"] == "value_error" and not e["loc"] else describe_validation_errors([e])
            for e in exc.errors()
        ]
        raise GraphSpecError("invalid InferenceGraph: " + "; ".join(parts)) from None


def load_graph(path: str | Path) -> GraphSpec:
    """Read an InferenceGraph manifest (YAML or JSON; the first document of a stream)."""
    import yaml

    text = Path(path).read_text()
    try:
        obj = next(iter(yaml.safe_load_all(text)), None)
    except yaml.YAMLError as exc:
        raise GraphSpecError(f"{path}: not valid YAML/JSON: {exc}") from None
    return parse_graph(obj)
