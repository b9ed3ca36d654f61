"""The local runner's control endpoint: InferenceServices over the Kubernetes API paths.

``ragserve up`` answers ``GET``/``PATCH
/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}``
like an API server (JSON merge patches, ``resourceVersion`` conflicts,
``Status`` errors) and writes a kubeconfig pointing here, so ``ragserve
canary ... --kubeconfig .ragserve/kubeconfig`` drives local revisions with
the same code and the same patches it sends a cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..canary.ops import apply_merge_patch

BASE = "/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices"


def _status(code: int, reason: str, message: str) -> JSONResponse:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    return JSONResponse(body, status_code=code)


def build_control_app(
    namespace: str,
    get: Callable[[str], dict | None],
    names: Callable[[], list[str]],
    apply: Callable[[str, dict], None],
    stats: Callable[[], dict],
) -> Starlette:
    """``get(name)`` returns the object with live status; ``apply(name, new)`` reconciles a patched object."""

    def _not_found(name: str) -> JSONResponse:
        return _status(404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found')

    async def one(request: Request):
        ns, name = request.path_params["namespace"], request.path_params["name"]
        obj = get(name) if ns == namespace else None
        if obj is None:
            return _not_found(name)
        if request.method == "GET":
            return JSONResponse(obj)
        if request.headers.get("content-type", "").split(";")[0] != "application/merge-patch+json":
            return _status(415, "UnsupportedMediaType", "only application/merge-patch+json patches are accepted")
        try:
            patch = json.loads(await request.body())
        except json.JSONDecodeError as exc:
            return _status(400, "BadRequest", f"patch is not JSON: {exc}")
        expected = ((patch.get("metadata") or {}).get("resourceVersion")) if isinstance(patch, dict) else None
        if expected and expected != obj["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", f'Operation cannot be fulfilled on inferenceservices "{name}": '
                                            "the object has been modified; please apply your changes to the latest version")
        new = apply_merge_patch(obj, patch)
        new.pop("status", None)
        try:
            apply(name, new)
        except ValueError as exc:
            return _status(422, "Invalid", str(exc))
        return JSONResponse(get(name))

    async def listing(request: Request):
        if request.path_params["namespace"] != namespace:
            items = []
        else:
            items = [get(n) for n in names()]
        return JSONResponse({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceServiceList", "items": items})

    async def revision_stats(request: Request):
        return JSONResponse(stats())

    return Starlette(
        routes=[
            Route(BASE, listing, methods=["GET"]),
            Route(BASE + "/{name}", one, methods=["GET", "PATCH"]),
            Route("/ragserve/revisions", revision_stats, methods=["GET"]),
        ]
    )


def kubeconfig(server: str, namespace: str) -> str:
    """A kubeconfig for the control endpoint (no credentials: it listens on loopback only)."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "ragserve-up", "cluster": {"server": server}}],
            "users": [{"name": "ragserve-up", "user": {}}],
            "contexts": [{"name": "ragserve-up", "context": {"cluster": "ragserve-up", "user": "ragserve-up",
                                                              "namespace": namespace}}],
            "current-context": "ragserve-up",
        },
        indent=1,
    )
