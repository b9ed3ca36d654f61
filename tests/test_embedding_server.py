"""The embedding predictor as users meet it: a real server, official clients."""

import asyncio
import base64
import json
import re

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import run_client

TEXTS = [
    "KServe serves models on Kubernetes.",
    "Milvus stores the vectors that retrieval searches.",
    "Adaptive batching merges concurrent requests into one forward pass.",
    "短い日本語の文も埋め込めます。",
]


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def expected(reference_embedder):
    return reference_embedder.encode(TEXTS, normalize_embeddings=True)


def test_tritonclient_http_health_metadata_and_infer(embedding_server, expected):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{embedding_server.http_port}")
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("embedder")
    md = client.get_model_metadata("embedder")
    assert md["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert md["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]

    for binary in (True, False):
        inp = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_), binary_data=binary)
        out = httpclient.InferRequestedOutput("embedding", binary_data=binary)
        result = client.infer("embedder", [inp], outputs=[out])
        got = result.as_numpy("embedding")
        assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
        assert cosine(got, expected).min() > 0.9999


def test_tritonclient_grpc_in_subprocess(embedding_server, expected):
    health = run_client("triton_grpc.py", embedding_server.grpc_url, "embedder", "health")
    assert health.returncode == 0, health.stderr
    h = json.loads(health.stdout)
    assert h["live"] and h["ready"] and h["model_ready"]
    assert h["metadata"]["inputs"][0]["name"] == "text"
    assert h["metadata"]["outputs"][0]["shape"] == ["-1", "384"]

    res = run_client("triton_grpc.py", embedding_server.grpc_url, "embedder", "infer", stdin=json.dumps(TEXTS))
    assert res.returncode == 0, res.stderr
    got = np.array(json.loads(res.stdout)["embedding"])
    assert got.shape == (len(TEXTS), 384)
    assert cosine(got, expected).min() > 0.9999


@pytest.mark.parametrize(
    "case, needle",
    [
        ("bad_name", "input 'text' is required"),
        ("bad_datatype", "must have datatype BYTES"),
        ("bad_utf8", r"text\[1\] is not valid UTF-8"),
        ("bad_param", "parameter 'normalize' must be a boolean"),
    ],
)
def test_grpc_bad_input_is_invalid_argument(embedding_server, case, needle):
    res = run_client("triton_grpc.py", embedding_server.grpc_url, "embedder", case)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["status"] == "StatusCode.INVALID_ARGUMENT", out
    assert re.search(needle, out["message"]), out
    ok = run_client("triton_grpc.py", embedding_server.grpc_url, "embedder", "infer", stdin=json.dumps(["still up"]))
    assert json.loads(ok.stdout)["status"] == "OK"


def test_openai_client_float_and_base64(embedding_server, expected):
    from openai import OpenAI

    client = OpenAI(base_url=f"{embedding_server.http_url}/openai/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["embedder"]
    for fmt in ("float", "base64"):
        resp = client.embeddings.create(model="embedder", input=TEXTS, encoding_format=fmt)
        assert [d.index for d in resp.data] == list(range(len(TEXTS)))
        if fmt == "base64":  # asked for explicitly, the client hands the string through
            got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in resp.data])
        else:
            got = np.array([d.embedding for d in resp.data])
        assert cosine(got, expected).min() > 0.9999
        assert resp.usage.prompt_tokens > len(TEXTS)
    # the client's default (it asks for base64 and decodes it itself)
    single = client.embeddings.create(model="embedder", input=TEXTS[0])
    assert cosine(single.data[0].embedding, expected[0]) > 0.9999


def test_v1_predict(embedding_server, expected):
    r = httpx.post(f"{embedding_server.http_url}/v1/models/embedder:predict", json={"instances": TEXTS[:2]})
    assert r.status_code == 200
    assert cosine(r.json()["predictions"], expected[:2]).min() > 0.9999


def test_normalize_is_per_request(embedding_server, reference_embedder):
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXTS[0]]}],
        "parameters": {"normalize": False},
    }
    r = httpx.post(f"{embedding_server.http_url}/v2/models/embedder/infer", json=body)
    assert r.status_code == 200, r.text
    raw = np.array(r.json()["outputs"][0]["data"])
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3  # not normalized
    unit = reference_embedder.encode([TEXTS[0]], normalize_embeddings=True)[0]
    assert cosine(raw, unit) > 0.9999


