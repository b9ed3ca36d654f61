"""Bounded fuzzing of every V2 REST route from the official Open Inference Protocol spec.

The spec's paths carry ``${MODEL_NAME}`` / ``${MODEL_VERSION}`` placeholders;
they are adapted to our served model (KServe serves unversioned routes).
The only check: no response is a 5xx, and the server is still up afterwards.
"""

from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

SPEC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "open-inference-protocol" / "rest_predict_v2.yaml"
EXAMPLES = 40  # per operation; a bounded budget for CI


def adapted_spec(model: str) -> dict:
    raw = yaml.safe_load(SPEC.read_text())
    paths = {}
    for path, item in raw["paths"].items():
        concrete = path.replace("/versions/${MODEL_VERSION}", "").replace("${MODEL_NAME}", model)
        paths[concrete] = {k: v for k, v in item.items() if k != "parameters"}  # path params are now fixed
    raw["paths"] = paths
    return raw


def operations(spec: dict) -> list:
    schema = schemathesis.openapi.from_dict(spec)
    return [result.ok() for result in schema.get_all_operations()]


V2_OPERATIONS = operations(adapted_spec("embedder"))


# schemathesis' pytest plugin does not support this pytest; drive its
# strategies with hypothesis directly instead.
def cases(ops: list) -> list:
    """Positive cases for every route; negative (schema-violating) ones where there is a body to break."""
    return [
        pytest.param(op, mode, id=f"{op.label} {mode.value}")
        for op in ops
        for mode in GenerationMode
        if mode is GenerationMode.POSITIVE or op.method.upper() == "POST"
    ]


@pytest.mark.parametrize("operation, mode", cases(V2_OPERATIONS))
def test_v2_routes_never_answer_5xx(operation, mode, embedding_server):
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        case.call_and_validate(base_url=embedding_server.http_url, checks=[not_a_server_error], timeout=30)

    fuzz()


def test_server_still_serves_after_fuzzing(embedding_server):
    r = httpx.post(
        f"{embedding_server.http_url}/v2/models/embedder/infer",
        json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["alive"]}]},
    )
    assert r.status_code == 200
