"""A thin :class:`~ragserve.canary.target.CanaryTarget` over the official ``kubernetes`` client.

Connects the way ``kubectl`` does: ``--kubeconfig`` or ``$KUBECONFIG`` or
``~/.kube/config`` (then the in-cluster service account), the kubeconfig's
current context unless one is named, and that context's namespace unless one is
given. Reads and patches go to
``/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}``;
patches are sent as ``application/merge-patch+json`` (what the client's
``patch_namespaced_custom_object`` sends) under the field manager ``ragserve``,
so ``kubectl get --show-managed-fields`` names this tool as the writer.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ragserve.errors import DependencyUnavailable, RagserveError

from .target import AccessDenied, Conflict, InferenceService, InferenceServiceNotFound

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
FIELD_MANAGER = "ragserve"


class ClusterSettings(BaseSettings):
    """How ``ragserve canary`` reaches the cluster (``RAGSERVE_CANARY_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="RAGSERVE_CANARY_", extra="forbid", use_attribute_docstrings=True, validate_default=True
    )

    kubeconfig: str = ""
    """Kubeconfig file; empty: $KUBECONFIG, then ~/.kube/config, then the in-cluster service account."""

    context: str = ""
    """Kubeconfig context; empty: the current context."""

    namespace: str = Field("", json_schema_extra={"cli_short": "-n"})
    """Namespace of the InferenceService; empty: the context's namespace, else "default"."""

    request_timeout: float = Field(30.0, gt=0)
    """Seconds one Kubernetes API call may take."""


class KubeTarget:
    """InferenceServices in one namespace of a cluster."""

    def __init__(self, api_client, namespace: str, *, request_timeout: float = 30.0):
        from kubernetes import client

        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.server = api_client.configuration.host
        self._timeout = request_timeout

    def get(self, name: str) -> InferenceService:
        return self._call("get", name, self.api.get_namespaced_custom_object)

    def patch(self, name: str, body: dict[str, Any]) -> InferenceService:
        return self._call("patch", name, self.api.patch_namespaced_custom_object, body=body,
                          field_manager=FIELD_MANAGER)

    def _call(self, verb: str, name: str, method, **kw) -> InferenceService:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return method(GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=self._timeout, **kw)
        except ApiException as exc:
            detail = _status_message(exc)
            if exc.status == 404:
                raise InferenceServiceNotFound(name, self.namespace) from None
            if exc.status == 403:
                raise AccessDenied(verb, name, self.namespace, detail) from None
            if exc.status == 409:
                raise Conflict(name) from None
            if exc.status == 401:
                raise RagserveError(f"the Kubernetes API at {self.server} rejected the credentials (401): {detail}")
            raise RagserveError(f"{verb} inferenceservice {name!r}: the Kubernetes API answered {exc.status}: {detail}")
        except HTTPError as exc:
            raise DependencyUnavailable(f"the Kubernetes API at {self.server}", str(exc)) from None


def connect(settings: ClusterSettings) -> KubeTarget:
    """A :class:`KubeTarget` for the cluster and namespace ``settings`` point at."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    path = settings.kubeconfig or os.environ.get("KUBECONFIG", "") or os.path.expanduser("~/.kube/config")
    context = settings.context or None
    namespace = settings.namespace
    try:
        if settings.kubeconfig or os.path.exists(path.split(os.pathsep)[0]):
            config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
            if not namespace:
                contexts, active = config.list_kube_config_contexts(config_file=path)
                chosen = next((c for c in contexts if c["name"] == context), active) if context else active
                namespace = (chosen.get("context") or {}).get("namespace", "")
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                raise RagserveError(
                    f"no kubeconfig at {path} and not running inside a cluster; pass --kubeconfig"
                ) from None
            if not namespace:
                namespace = _incluster_namespace()
    except (ConfigException, OSError) as exc:
        raise RagserveError(f"cannot load Kubernetes configuration ({path}): {exc}") from None
    return KubeTarget(client.ApiClient(configuration), namespace or "default", request_timeout=settings.request_timeout)


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _status_message(exc) -> str:
    """The ``message`` of the Kubernetes ``Status`` object in an error response."""
    try:
        return json.loads(exc.body).get("message", "") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return exc.reason or ""
