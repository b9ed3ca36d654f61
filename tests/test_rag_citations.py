"""Citations on the local default: SmolLM2-135M with the local overlay's prompt writes no ``[n]``;
with ``attribute_citations`` (on in that overlay) the transformer cites the source the answer came from.

Real servers: the packaged SmolLM2 generator, the embedder, Milvus filled by ``ragserve ingest``,
and two transformers on the overlay's prompt settings, one with attribution and one without.
"""

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import start_server
from milvus_server import run_ingest

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = "rag_citations"
QUESTION = "Which sentence-transformers model does the embedding predictor serve?"  # samples/embedding-predictor.md
CITATION = re.compile(r"\[\d+\]")

pytestmark = pytest.mark.slow


def local_rag_env() -> dict[str, str]:
    """The RAGSERVE_RAG_* prompt settings `ragserve up` gives the transformer (the local overlay)."""
    data = yaml.safe_load((ROOT / "inferenceservices/overlays/local/settings.yaml").read_text())["data"]
    return {k: v for k, v in data.items() if k.startswith("RAGSERVE_RAG_") and not k.endswith("_URL")}


@pytest.fixture(scope="module")
def smollm2_rag(milvus_server, embedding_server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    run_ingest(milvus_server, embedding_server.http_url, str(ROOT / "pipelines/samples"), "--collection", COLLECTION)
    generator = start_server("generation", "generator", logs, "--torch-threads", "1", grpc=False)
    env = local_rag_env()
    assert env["RAGSERVE_RAG_ATTRIBUTE_CITATIONS"] == "true"
    common = ["--predictor-host", f"127.0.0.1:{generator.http_port}", "--predictor-model-name", "generator",
              "--embedding-url", embedding_server.http_url, "--milvus-uri", milvus_server.uri,
              "--collection", COLLECTION, "--max-tokens", "48"]
    servers = {}
    try:
        for attribute in ("true", "false"):
            servers[attribute] = start_server("rag-transformer", "rag", logs, *common, grpc=False,
                                              env={**env, "RAGSERVE_RAG_ATTRIBUTE_CITATIONS": attribute})
        yield servers
    finally:
        for served in [*servers.values(), generator]:
            served.process.stop()


@pytest.mark.parametrize("milvus_server", ["milvus-standalone"], indirect=True)
def test_answers_cite_the_source_they_came_from(smollm2_rag):
    from openai import OpenAI

    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [QUESTION]}]}
    plain = httpx.post(f"{smollm2_rag['false'].http_url}/v2/models/rag/infer", json=body, timeout=120).json()
    cited = httpx.post(f"{smollm2_rag['true'].http_url}/v2/models/rag/infer", json=body, timeout=120).json()
    [plain_text], [cited_text] = (next(o["data"] for o in r["outputs"] if o["name"] == "text_output") for r in (plain, cited))
    assert "MiniLM" in plain_text and not CITATION.search(plain_text), plain_text  # the model answers, uncited
    sources = [json.loads(s) for s in next(o["data"] for o in cited["outputs"] if o["name"] == "sources")]
    n = sources.index(next(s for s in sources if s["doc_id"] == "samples/embedding-predictor.md")) + 1
    assert cited_text == f"{plain_text} [{n}]"  # greedy: the same answer, plus the citation

    client = OpenAI(base_url=f"{smollm2_rag['true'].http_url}/openai/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": QUESTION}]
    chat = client.chat.completions.create(model="rag", messages=question)
    assert chat.choices[0].message.content.endswith(f" [{n}]"), chat.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="rag", messages=question, stream=True) if c.choices)
    assert streamed == chat.choices[0].message.content
