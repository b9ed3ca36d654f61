"""The serving encoders produce what sentence-transformers produces for the same folder."""

import json
import shutil

import numpy as np
import pytest

from ragserve.model_assets import PACKAGED_EMBEDDING, ModelNotRunnable, resolve_embedding_model
from ragserve.predictors import onnx_encoder
from ragserve.predictors.encoders import SentenceTransformersEncoder, TransformersEncoder, load_encoder, resolve_engine
from ragserve.predictors.onnx_encoder import OnnxEncoder

TEXTS = ["a short one", "a somewhat longer sentence about vector search in Milvus", "KServe"]
# A fixed set for ONNX vs torch: short, long (truncated at 256 tokens), non-Latin, punctuation, mixed case.
FIXED = [
    "KServe serves models on Kubernetes.",
    "How often are the Milvus credentials rotated?",
    "a",
    "短い日本語の文も埋め込めます。",
    "Ünïcödé, emoji 🚀 and URLs: https://kserve.github.io/website/?q=1#x",
    "The canary revision first receives 10 percent of the traffic. " * 40,
    "UPPER case and lower case should embed the same way for an uncased model",
]
_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def packaged():
    return resolve_embedding_model(PACKAGED_EMBEDDING)


@pytest.fixture(scope="module")
def onnx_packaged(packaged):
    """The packaged model on ONNX Runtime (exported into the cache the first time)."""
    return load_encoder(packaged, "cpu", engine="onnx", intra_op_threads=1, inter_op_threads=1)


def _with_pooling(packaged, tmp_path, mode, shipped_onnx=None):
    folder = tmp_path / "model"
    shutil.copytree(packaged, folder)
    cfg_path = folder / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in [k for k in cfg if k.startswith("pooling_mode")]:
        cfg[key] = False
    cfg[_POOLING_KEYS[mode]] = True
    cfg_path.write_text(json.dumps(cfg))
    if shipped_onnx is not None:  # as hub folders ship it: onnx/model.onnx beside the weights
        (folder / "onnx").mkdir()
        (folder / "onnx" / "model.onnx").symlink_to(shipped_onnx)
    return folder


@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
def test_transformers_encoder_matches_sentence_transformers(packaged, tmp_path, mode):
    from sentence_transformers import SentenceTransformer

    folder = _with_pooling(packaged, tmp_path, mode)
    enc = load_encoder(folder, "cpu", engine="torch")
    assert isinstance(enc, TransformersEncoder) and enc.pooling == mode
    reference = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, normalize_embeddings=True)
    got = enc.encode(TEXTS)
    assert _cos(got, reference).min() > 0.9999


def test_onnx_matches_torch_on_a_fixed_set(packaged, onnx_packaged):
    from sentence_transformers import SentenceTransformer

    assert isinstance(onnx_packaged, OnnxEncoder) and onnx_packaged.quantize is None
    reference = SentenceTransformer(packaged, device="cpu").encode(FIXED)
    torch_enc = load_encoder(packaged, "cpu", engine="torch")
    got = onnx_packaged.encode(FIXED)
    assert got.dtype == np.float32 and got.shape == (len(FIXED), 384)
    assert _cos(got, reference).min() > 0.9999
    assert _cos(got, torch_enc.encode(FIXED)).min() > 0.9999
    # unnormalized, like the torch encoders: normalization is the predictor's per-request choice
    assert np.allclose(np.linalg.norm(got, axis=1), np.linalg.norm(torch_enc.encode(FIXED), axis=1), rtol=1e-3)
    # one text at a time (no padding) equals the padded batch
    alone = np.stack([onnx_packaged.encode([t])[0] for t in FIXED])
    assert _cos(alone, got).min() > 0.9999


