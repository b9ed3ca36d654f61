"""``ragserve up``: run an overlay's InferenceServices and InferenceGraph as local processes.

Order: render the overlay, plan the processes (:mod:`.plan`), start the
local Milvus engine (unless a URI is given; :mod:`ragserve.pipelines.milvus_engines`), the predictors, ingest the sample corpus when
the collection is empty, then the transformers; each component is reached
through its local ingress (:mod:`.ingress`), the graph through KServe's router
semantics (:mod:`ragserve.graph`), revisions through the control endpoint
(:mod:`.control`) and what it does with a patch (:mod:`.controller`). Everything listens on 127.0.0.1. Ctrl-C (or ``ragserve
down``) stops every child; a child that dies is restarted with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Literal

import httpx
import uvicorn
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..manifests.problem import ManifestError
from ..manifests.render import render
from ..procs import ServerProcess
from .control import build_control_app, kubeconfig
from .controller import RevisionController
from .ingress import ComponentIngress, Revision
from .plan import Plan, Planner, PortAllocator, Process, RevisionStore
from .state import STATE_FILE
from .supervisor import Child, Supervisor, http_ready

logger = logging.getLogger("ragserve.up")

# the overlay's choice of local Milvus engine: a key of its ConfigMap ragserve-settings
OVERLAY_ENGINE_KEY = "RAGSERVE_LOCAL_MILVUS_ENGINE"


class UpSettings(BaseSettings):
    """Settings of ``ragserve up`` (env prefix ``RAGSERVE_UP_``)."""

    model_config = SettingsConfigDict(
        env_prefix="RAGSERVE_UP_", extra="forbid", use_attribute_docstrings=True, validate_default=True
    )

    overlay: str = "local"
    """Overlay of ``manifests_dir``/overlays to run."""

    manifests_dir: str = "inferenceservices"
    """The kustomize tree (base/, components/, overlays/)."""

    path: str = ""
    """A kustomization folder or YAML file to run instead of an overlay."""

    state_dir: str = ".ragserve"
    """Logs, Milvus data, revision records, the state file and the kubeconfig of the control endpoint."""

    base_port: int = Field(8080, ge=0, le=65000)
    """The graph listens here, the control endpoint and Milvus on the next two ports, each
    component from base+3 (embedder 8083, rag 8085 with the default), its processes from
    base+100; 0 picks free ports for everything."""

    milvus_uri: str = ""
    """Milvus to use; empty starts a local Milvus (``milvus_engine``) on loopback with data in the state dir."""

    milvus_engine: Literal["", "milvus-standalone", "milvus-lite"] = ""
    """Local Milvus to start: ``milvus-standalone`` (the Milvus server from PyPI ``milvus``) or ``milvus-lite``
    (``milvus-lite server``); empty takes the overlay's ``RAGSERVE_LOCAL_MILVUS_ENGINE`` (ConfigMap
    ``ragserve-settings``), else ``milvus-standalone``."""

    ingest: bool = True
    """Ingest ``samples`` when the collection is missing or empty."""

    samples: str = "pipelines/samples"
    """Documents ingested into an empty collection."""

    namespace: str = "default"
    """Namespace the control endpoint answers for."""

    ready_timeout_s: float = Field(900.0, gt=0)
    """Longest a component may take to become ready."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the runner (children log to the state dir)."""


class _Server(uvicorn.Server):
    # Several servers share one loop; the runner handles signals for all of them.
    @contextlib.contextmanager
    def capture_signals(self):
        yield


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


