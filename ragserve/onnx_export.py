"""Export a sentence-transformers folder's transformer to ONNX (its last hidden state).

Run as ``python -m ragserve.onnx_export FOLDER TARGET_DIR``:
:func:`ragserve.model_assets.onnx_embedding_model` starts it once per model,
in a child process, because the export needs torch and transformers and the
ONNX serving path must not import them. Pooling stays outside the graph (the
encoder pools in NumPy), so one export serves every pooling mode.

The export uses ``torch.onnx.export(dynamo=True)``, torch's maintained
exporter (the TorchScript one is deprecated), with batch and sequence length
dynamic. Before the file is kept its output is compared with torch's on a few
texts of different lengths.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np

_PROBE = [
    "KServe serves models on Kubernetes.",
    "a",
    "Milvus stores the vectors that retrieval searches, and the transformer builds prompts from them.",
]
_TWO_GB = 2 * 1024**3


def export(folder: Path, target: Path) -> Path:
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
             if n in accepted and n in tokenizer.model_input_names]

    class LastHiddenState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.inner(**{n: given[n] for n in names}).last_hidden_state

    sample = tokenizer(_PROBE[:2], padding=True, return_tensors="pt")  # batch 2, padded: nothing specialized to 1
    args = {n: sample[n] for n in names}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    target.mkdir(parents=True, exist_ok=True)
    out = target / "model.onnx"
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > _TWO_GB // 2
    torch.onnx.export(
        LastHiddenState(model), (), str(out), kwargs=args, dynamo=True, external_data=big,
        input_names=names, output_names=["last_hidden_state"],
        dynamic_shapes={n: {0: batch, 1: seq} for n in names},
    )

    probe = tokenizer(_PROBE, padding=True, return_tensors="pt")
    with torch.inference_mode():
        want = model(**{n: probe[n] for n in names}).last_hidden_state.numpy()
    feed = {n: probe[n].numpy() for n in names}
    mask = probe["attention_mask"].numpy().astype(bool)

    def error(path: Path) -> float:
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        return float(np.abs(got - want)[mask].max())

    fused = target / "fused.onnx.tmp"
    try:
        if not big:  # a graph with external weights would need its data file moved too
            _fuse_for_ort(out, fused)
            if error(fused) <= 1e-3:
                fused.replace(out)
    except Exception as exc:  # an architecture the fusions do not know: the plain graph still runs
        print(f"ONNX Runtime fusions skipped: {exc}", file=sys.stderr)
    finally:
        fused.unlink(missing_ok=True)
    worst = error(out)
    if worst > 1e-3:
        raise RuntimeError(f"the ONNX export differs from torch by up to {worst:.2g} on real tokens")
    return out


def _fuse_for_ort(source: Path, target: Path) -> None:
    """ONNX Runtime's transformer fusions (attention, skip layer norm, bias GELU) for a
    dynamo-exported graph: onnxscript's rewriter, the maintained successor of
    ``onnxruntime.transformers.optimizer`` (which matches TorchScript exports' patterns).
    Measured on MiniLM with one thread: one text ~1.3x faster, batches of 32 up to ~1.1x."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model, _counts = optimize_for_ort(ir.load(str(source)))
    ir.save(model, str(target))

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m ragserve.onnx_export FOLDER TARGET_DIR")
    print(export(Path(sys.argv[1]), Path(sys.argv[2])))
