"""KServe's InferenceGraph router, in-process.

- :mod:`~ragserve.graph.spec` parses an InferenceGraph into typed nodes and steps;
- :mod:`~ragserve.graph.gjson` evaluates step ``condition`` fields (a GJSON subset);
- :mod:`~ragserve.graph.resolver` turns a step's ``serviceName`` into a URL;
- :mod:`~ragserve.graph.router` runs the graph with KServe's semantics;
- :mod:`~ragserve.graph.app` serves it over HTTP.
"""

from .app import GraphSettings, build_app, create_app
from .resolver import ServiceAddress, ServiceNotFound, ServiceResolver, StaticResolver
from .router import GraphRouter, RoutingError, StepResult
from .spec import GraphSpec, GraphSpecError, InferenceRouter, InferenceStep, load_graph, parse_graph

__all__ = [
    "GraphRouter",
    "GraphSettings",
    "GraphSpec",
    "GraphSpecError",
    "InferenceRouter",
    "InferenceStep",
    "RoutingError",
    "ServiceAddress",
    "ServiceNotFound",
    "ServiceResolver",
    "StaticResolver",
    "StepResult",
    "build_app",
    "create_app",
    "load_graph",
    "parse_graph",
]
