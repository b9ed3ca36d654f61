"""From a rendered bundle to the local processes that run it.

Each InferenceService component (predictor, transformer) becomes one local
process per *revision*, started from the container's own ``command``/``args``/
``env`` (runtime-backed models merged with their ServingRuntime as KServe
does). What a cluster provides is replaced by loopback equivalents:

- ports: every process gets free loopback ports (``--http_port``,
  ``--grpc_port``, ``--host 127.0.0.1`` appended, as KServe appends its own);
- service DNS: ``http://<isvc>-predictor.<ns>.svc.cluster.local`` (and the
  shorter forms) in env values and args point at the local component;
- the transformer's ``--predictor_host`` points at the local predictor;
- Milvus: every ``*_MILVUS_URI`` is the local Milvus, ``*_MILVUS_TOKEN`` dropped;
- ``resources`` are ignored; a GPU request on a machine without one is a warning.

Canary revisions: ``spec.canary[0]`` (Standard mode) runs next to
``spec.predictor``; ``canaryTrafficPercent`` (Knative mode) splits between the
last rolled-out predictor spec (kept in the state dir) and the current one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..manifests.bundle import Bundle, component_pod
from ..manifests.problem import ManifestError, ref
from ..manifests.pods import gpu_resources

logger = logging.getLogger("ragserve.up")

ROLES = ("predictor", "transformer")


@dataclass
class Process:
    """One revision of one component, as a local process."""

    isvc: str
    role: str
    revision: str
    argv: list[str]
    env: dict[str, str]
    http_port: int
    grpc_port: int
    ready_path: str
    gpu_requested: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass
class Route:
    """A component's stable address (its local ingress) and the revisions behind it."""

    isvc: str
    role: str
    port: int
    stable: Process
    canary: Process | None = None
    canary_percent: int = 0

    @property
    def name(self) -> str:
        return f"{self.isvc}-{self.role}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Plan:
    routes: list[Route] = field(default_factory=list)
    graphs: list[dict] = field(default_factory=list)
    isvcs: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def route(self, isvc: str, role: str) -> Route | None:
        return next((r for r in self.routes if r.isvc == isvc and r.role == role), None)

    def entry(self, isvc: str) -> Route:
        """Where a request for the InferenceService lands: its transformer, else its predictor."""
        return self.route(isvc, "transformer") or self.route(isvc, "predictor")

    def processes(self) -> list[Process]:
        """Predictors first (transformers need them), stable before canary."""
        ordered = sorted(self.routes, key=lambda r: ROLES.index(r.role))
        return [p for r in ordered for p in (r.stable, r.canary) if p is not None]


class PortAllocator:
    """Sequential ports from ``base`` (predictable URLs), or free ones when ``base`` is 0."""

    def __init__(self, base: int):
        self.next = base

    def __call__(self) -> int:
        from ..procs import free_port

        if not self.next:
            return free_port()
        port, self.next = self.next, self.next + 1
        return port


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