def _metric_sum(text: str, name: str, model: str) -> tuple[float, float]:
    count = float(re.search(rf'^{name}_count\{{model_name="{model}"\}} (\S+)$', text, re.M).group(1))
    total = float(re.search(rf'^{name}_sum\{{model_name="{model}"\}} (\S+)$', text, re.M).group(1))
    return count, total


def test_concurrent_requests_are_merged_and_correct(embedding_server):
    url = f"{embedding_server.http_url}/v2/models/embedder/infer"
    # mixed lengths: counting tokens on the event loop races the forward pass's tokenizer otherwise
    texts = [f"request number {i} asks about {w} " + "and more " * (i % 9) for i, w in enumerate(["kserve", "milvus", "batching", "vllm"] * 8)]

    def body(t):
        return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [t]}]}

    one_by_one = [np.array(httpx.post(url, json=body(t)).json()["outputs"][0]["data"]) for t in texts]
    metrics = httpx.get(f"{embedding_server.http_url}/metrics").text
    passes_before, items_before = _metric_sum(metrics, "ragserve_batch_size", "embedder")

    async def fire():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(url, json=body(t)) for t in texts))

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    concurrent = [np.array(r.json()["outputs"][0]["data"]) for r in responses]
    for a, b in zip(one_by_one, concurrent):
        assert cosine(a, b) > 0.9999
    metrics = httpx.get(f"{embedding_server.http_url}/metrics").text
    passes_after, items_after = _metric_sum(metrics, "ragserve_batch_size", "embedder")
    passes, items = passes_after - passes_before, items_after - items_before
    assert items == 32
    # merged: far fewer forward passes than requests
    assert passes <= 16, f"{passes} forward passes for 32 concurrent requests"
    # and KServe's own histograms are still exported
    assert 'request_predict_seconds_count{model_name="embedder"}' in metrics


def _v2(texts, **extra):
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], **extra}


BAD_REQUESTS = [
    # (what, body or raw bytes, status, substring of the error)
    ("wrong input name", {"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, 400, "input 'text' is required"),
    ("wrong datatype", {"inputs": [{"name": "text", "datatype": "INT32", "shape": [1], "data": [1]}]}, 400, "datatype BYTES"),
    ("wrong shape", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 2], "data": ["a"] * 4}]}, 400, r"shape \[N\] or \[N, 1\]"),
    ("shape/data mismatch", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]}, 400, r"has shape \[3\] but 1 elements"),
    ("empty batch", _v2([]), 400, "input 'text' is empty"),
    ("batch over max_batch_size", _v2(["x"] * 33), 413, "over the limit|over max_batch_size"),
    ("text over the limit without truncation", _v2(["word " * 400], parameters={"truncate": False}), 400, "over max_seq_length=256"),
    ("bad parameter type", _v2(["a"], parameters={"normalize": "yes"}), 400, "parameter 'normalize' must be a boolean"),
    ("lone surrogate", b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["\\udc80"]}]}', 400, r"surrogate"),
    ("not JSON", b"{nope", 400, "not valid JSON"),
    ("inputs not a list", {"inputs": 5}, 400, "inputs"),
    ("body over the size limit", _v2(["x" * 250_000]), 413, "max_body_bytes"),
]


