"""What a sentence-transformers folder says about itself, read from its JSON files alone.

Both engines need the same answers -- is this the plain Transformer + Pooling
(+ Normalize) layout, which pooling, how many tokens per text, lowercase or
not -- and the ONNX engine must get them without importing torch,
transformers or sentence-transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
_POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
}
_UNLIMITED = 10**6  # tokenizers without a stated limit say 1e30


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def module_types(folder: Path) -> list[str]:
    modules = folder / "modules.json"
    if not modules.is_file():
        return []
    # sentence-transformers 5+ names the same classes under new module paths
    return [m["type"].replace(".sentence_transformer.modules.", ".models.") for m in json.loads(modules.read_text())]


def _pooling_mode(folder: Path, modules: list[dict]) -> str | None:
    path = folder / modules[1]["path"] / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    if isinstance(cfg.get("pooling_mode"), str):
        return cfg["pooling_mode"] if cfg["pooling_mode"] in _POOLING_MODES.values() else None
    enabled = [mode for key, mode in _POOLING_MODES.items() if cfg.get(key)]
    other = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v and k not in _POOLING_MODES]
    return enabled[0] if len(enabled) == 1 and not other else None


def plain_pooling(folder: Path) -> str | None:
    """The pooling mode when ``folder`` is Transformer (at its root) + Pooling (+ Normalize), else None.

    That layout is a transformer's last hidden state pooled: what both fast
    engines run. Anything else (Dense layers, custom modules) needs
    sentence-transformers itself.
    """
    types = module_types(folder)
    if types[:2] != [_TRANSFORMER, _POOLING] or not set(types[2:]) <= {_NORMALIZE}:
        return None
    modules = json.loads((folder / "modules.json").read_text())
    if modules[0]["path"] not in ("", "."):
        return None
    return _pooling_mode(folder, modules)


def lowercase(folder: Path) -> bool:
    """sentence-transformers' own ``do_lower_case`` (applied before the tokenizer's normalizer)."""
    return bool(_json(folder / "sentence_bert_config.json").get("do_lower_case", False))


def max_seq_length(folder: Path, override: int | None, tokenizer_limit: int | None = None) -> int:
    """Tokens per text: ``override``, else sentence-transformers' ``max_seq_length``, else the
    tokenizer's limit; never past the model's position embeddings."""
    if override:
        return int(override)
    limit = _json(folder / "sentence_bert_config.json").get("max_seq_length")
    if not limit:
        limit = tokenizer_limit or _json(folder / "tokenizer_config.json").get("model_max_length") or _UNLIMITED
    positions = _json(folder / "config.json").get("max_position_embeddings") or _UNLIMITED
    return int(min(limit, positions, _UNLIMITED))