def test_onnx_truncates_like_torch(packaged, onnx_packaged):
    long = " ".join(f"word{i}" for i in range(600))
    for limit in (None, 16):
        torch_enc = load_encoder(packaged, "cpu", limit, engine="torch")
        onnx_enc = onnx_packaged if limit is None else load_encoder(packaged, "cpu", limit, engine="onnx")
        assert onnx_enc.max_seq_length == torch_enc.max_seq_length == (limit or 256)
        assert _cos(onnx_enc.encode([long, "short"]), torch_enc.encode([long, "short"])).min() > 0.9999


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_onnx_pooling_modes_and_a_shipped_model_onnx(packaged, onnx_packaged, tmp_path, mode):
    from sentence_transformers import SentenceTransformer

    folder = _with_pooling(packaged, tmp_path, mode, shipped_onnx=onnx_packaged.path)
    enc = load_encoder(folder, "cpu", engine="onnx")
    assert enc.path == folder / "onnx" / "model.onnx"  # used as is, nothing exported
    assert enc.pooling == mode
    reference = SentenceTransformer(str(folder), device="cpu").encode(FIXED)
    assert _cos(enc.encode(FIXED), reference).min() > 0.9999


def test_engine_choice(packaged, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    assert resolve_engine("auto", "cpu", packaged) == ("onnx", "cpu")
    assert resolve_engine("auto", "cuda", packaged) == ("torch", "cuda")
    assert resolve_engine("torch", "cpu", packaged) == ("torch", "cpu")
    with pytest.raises(ModelNotRunnable, match="runs on CPU"):
        resolve_engine("onnx", "cuda", packaged)
    model = SentenceTransformer(packaged, device="cpu")
    model.append(Dense(in_features=384, out_features=64))
    model.save(str(tmp_path / "dense"))
    assert resolve_engine("auto", "cpu", tmp_path / "dense") == ("torch", "cpu")  # a layout ONNX does not run
    with pytest.raises(ModelNotRunnable, match="Transformer \\+ Pooling"):
        resolve_engine("onnx", "cpu", tmp_path / "dense")
    with pytest.raises(ModelNotRunnable, match="needs engine 'onnx'"):
        load_encoder(packaged, "cpu", engine="torch", quantize="int8")


def test_other_layouts_load_through_sentence_transformers(packaged, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    model = SentenceTransformer(packaged, device="cpu")
    model.append(Dense(in_features=384, out_features=64))
    model.save(str(tmp_path / "dense"))

    enc = load_encoder(tmp_path / "dense", "cpu", engine="auto")
    assert isinstance(enc, SentenceTransformersEncoder)
    got = enc.encode(TEXTS)
    assert got.shape == (3, 64)
    reference = SentenceTransformer(str(tmp_path / "dense"), device="cpu").encode(TEXTS)
    assert _cos(got, reference).min() > 0.9999


def test_int8_is_kept_only_close_to_fp32(packaged, onnx_packaged, tmp_path, monkeypatch):
    # a folder shipping the fp32 file, and a private cache: the INT8 copy is built here
    folder = _with_pooling(packaged, tmp_path, "mean", shipped_onnx=onnx_packaged.path)
    monkeypatch.setenv("RAGSERVE_CACHE_DIR", str(tmp_path / "cache"))
    int8 = load_encoder(folder, "cpu", engine="onnx", quantize="int8")
    assert int8.quantize == "int8" and int8.path != onnx_packaged.path
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8.path), load_external_data=False).graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger"}, ops  # INT8 weights, really
    recorded = json.loads((int8.path.parent / "quantization.json").read_text())["min_cosine_to_fp32"]
    assert recorded >= onnx_encoder.QUANTIZE_MIN_COSINE
    assert _cos(int8.encode(FIXED), onnx_packaged.encode(FIXED)).min() >= 0.99

    # a stricter bar rejects the same quantization, and nothing half-built stays in the cache
    monkeypatch.setenv("RAGSERVE_CACHE_DIR", str(tmp_path / "strict"))
    monkeypatch.setattr(onnx_encoder, "QUANTIZE_MIN_COSINE", 0.99999)
    with pytest.raises(ModelNotRunnable, match="rejected: cosine to fp32 down to"):
        load_encoder(folder, "cpu", engine="onnx", quantize="int8")
    assert not list((tmp_path / "strict" / "models").glob("*int8*/model.onnx"))
