"""The RAG transformer end to end on loopback.

Real servers all the way: the embedding predictor, the generation predictor
(tiny random Llama: its words are gibberish, so answers are checked for
plumbing, sources for content), each local Milvus engine (the Milvus
standalone server and Milvus Lite) filled by ``ragserve ingest``, and
the transformer as ``ragserve serve rag-transformer``. The only stand-ins are
recording proxies in front of the two predictors, which show the headers the
transformer sent and, stopped, play a predictor that went down.
"""

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import Served, start_server
from milvus_server import run_ingest
from ragserve.pipelines.local_milvus import LocalMilvus
from recording_proxy import RecordingProxy

SAMPLES = Path(__file__).resolve().parent.parent / "pipelines" / "samples"
COLLECTION = "rag_e2e"
PAGER_Q = "When does the pager rotation hand over?"  # answered only by samples/on-call.html
SECRET_Q = "How often are the Milvus credentials rotated?"  # answered only by samples/security.txt
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    rag: Served
    embedder: RecordingProxy
    generator: RecordingProxy
    milvus: LocalMilvus

    @property
    def infer_url(self) -> str:
        return f"{self.rag.http_url}/v2/models/rag/infer"


@pytest.fixture(scope="module")
def stack(milvus_server, embedding_server, generation_server, tmp_path_factory):
    run_ingest(milvus_server, embedding_server.http_url, str(SAMPLES), "--collection", COLLECTION)
    embedder = RecordingProxy(embedding_server.http_url).start()
    generator = RecordingProxy(generation_server.http_url).start()
    rag = start_server(
        "rag-transformer", "rag", tmp_path_factory.mktemp("logs"),
        "--predictor-host", generator.host, "--predictor-model-name", "generator",
        "--embedding-url", embedder.url, "--milvus-uri", milvus_server.uri, "--collection", COLLECTION,
        "--tokenizer", "tiny-random-llama", "--max-tokens", "8", "--retries", "1", "--timeout-s", "5",
        # the random-weight model's greedy text is whitespace; sampling gives visible tokens to assert on
        "--temperature", "1.0",
    )  # fmt: skip
    yield Stack(rag, embedder, generator, milvus_server)
    rag.process.stop()
    embedder.stop()
    generator.stop()


def v2(question: str, **parameters) -> dict:
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [question]}]}
    return {**body, "parameters": {"max_tokens": 8, **parameters}}


def sources_of(response: dict) -> list[dict]:
    out = next(o for o in response["outputs"] if o["name"] == "sources")
    return [json.loads(s) for s in out["data"]]


def test_tritonclient_gets_answer_and_the_one_right_source(stack):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{stack.rag.http_port}")
    assert client.is_model_ready("rag")
    md = client.get_model_metadata("rag")
    assert [o["name"] for o in md["outputs"]] == ["text_output", "sources"]
    inp = httpclient.InferInput("text_input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([PAGER_Q.encode()], dtype=np.object_))
    result = client.infer("rag", [inp], parameters={"max_tokens": 8, "top_k": 3})
    [answer] = result.as_numpy("text_output")
    assert isinstance(answer, bytes) and answer.decode().strip()
    sources = [json.loads(s) for s in result.as_numpy("sources")]
    assert 1 <= len(sources) <= 3 and [s["rank"] for s in sources] == list(range(1, len(sources) + 1))
    top = sources[0]
    assert top["doc_id"] == "samples/on-call.html" and top["title"] == "On-call runbook"
    assert "Tuesday at 09:00 UTC" in top["snippet"]
    assert all(s["doc_id"] != top["doc_id"] or s["chunk_id"] != top["chunk_id"] for s in sources[1:])
    usage = result.get_response()["parameters"]
    assert usage["prompt_tokens"] > 50 and 0 < usage["completion_tokens"] <= 8
    assert {"embed_ms", "search_ms", "generate_ms"} <= set(usage)
    metrics = httpx.get(f"{stack.rag.http_url}/metrics").text
    for stage in ("embed", "search", "prompt", "generate"):
        assert f'ragserve_rag_stage_seconds_count{{model_name="rag",stage="{stage}"}}' in metrics


def test_openai_chat_carries_sources_and_retrieval_options(stack):
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack.rag.http_url}/openai/v1", api_key="unused", max_retries=0)
    resp = client.chat.completions.create(
        model="rag", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": SECRET_Q}],
        max_tokens=6, extra_body={"retrieval": {"top_k": 2}},
    )  # fmt: skip
    assert resp.choices[0].message.role == "assistant" and resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens <= 6
    assert len(resp.sources) <= 2 and resp.sources[0]["doc_id"] == "samples/security.txt"
    assert resp.sources[0]["title"] == "Security and secrets"


