"""The serving encoders produce what sentence-transformers produces for the same folder."""

import json
import shutil

import numpy as np
import pytest

from ragserve.model_assets import PACKAGED_EMBEDDING, resolve_embedding_model
from ragserve.predictors.encoders import SentenceTransformersEncoder, TransformersEncoder, load_encoder

TEXTS = ["a short one", "a somewhat longer sentence about vector search in Milvus", "KServe"]


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    return resolve_embedding_model(PACKAGED_EMBEDDING)


@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
def test_transformers_encoder_matches_sentence_transformers(packaged, tmp_path, mode):
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "model"
    shutil.copytree(packaged, folder)
    cfg_path = folder / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in [k for k in cfg if k.startswith("pooling_mode")]:
        cfg[key] = False
    cfg[{"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}[mode]] = True
    cfg_path.write_text(json.dumps(cfg))

    enc = load_encoder(folder, "cpu")
    assert isinstance(enc, TransformersEncoder) and enc.pooling == mode
    reference = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, normalize_embeddings=True)
    got = enc.encode(TEXTS)
    assert _cos(got, reference).min() > 0.9999


def test_other_layouts_load_through_sentence_transformers(packaged, tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    model = SentenceTransformer(packaged, device="cpu")
    model.append(Dense(in_features=384, out_features=64))
    model.save(str(tmp_path / "dense"))

    enc = load_encoder(tmp_path / "dense", "cpu")
    assert isinstance(enc, SentenceTransformersEncoder)
    got = enc.encode(TEXTS)
    assert got.shape == (3, 64)
    reference = SentenceTransformer(str(tmp_path / "dense"), device="cpu").encode(TEXTS)
    assert _cos(got, reference).min() > 0.9999
