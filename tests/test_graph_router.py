"""The InferenceGraph router against real loopback HTTP servers.

A "model" app on one port answers every step (its path picks the behaviour and
it records what it received); each test serves a graph with the router's app
factory on another port and calls it over HTTP. The expected behaviour is
KServe's router (``cmd/router/main.go`` and its ``main_test.go``).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import httpx
import pytest
from loopback import LoopbackServer, serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from ragserve.graph import GraphRouter, GraphSettings, GraphSpecError, ServiceAddress, create_app, parse_graph
from ragserve.graph.gjson import GJSONSyntaxError, compile_path
from ragserve.procs import free_port


class Models:
    """One app standing in for every model a graph calls; records each request."""

    def __init__(self):
        self.calls: list[dict] = []
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])

    async def handle(self, request: Request):
        path = request.url.path
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode()
        self.calls.append({"path": path, "body": body, "headers": dict(request.headers)})
        kind, _, arg = path.strip("/").partition("/")
        if kind == "echo":  # /echo/<tag>
            return JSONResponse({"from": arg, "received": body})
        if kind == "status":  # /status/<code>
            return JSONResponse({"error": f"model failed with {arg}"}, status_code=int(arg))
        if kind == "headers":
            return JSONResponse({"headers": dict(request.headers)})
        if kind == "label":  # /label/<label>: a classifier answer
            return JSONResponse({"predictions": [{"label": arg, "score": [0.1, 0.9]}]})
        if kind == "text":
            return PlainTextResponse("not json")
        return JSONResponse({"model_path": path, "received": body})

    def paths(self) -> list[str]:
        return [c["path"] for c in self.calls]


@pytest.fixture(scope="module")
def models():
    with serving(Models()) as m:
        yield m


@pytest.fixture(autouse=True)
def _fresh_calls(models):
    models.calls.clear()


def serve_graph(nodes: dict, **settings) -> LoopbackServer:
    graph = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceGraph",
             "metadata": {"name": "rag-graph"}, "spec": {"nodes": nodes}}
    return LoopbackServer(create_app(GraphSettings(graph_json=json.dumps(graph), **settings)))


def post(srv: LoopbackServer, body, path: str = "/", **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(srv.url + path, content=content, timeout=10, **kw)


def url(models: Models, path: str) -> str:
    return models.url + path


def test_sequence_passes_request_and_response(models):
    nodes = {"root": {"routerType": "Sequence", "steps": [
        {"name": "a", "serviceUrl": url(models, "/echo/a")},
        {"name": "b", "serviceUrl": url(models, "/echo/b"), "data": "$response"},
        {"name": "c", "serviceUrl": url(models, "/echo/c"), "data": "$request"},
        {"name": "d", "serviceUrl": url(models, "/echo/d")},  # no data: the graph input, as in KServe
    ]}}
    with serve_graph(nodes) as srv:
        r = post(srv, {"instances": ["q"]})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    received = [c["body"] for c in models.calls]
    assert received[0] == {"instances": ["q"]}
    assert received[1] == {"from": "a", "received": {"instances": ["q"]}}  # $response: a's answer
    assert received[2] == {"instances": ["q"]}
    assert received[3] == {"instances": ["q"]}
    assert r.json() == {"from": "d", "received": {"instances": ["q"]}}


def test_sequence_condition_on_previous_response(models):
    nodes = {"root": {"routerType": "Sequence", "steps": [
        {"serviceUrl": url(models, "/label/cat")},
        {"serviceUrl": url(models, "/echo/breed"), "data": "$response", "condition": 'predictions.#(label=="dog")'},
    ]}}
    with serve_graph(nodes) as srv:
        r = post(srv, {"instances": [{"modelId": "1"}]})
    # condition unmet: the sequence stops and returns the previous response with 200
    assert r.status_code == 200
    assert r.json() == {"predictions": [{"label": "cat", "score": [0.1, 0.9]}]}
    assert models.paths() == ["/label/cat"]


def test_splitter_follows_weights(models):
    graph = parse_graph({"nodes": {"root": {"routerType": "Splitter", "steps": [
        {"serviceUrl": url(models, "/echo/small"), "weight": 20},
        {"serviceUrl": url(models, "/echo/large"), "weight": 80},
    ]}}})

    async def call_many(n):
        # the router in-process (its HTTP face is covered elsewhere); the steps over real HTTP
        async with httpx.AsyncClient(timeout=10) as client:
            router, sem = GraphRouter(graph, client), asyncio.Semaphore(16)

            async def one():
                async with sem:
                    return json.loads((await router.route(b'{"instances": [1]}')).body)["from"]

            return await asyncio.gather(*(one() for _ in range(n)))

    counts = Counter(asyncio.run(call_many(1000)))
    assert set(counts) == {"small", "large"}
    # binomial(1000, 0.2): sd 12.6; 5 sd either side
    assert abs(counts["small"] - 200) <= 63, counts


def test_switch_routes_on_first_matching_condition(models):
    nodes = {"root": {"routerType": "Switch", "steps": [
        {"name": "one", "serviceUrl": url(models, "/echo/one"), "condition": 'instances.#(modelId=="1")'},
        {"name": "two", "serviceUrl": url(models, "/echo/two"), "condition": "[@this].#(decision_picker==TWO)"},
        {"name": "big", "serviceUrl": url(models, "/echo/big"), "condition": "instances.#(size>10)"},
    ]}}
    with serve_graph(nodes) as srv:
        assert post(srv, {"instances": [{"modelId": "1"}]}).json()["from"] == "one"
        assert post(srv, {"decision_picker": "TWO", "instances": []}).json()["from"] == "two"
        assert post(srv, {"instances": [{"size": 3}, {"size": 12}]}).json()["from"] == "big"


def test_switch_without_match_is_404_with_kserve_error_body(models):
    nodes = {"root": {"routerType": "Switch", "steps": [
        {"serviceUrl": url(models, "/echo/one"), "condition": 'instances.#(modelId=="1")'},
    ]}}
    expected = {"error": "Failed to process request", "cause": "None of the routes matched with the switch condition"}
    with serve_graph(nodes) as srv:
        for body in ({"instances": [{"modelId": "9"}]}, b"not json"):
            r = post(srv, body)
            assert r.status_code == 404
            assert r.headers["content-type"] == "application/json"
            assert r.json() == expected
    assert models.calls == []


def test_nested_node_error_surfaces_as_500(models):
    nodes = {
        "root": {"routerType": "Sequence", "steps": [{"nodeName": "pick"}]},
        "pick": {"routerType": "Switch", "steps": [{"serviceUrl": url(models, "/echo/x"), "condition": "nope"}]},
    }
    with serve_graph(nodes) as srv:
        r = post(srv, {"instances": []})
    assert r.status_code == 500
    assert r.json()["cause"] == "None of the routes matched with the switch condition"


def test_ensemble_merges_by_step_name_or_index(models):
    nodes = {"root": {"routerType": "Ensemble", "steps": [
        {"name": "dense", "serviceUrl": url(models, "/echo/dense")},
        {"serviceUrl": url(models, "/echo/sparse")},
        {"name": "flaky", "serviceUrl": url(models, "/status/503")},  # Soft: merged as answered
    ]}}
    with serve_graph(nodes) as srv:
        r = post(srv, {"instances": ["q"]})
    assert r.status_code == 200
    assert r.json() == {
        "dense": {"from": "dense", "received": {"instances": ["q"]}},
        "1": {"from": "sparse", "received": {"instances": ["q"]}},
        "flaky": {"error": "model failed with 503"},
    }
    assert r.content.startswith(b'{"1":')  # Go's json.Marshal of a map: compact, keys sorted
    assert sorted(models.paths()) == ["/echo/dense", "/echo/sparse", "/status/503"]


def test_ensemble_hard_failure_decides(models):
    nodes = {"root": {"routerType": "Ensemble", "steps": [
        {"name": "ok", "serviceUrl": url(models, "/echo/ok")},
        {"name": "bad", "serviceUrl": url(models, "/status/422"), "dependency": "Hard"},
    ]}}
    with serve_graph(nodes) as srv:
        r = post(srv, {"instances": []})
    assert r.status_code == 422
    assert r.json() == {"error": "model failed with 422"}


@pytest.mark.parametrize(
    ("dependency", "status", "body", "paths"),
    [
        ("Hard", 503, {"error": "model failed with 503"}, ["/status/503"]),
        ("Soft", 200, {"from": "gen", "received": {"error": "model failed with 503"}}, ["/status/503", "/echo/gen"]),
        ("", 200, {"from": "gen", "received": {"error": "model failed with 503"}}, ["/status/503", "/echo/gen"]),
    ],
)
def test_failed_step_stops_the_sequence_only_when_hard(models, dependency, status, body, paths):
    nodes = {"root": {"routerType": "Sequence", "steps": [
        {"name": "retrieve", "serviceUrl": url(models, "/status/503"), "dependency": dependency},
        {"name": "generate", "serviceUrl": url(models, "/echo/gen"), "data": "$response"},
    ]}}
    with serve_graph(nodes) as srv:
        r = post(srv, {"instances": []})
    assert (r.status_code, r.json()) == (status, body)
    assert models.paths() == paths


def test_unreachable_step_is_500_even_when_soft(models):
    dead = f"http://127.0.0.1:{free_port()}/v1/models/x:predict"
    nodes = {"root": {"routerType": "Sequence", "steps": [
        {"serviceUrl": dead, "dependency": "Soft"},
        {"serviceUrl": url(models, "/echo/after")},
    ]}}
    with serve_graph(nodes) as srv:
        r = post(srv, {"instances": []})
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "Failed to process request"
    assert body["cause"].startswith(f'Post "{dead}"')
    assert models.calls == []


def test_service_name_resolves_to_predict_url(models):
    nodes = {"root": {"routerType": "Sequence", "steps": [
        {"serviceName": "embedder"},
        {"serviceName": "generator", "data": "$response"},
        {"serviceName": "reranker", "data": "$response"},
    ]}}
    services = {
        "embedder": ServiceAddress(url=models.url + "/", model_name="minilm"),  # v1 by default
        "generator": ServiceAddress(url=models.url, protocol="v2"),  # model name: the service name
        "reranker": ServiceAddress(url=models.url + "/custom", protocol=""),  # no predict path
    }
    with serve_graph(nodes, services=services) as srv:
        r = post(srv, {"instances": ["q"]}, path="/some/incoming/path")
        assert r.status_code == 200
        assert models.paths() == ["/v1/models/minilm:predict", "/v2/models/generator/infer", "/custom"]

        models.calls.clear()
        missing = {"root": {"routerType": "Sequence", "steps": [{"serviceName": "nowhere"}]}}
    with serve_graph(missing, services=services) as srv:
        r = post(srv, {"instances": []})
    assert r.status_code == 500
    assert "'nowhere'" in r.json()["cause"]


def test_headers_propagate_by_pattern(models):
    nodes = {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": url(models, "/headers")}]}}
    sent = {
        "authorization": "Bearer token",
        "test-header-1": "one",
        "Test-Header-2": "two",
        "x-b3-trace-id": "67890",
        "x-request-id": "12345",
        "content-type": "text/plain",
    }
    with serve_graph(nodes, propagate_headers=["Test-Header-*", "Auth*", ".*Trace-Id.*", "[invalid"]) as srv:
        got = post(srv, b'{"instances": []}', headers=sent).json()["headers"]
    assert got["authorization"] == "Bearer token"
    assert got["test-header-1"] == "one" and got["test-header-2"] == "two"
    assert got["x-b3-trace-id"] == "67890"
    assert "x-request-id" not in got
    assert got["content-type"] == "application/json"  # not propagated, so the router's default


def test_health_routes_and_everything_else_runs_the_graph(models):
    nodes = {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": url(models, "/text")}]}}
    with serve_graph(nodes) as srv:
        assert httpx.get(srv.url + "/v2/health/live").json() == {"live": True}
        assert httpx.get(srv.url + "/v2/health/ready").json() == {"ready": True}
        assert httpx.get(srv.url + "/readyz").status_code == 200
        r = post(srv, b"{}", path="/v2/health/ready")  # POST is not a health check
        assert r.status_code == 200 and r.text == "not json"
        assert r.headers["content-type"].startswith("text/plain")
        r = post(srv, b"{}", path="/v1/models/anything:predict")
        assert r.text == "not json"
    assert len(models.calls) == 2


# -- the graph spec and the condition language, without HTTP --------------------


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ({"main": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://a"}]}}, "root node not found"),
        ({"root": {"routerType": "Sequence", "steps": [{"name": "x", "serviceUrl": "http://a"},
                                                       {"name": "x", "serviceUrl": "http://b"}]}}, "more than one step with name 'x'"),
        ({"root": {"routerType": "Sequence", "steps": [{"name": "s"}]}}, "does not specify an inference target"),
        ({"root": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://a", "serviceName": "b"}]}}, "more than one of nodeName"),
        ({"root": {"routerType": "Splitter", "steps": [{"serviceUrl": "http://a", "weight": 30},
                                                       {"serviceUrl": "http://b", "weight": 60}]}}, "should be 100"),
        ({"root": {"routerType": "Splitter", "steps": [{"serviceUrl": "http://a"}]}}, "missing the 'weight'"),
        ({"root": {"routerType": "Sequence", "steps": [{"nodeName": "ghost"}]}}, "names node 'ghost'"),
        ({"root": {"routerType": "Switch", "steps": [{"serviceUrl": "http://a", "condition": "a.@reverse"}]}}, "@reverse"),
        ({"root": {"routerType": "Fanout", "steps": [{"serviceUrl": "http://a"}]}}, "nodes.root.routerType"),
        ({"root": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://a", "dependency": "Firm"}]}}, "dependency"),
    ],
)
def test_invalid_graphs_are_rejected_with_the_place(nodes, message):
    with pytest.raises(GraphSpecError, match="invalid InferenceGraph") as info:
        parse_graph({"kind": "InferenceGraph", "metadata": {"name": "g"}, "spec": {"nodes": nodes}})
    assert message in str(info.value)


def test_graph_file_yaml(tmp_path):
    manifest = tmp_path / "graph.yaml"
    manifest.write_text(
        "apiVersion: serving.kserve.io/v1alpha1\nkind: InferenceGraph\nmetadata:\n  name: rag\n  namespace: ml\n"
        "spec:\n  routerTimeouts: {serviceClient: 30}\n  nodes:\n    root:\n      routerType: Sequence\n"
        "      steps:\n      - {name: embed, serviceName: embedder}\n"
    )
    graph = GraphSettings(graph_file=str(manifest)).load()
    assert (graph.name, graph.namespace, graph.router_timeouts.service_client) == ("rag", "ml", 30)
    assert graph.nodes["root"].steps[0].service_name == "embedder"


DOC = {
    "instances": [{"modelId": "1", "size": 3}, {"modelId": "2", "size": 12}],
    "decision_picker": "ONE",
    "flag": True,
    "a.b": 1,
    "friends": [{"first": "Dale", "age": 44, "nets": ["ig", "fb"]}, {"first": "Roger", "age": 68}],
}


@pytest.mark.parametrize(
    ("path", "found"),
    [
        ("instances", True),
        ("instances.1.modelId", True),
        ("instances.5", False),
        ('instances.#(modelId=="2")', True),
        ('instances.#(modelId=="3")', False),
        ("instances.#(size>=12)", True),
        ("instances.#(size>12)", False),
        ("instances.#(size!=3)", True),
        ("[@this].#(decision_picker==ONE)", True),
        ("[@this].#(flag==true)", True),
        ("[@this].#(flag==false)", False),
        ("a\\.b", True),
        ("dec*", True),
        ('friends.#(first%"D*")', True),
        ('friends.#(first%"Z*")', False),
        ('friends.#(nets.#(=="fb"))', True),
        ("friends.#(age>100)#", True),  # an empty array exists, as in GJSON
        ("friends.#(age>100)#.first", True),
        ("missing.#", False),
    ],
)
def test_condition_subset(path, found):
    assert compile_path(path).exists(DOC) is found


def test_condition_values():
    assert compile_path("friends.#(age>40)#.first").get(DOC) == ["Dale", "Roger"]
    assert compile_path("friends.#").get(DOC) == 2
    with pytest.raises(GJSONSyntaxError):
        compile_path("{a,b}")