class RevisionStore:
    """The last rolled-out spec of each component, so Knative-mode canaries have a 'previous'."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def record(self, key: str, spec: dict, generation: int) -> None:
        self.data[key] = {"spec": spec, "hash": spec_hash(spec), "generation": generation}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True))


def _resolve_env(container: dict, bundle: Bundle, where: str, warnings: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        name = (source.get("configMapRef") or {}).get("name")
        config_map = bundle.get("ConfigMap", name) if name else None
        if config_map is None:
            warnings.append(f"{where}: envFrom {source} skipped (only ConfigMaps of the bundle run locally)")
            continue
        env.update({k: str(v) for k, v in (config_map.get("data") or {}).items()})
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        cm = (var.get("valueFrom") or {}).get("configMapKeyRef")
        if cm and bundle.get("ConfigMap", cm.get("name", "")):
            value = (bundle.get("ConfigMap", cm["name"]).get("data") or {}).get(cm.get("key", ""))
            if value is not None:
                env[var["name"]] = str(value)
                continue
        if not var["name"].endswith(("_MILVUS_URI", "_MILVUS_TOKEN")):  # replaced by the local Milvus anyway
            warnings.append(f"{where}: env {var['name']} comes from {sorted(var.get('valueFrom') or {})}; not set locally")
    return env


def _local_argv(argv: list[str]) -> list[str]:
    # Images run `python -m ragserve ...`; locally that is this interpreter.
    if argv and argv[0] in ("python", "python3") and not Path(argv[0]).is_absolute():
        return [sys.executable, *argv[1:]]
    if argv and shutil.which(argv[0]) is None:
        raise ManifestError(f"command {argv[0]!r} is not on PATH: it cannot run locally")
    return list(argv)


def _ready_path(container: dict, default: str = "/v2/health/ready") -> str:
    probe = (container.get("readinessProbe") or {}).get("httpGet") or {}
    return probe.get("path") or default


class Planner:
    def __init__(
        self,
        objects: list[dict],
        *,
        ports: PortAllocator,
        store: RevisionStore,
        namespace: str = "default",
        route_ports: PortAllocator | None = None,
    ):
        self.bundle = Bundle(objects)
        self.objects = objects
        self.ports = ports
        # the stable addresses users type (one per component) can come from their own range
        self.route_ports = route_ports or ports
        self.store = store
        self.namespace = namespace
        self.plan = Plan()

    def build(self, milvus_uri: str, has_gpu: bool) -> Plan:
        self.milvus_uri = milvus_uri
        isvcs = [o for o in self.objects if o.get("kind") == "InferenceService"]
        if not isvcs:
            raise ManifestError("the bundle has no InferenceService to run")
        for isvc in isvcs:
            self.plan.isvcs[isvc["metadata"]["name"]] = copy.deepcopy(isvc)
            self._isvc_routes(isvc)
        self.plan.graphs = [o for o in self.objects if o.get("kind") == "InferenceGraph"]
        self._rules = self._service_urls()
        for proc in self.plan.processes():
            self._localize(proc, milvus_uri)
            if proc.gpu_requested and not has_gpu:
                self.plan.warnings.append(
                    f"{proc.revision}: requests a GPU but this machine has none; running on CPU"
                )
        return self.plan

    # -- revisions -------------------------------------------------------
    def _isvc_routes(self, isvc: dict) -> None:
        name = isvc["metadata"]["name"]
        spec = isvc.get("spec") or {}
        for role in ROLES:
            comp = spec.get(role)
            if not isinstance(comp, dict):
                continue
            key = f"{name}/{role}"
            port = self.route_ports()
            current = {k: v for k, v in comp.items() if k != "canaryTrafficPercent"}
            recorded = self.store.get(key)
            canary_spec, percent = None, 0
            if role == "predictor" and spec.get("canary"):
                # Standard mode: both revisions are in the object itself
                entry = spec["canary"][0]
                canary_spec, percent = entry.get("predictor") or {}, int(entry.get("trafficPercent", 0))
            elif "canaryTrafficPercent" in comp:
                if recorded and recorded["hash"] != spec_hash(current):
                    # Knative mode: the last rollout keeps 100-P %, the new spec gets P %
                    canary_spec, percent, current = current, int(comp["canaryTrafficPercent"]), recorded["spec"]
                elif not recorded:
                    self.plan.warnings.append(
                        f"{name}: canaryTrafficPercent with no earlier rollout here: the first revision gets 100% (as in KServe)"
                    )
            gen = self._rolled_out(key, current)
            stable = self._process(isvc, role, current, f"{name}-{role}-{gen:05d}")
            canary = None
            if canary_spec is not None:
                canary = self._process(isvc, role, canary_spec, f"{name}-{role}-{gen + 1:05d}")
            self.plan.routes.append(Route(name, role, port, stable, canary, percent if canary else 0))

    def revision(self, isvc: dict, role: str, comp: dict, revision: str) -> Process:
        """The process of a revision that arrives after :meth:`build` (a canary patched in), wired like the rest."""
        proc = self._process(isvc, role, comp, revision)
        self._localize(proc, self.milvus_uri)
        return proc

    def _rolled_out(self, key: str, spec: dict) -> int:
        """The generation of ``spec``: the recorded one, or the next one (recorded now)."""
        recorded = self.store.get(key)
        if recorded and recorded["hash"] == spec_hash(spec):
            return recorded["generation"]
        generation = recorded["generation"] + 1 if recorded else 1
        self.store.record(key, spec, generation)
        return generation

    def _process(self, isvc: dict, role: str, comp: dict, revision: str) -> Process:
        pod = component_pod(isvc, f"spec.{role}", comp, self.bundle)
        main = next((c for c in pod.containers if ".initContainers[" not in c.path), None)
        where = f"{ref(isvc)} spec.{role}"
        if main is None:
            raise ManifestError(f"{where}: no container to run")
        argv = list(main.spec.get("command") or []) + [str(a) for a in main.spec.get("args") or []]
        if not argv:
            raise ManifestError(f"{where}: no command: the image's entrypoint cannot run locally")
        return Process(
            isvc=isvc["metadata"]["name"],
            role=role,
            revision=revision,
            argv=_local_argv(argv),
            env=_resolve_env(main.spec, self.bundle, where, self.plan.warnings),
            http_port=self.ports(),
            grpc_port=self.ports(),
            ready_path=_ready_path(main.spec),
            gpu_requested=bool(gpu_resources(main.spec)),
        )

    # -- loopback rewiring -------------------------------------------------
    def _service_urls(self) -> list[tuple[re.Pattern, str]]:
        """Cluster addresses of each component -> its local ingress.

        ``http://<host>[.<ns>[.svc[.cluster.local]]][:port]`` becomes the local
        URL; a scheme-less ``<host>.<ns>.svc...[:port]`` (a predictor_host, say)
        becomes ``127.0.0.1:<port>``. Bare words are left alone, so a model
        named like its InferenceService keeps its name.
        """
        rules = []
        suffix = r"(?:\.[a-z0-9-]+)?(?:\.svc(?:\.cluster\.local)?)?(?::\d+)?(?![\w.-])"
        for route in self.plan.routes:
            hosts = [f"{route.isvc}-{route.role}"]
            if route is self.plan.entry(route.isvc):
                hosts.append(route.isvc)
            for host in hosts:
                h = re.escape(host)
                rules.append((re.compile(rf"https?://{h}{suffix}"), route.url))
                rules.append((re.compile(rf"(?<![\w./-]){h}\.[a-z0-9-]+\.svc(?:\.cluster\.local)?(?::\d+)?(?![\w.-])"),
                              f"127.0.0.1:{route.port}"))
        return rules

    def _rewrite(self, value: str) -> str:
        for pattern, url in self._rules:
            value = pattern.sub(url, value)
        return value

    def _localize(self, proc: Process, milvus_uri: str) -> None:
        env = {k: self._rewrite(v) for k, v in proc.env.items()}
        for key in list(env):
            if key.endswith("_MILVUS_TOKEN"):
                del env[key]
        env.update({f"RAGSERVE_{p}_MILVUS_URI": milvus_uri for p in ("RAG", "INGEST")})
        env.update({k: milvus_uri for k in env if k.endswith("_MILVUS_URI")})
        proc.env = env
        argv = [self._rewrite(a) for a in proc.argv]
        extra = [f"--http_port={proc.http_port}", f"--grpc_port={proc.grpc_port}"]
        if "ragserve" in argv[:3]:
            extra.append("--host=127.0.0.1")
        if proc.role == "transformer":
            predictor = self.plan.route(proc.isvc, "predictor")
            if predictor is not None:
                # gRPC goes straight to the stable predictor: the local ingress splits HTTP only
                grpc = any("grpc-v2" in v for v in [*argv, *env.values()])
                target = predictor.stable.grpc_port if grpc else predictor.port
                extra.append(f"--predictor_host=127.0.0.1:{target}")
        proc.argv = argv + extra