@pytest.mark.parametrize("what, body, status, needle", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_v2_input_gets_named_4xx_and_server_keeps_serving(embedding_server, what, body, status, needle):
    url = f"{embedding_server.http_url}/v2/models/embedder/infer"
    if isinstance(body, bytes):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        r = httpx.post(url, json=body)
    assert r.status_code == status, r.text
    assert re.search(needle, r.json()["error"]), r.json()
    ok = httpx.post(url, json=_v2(["still serving"]))
    assert ok.status_code == 200


def test_non_utf8_binary_rest_input_is_400(embedding_server):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{embedding_server.http_port}")
    inp = httpclient.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=np.object_), binary_data=True)
    with pytest.raises(Exception) as err:
        client.infer("embedder", [inp])
    assert "400" in str(err.value) or "UTF-8" in str(err.value)
    r = httpx.post(f"{embedding_server.http_url}/v2/models/embedder/infer", json=_v2(["fine"]))
    assert r.status_code == 200


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"model": "embedder", "input": []}, "input is empty"),
        ({"model": "embedder", "input": "a", "bogus": 1}, "bogus: Extra inputs are not permitted"),
        ({"model": "embedder", "input": "a", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "embedder", "input": [[1, 2, 3]]}, "token-id input is not supported"),
        ({"model": "embedder", "input": "a", "dimensions": 100}, "dimensions=100"),
    ],
)
def test_openai_bad_input(embedding_server, body, needle):
    r = httpx.post(f"{embedding_server.http_url}/openai/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_openai_unknown_model_is_404(embedding_server):
    r = httpx.post(f"{embedding_server.http_url}/openai/v1/embeddings", json={"model": "nope", "input": "a"})
    assert r.status_code == 404
    assert "model 'nope' not found" in r.json()["error"]["message"]


def test_unknown_v2_model_is_404(embedding_server):
    r = httpx.post(f"{embedding_server.http_url}/v2/models/nope/infer", json=_v2(["a"]))
    assert r.status_code == 404
    assert "nope" in r.json()["error"]


# -- ONNX Runtime (the default on CPU) against torch, through every protocol ------------

EQUIVALENCE_TEXTS = TEXTS + [
    "How often are the Milvus credentials rotated?",
    "a",
    "The canary revision first receives 10 percent of the traffic. " * 40,  # truncated at 256 tokens
]


@pytest.fixture(scope="module")
def torch_embedding_server(tmp_path_factory):
    from conftest import start_server

    served = start_server("embedding", "embedder", tmp_path_factory.mktemp("logs"), "--engine", "torch",
                          "--intra-op-threads", "1")
    yield served
    served.process.stop()


def _engine_of(served) -> str:
    return re.search(r"loaded \S+ with (\w+) on", served.process.log_path.read_text()).group(1)


def _grpc_vectors(served, texts):
    res = run_client("triton_grpc.py", served.grpc_url, "embedder", "infer", stdin=json.dumps(texts))
    assert res.returncode == 0, res.stderr
    return np.array(json.loads(res.stdout)["embedding"])


def _rest_vectors(served, texts):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{served.http_port}")
    inp = httpclient.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    return client.infer("embedder", [inp]).as_numpy("embedding")


def _openai_vectors(served, texts):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served.http_url}/openai/v1", api_key="unused")
    return np.array([d.embedding for d in client.embeddings.create(model="embedder", input=texts).data])


@pytest.mark.parametrize("protocol", ["v2_rest", "v2_grpc", "openai"])
def test_onnx_server_matches_torch_server(embedding_server, torch_embedding_server, protocol):
    assert _engine_of(embedding_server) == "onnx"  # what `auto` picks on CPU
    assert _engine_of(torch_embedding_server) == "torch"
    fetch = {"v2_rest": _rest_vectors, "v2_grpc": _grpc_vectors, "openai": _openai_vectors}[protocol]
    onnx_vectors = fetch(embedding_server, EQUIVALENCE_TEXTS)
    torch_vectors = fetch(torch_embedding_server, EQUIVALENCE_TEXTS)
    assert onnx_vectors.shape == torch_vectors.shape == (len(EQUIVALENCE_TEXTS), 384)
    assert cosine(onnx_vectors, torch_vectors).min() > 0.9999


_LOADED_MODULES = """
import json, sys
from ragserve.predictors.embedding import EmbeddingSettings, create_server
server = create_server(EmbeddingSettings(engine=sys.argv[1], http_port=0, grpc_port=0))
model = server.repository.get_model("embedder")
print(json.dumps({"ready": model.ready, "engine": model.engine, "modules": sorted(sys.modules)}))
"""


@pytest.mark.parametrize("engine", ["auto", "onnx"])
def test_onnx_server_process_never_imports_torch_or_transformers(engine):
    """What `ragserve serve embedding` builds (settings -> predictor.load() -> server), in a fresh process."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _LOADED_MODULES, engine], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ready"] and out["engine"] == "onnx"
    roots = {m.split(".")[0] for m in out["modules"]}
    assert "onnxruntime" in roots and "kserve" in roots
    assert not roots & {"torch", "transformers", "sentence_transformers", "sklearn", "scipy"}, roots & {
        "torch", "transformers", "sentence_transformers", "sklearn", "scipy"}
