"""Text encoders the embedding predictor runs: a sentence-transformers folder, loaded for serving.

The common layout -- Transformer, then Pooling, then optionally Normalize --
is run with Hugging Face ``transformers`` directly: importing
sentence-transformers pulls in scikit-learn and SciPy (about 2 s of a 5 s cold
start on two cores) for utilities a server never calls. Any other layout
(Dense layers, custom modules, unusual pooling) loads through
sentence-transformers itself, so every folder it accepts still works.

Both encoders return *unnormalized* vectors; normalization is a per-request
choice made after the shared forward pass.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger("ragserve.embedding")

_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
_POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
}


class Encoder(Protocol):
    tokenizer: object
    max_seq_length: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unnormalized float32 vectors ``[len(texts), dim]``."""


def _module_types(folder: Path) -> list[str]:
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


class TransformersEncoder:
    """Transformer + Pooling run with ``transformers``; matches sentence-transformers' output."""

    def __init__(self, folder: Path, device: str, pooling: str, max_seq_length: int | None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.device = device
        self.pooling = pooling
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        bert_cfg = folder / "sentence_bert_config.json"
        cfg = json.loads(bert_cfg.read_text()) if bert_cfg.is_file() else {}
        self.lowercase = bool(cfg.get("do_lower_case", False))
        limit = cfg.get("max_seq_length") or self.tokenizer.model_max_length
        self.max_seq_length = int(max_seq_length or min(limit, self.model.config.max_position_embeddings))

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        if self.lowercase:
            texts = [t.lower() for t in texts]
        batch = self.tokenizer(
            texts, padding=True, truncation="longest_first", max_length=self.max_seq_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            elif self.pooling == "max":
                pooled = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
            else:
                summed = (hidden * mask).sum(dim=1)
                counts = mask.sum(dim=1).clamp(min=1e-9)
                pooled = summed / (counts.sqrt() if self.pooling == "mean_sqrt_len_tokens" else counts)
        return pooled.float().cpu().numpy()


class SentenceTransformersEncoder:
    """Any sentence-transformers folder, with a trailing Normalize removed."""

    def __init__(self, folder: Path, device: str, max_seq_length: int | None):
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.models import Normalize

        model = SentenceTransformer(str(folder), device=device)
        # Only a final Normalize is the output's normalization; one between
        # layers (before a Dense, say) is part of the model.
        while len(model) and isinstance(model[-1], Normalize):
            del model._modules[list(model._modules)[-1]]
        if max_seq_length:
            model.max_seq_length = max_seq_length
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.max_seq_length = int(model.max_seq_length)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=False, show_progress_bar=False
        )


def load_encoder(folder: str | Path, device: str, max_seq_length: int | None = None) -> Encoder:
    folder = Path(folder)
    types = _module_types(folder)
    if types[:2] == [_TRANSFORMER, _POOLING] and set(types[2:]) <= {_NORMALIZE}:
        modules = json.loads((folder / "modules.json").read_text())
        pooling = _pooling_mode(folder, modules)
        if pooling is not None and modules[0]["path"] in ("", "."):
            logger.info("loading %s with transformers (%s pooling)", folder, pooling)
            return TransformersEncoder(folder, device, pooling, max_seq_length)
    logger.info("loading %s with sentence-transformers (layout %s)", folder, types or "plain")
    return SentenceTransformersEncoder(folder, device, max_seq_length)
