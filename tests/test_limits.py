"""Security defaults and request limits every ragserve server enforces."""

import asyncio
import socket

import httpx
import pytest

from conftest import start_server


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    served = start_server(
        "embedding", "embedder", tmp_path_factory.mktemp("logs"), "--torch-threads", "1",
        "--max-concurrent-requests", "2", "--batching", "false", grpc=False,
    )  # fmt: skip
    yield served
    served.process.stop()


def _body(text: str) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}


def test_saturated_server_answers_429_and_keeps_health_up(limited):
    url = f"{limited.http_url}/v2/models/embedder/infer"

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            infer = [client.post(url, json=_body("word " * 200)) for _ in range(24)]
            health = [client.get(f"{limited.http_url}/v2/health/ready") for _ in range(4)]
            return await asyncio.gather(*infer), await asyncio.gather(*health)

    answers, health = asyncio.run(burst())
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0 and statuses.count(200) >= 2, statuses
    rejected = next(r for r in answers if r.status_code == 429)
    assert "limit of 2 concurrent requests" in rejected.json()["error"]
    assert all(h.status_code == 200 for h in health)
    assert httpx.post(url, json=_body("after the burst")).status_code == 200


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; this only picks a route
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_servers_bind_loopback_by_default(limited):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to probe")
    with pytest.raises(OSError):
        socket.create_connection((address, limited.http_port), timeout=2).close()
    socket.create_connection(("127.0.0.1", limited.http_port), timeout=2).close()


@pytest.mark.parametrize(
    "path, limited",
    [
        ("/v2/models/m/infer", True),
        ("/v1/models/m:predict", True),  # V1 is inference too
        ("/v2/models/m/generate_stream", True),
        ("/openai/v1/chat/completions", True),
        ("/v2/models/m/ready", False),
        ("/v2/models/m", False),
        ("/v2/health/live", False),
        ("/metrics", False),
    ],
)
def test_only_inference_counts_against_the_concurrency_limit(path, limited):
    from ragserve.limits import ConcurrencyLimitMiddleware

    assert ConcurrencyLimitMiddleware._limited(path) is limited