class LocalRunner:
    def __init__(self, settings: UpSettings):
        self.settings = settings
        self.state_dir = Path(settings.state_dir).resolve()
        self.supervisor = Supervisor(ready_timeout_s=settings.ready_timeout_s, on_restart=lambda _: self.write_state())
        # base: graph, control, Milvus; base+3..: one per component (the addresses in the
        # endpoint table); base+100..: the processes behind them
        base = settings.base_port
        self.ports = PortAllocator(base)
        self.route_ports = PortAllocator(base + 3 if base else 0)
        self.process_ports = PortAllocator(base + 100 if base else 0)
        self.store = RevisionStore(self.state_dir / "revisions.json")
        self.ingresses: dict[str, ComponentIngress] = {}
        self.children: dict[str, Child] = {}  # revision -> child
        self.servers: list[tuple[_Server, asyncio.Task]] = []
        self.endpoints: list[tuple[str, str, str]] = []
        self.ingest_env: dict[str, str] = {}
        self.plan: Plan | None = None
        self.objects: dict[str, dict] = {}  # isvc name -> object as patched through the control endpoint
        self.planner: Planner | None = None
        self.controller = RevisionController(self)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0))

    # -- planning ------------------------------------------------------------
    def source(self) -> Path:
        if self.settings.path:
            return Path(self.settings.path)
        return Path(self.settings.manifests_dir) / "overlays" / self.settings.overlay

    def _process_child(self, proc: Process) -> Child:
        def make() -> ServerProcess:
            return ServerProcess(
                proc.argv, ready_url=proc.url + proc.ready_path, env=proc.env,
                log_path=self.state_dir / "logs" / f"{proc.revision}.log", name=proc.revision,
            )

        return Child(proc.revision, make, http_ready(proc.url + proc.ready_path), info={"url": proc.url})

    def milvus_engine(self, objects: list[dict]) -> str:
        """The flag (or env), else the overlay's setting, else the default engine."""
        from ..pipelines.milvus_engines import DEFAULT_ENGINE, ENGINES

        if self.settings.milvus_engine:
            return self.settings.milvus_engine
        settings = next((o for o in objects if o.get("kind") == "ConfigMap"
                         and (o.get("metadata") or {}).get("name") == "ragserve-settings"), {})
        engine = (settings.get("data") or {}).get(OVERLAY_ENGINE_KEY) or DEFAULT_ENGINE
        if engine not in ENGINES:
            raise ManifestError(f"ConfigMap ragserve-settings: {OVERLAY_ENGINE_KEY}={engine!r} is not one of {', '.join(ENGINES)}")
        return engine

    def _milvus_child(self, engine: str, port: int) -> Child:
        from ..pipelines.milvus_engines import local_milvus

        # one data folder per engine: their files are not interchangeable
        folder = "milvus" if engine == "milvus-lite" else engine
        milvus = local_milvus(engine, self.state_dir / folder, port=port, log_path=self.state_dir / "logs" / "milvus.log")

        async def ready() -> bool:
            return await asyncio.to_thread(milvus.ready)

        return Child("milvus", milvus.make_process, ready, info={"url": milvus.uri, "engine": engine})

    # -- running ---------------------------------------------------------------
    async def _serve(self, name: str, app, port: int) -> None:
        server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                        lifespan="on" if name.startswith("graph") else "off"))
        task = asyncio.get_running_loop().create_task(server.serve(), name=name)
        self.servers.append((server, task))
        while not server.started:
            if task.done():
                task.result()  # raises the bind error
                raise OSError(f"{name}: server stopped before it started (port {port} in use?)")
            await asyncio.sleep(0.02)

    async def start_revision(self, proc: Process) -> None:
        child = self.supervisor.add(self._process_child(proc))
        self.children[proc.revision] = child
        seconds = await self.supervisor.start(child)
        logger.info("%-28s ready in %5.1fs  %s", proc.revision, seconds, proc.url)

    def stop_revision(self, revision: str) -> None:
        child = self.children.pop(revision, None)
        if child is not None:
            self.supervisor.remove(child)
        self.write_state()

    def _ingest_env(self, plan: Plan, milvus_uri: str) -> dict[str, str]:
        """What an ingestion into this graph runs with: the transformer's env, pointed at the local
        Milvus and embedder (recorded in the state file for a later ``ragserve ingest``)."""
        env = next((p.env for p in plan.processes() if p.role == "transformer"), None) or plan.processes()[0].env
        collection = env.get("RAGSERVE_INGEST_COLLECTION") or env.get("RAGSERVE_RAG_COLLECTION") or "ragserve_docs"
        return {**env, "RAGSERVE_INGEST_COLLECTION": collection, "RAGSERVE_INGEST_MILVUS_URI": milvus_uri}

    async def _ingest_if_empty(self, env: dict[str, str], milvus_uri: str) -> None:
        collection = env["RAGSERVE_INGEST_COLLECTION"]
        rows = await asyncio.to_thread(_row_count, milvus_uri, collection)
        if rows:
            logger.info("collection %s has %d chunks: not ingesting", collection, rows)
            return
        logger.info("collection %s is empty: ingesting %s", collection, self.settings.samples)
        argv = [sys.executable, "-m", "ragserve", "ingest", self.settings.samples, "--collection", collection]
        log = self.state_dir / "logs" / "ingest.log"
        with open(log, "ab") as out:
            proc = await asyncio.create_subprocess_exec(*argv, env={**os.environ, **env}, stdout=out, stderr=out)
            if await proc.wait() != 0:
                raise RuntimeError(f"ingestion failed (exit {proc.returncode}); see {log}")

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        objects = render(self.source())
        graph_port, control_port, milvus_port = self.ports(), self.ports(), self.ports()
        milvus_uri = self.settings.milvus_uri
        milvus = None
        # only transformers (and the ingestion that feeds them) talk to Milvus
        needs_milvus = any("transformer" in (o.get("spec") or {}) for o in objects if o.get("kind") == "InferenceService")
        if not milvus_uri and needs_milvus:
            milvus = self._milvus_child(self.milvus_engine(objects), milvus_port)
            milvus_uri = milvus.info["url"]
        self.planner = Planner(
            objects, ports=self.process_ports, route_ports=self.route_ports, store=self.store,
            namespace=self.settings.namespace,
        )
        plan = self.planner.build(milvus_uri, has_gpu())
        self.plan = plan
        for warning in plan.warnings:
            logger.warning("%s", warning)
        for name, obj in plan.isvcs.items():
            obj.setdefault("metadata", {}).update(namespace=self.settings.namespace, resourceVersion="1", generation=1)
            self.objects[name] = obj

        # ingresses first: they are what every component and the graph call
        for route in plan.routes:
            ingress = ComponentIngress(
                route.name, Revision(route.stable.revision, route.stable.url), client=self.client,
                canary=Revision(route.canary.revision, route.canary.url) if route.canary else None,
                canary_percent=route.canary_percent,
            )
            self.ingresses[route.name] = ingress
            await self._serve(f"ingress {route.name}", ingress.app, route.port)
        if milvus is not None:
            self.supervisor.add(milvus)
            await self.supervisor.start(milvus)
            self.endpoints.append(("milvus", milvus.info["engine"], milvus_uri))
        procs = plan.processes()
        for proc in [p for p in procs if p.role == "predictor"]:
            await self.start_revision(proc)
        if needs_milvus:
            self.ingest_env = self._ingest_env(plan, milvus_uri)
            if self.settings.ingest:
                await self._ingest_if_empty(self.ingest_env, milvus_uri)
        for proc in [p for p in procs if p.role != "predictor"]:
            await self.start_revision(proc)

        for name in plan.isvcs:
            entry = plan.entry(name)
            self.endpoints.append(("isvc", name, entry.url))
        for i, graph in enumerate(plan.graphs):
            port = graph_port if i == 0 else self.process_ports()
            await self._serve(f"graph {graph['metadata']['name']}", self._graph_app(graph), port)
            self.endpoints.insert(i, ("graph", graph["metadata"]["name"], f"http://127.0.0.1:{port}"))
        control = build_control_app(self.settings.namespace, self.controller.get, lambda: list(self.objects),
                                    self.controller.apply, self.controller.revision_stats)
        await self._serve("control", control, control_port)
        (self.state_dir / "kubeconfig").write_text(kubeconfig(f"http://127.0.0.1:{control_port}", self.settings.namespace))
        self.endpoints.append(("control", "kubeconfig", str(self.state_dir / "kubeconfig")))
        self.write_state()

    def _graph_app(self, graph: dict):
        from ..graph.app import GraphSettings, create_app
        from ..graph.resolver import ServiceAddress

        services = {}
        for name in self.plan.isvcs:
            entry = self.plan.entry(name)
            proc = entry.stable
            protocol = proc.env.get("PROTOCOL") or (
                ((self.plan.isvcs[name].get("spec") or {}).get("predictor") or {}).get("model", {}).get("protocolVersion")
            ) or "v1"
            services[name] = ServiceAddress(url=entry.url, model_name=name, protocol=protocol)
        settings = GraphSettings(graph_json=json.dumps(graph), services=services, propagate_headers=[
            "(?i)^x-request-id$", "(?i)^traceparent$", "(?i)^tracestate$", "(?i)^authorization$"])
        return create_app(settings, client=self.client)

    # -- state -------------------------------------------------------------------
    def write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "started": time.time(),
            "source": str(self.source()),
            "endpoints": [{"kind": k, "name": n, "url": u} for k, n, u in self.endpoints],
            "children": [{"name": c.name, "pid": c.pid, "restarts": c.restarts} for c in self.supervisor.children],
            # `ragserve ingest` without flags reads these (only the ingestion settings, no secrets)
            "ingest": {k: v for k, v in self.ingest_env.items() if k.startswith("RAGSERVE_INGEST_")},
        }
        (self.state_dir / STATE_FILE).write_text(json.dumps(state, indent=1))

    def table(self) -> str:
        width = max(len(n) for _, n, _ in self.endpoints)
        lines = [f"  {k:8} {n:{width}}  {u}" for k, n, u in self.endpoints]
        graph = next((u for k, _, u in self.endpoints if k == "graph"), None)
        rag = next((u for k, n, u in self.endpoints if k == "isvc" and n == "rag"), None)
        if graph:
            lines += ["", "ask through the graph:",
                      f"  curl -s {graph}/v2/models/rag/infer -H 'content-type: application/json' \\",
                      "    -d '{\"inputs\":[{\"name\":\"text_input\",\"datatype\":\"BYTES\",\"shape\":[1],"
                      "\"data\":[\"What is ragserve?\"]}]}'"]
        if rag:
            lines += ["stream from the rag InferenceService (the graph router cannot stream, kserve#2837):",
                      f"  OpenAI base_url={rag}/openai/v1  model=rag"]
        return "\n".join(lines)

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            print(f"ragserve up: {self.source()} is running\n{self.table()}\n(Ctrl-C or `ragserve down` stops it)",
                  flush=True)
            self.supervisor.watch()
            await stop.wait()
        finally:
            logger.info("stopping")
            self.supervisor.stop_all()
            for server, _ in self.servers:
                server.should_exit = True
            await asyncio.wait([task for _, task in self.servers], timeout=10) if self.servers else None
            await self.client.aclose()
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)


def _row_count(uri: str, collection: str) -> int:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        if not client.has_collection(collection):
            return 0
        return int(client.get_collection_stats(collection).get("row_count", 0))
    finally:
        client.close()
