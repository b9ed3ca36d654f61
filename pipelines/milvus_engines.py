"""Which local Milvus runs: the engines ``ragserve up``, the tests and the benchmarks choose from.

- ``milvus-standalone`` (:mod:`.milvus_standalone`, the default): the real
  Milvus server from PyPI ``milvus``; HNSW search at 100k chunks in single-digit
  milliseconds; starts in seconds; ~0.6 GB resident with 100k chunks loaded.
- ``milvus-lite`` (:mod:`.local_milvus`): ``milvus-lite server`` (Milvus Lite
  3.x, a Python engine): light, but each search does per-row work (~160 ms at
  100k chunks); fine for a few thousand chunks.

Figures and when to use which: README, "Choosing a local Milvus".
"""

from __future__ import annotations

from pathlib import Path

from .local_milvus import LocalMilvus

ENGINES = ("milvus-standalone", "milvus-lite")
DEFAULT_ENGINE = "milvus-standalone"


def local_milvus(engine: str, data_dir: str | Path, *, port: int | None = None,
                 log_path: str | Path | None = None) -> LocalMilvus:
    """The local Milvus ``engine`` (one of :data:`ENGINES`), not started."""
    if engine == "milvus-lite":
        return LocalMilvus(data_dir, port=port, log_path=log_path)
    if engine == "milvus-standalone":
        from .milvus_standalone import StandaloneMilvus

        return StandaloneMilvus(data_dir, port=port, log_path=log_path)
    raise ValueError(f"unknown Milvus engine {engine!r}; choose one of {', '.join(ENGINES)}")
