"""How a step's ``serviceName`` (an InferenceService) becomes the URL the router posts to.

In KServe the InferenceGraph controller does this once per reconcile
(``isvcutils.GetPredictorEndpoint``): the InferenceService's
``status.address.url`` plus the predict path of its protocol --
``/v1/models/{model}:predict`` for V1, ``/v2/models/{model}/infer`` for V2,
nothing for other protocols -- where ``{model}`` is the ``--model_name`` the
server runs with, or the InferenceService's name. A step that sets
``serviceUrl`` is used as written. The incoming request's path is never
appended: the router posts every step to this fixed URL.

Here the lookup is injected: a cluster can read InferenceService status, and
``ragserve up`` knows the loopback ports of the servers it started.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from ragserve.errors import NotFound


class ServiceNotFound(NotFound):
    """No address is known for an InferenceService named by a step."""


class ServiceAddress(BaseModel):
    """Where an InferenceService answers: its ``status.address.url``, model name and protocol."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="forbid")

    url: str
    """Base URL (``status.address.url``), e.g. ``http://embedder.ml.svc.cluster.local``."""
    model_name: str = ""
    """Model name the server runs with; empty means the InferenceService's name."""
    protocol: Literal["v1", "v2", "grpc-v2", ""] = "v1"
    """Predictor protocol (``protocolVersion``); KServe's default is v1."""


def predict_path(model_name: str, protocol: str) -> str:
    """KServe's ``constants.PredictPath``."""
    if protocol == "v1":
        return f"/v1/models/{model_name}:predict"
    if protocol == "v2":
        return f"/v2/models/{model_name}/infer"
    return ""


def step_url(service_name: str, address: ServiceAddress) -> str:
    return address.url.rstrip("/") + predict_path(address.model_name or service_name, address.protocol)


class ServiceResolver(Protocol):
    async def resolve(self, service_name: str) -> ServiceAddress:
        """The address of ``service_name``; raise :class:`ServiceNotFound` if there is none."""
        ...


class StaticResolver:
    """A fixed ``serviceName -> address`` table (settings, tests, ``ragserve up``)."""

    def __init__(self, services: Mapping[str, ServiceAddress | str]):
        self._services = {
            name: addr if isinstance(addr, ServiceAddress) else ServiceAddress(url=addr)
            for name, addr in services.items()
        }

    async def resolve(self, service_name: str) -> ServiceAddress:
        try:
            return self._services[service_name]
        except KeyError:
            known = ", ".join(sorted(self._services)) or "none"
            raise ServiceNotFound(f"InferenceService {service_name!r} has no known address (known: {known})") from None
