"""Shared fixtures: real ragserve servers on free loopback ports.

The cores are shared: every model runs with one torch thread.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from ragserve.procs import ServerProcess, free_port  # noqa: E402

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


def start_server(component: str, model: str, tmp_dir: Path, *options: str, grpc: bool = True) -> Served:
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


@pytest.fixture(scope="session")
def generation_server(tmp_path_factory):
    """The generation predictor on the tiny random Llama (plumbing, not answers)."""
    served = start_server(
        "generation", "generator", tmp_path_factory.mktemp("logs"), "--model", "tiny-random-llama", "--torch-threads", "1"
    )
    yield served
    served.process.stop()


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
