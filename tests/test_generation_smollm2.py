"""The real packaged model answers: SmolLM2-135M-Instruct, greedy, through the official client."""

import pytest

from conftest import start_server


@pytest.fixture(scope="module")
def smollm2_server(tmp_path_factory):
    served = start_server(
        "generation", "generator", tmp_path_factory.mktemp("logs"), "--torch-threads", "1", grpc=False
    )
    yield served
    served.process.stop()


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2_server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{smollm2_server.http_url}/openai/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answers = [
        client.chat.completions.create(model="generator", messages=question, temperature=0, max_tokens=24)
        for _ in range(2)
    ]
    first = answers[0].choices[0]
    assert "Paris" in first.message.content, first.message.content
    assert first.finish_reason == "stop"  # the model ended its turn (<|im_end|>), not the token budget
    assert answers[1].choices[0].message.content == first.message.content  # greedy is deterministic