def test_openai_chat_stream_sends_sources_first_then_tokens(stack):
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack.rag.http_url}/openai/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="rag", messages=[{"role": "user", "content": PAGER_Q}], max_tokens=6, stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    first = chunks[0]
    assert first.sources[0]["doc_id"] == "samples/on-call.html"
    assert first.choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert {c.id for c in chunks} == {first.id} and {c.model for c in chunks} == {"rag"}
    assert chunks[-1].usage.completion_tokens <= 6 and chunks[-1].usage.prompt_tokens > 50


def test_filter_and_threshold_per_request(stack):
    r = httpx.post(stack.infer_url, json=v2(PAGER_Q, filter='lang == "de"'))
    assert r.status_code == 200, r.text
    assert {s["doc_id"] for s in sources_of(r.json())} == {"samples/faq.jsonl#kontakt"}
    r = httpx.post(stack.infer_url, json=v2(PAGER_Q, score_threshold=0.99))
    assert r.status_code == 200 and sources_of(r.json()) == []


@pytest.mark.parametrize(
    "parameters, status, needle",
    [
        ({"filter": "doc_id = = 1"}, 400, "filter expression .* is invalid"),
        ({"top_k": "3"}, 400, "top_k"),
        ({"bogus": 1}, 400, "bogus"),
        ({"max_tokens": 5000}, 400, "max_tokens=5000 leaves no room"),
    ],
)
def test_bad_requests_are_named_4xx(stack, parameters, status, needle):
    import re

    r = httpx.post(stack.infer_url, json=v2(PAGER_Q, **parameters))
    assert r.status_code == status, r.text
    assert re.search(needle, r.json()["error"]), r.json()


