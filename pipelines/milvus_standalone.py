"""The Milvus standalone server from PyPI ``milvus`` (2.3.5) as a child process, without Docker.

The wheel carries Milvus' own binaries (LZMA-packed, ~250 MB unpacked); they
are unpacked once into ``~/.cache/ragserve/milvus-<version>`` and shared by
every data folder. We run the binary ourselves (``milvus run standalone``)
rather than through the package's Python launcher, so a stop or a SIGKILL
reaches Milvus itself, not a wrapper that would leave it orphaned.

Every port is ours: the proxy (clients) on ``port``, the health/metrics port
on ``port + 1`` when free, and the internal coordinators, etcd's client port
and -- through an embedded-etcd config file -- etcd's peer port, which Milvus
otherwise fixes at 2380 (one instance per machine). With it, tests and
``ragserve up`` can each run their own. Ports are chosen once and kept, so
``stop()`` then ``start()`` brings Milvus back at the same address with its
data (etcd metadata, segments, indexes) from ``data_dir``.

Milvus listens on every interface for the ports it owns (its listeners take
no address in 2.3); bind-address hardening is the host firewall's job here.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ragserve.procs import ServerProcess, free_port

from .local_milvus import LocalMilvus

_VERSION = "2.3.5"


def _binaries() -> Path:
    """The unpacked Milvus binaries (unpacked on first use; a lock keeps concurrent starts apart)."""
    import milvus

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ragserve" / f"milvus-{milvus.__version__}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        milvus._initialize_data_files(str(cache))  # md5-checked: a no-op once unpacked
    return cache / "bin"


class StandaloneMilvus(LocalMilvus):
    """``milvus run standalone`` on loopback, data in ``data_dir`` (same interface as :class:`LocalMilvus`)."""

    engine = "milvus-standalone"

    def __init__(self, data_dir, *, port=None, log_path=None):
        super().__init__(data_dir, port=port, log_path=log_path)
        self.data_dir = self.data_dir.resolve()
        self._ports: dict[str, int] | None = None
        self.metrics_port: int | None = None

    def _config(self) -> tuple[Path, dict[str, str]]:
        """Write ``configs/milvus.yaml`` (and the embedded etcd's) for this instance; its env."""
        from milvus import MilvusServerConfig

        config = MilvusServerConfig(data_dir=str(self.data_dir))
        if self._ports is None:
            ports = {key: free_port() for key in config.configurable_items if key.endswith("_port")}
            ports["proxy_port"] = self.port
            ports["etcd_peer_port"] = free_port()
            self._ports = ports
            self.metrics_port = free_port()
        config.resolve_storage()  # data, logs and configs under data_dir
        for key, port in self._ports.items():
            config.set(key, port)
        config.write_config()
        configs = self.data_dir / "configs"
        etcd_client, etcd_peer = self._ports["etcd_port"], self._ports["etcd_peer_port"]
        (configs / "etcd.yaml").write_text(
            "name: ragserve\n"
            f"data-dir: {self.data_dir / 'data' / 'etcd.data'}\n"
            f"listen-client-urls: http://127.0.0.1:{etcd_client}\n"
            f"advertise-client-urls: http://127.0.0.1:{etcd_client}\n"
            f"listen-peer-urls: http://127.0.0.1:{etcd_peer}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{etcd_peer}\n"
            f"initial-cluster: ragserve=http://127.0.0.1:{etcd_peer}\n"
        )
        milvus_yaml = configs / "milvus.yaml"
        text = milvus_yaml.read_text()
        embed = "  use:\n    embed: true"
        assert embed in text, "milvus config template changed: cannot point embedded etcd at its own ports"
        milvus_yaml.write_text(text.replace(embed, f"{embed}\n  config:\n    path: {configs / 'etcd.yaml'}", 1))
        bin_dir = _binaries()
        env = {
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.metrics_port),
            "MILVUS_RUN_DIR": str(self.data_dir / "run"),
            "MILVUSCONF": str(configs),
            "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(bin_dir), os.environ.get("LD_LIBRARY_PATH")])),
        }
        return bin_dir / "milvus", env

    def make_process(self) -> ServerProcess:
        exe, env = self._config()
        return ServerProcess(
            [str(exe), "run", "standalone"], env=env, ready_url=f"http://127.0.0.1:{self.metrics_port}/healthz",
            log_path=self.log_path, name=self.engine,
        )
