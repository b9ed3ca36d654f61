"""The generation predictor as users meet it: a real server (tiny random Llama), official clients.

The tiny model's text is gibberish; these tests check plumbing: the same
greedy request gives the same text over every protocol, usage adds up, and
bad requests get a 400 that names the field while the server keeps serving.
"""

import json
import re

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import run_client

PROMPTS = ["The capital of France is", "Retrieval-augmented generation means"]
GREEDY = {"max_tokens": 6, "temperature": 0.0, "ignore_eos": True}


def v2_body(texts, **parameters):
    return {
        "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [len(texts)], "data": texts}],
        "parameters": parameters,
    }


def sse_events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[len("data: ") :]) for line in response.iter_lines() if line.startswith("data: {")]


@pytest.fixture(scope="module")
def greedy_texts(backend_server):
    """What the engine answers each prompt, via the generate extension (the reference)."""
    url = f"{backend_server.http_url}/v2/models/generator/generate"
    out = []
    for prompt in PROMPTS:
        r = httpx.post(url, json={"text_input": prompt, "parameters": GREEDY})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "generator" and body["completion_tokens"] == 6
        assert body["finish_reason"] == "length" and body["prompt_tokens"] > 0
        out.append(body["text_output"])
    return out


def test_tritonclient_http_infer_reports_usage(backend_server, greedy_texts):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{backend_server.http_port}")
    assert client.is_model_ready("generator")
    md = client.get_model_metadata("generator")
    assert md["inputs"] == [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]
    assert md["outputs"] == [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}]
    for binary in (True, False):
        inp = httpclient.InferInput("text_input", [len(PROMPTS)], "BYTES")
        inp.set_data_from_numpy(np.array([p.encode() for p in PROMPTS], dtype=np.object_), binary_data=binary)
        out = httpclient.InferRequestedOutput("text_output", binary_data=binary)
        result = client.infer("generator", [inp], outputs=[out], parameters=GREEDY)
        texts = [t.decode() if isinstance(t, bytes) else t for t in result.as_numpy("text_output")]
        assert texts == greedy_texts
        usage = result.get_response()["parameters"]
        assert usage["completion_tokens"] == 12 and usage["prompt_tokens"] >= len(PROMPTS)


def test_tritonclient_grpc_in_subprocess(backend_server, greedy_texts):
    request = {"texts": PROMPTS, "parameters": GREEDY}
    res = run_client("triton_grpc_generate.py", backend_server.grpc_url, "generator", stdin=json.dumps(request))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["status"] == "OK", out
    assert out["text_output"] == greedy_texts
    assert out["parameters"]["completion_tokens"] == 12

    bad = {"texts": PROMPTS[:1], "parameters": {"temperature": 7.5}}  # a float: gRPC double_param
    res = run_client("triton_grpc_generate.py", backend_server.grpc_url, "generator", stdin=json.dumps(bad))
    out = json.loads(res.stdout)
    assert out["status"] == "StatusCode.INVALID_ARGUMENT" and "temperature" in out["message"], out