def test_request_id_and_trace_context_reach_both_predictors(stack):
    headers = {"x-request-id": "rid-e2e-1", "traceparent": TRACEPARENT, "tracestate": "ragserve=1"}
    assert httpx.post(stack.infer_url, json=v2(PAGER_Q), headers=headers).status_code == 200
    for proxy, path in ((stack.embedder, "/v2/models/embedder/infer"), (stack.generator, "/v2/models/generator/infer")):
        seen = proxy.headers_for(path)[-1]
        assert seen["x-request-id"] == "rid-e2e-1" and seen["traceparent"] == TRACEPARENT, (path, seen)
        assert seen["tracestate"] == "ragserve=1"
    # no id given: the transformer makes one and both calls (and the response) share it
    r = httpx.post(stack.infer_url, json=v2(SECRET_Q))
    rid = r.json()["parameters"]["request_id"]
    assert stack.embedder.headers_for("/infer")[-1]["x-request-id"] == rid
    assert stack.generator.headers_for("/infer")[-1]["x-request-id"] == rid
    # and streams carry them too
    body = {"model": "rag", "messages": [{"role": "user", "content": PAGER_Q}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{stack.rag.http_url}/openai/v1/chat/completions", json=body, headers=headers) as s:
        assert s.status_code == 200 and "data: [DONE]" in s.read().decode()
    assert stack.generator.headers_for("/openai/v1/chat/completions")[-1]["traceparent"] == TRACEPARENT


def _wait_ok(url: str, body: dict, timeout: float = 20) -> httpx.Response:
    import time

    deadline = time.monotonic() + timeout
    while True:
        r = httpx.post(url, json=body, timeout=30)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_milvus_down_is_503_then_recovers_without_restart(stack):
    pid = stack.rag.process.proc.pid
    stack.milvus.stop()
    try:
        r = httpx.post(stack.infer_url, json=v2(PAGER_Q), timeout=30)
        assert r.status_code == 503, r.text
        assert r.json()["error"].startswith("milvus unavailable")
        chat = httpx.post(f"{stack.rag.http_url}/openai/v1/chat/completions",
                          json={"model": "rag", "messages": [{"role": "user", "content": "x"}]}, timeout=30)
        assert chat.status_code == 503 and chat.json()["error"]["type"] == "dependency_unavailable"
    finally:
        stack.milvus.start()
    r = _wait_ok(stack.infer_url, v2(PAGER_Q))
    assert r.status_code == 200, r.text
    assert sources_of(r.json())[0]["doc_id"] == "samples/on-call.html"
    assert stack.rag.process.proc.pid == pid and stack.rag.process.alive


@pytest.mark.parametrize("which, needle", [("embedder", "embedding predictor unavailable"),
                                           ("generator", "generation predictor unavailable")])
def test_predictor_down_is_503_naming_it_then_recovers(stack, which, needle):
    proxy = getattr(stack, which)
    proxy.stop()
    try:
        r = httpx.post(stack.infer_url, json=v2(PAGER_Q), timeout=30)
        assert r.status_code == 503, r.text
        assert needle in r.json()["error"]
    finally:
        proxy.start()
    assert _wait_ok(stack.infer_url, v2(PAGER_Q)).status_code == 200


# -- in process: the same model behind build_app, clients injected ----------------------
def _settings(stack_or_uri, generation_server, embedding_server, **kw):
    from ragserve.transformers.rag import RagTransformerSettings

    return RagTransformerSettings(
        embedding_url=embedding_server.http_url, milvus_uri=stack_or_uri, collection=COLLECTION,
        predictor_host=generation_server.grpc_url, predictor_protocol="grpc-v2",
        predictor_model_name="generator", tokenizer="tiny-random-llama", max_tokens=4,
        temperature=1.0,  # see the stack fixture: greedy text of the random model is whitespace
        **kw,
    )  # fmt: skip


def test_grpc_v2_predictor_protocol(stack, generation_server, embedding_server):
    from ragserve.kserve_compat import ModelRepository
    from ragserve.server import build_app
    from ragserve.transformers.rag import RagTransformer

    settings = _settings(stack.milvus.uri, generation_server, embedding_server)
    model = RagTransformer(settings)
    model.load()
    repository = ModelRepository()
    repository.update(model)
    app = build_app(repository, settings)

    async def ask():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rag", timeout=60) as client:
            body = v2(SECRET_Q)
            body["inputs"][0].update(shape=[2], data=[SECRET_Q, PAGER_Q])
            return await client.post("/v2/models/rag/infer", json=body)

    try:
        r = asyncio.run(ask())
    finally:
        model.stop()
    assert r.status_code == 200, r.text
    texts = next(o for o in r.json()["outputs"] if o["name"] == "text_output")["data"]
    assert len(texts) == 2
    tops = {s["index"]: s["doc_id"] for s in sources_of(r.json()) if s["rank"] == 1}
    assert tops == {0: "samples/security.txt", 1: "samples/on-call.html"}


def test_collection_of_another_dimension_fails_at_load(stack, generation_server, embedding_server):
    from ragserve.transformers.milvus_store import CollectionMismatch, MilvusStore
    from ragserve.transformers.rag import RagTransformer

    settings = _settings(stack.milvus.uri, generation_server, embedding_server).model_copy(update={"collection": "rag_dim8"})
    store = MilvusStore(settings)
    store.ensure_collection(8, {"M": 8, "efConstruction": 32})
    model = RagTransformer(settings, store=store)
    with pytest.raises(CollectionMismatch, match="holds 8-d vectors but embedding model 'embedder' returns 384-d"):
        model.load()
    missing = RagTransformer(settings.model_copy(update={"collection": "never_ingested"}))
    with pytest.raises(CollectionMismatch, match="does not exist .* ragserve ingest PATH... --collection never_ingested"):
        missing.load()
    store.close()


def test_collection_of_another_metric_fails_at_load(stack, generation_server, embedding_server):
    from ragserve.transformers.milvus_store import CollectionMismatch, MilvusSettings, MilvusStore
    from ragserve.transformers.rag import RagTransformer

    settings = _settings(stack.milvus.uri, generation_server, embedding_server).model_copy(update={"collection": "rag_ip"})
    store = MilvusStore(MilvusSettings(milvus_uri=stack.milvus.uri, collection="rag_ip", metric="IP"))
    store.ensure_collection(384, {"M": 8, "efConstruction": 32})
    store.close()
    with pytest.raises(CollectionMismatch, match="'rag_ip' is indexed for IP similarity, settings say COSINE"):
        RagTransformer(settings).load()
