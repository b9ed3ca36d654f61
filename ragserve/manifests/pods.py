"""Rules about the pods a bundle will run: security defaults, GPU resources, image pins.

Security defaults (the Kubernetes *restricted* profile plus a read-only root):
non-root, ``seccompProfile: RuntimeDefault``, no privilege escalation, all
capabilities dropped, ``readOnlyRootFilesystem: true`` with an emptyDir at
``/tmp`` and under any cache directory the container is told to use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from .bundle import Bundle, Container, Pod, pods
from .problem import Problem, ref

GPU_RESOURCE = re.compile(r"(^|[./-])(gpu|mig-|gaudi|neuron)", re.IGNORECASE)
CACHE_ENV = ("HF_HOME", "XDG_CACHE_HOME", "RAGSERVE_CACHE_DIR", "TRANSFORMERS_CACHE", "TORCHINDUCTOR_CACHE_DIR")
_SECCOMP_OK = ("RuntimeDefault", "Localhost")


def is_gpu_resource(name: str) -> bool:
    return bool(GPU_RESOURCE.search(name))


def gpu_resources(container: dict) -> set[str]:
    resources = container.get("resources") or {}
    return {
        name
        for section in ("requests", "limits")
        for name in (resources.get(section) or {})
        if is_gpu_resource(name)
    }


def check_pods(obj: dict, bundle: Bundle) -> list[Problem]:
    problems: list[Problem] = []
    for pod in pods(obj, bundle):
        problems += _pod_security(pod)
        for container in pod.containers:
            problems += _gpu_limits(obj, container)
            problems += _image_pin(obj, container)
    if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
        field = "data" if obj.get("data") else "stringData"
        problems.append(Problem(ref(obj), field, "Secret values do not belong in the bundle; reference an existing Secret"))
    return problems


def _pod_security(pod: Pod) -> list[Problem]:
    obj = ref(pod.obj)
    pod_ctx = pod.spec.get("securityContext") or {}
    problems = []
    for container in pod.containers:
        ctx = container.spec.get("securityContext") or {}
        if pod.pod_level:
            if (ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))) is not True:
                problems.append(Problem(obj, f"{pod.path}.securityContext.runAsNonRoot", "must be true (here or in the container)"))
            if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
                problems.append(Problem(obj, f"{container.path}.securityContext.runAsUser", "must not be 0 (root)"))
            seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
            if seccomp not in _SECCOMP_OK:
                problems.append(Problem(obj, f"{pod.path}.securityContext.seccompProfile.type", f"must be RuntimeDefault, not {seccomp!r}"))
        if _container_checked_here(container):
            problems += _container_security(obj, pod, container, ctx)
    return sorted(set(problems))


def _container_checked_here(container: Container) -> bool:
    # A model block that leaves the container to its ServingRuntime is checked
    # there (the runtime is in the bundle), not once more per InferenceService.
    if container.runtime is None:
        return container.own is container.spec or "securityContext" in container.own
    return "securityContext" in container.own or "volumeMounts" in container.own


def _container_security(obj: str, pod: Pod, container: Container, ctx: dict) -> Iterator[Problem]:
    base = f"{container.path}.securityContext"
    if ctx.get("allowPrivilegeEscalation") is not False:
        yield Problem(obj, f"{base}.allowPrivilegeEscalation", "must be false")
    if ctx.get("privileged") is True:
        yield Problem(obj, f"{base}.privileged", "must not be true")
    if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
        yield Problem(obj, f"{base}.capabilities.drop", "must contain ALL")
    if ctx.get("readOnlyRootFilesystem") is not True:
        yield Problem(obj, f"{base}.readOnlyRootFilesystem", "must be true (mount an emptyDir where the process writes)")
        return
    empty_dirs = {v.get("name") for v in pod.volumes if "emptyDir" in v}
    mounts = {m.get("mountPath", "").rstrip("/"): m.get("name") for m in container.spec.get("volumeMounts") or []}
    if mounts.get("/tmp") not in empty_dirs:
        yield Problem(obj, f"{container.path}.volumeMounts", "a read-only root filesystem needs an emptyDir mounted at /tmp")
    for env in container.spec.get("env") or []:
        value = env.get("value")
        if env.get("name") in CACHE_ENV and value and not any(_under(value, m) for m in mounts):
            yield Problem(obj, f"{container.path}.env.{env['name']}", f"{value} is not on a mounted volume (root filesystem is read-only)")


def _under(path: str, mount: str) -> bool:
    path = path.rstrip("/")
    return bool(mount) and (path == mount or path.startswith(mount + "/"))


def _gpu_limits(obj: dict, container: Container) -> Iterator[Problem]:
    resources = container.spec.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for name in sorted(gpu_resources(container.spec)):
        where = f"{container.path}.resources"
        if name not in limits:
            yield Problem(ref(obj), f"{where}.limits.{name}", "GPU request without limit: set limits equal to requests")
        elif name in requests and str(requests[name]) != str(limits[name]):
            yield Problem(ref(obj), f"{where}.requests.{name}", f"must equal limits ({limits[name]!r}); GPUs are never overcommitted")


def _image_pin(obj: dict, container: Container) -> Iterator[Problem]:
    image = container.own.get("image")
    if not image:
        return
    name, _, digest = image.partition("@")
    tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
    if not digest and tag in ("", "latest"):
        yield Problem(ref(obj), f"{container.path}.image", f"{image!r} is not pinned: set a tag or digest in the overlay's images:")
