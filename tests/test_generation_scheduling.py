"""How the engine schedules: shared decode steps, cancel on disconnect, per-request timeouts.

Proved from the outside, through ``/metrics``: ``ragserve_batch_size`` is
observed once per forward pass with the number of sequences in it, and
``ragserve_generation_active_sequences`` counts the running batch.
"""

import asyncio
import re
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import start_generation_server

LONG = {"max_tokens": 2000, "ignore_eos": True}  # seconds of work for either engine on the tiny model
TIMEOUT_S = 0.5


def metrics(served) -> dict[str, float]:
    """``name{labels}`` -> value for the generator's ragserve metrics."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{served.http_url}/metrics").text):
        for s in family.samples:
            if s.name.startswith("ragserve_") and s.labels.get("model_name") == "generator":
                kind = s.labels.get("kind")
                out[s.name + (f"[{kind}]" if kind else "")] = s.value
    return out


def wait_for(predicate, served, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(served)
        if predicate(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def test_concurrent_requests_share_decode_steps(generation_server):
    """Our transformers scheduler's continuous batching (``ragserve_batch_size`` counts its passes).

    Not in the vLLM matrix: vLLM batches on its own; bench/generation.py measures
    batched_vs_single for both engines.
    """
    backend_server = generation_server
    url = f"{backend_server.http_url}/v2/models/generator/generate"
    prompts = [f"Request {i} is about {w}" for i, w in enumerate(["kserve", "milvus", "vllm", "rag"] * 2)]
    body = {"temperature": 0.0, "max_tokens": 32, "ignore_eos": True}
    alone = [httpx.post(url, json={"text_input": p, "parameters": body}).json()["text_output"] for p in prompts]
    before = metrics(backend_server)

    async def fire():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(url, json={"text_input": p, "parameters": body}) for p in prompts))

    together = [r.json()["text_output"] for r in asyncio.run(fire())]
    assert together == alone  # batching changes nothing in what each request gets
    after = metrics(backend_server)
    passes = after["ragserve_batch_size_count"] - before["ragserve_batch_size_count"]
    rows = after["ragserve_batch_size_sum"] - before["ragserve_batch_size_sum"]
    assert rows == 8 * 32  # one row per generated token: a prefill row or a decode row
    assert rows / passes >= 3, f"{passes:.0f} forward passes for {rows:.0f} sequence-steps: requests did not share them"


def log_since(served, offset: int) -> str:
    return served.process.log_path.read_bytes()[offset:].decode(errors="replace")


def test_client_disconnect_drops_the_sequence(backend_server):
    """The engine drops the request (its own count of requests is back to 0), and nothing is logged as an error."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{backend_server.http_url}/openai/v1", api_key="unused", max_retries=0)
    log_offset = backend_server.process.log_path.stat().st_size
    before = metrics(backend_server)
    stream = client.chat.completions.create(
        model="generator", messages=[{"role": "user", "content": "Talk forever."}], stream=True, extra_body=LONG
    )
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"  # sent once the engine has produced its first token
    # Disconnect at once: polling /metrics first let vLLM write all 2000 tokens (~2 s) on a quiet machine.
    stream.close()

    after = wait_for(lambda m: m["ragserve_generation_active_sequences"] == 0, backend_server)
    assert after["ragserve_generation_active_sequences"] == 0
    # the counter appears with its first cancel
    if after.get("ragserve_generation_cancelled_total", 0) == before.get("ragserve_generation_cancelled_total", 0):
        produced = after["ragserve_generation_tokens_total[completion]"] - before.get("ragserve_generation_tokens_total[completion]", 0)
        assert produced >= LONG["max_tokens"], f"not cancelled, yet only {produced} tokens were produced"
        pytest.skip(f"the engine finished all {LONG['max_tokens']} tokens before the disconnect reached the server")
    assert after["ragserve_generation_cancelled_total"] == before.get("ragserve_generation_cancelled_total", 0) + 1
    produced = after["ragserve_generation_tokens_total[completion]"]
    time.sleep(0.3)
    assert metrics(backend_server)["ragserve_generation_tokens_total[completion]"] == produced  # no work left for it
    assert produced - before.get("ragserve_generation_tokens_total[completion]", 0) < 2000
    ok = client.completions.create(model="generator", prompt="still there?", max_tokens=3)
    assert ok.usage.completion_tokens <= 3
    log = log_since(backend_server, log_offset)
    assert not re.search(r"Traceback|ERROR|already running", log), log


@pytest.fixture(scope="module")
def impatient_server(generation_backend, tmp_path_factory):
    served = start_generation_server(
        generation_backend, tmp_path_factory.mktemp("logs"), "--request-timeout-s", str(TIMEOUT_S), grpc=False
    )
    yield served
    served.process.stop()


def test_request_timeout_is_504_and_frees_the_engine(impatient_server):
    from openai import APIError, OpenAI

    base = impatient_server.http_url
    r = httpx.post(f"{base}/v2/models/generator/generate", json={"text_input": "go on", "parameters": LONG})
    assert r.status_code == 504, r.text
    assert f"request_timeout_s={TIMEOUT_S:g}" in r.json()["error"]
    r = httpx.post(f"{base}/openai/v1/completions", json={"model": "generator", "prompt": "go on", **LONG})
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"

    # Once streaming, the status line is sent: the timeout arrives as an error event.
    client = OpenAI(base_url=f"{base}/openai/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="generator", messages=[{"role": "user", "content": "go on"}], stream=True, extra_body=LONG
    )
    with pytest.raises(APIError, match=f"request_timeout_s={TIMEOUT_S:g}"):
        for _ in stream:
            pass
    after = wait_for(lambda m: m["ragserve_generation_active_sequences"] == 0, impatient_server)
    assert after["ragserve_generation_active_sequences"] == 0
    assert after["ragserve_generation_cancelled_total"] == 3
    ok = httpx.post(f"{base}/v2/models/generator/generate", json={"text_input": "hi", "parameters": {"max_tokens": 2}})
    assert ok.status_code == 200
