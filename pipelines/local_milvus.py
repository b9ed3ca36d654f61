"""``milvus-lite server`` as a child process, and the interface every local Milvus engine shares.

Milvus Lite opened by path lives inside one process (one process per data
folder); run as a server, the ingester and the transformer share it through
``uri``. Engines (:mod:`.milvus_engines`) share one interface: ``uri``,
``make_process()``, ``ready()``, ``start()``/``stop()``; ``stop()`` then
``start()`` keeps the port and the data, so Milvus can be taken down and
brought back.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from ragserve.procs import ServerProcess, free_port

class LocalMilvus:
    """``milvus-lite server`` on loopback, data in ``data_dir``."""

    engine = "milvus-lite"

    def __init__(self, data_dir: str | Path, *, port: int | None = None, log_path: str | Path | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else None
        self.process: ServerProcess | None = None

    def make_process(self) -> ServerProcess:
        """A fresh, not yet started, process of this engine."""
        exe = shutil.which("milvus-lite") or str(Path(sys.executable).parent / "milvus-lite")
        argv = [exe, "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)]
        return ServerProcess(argv, ready_url=self.uri, log_path=self.log_path, name=self.engine)

    def ready(self) -> bool:
        """Whether a client can list collections now (both engines speak gRPC on ``port``)."""
        from pymilvus import MilvusClient

        try:
            client = MilvusClient(uri=self.uri, timeout=2)
            try:
                client.list_collections()
            finally:
                client.close()
            return True
        except Exception:
            return False

    def start(self, timeout: float = 120) -> LocalMilvus:
        self.process = self.make_process().start()
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not self.process.alive:
                raise RuntimeError(f"{self.engine} exited with {self.process.proc.returncode}{self.process.log_tail()}")
            if time.monotonic() > deadline:
                self.process.stop()
                raise TimeoutError(f"{self.engine} not ready after {timeout:.0f}s{self.process.log_tail()}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> LocalMilvus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