def test_v1_predict(backend_server, greedy_texts):
    r = httpx.post(
        f"{backend_server.http_url}/v1/models/generator:predict", json={"instances": PROMPTS, "parameters": GREEDY}
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == greedy_texts


def test_generate_extension_stream_matches_generate(backend_server, greedy_texts):
    url = f"{backend_server.http_url}/v2/models/generator/generate_stream"
    # Triton's TRT-LLM style: options as top-level fields next to text_input.
    with httpx.stream("POST", url, json={"text_input": PROMPTS[0], "id": "r1", **GREEDY}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert all(e["model_name"] == "generator" and e["id"] == "r1" for e in events)
    assert "".join(e["text_output"] for e in events) == greedy_texts[0]
    assert events[-1]["finish_reason"] == "length" and events[-1]["completion_tokens"] == 6
    versioned = httpx.post(
        f"{backend_server.http_url}/v2/models/generator/versions/1/generate",
        json={"text_input": PROMPTS[0], "parameters": GREEDY},
    )
    assert versioned.json()["text_output"] == greedy_texts[0]


def test_stop_sequence_cuts_the_text(backend_server, greedy_texts):
    text = greedy_texts[0]
    stop = text[len(text) // 2 :][:3]
    r = httpx.post(
        f"{backend_server.http_url}/v2/models/generator/generate",
        json={"text_input": PROMPTS[0], "parameters": {**GREEDY, "stop": [stop]}},
    )
    body = r.json()
    assert body["text_output"] == text[: text.index(stop)]
    assert body["finish_reason"] == "stop"


@pytest.fixture(scope="module")
def openai_client(backend_server):
    from openai import OpenAI

    return OpenAI(base_url=f"{backend_server.http_url}/openai/v1", api_key="unused", max_retries=0)


def test_openai_completion_is_the_same_engine(openai_client, greedy_texts):
    assert "generator" in [m.id for m in openai_client.models.list().data]
    extra = {"extra_body": {"ignore_eos": True}}
    resp = openai_client.completions.create(model="generator", prompt=PROMPTS, max_tokens=6, temperature=0, **extra)
    assert [c.text for c in resp.choices] == greedy_texts
    assert resp.usage.completion_tokens == 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 12

    chunks = list(
        openai_client.completions.create(
            model="generator", prompt=PROMPTS[0], max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True}, **extra,
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == greedy_texts[0]
    assert chunks[-1].usage.completion_tokens == 6


def test_openai_chat_and_chat_stream(openai_client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]
    resp = openai_client.chat.completions.create(model="generator", messages=messages, max_tokens=8, temperature=0, seed=1)
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 10 and 1 <= resp.usage.completion_tokens <= 8

    stream = openai_client.chat.completions.create(
        model="generator", messages=messages, max_tokens=8, temperature=0, seed=1, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == resp.usage.completion_tokens


def test_seeded_sampling_is_reproducible(openai_client):
    kwargs = dict(model="generator", prompt="Once", max_tokens=12, temperature=1.0, top_p=0.9, seed=42, extra_body={"ignore_eos": True})
    first = openai_client.completions.create(**kwargs).choices[0].text
    assert openai_client.completions.create(**kwargs).choices[0].text == first


V2_BAD = [
    ("negative max_tokens", {"max_tokens": -1}, "max_tokens"),
    ("max_tokens over the cap", {"max_tokens": 5000}, r"max_tokens=5000 is over this server's cap of 2048"),
    ("temperature too high", {"temperature": 2.5}, "temperature"),
    ("top_p zero", {"top_p": 0.0}, "top_p"),
    ("wrong type", {"temperature": "hot"}, "temperature"),
    ("unknown field", {"temprature": 0.5}, "temprature: Extra inputs are not permitted"),
]


@pytest.mark.parametrize("what, params, needle", V2_BAD, ids=[b[0] for b in V2_BAD])
def test_bad_v2_parameters_are_named_400(backend_server, what, params, needle):
    url = f"{backend_server.http_url}/v2/models/generator/infer"
    r = httpx.post(url, json=v2_body(["hi"], **params))
    assert r.status_code == 400, r.text
    assert re.search(needle, r.json()["error"]), r.json()
    g = httpx.post(f"{backend_server.http_url}/v2/models/generator/generate", json={"text_input": "hi", "parameters": params})
    assert g.status_code == 400 and re.search(needle, g.json()["error"]), g.text
    assert httpx.post(url, json=v2_body(["hi"], **GREEDY)).status_code == 200


OPENAI_BAD = [
    ("completions", {"prompt": "hi", "max_tokens": -5}, "max_tokens"),
    ("completions", {"prompt": "hi", "temperature": 3}, "temperature"),
    ("completions", {"prompt": "hi", "top_p": 1.5}, "top_p"),
    ("completions", {"prompt": "hi", "frequency_penalty": 0.5}, "frequency_penalty: Extra inputs are not permitted"),
    ("completions", {"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
    ("completions", {"prompt": [[1, 2]]}, "token-id prompts are not supported"),
    ("completions", {"prompt": "hi", "n": 2}, "n"),
    ("chat/completions", {"messages": []}, "messages"),
    ("chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
]


@pytest.mark.parametrize("route, body, needle", OPENAI_BAD, ids=[f"{b[0]}:{b[2][:24]}" for b in OPENAI_BAD])
def test_bad_openai_requests_are_named_400(backend_server, openai_client, route, body, needle):
    r = httpx.post(f"{backend_server.http_url}/openai/v1/{route}", json={"model": "generator", **body})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"], r.json()
    ok = openai_client.chat.completions.create(model="generator", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].message.content is not None


def test_prompt_over_the_context_is_400_naming_the_limit(backend_server, openai_client):
    long_prompt = "word " * 2100  # the tiny model's context is 2048 tokens
    r = httpx.post(f"{backend_server.http_url}/v2/models/generator/infer", json=v2_body([long_prompt]))
    assert r.status_code == 400
    assert re.search(r"text_input has \d+ tokens; the context limit is 2048 tokens", r.json()["error"]), r.json()
    r = httpx.post(
        f"{backend_server.http_url}/openai/v1/chat/completions",
        json={"model": "generator", "messages": [{"role": "user", "content": long_prompt}]},
    )
    assert r.status_code == 400 and "context limit is 2048" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "messages"
    ok = openai_client.completions.create(model="generator", prompt="short", max_tokens=2)
    assert ok.usage.completion_tokens <= 2


def test_generate_extension_errors(backend_server):
    base = f"{backend_server.http_url}/v2/models"
    r = httpx.post(f"{base}/generator/generate", json={"parameters": {}})
    assert r.status_code == 400 and "text_input" in r.json()["error"]
    r = httpx.post(f"{base}/generator/generate_stream", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = httpx.post(f"{base}/nope/generate", json={"text_input": "hi"})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = httpx.post(f"{backend_server.http_url}/openai/v1/completions", json={"model": "nope", "prompt": "hi"})
    assert r.status_code == 404 and "model 'nope' not found" in r.json()["error"]["message"]
