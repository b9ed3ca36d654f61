"""The ONNX Runtime encoder: a sentence-transformers folder without torch or transformers.

The transformer runs in ONNX Runtime (exported once into the cache, or the
folder's own ``model.onnx``); the text goes through the folder's fast tokenizer
with the Rust ``tokenizers`` package directly; pooling is NumPy. Same
semantics as :class:`~ragserve.predictors.encoders.TransformersEncoder`:
sentence-transformers' lowercasing, truncation to ``max_seq_length`` (longest
first), padding to the longest text of the pass, mean/cls/max/mean-sqrt-len
pooling, unnormalized output.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ragserve.model_assets import ModelFilesNotFound, ModelNotRunnable, onnx_embedding_model, quantized_onnx

from . import st_layout

logger = logging.getLogger("ragserve.embedding")

QUANTIZE_MIN_COSINE = 0.99
"""An INT8 model is kept only if every probe vector is this close to fp32's."""

_QUANTIZE_PROBE = [
    "How often are the Milvus credentials rotated?",
    "KServe serves models on Kubernetes; Knative scales them to zero.",
    "a",
    "The canary revision first receives 10 percent of the traffic for 30 minutes before promotion.",
    "短い日本語の文も埋め込めます。",
    "Chunks overlap by 24 tokens so that a sentence cut in two is still found by retrieval " * 6,
]


def load_tokenizer(folder: Path, max_seq_length: int):
    """The folder's ``tokenizer.json`` set to truncate at ``max_seq_length`` and pad to the longest text."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelFilesNotFound(f"{folder}: the ONNX engine needs a fast tokenizer (tokenizer.json)")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_seq_length, strategy="longest_first")
    # the file may pad to a fixed length (MiniLM's pads to 128); a pass pads to its longest text
    padding = tokenizer.padding or {}
    cfg = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").is_file() else {}
    pad_token = padding.get("pad_token") or cfg.get("pad_token") or "[PAD]"
    if isinstance(pad_token, dict):  # an AddedToken written out
        pad_token = pad_token.get("content", "[PAD]")
    pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token))
    if pad_id is None:
        raise ModelFilesNotFound(f"{folder}: tokenizer has no padding token ({pad_token!r} is not in its vocabulary)")
    tokenizer.enable_padding(
        pad_id=pad_id, pad_token=pad_token, pad_type_id=padding.get("pad_type_id", 0),
        direction=cfg.get("padding_side", padding.get("direction", "right")),
    )
    return tokenizer


def _session(path: Path, intra_op_threads: int, inter_op_threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings from the graph optimizer are not ours to act on
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


class OnnxEncoder:
    """Transformer + Pooling on ONNX Runtime (CPU)."""

    engine = "onnx"
    device = "cpu"

    def __init__(
        self,
        folder: Path,
        max_seq_length: int | None = None,
        *,
        quantize: str | None = None,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ):
        self.folder = folder
        self.pooling = st_layout.plain_pooling(folder)
        if self.pooling is None:
            raise ModelNotRunnable(f"{folder}: the ONNX engine runs Transformer + Pooling (+ Normalize) folders")
        self.lowercase = st_layout.lowercase(folder)
        self.max_seq_length = st_layout.max_seq_length(folder, max_seq_length)
        self.backend_tokenizer = load_tokenizer(folder, self.max_seq_length)
        self._threads = (intra_op_threads, inter_op_threads)
        if quantize not in (None, "int8"):
            raise ModelNotRunnable(f"quantize={quantize!r} is not supported (only 'int8')")
        self.quantize = quantize
        self.fp32_path = onnx_embedding_model(folder)
        self.path = quantized_onnx(self.fp32_path, self._accept_quantized) if quantize else self.fp32_path
        self.session = _session(self.path, *self._threads)
        logger.info("ONNX Runtime encoder: %s (%s pooling, %s)", self.path, self.pooling, quantize or "fp32")

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._encode(self.session, texts)

    def _encode(self, session, texts: list[str]) -> np.ndarray:
        inputs = {i.name for i in session.get_inputs()}
        if not inputs <= {"input_ids", "attention_mask", "token_type_ids"}:
            raise ModelNotRunnable(f"{self.path}: unexpected ONNX inputs {sorted(inputs)}")
        if self.lowercase:
            texts = [t.lower() for t in texts]
        encodings = self.backend_tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        hidden = session.run(None, {k: v for k, v in feed.items() if k in inputs})[0]
        return self._pool(hidden.astype(np.float32, copy=False), mask)

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.pooling == "cls":
            return np.ascontiguousarray(hidden[:, 0])
        weights = mask[:, :, None].astype(hidden.dtype)
        if self.pooling == "max":
            return np.where(weights > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1)
        summed = np.einsum("bsh,bs->bh", hidden, weights[:, :, 0])
        counts = np.maximum(weights.sum(axis=1), 1e-9)
        return summed / (np.sqrt(counts) if self.pooling == "mean_sqrt_len_tokens" else counts)

    def _accept_quantized(self, candidate: Path) -> None:
        """Keep an INT8 model only if its vectors stay within QUANTIZE_MIN_COSINE of fp32's."""
        fp32 = self.encode_with(self.fp32_path, _QUANTIZE_PROBE)
        int8 = self.encode_with(candidate, _QUANTIZE_PROBE)
        worst = float(_cosine(fp32, int8).min())
        if worst < QUANTIZE_MIN_COSINE:
            raise ModelNotRunnable(
                f"INT8 quantization of {self.folder} rejected: cosine to fp32 down to {worst:.4f} "
                f"(< {QUANTIZE_MIN_COSINE}); serve it without --quantize"
            )
        (candidate.parent / "quantization.json").write_text(json.dumps({"min_cosine_to_fp32": worst}))
        logger.info("INT8 model accepted: min cosine to fp32 %.4f on %d probe texts", worst, len(_QUANTIZE_PROBE))

    def encode_with(self, path: Path, texts: list[str]) -> np.ndarray:
        """Encode ``texts`` with another ONNX file of the same model (the INT8 check)."""
        return self._encode(_session(path, *self._threads), texts)
