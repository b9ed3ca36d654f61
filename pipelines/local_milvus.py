"""``milvus-lite server`` as a child process, for local stacks, benchmarks and tests.

Milvus Lite opened by path lives inside one process (one process per data
folder). When the ingester and the transformer must share a collection, run
it as a server and give both ``LocalMilvus.uri``. ``stop()`` and ``start()``
keep the port and the data, so Milvus can be taken down and brought back.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from ragserve.procs import ServerProcess, free_port


class LocalMilvus:
    def __init__(self, data_dir: str | Path, *, port: int | None = None, log_path: str | Path | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else None
        self.process: ServerProcess | None = None

    def argv(self) -> list[str]:
        exe = shutil.which("milvus-lite") or str(Path(sys.executable).parent / "milvus-lite")
        return [exe, "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)]

    def start(self, timeout: float = 60) -> LocalMilvus:
        self.process = ServerProcess(self.argv(), ready_url=self.uri, log_path=self.log_path, name="milvus-lite").start()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        # A gRPC server: ready when a client can list collections.
        from pymilvus import MilvusClient

        deadline = time.monotonic() + timeout
        while True:
            if not self.process.alive:
                raise RuntimeError(f"milvus-lite exited with {self.process.proc.returncode}")
            try:
                client = MilvusClient(uri=self.uri, timeout=2)
                client.list_collections()
                client.close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> LocalMilvus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
