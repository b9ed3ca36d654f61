"""What ``ragserve canary`` acts on, and the errors a target raises.

A :class:`CanaryTarget` holds InferenceService objects: the cluster's API
server (:class:`ragserve.canary.kube.KubeTarget`) or, later, ``ragserve up``'s
local control endpoint. Objects are plain dicts shaped like the
``serving.kserve.io/v1beta1`` resource; changes are JSON merge patches
(RFC 7386, ``application/merge-patch+json``) computed by
:mod:`ragserve.canary.ops`. A patch carries ``metadata.resourceVersion`` of the
object it was computed from; a target should refuse it (:class:`Conflict`)
when the object has changed since.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Protocol, runtime_checkable

import grpc

from ragserve.errors import NotFound, RagserveError

MERGE_PATCH = "application/merge-patch+json"

InferenceService = dict[str, Any]


@runtime_checkable
class CanaryTarget(Protocol):
    def get(self, name: str) -> InferenceService:
        """The InferenceService ``name``; raise :class:`InferenceServiceNotFound` if absent."""
        ...

    def patch(self, name: str, body: dict[str, Any]) -> InferenceService:
        """Apply ``body`` as a JSON merge patch and return the updated object."""
        ...


class InferenceServiceNotFound(NotFound):
    def __init__(self, name: str, namespace: str):
        super().__init__(f'inferenceservice "{name}" not found in namespace "{namespace}"')


class AccessDenied(RagserveError):
    """The target refused the operation (Kubernetes RBAC: 403)."""

    status_code = HTTPStatus.FORBIDDEN
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    error_type = "permission_denied"

    def __init__(self, verb: str, name: str, namespace: str, detail: str = ""):
        message = (
            f'forbidden: cannot {verb} inferenceservices.serving.kserve.io "{name}" in namespace "{namespace}"'
            f' (RBAC needs verb "{verb}" on resource "inferenceservices" in API group "serving.kserve.io")'
        )
        super().__init__(f"{message}: {detail}" if detail else message)
        self.verb = verb


class Conflict(RagserveError):
    """The object changed between the read a patch was computed from and the patch."""

    status_code = HTTPStatus.CONFLICT
    grpc_code = grpc.StatusCode.ABORTED
    error_type = "conflict"

    def __init__(self, name: str):
        super().__init__(
            f'inferenceservice "{name}" changed while it was being updated (409 Conflict); run the command again'
        )


class NoCanary(RagserveError):
    """promote / rollback / analyze on an InferenceService without a canary."""

    status_code = HTTPStatus.CONFLICT
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    error_type = "no_canary"
