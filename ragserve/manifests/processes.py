"""A bundle read as plain local processes -- what the local overlay promises.

Each InferenceService component becomes one process: its command and args
(a runtime-backed model merged with its ServingRuntime, as KServe does) and
its environment (ConfigMaps from ``envFrom`` first, then ``env``). Only what a
laptop can run is accepted: env from Secrets or fields is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bundle import Bundle, component_pod, isvc_components
from .problem import ManifestError, ref


@dataclass
class LocalProcess:
    name: str
    """``<inferenceservice>-<component>``, as KServe names the workload."""
    argv: list[str]
    env: dict[str, str]


def local_processes(objects: list[dict]) -> list[LocalProcess]:
    bundle = Bundle(objects)
    out = []
    for isvc in objects:
        if isvc.get("kind") != "InferenceService":
            continue
        for path, comp in isvc_components(isvc):
            pod = component_pod(isvc, path, comp, bundle)
            main = next(c for c in pod.containers if ".initContainers[" not in c.path)
            where = f"{ref(isvc)} {main.path}"
            argv = list(main.spec.get("command") or []) + [str(a) for a in main.spec.get("args") or []]
            if not argv:
                raise ManifestError(f"{where}: no command: the image's entrypoint cannot run locally")
            component = path.rsplit(".", 1)[-1]
            out.append(LocalProcess(f"{isvc['metadata']['name']}-{component}", argv, _environment(main.spec, bundle, where)))
    return out


def _environment(container: dict, bundle: Bundle, where: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        name = (source.get("configMapRef") or {}).get("name")
        config_map = bundle.get("ConfigMap", name) if name else None
        if config_map is None:
            raise ManifestError(f"{where}: envFrom {source} is not a ConfigMap of this bundle")
        env.update({k: str(v) for k, v in (config_map.get("data") or {}).items()})
    for var in container.get("env") or []:
        if "value" not in var:
            raise ManifestError(f"{where}: env {var.get('name')} comes from {sorted(var.get('valueFrom') or {})}, not runnable locally")
        env[var["name"]] = str(var["value"])
    return env
