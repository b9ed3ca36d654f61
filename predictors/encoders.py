"""Text encoders the embedding predictor runs, and the choice of engine.

Three encoders, one contract (unnormalized float32 vectors; normalization is a
per-request choice made after the shared forward pass):

- :class:`~ragserve.predictors.onnx_encoder.OnnxEncoder` -- ONNX Runtime and
  the Rust ``tokenizers``; the default on CPU. It never imports torch or
  transformers, which are most of a torch server's cold start.
- :class:`TransformersEncoder` -- the same Transformer + Pooling layout run
  with Hugging Face ``transformers`` (torch; the engine on CUDA). Importing
  sentence-transformers would pull in scikit-learn and SciPy for utilities a
  server never calls.
- :class:`SentenceTransformersEncoder` -- any other layout (Dense layers,
  custom modules, unusual pooling) through sentence-transformers itself, so
  every folder it accepts still works.
"""

from __future__ import annotations

import copy
import glob
import importlib.util
import logging
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from ragserve.model_assets import ModelNotRunnable

from . import st_layout

logger = logging.getLogger("ragserve.embedding")

Engine = Literal["auto", "torch", "onnx"]


class Encoder(Protocol):
    engine: str
    device: str
    max_seq_length: int
    backend_tokenizer: object
    """The model's Rust ``tokenizers.Tokenizer`` (callers copy it to count tokens)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unnormalized float32 vectors ``[len(texts), dim]``."""


def counting_tokenizer(encoder: Encoder):
    """A private copy of the encoder's Rust tokenizer that counts every token (no padding, no
    truncation). A fast tokenizer is not thread-safe -- each call resets its padding and
    truncation state -- and the forward pass tokenizes on its own thread."""
    if encoder.backend_tokenizer is None:
        return None
    tokenizer = copy.deepcopy(encoder.backend_tokenizer)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _set_torch_threads(torch, intra_op: int, inter_op: int) -> None:
    if intra_op:
        torch.set_num_threads(intra_op)
    if inter_op:
        try:
            torch.set_num_interop_threads(inter_op)
        except RuntimeError:  # only settable before the first inter-op work; keep what is set
            pass


class TransformersEncoder:
    """Transformer + Pooling run with ``transformers``; matches sentence-transformers' output."""

    engine = "torch"

    def __init__(self, folder: Path, device: str, pooling: str, max_seq_length: int | None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.device = device
        self.pooling = pooling
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.backend_tokenizer = self.tokenizer.backend_tokenizer
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.lowercase = st_layout.lowercase(folder)
        self.max_seq_length = st_layout.max_seq_length(folder, max_seq_length, self.tokenizer.model_max_length)

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

    engine = "torch"

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
        self.device = device
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.backend_tokenizer = getattr(model.tokenizer, "backend_tokenizer", None)
        self.max_seq_length = int(model.max_seq_length)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=False, show_progress_bar=False
        )


def _cuda_visible() -> bool:
    # Asking torch would import it (over a second of cold start) on every CPU
    # host; without NVIDIA device nodes there is no CUDA to find.
    if not (os.path.exists("/dev/nvidiactl") or glob.glob("/dev/nvidia[0-9]*")):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_engine(engine: Engine, device: str, folder: str | Path) -> tuple[str, str]:
    """``(engine, device)`` to run ``folder`` with: ``auto`` is ONNX Runtime on CPU when
    ``onnxruntime`` is installed and the folder has the plain layout, torch otherwise."""
    folder = Path(folder)
    if device == "auto" and engine != "onnx":
        device = "cuda" if _cuda_visible() else "cpu"
    elif device == "auto":
        device = "cpu"
    if engine == "onnx":
        if device != "cpu":
            raise ModelNotRunnable(f"engine 'onnx' runs on CPU, not {device}: use engine 'torch' (or 'auto') there")
        if importlib.util.find_spec("onnxruntime") is None:
            raise ModelNotRunnable("engine 'onnx' needs the package 'onnxruntime' (pip install onnxruntime)")
        if st_layout.plain_pooling(folder) is None:
            raise ModelNotRunnable(
                f"{folder}: engine 'onnx' runs Transformer + Pooling (+ Normalize) folders; "
                f"this one is {st_layout.module_types(folder) or 'not a sentence-transformers folder'}: use engine 'torch'"
            )
        return "onnx", device
    if engine == "auto" and device == "cpu" and importlib.util.find_spec("onnxruntime") is not None:
        if st_layout.plain_pooling(folder) is not None:
            return "onnx", device
    return "torch", device


def load_encoder(
    folder: str | Path,
    device: str = "auto",
    max_seq_length: int | None = None,
    *,
    engine: Engine = "torch",
    quantize: str | None = None,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
) -> Encoder:
    """Load ``folder`` with the engine :func:`resolve_engine` picks (thread counts: 0 = the engine's default)."""
    folder = Path(folder)
    engine, device = resolve_engine(engine, device, folder)
    if quantize and engine != "onnx":
        raise ModelNotRunnable(f"quantize={quantize!r} needs engine 'onnx' (this model runs on {engine}, {device})")
    if engine == "onnx":
        from .onnx_encoder import OnnxEncoder

        return OnnxEncoder(
            folder, max_seq_length, quantize=quantize, intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads
        )
    import torch

    _set_torch_threads(torch, intra_op_threads, inter_op_threads)
    pooling = st_layout.plain_pooling(folder)
    if pooling is not None:
        logger.info("loading %s with transformers on %s (%s pooling)", folder, device, pooling)
        return TransformersEncoder(folder, device, pooling, max_seq_length)
    logger.info("loading %s with sentence-transformers on %s (layout %s)", folder, device, st_layout.module_types(folder) or "plain")
    return SentenceTransformersEncoder(folder, device, max_seq_length)
