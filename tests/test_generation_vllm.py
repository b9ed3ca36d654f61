"""The same routes on the vLLM backend (GPU hosts with vllm installed; skipped elsewhere)."""

import importlib.util

import httpx
import pytest
import torch

from conftest import start_server

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None, reason="needs a CUDA GPU and vllm"
    ),
]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    served = start_server(
        "generation", "generator", tmp_path_factory.mktemp("logs"),
        "--backend", "vllm", "--model", "tiny-random-llama", "--gpu-memory-utilization", "0.3", grpc=False,
    )
    yield served
    served.process.stop()


def test_vllm_backend_serves_v2_and_openai(vllm_server):
    from openai import OpenAI

    body = {
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [2], "data": ["Hello", "World"]}],
        "parameters": {"max_tokens": 5, "temperature": 0.0, "ignore_eos": True},
    }
    r = httpx.post(f"{vllm_server.http_url}/v2/models/generator/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["completion_tokens"] == 10

    client = OpenAI(base_url=f"{vllm_server.http_url}/openai/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    chunks = list(client.chat.completions.create(model="generator", messages=messages, max_tokens=4, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"

    stream = client.chat.completions.create(
        model="generator", messages=messages, max_tokens=2000, stream=True, extra_body={"ignore_eos": True}
    )
    next(iter(stream))
    stream.close()  # the engine aborts the request; the next one is served
    ok = client.completions.create(model="generator", prompt="again", max_tokens=3)
    assert ok.usage.completion_tokens <= 3
