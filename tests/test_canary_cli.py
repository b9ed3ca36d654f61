"""``ragserve canary`` against real HTTP stand-ins of the Kubernetes API and Prometheus.

The Kubernetes stand-in answers GET/PATCH of InferenceServices the way the API
server does (``Status`` objects for 401/403/404/409/415/422, merge-patch
semantics, ``resourceVersion`` checks) and validates every patched object
against KServe's CRD schema (the pinned release, cached), rejecting
unknown fields. The CLI reaches it through a generated kubeconfig and the
official ``kubernetes`` client. The Prometheus stand-in answers
``/api/v1/query`` from recorded results and refuses any query not recorded, so
the exact PromQL is part of the test.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from loopback import serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ragserve.canary.ops import apply_merge_patch
from ragserve.cli import main
from ragserve.procs import free_port

REPO = Path(__file__).resolve().parent.parent
NS, TOKEN = "ml", "ci-token"
MERGE_PATCH = "application/merge-patch+json"


def _strict(schema):
    """Reject unknown fields where a schema lists properties, as `kubectl apply` does."""
    if isinstance(schema, dict):
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema = {**schema, "additionalProperties": False}
        return {k: _strict(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def isvc_schema(kserve_crd_dir):
    crd = yaml.load((kserve_crd_dir / "serving.kserve.io_inferenceservices.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return jsonschema.Draft7Validator(_strict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))


def _status(code: int, reason: str, message: str, name: str = "") -> JSONResponse:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": {"name": name, "group": "serving.kserve.io", "kind": "inferenceservices"},
            "code": code}
    return JSONResponse(body, status_code=code)


class KubeApi:
    """GET/PATCH of ``serving.kserve.io/v1beta1`` InferenceServices in one process."""

    def __init__(self, schema):
        self.schema = schema
        self.objects: dict[str, dict] = {}
        self.patches: list[tuple[str, str, dict]] = []  # (name, content type, body)
        self.field_managers: list[str] = []  # ?fieldManager= of each PATCH
        self.forbidden: set[tuple[str, str]] = set()  # (verb, name)
        self.modify_before_next_patch = False
        path = "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices/{name}"
        self.app = Starlette(routes=[Route(path, self.handle, methods=["GET", "PATCH"])])

    def add(self, obj: dict) -> None:
        self.objects[obj["metadata"]["name"]] = copy.deepcopy(obj)

    async def handle(self, request: Request):
        ns, name = request.path_params["ns"], request.path_params["name"]
        verb = request.method.lower()
        what = f'inferenceservices.serving.kserve.io "{name}"'
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized", "Unauthorized")
        if (verb, name) in self.forbidden:
            return _status(403, "Forbidden", f'{what} is forbidden: User "system:serviceaccount:{ns}:ci" cannot '
                                             f'{verb} resource "inferenceservices" in API group "serving.kserve.io" '
                                             f'in the namespace "{ns}"', name)
        obj = self.objects.get(name) if ns == NS else None
        if obj is None:
            return _status(404, "NotFound", f"{what} not found", name)
        if verb == "get":
            return JSONResponse(obj)
        content_type = request.headers.get("content-type", "")
        patch = json.loads(await request.body())
        self.patches.append((name, content_type, patch))
        self.field_managers.append(request.query_params.get("fieldManager", ""))
        if content_type != MERGE_PATCH:
            return _status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")
        if self.modify_before_next_patch:  # someone else wrote in between
            self.modify_before_next_patch = False
            obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != obj["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", f"Operation cannot be fulfilled on {what}: the object has been modified; "
                                            "please apply your changes to the latest version and try again", name)
        updated = apply_merge_patch(obj, patch)
        errors = sorted(self.schema.iter_errors(updated), key=str)
        if errors:
            return _status(422, "Invalid", f"{what} is invalid: {errors[0].message}", name)
        updated["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        self.objects[name] = updated
        return JSONResponse(updated)


class PrometheusStandIn:
    """``/api/v1/query`` answered from recorded results; unrecorded queries are an error."""

    def __init__(self):
        self.results: dict[str, float | None] = {}
        self.queries: list[str] = []
        self.app = Starlette(routes=[Route("/api/v1/query", self.query, methods=["GET", "POST"])])

    async def query(self, request: Request):
        promql = request.query_params["query"]
        self.queries.append(promql)
        if promql not in self.results:
            return JSONResponse({"status": "error", "errorType": "bad_data", "error": f"not recorded: {promql}"}, 400)
        value = self.results[promql]
        result = [] if value is None else [{"metric": {}, "value": [1767607200.0, str(value)]}]
        return JSONResponse({"status": "success", "data": {"resultType": "vector", "result": result}})


@pytest.fixture(scope="module")
def kube(isvc_schema):
    with serving(KubeApi(isvc_schema)) as api:
        yield api


@pytest.fixture(scope="module")
def prometheus():
    with serving(PrometheusStandIn()) as prom:
        yield prom


@pytest.fixture(autouse=True)
def _reset(kube, prometheus):
    kube.objects.clear()
    kube.patches.clear()
    kube.field_managers.clear()
    kube.forbidden.clear()
    kube.add(knative_isvc())
    kube.add(standard_isvc())
    kube.add(no_canary_isvc())
    prometheus.results.clear()
    prometheus.queries.clear()


@pytest.fixture(scope="module")
def kubeconfig(kube, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin", "preferences": {},
        "clusters": [{"name": "standin", "cluster": {"server": kube.url}}],
        "users": [{"name": "ci", "user": {"token": TOKEN}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "ci", "namespace": NS}}],
    }))
    return str(path)


def ragserve(capsys, kubeconfig, *argv: str) -> tuple[int, str, str]:
    action, name, *rest = argv
    code = main(["canary", action, name, "--kubeconfig", kubeconfig, *rest])
    out, err = capsys.readouterr()
    return code, out, err


# -- InferenceServices as the API server returns them --------------------------

KNATIVE_PREV, KNATIVE_LATEST = "rag-embedder-predictor-00001", "rag-embedder-predictor-00002"


def _conditions(ready: str = "True") -> list[dict]:
    t = "2026-01-05T10:02:00Z"
    return [{"type": kind, "status": ready, "lastTransitionTime": t} for kind in ("IngressReady", "PredictorReady", "Ready")]


def knative_isvc() -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "rag-embedder", "namespace": NS, "resourceVersion": "1001", "generation": 2,
                     "annotations": {"serving.kserve.io/deploymentMode": "Serverless"}},
        "spec": {"predictor": {
            "canaryTrafficPercent": 10,
            "minReplicas": 1,
            "model": {"modelFormat": {"name": "huggingface"}, "runtime": "ragserve-embedding",
                      "storageUri": "pvc://models/minilm-v2", "args": ["--model_name=embedder"]},
        }},
        "status": {
            "observedGeneration": 2,
            "deploymentMode": "Serverless",
            "url": "http://rag-embedder.ml.example.com",
            "address": {"url": "http://rag-embedder.ml.svc.cluster.local"},
            "components": {"predictor": {
                "latestCreatedRevision": KNATIVE_LATEST,
                "latestReadyRevision": KNATIVE_LATEST,
                "latestRolledoutRevision": KNATIVE_PREV,
                "url": "http://rag-embedder-predictor.ml.example.com",
                "address": {"url": "http://rag-embedder-predictor.ml.svc.cluster.local"},
                "traffic": [
                    {"tag": "prev", "revisionName": KNATIVE_PREV, "percent": 90, "latestRevision": False,
                     "url": "http://prev-rag-embedder-predictor.ml.example.com"},
                    {"tag": "latest", "revisionName": KNATIVE_LATEST, "percent": 10, "latestRevision": True,
                     "url": "http://latest-rag-embedder-predictor.ml.example.com"},
                ],
            }},
            "conditions": _conditions(),
        },
    }


STANDARD_CANARY_PREDICTOR = {
    "name": "v2",
    "minReplicas": 1,
    "model": {"name": "", "modelFormat": {"name": "huggingface"}, "runtime": "ragserve-generation",
              "storageUri": "pvc://models/smollm2-v2"},
}


def standard_isvc() -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "rag-generator", "namespace": NS, "resourceVersion": "2002", "generation": 3,
                     "annotations": {"serving.kserve.io/deploymentMode": "Standard"}},
        "spec": {
            "predictor": {"minReplicas": 2, "model": {
                "modelFormat": {"name": "huggingface"}, "runtime": "ragserve-generation",
                "storageUri": "pvc://models/smollm2-v1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}},
            "canary": [{"trafficPercent": 20, "predictor": copy.deepcopy(STANDARD_CANARY_PREDICTOR)}],
        },
        "status": {
            "observedGeneration": 3,
            "deploymentMode": "Standard",
            "url": "http://rag-generator-ml.example.com",
            "address": {"url": "http://rag-generator-predictor.ml.svc.cluster.local"},
            "components": {"predictor": {"url": "http://rag-generator-predictor.ml.svc.cluster.local"}},
            # KServe reports a canary by its variant name (spec.canary[].predictor.name)
            "canaryStatuses": [{"name": "v2", "ready": True, "trafficPercent": 20}],
            "conditions": _conditions(),
        },
    }


def no_canary_isvc() -> dict:
    obj = knative_isvc()
    obj["metadata"].update(name="rag-reranker", resourceVersion="3003")
    del obj["spec"]["predictor"]["canaryTrafficPercent"]
    rev = "rag-reranker-predictor-00004"
    obj["status"]["components"]["predictor"].update(
        latestCreatedRevision=rev, latestReadyRevision=rev, latestRolledoutRevision=rev,
        traffic=[{"revisionName": rev, "percent": 100, "latestRevision": True}])
    return obj


def test_fixtures_are_valid_inferenceservices(isvc_schema):
    for obj in (knative_isvc(), standard_isvc(), no_canary_isvc()):
        assert not list(isvc_schema.iter_errors(obj))
    broken = standard_isvc()
    del broken["spec"]["canary"][0]["predictor"]["model"]["name"]  # the CRD requires it under spec.canary[]
    assert list(isvc_schema.iter_errors(broken))


# -- status ------------------------------------------------------------------------


def test_status_knative(capsys, kubeconfig):
    code, out, err = ragserve(capsys, kubeconfig, "status", "rag-embedder")
    assert code == 0, err
    assert "inferenceservice/rag-embedder (namespace ml, Knative mode) ready: True" in out
    assert "canary: in progress, 10% configured" in out
    lines = out.splitlines()
    stable = next(line for line in lines if KNATIVE_PREV in line and "stable" in line)
    canary = next(line for line in lines if KNATIVE_LATEST in line and "canary" in line)
    assert "90%" in stable and "tag prev" in stable
    assert "10%" in canary and "tag latest" in canary
    assert f"latestRolledoutRevision={KNATIVE_PREV}" in out and f"latestReadyRevision={KNATIVE_LATEST}" in out

    code, out, _ = ragserve(capsys, kubeconfig, "status", "rag-embedder", "--output", "json")
    state = json.loads(out)
    assert [(t["name"], t["percent"], t["role"]) for t in state["traffic"]] == [
        (KNATIVE_PREV, 90, "stable"), (KNATIVE_LATEST, 10, "canary")]


def test_status_standard_and_namespace_from_kubeconfig_env(capsys, kubeconfig, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    code = main(["canary", "status", "rag-generator", "--output", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    state = json.loads(out)
    assert state["mode"] == "Standard" and state["namespace"] == NS and state["in_progress"]
    assert [(t["name"], t["percent"], t["role"], t["ready"], t["workload"]) for t in state["traffic"]] == [
        ("rag-generator-predictor", 80, "stable", True, "rag-generator-predictor"),
        ("v2", 20, "canary", True, "rag-generator-v2-predictor")]


def test_status_without_canary(capsys, kubeconfig):
    code, out, _ = ragserve(capsys, kubeconfig, "status", "rag-reranker")
    assert code == 0
    assert "canary: none in progress" in out
    assert "rag-reranker-predictor-00004" in out and "100%" in out


# -- set / promote / rollback: the exact patches ----------------------------------


def test_set_knative(capsys, kubeconfig, kube):
    code, out, err = ragserve(capsys, kubeconfig, "set", "rag-embedder", "25")
    assert code == 0, err
    assert kube.patches == [("rag-embedder", MERGE_PATCH, {
        "metadata": {"resourceVersion": "1001"}, "spec": {"predictor": {"canaryTrafficPercent": 25}}})]
    assert kube.objects["rag-embedder"]["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert "canary traffic 10% -> 25%" in out


def test_set_standard_replaces_the_atomic_canary_list(capsys, kubeconfig, kube):
    code, _, err = ragserve(capsys, kubeconfig, "set", "rag-generator", "50")
    assert code == 0, err
    assert kube.patches == [("rag-generator", MERGE_PATCH, {
        "metadata": {"resourceVersion": "2002"},
        "spec": {"canary": [{"trafficPercent": 50, "predictor": STANDARD_CANARY_PREDICTOR}]}})]
    assert kube.objects["rag-generator"]["spec"]["canary"][0]["trafficPercent"] == 50


def test_set_rejects_a_percent_out_of_range(capsys, kubeconfig, kube):
    code, _, err = ragserve(capsys, kubeconfig, "set", "rag-embedder", "120")
    assert code == 1
    assert err.strip() == "ragserve canary: error: percent must be between 0 and 100, got 120"
    assert kube.patches == []


def test_promote_knative_removes_canary_traffic_percent(capsys, kubeconfig, kube):
    code, out, err = ragserve(capsys, kubeconfig, "promote", "rag-embedder")
    assert code == 0, err
    assert kube.patches == [("rag-embedder", MERGE_PATCH, {
        "metadata": {"resourceVersion": "1001"}, "spec": {"predictor": {"canaryTrafficPercent": None}}})]
    assert "canaryTrafficPercent" not in kube.objects["rag-embedder"]["spec"]["predictor"]
    assert "promoted" in out


def test_promote_standard_carries_over_only_what_the_canary_changed(capsys, kubeconfig, kube):
    code, _, err = ragserve(capsys, kubeconfig, "promote", "rag-generator")
    assert code == 0, err
    (_, content_type, patch), = kube.patches
    assert content_type == MERGE_PATCH
    assert patch == {
        "metadata": {"resourceVersion": "2002"},
        "spec": {"predictor": {"model": {"storageUri": "pvc://models/smollm2-v2"}}, "canary": None},
    }
    predictor = kube.objects["rag-generator"]["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == "pvc://models/smollm2-v2"  # the canary's model
    assert predictor["minReplicas"] == 2  # the stable's replicas, not the canary's
    assert predictor["model"]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert "name" not in predictor and "name" not in predictor["model"]
    assert kube.field_managers == ["ragserve"]


def test_rollback_knative_pins_traffic_to_the_previous_revision(capsys, kubeconfig, kube):
    code, _, err = ragserve(capsys, kubeconfig, "rollback", "rag-embedder")
    assert code == 0, err
    assert kube.patches == [("rag-embedder", MERGE_PATCH, {
        "metadata": {"resourceVersion": "1001"}, "spec": {"predictor": {"canaryTrafficPercent": 0}}})]


def test_rollback_standard_removes_the_canary(capsys, kubeconfig, kube):
    code, _, err = ragserve(capsys, kubeconfig, "rollback", "rag-generator")
    assert code == 0, err
    assert kube.patches == [("rag-generator", MERGE_PATCH, {
        "metadata": {"resourceVersion": "2002"}, "spec": {"canary": None}})]
    assert kube.objects["rag-generator"]["spec"] == {"predictor": standard_isvc()["spec"]["predictor"]}


@pytest.mark.parametrize("argv", [("promote", "rag-generator"), ("set", "rag-embedder", "40"), ("rollback", "rag-embedder")])
def test_dry_run_prints_the_patch_and_sends_nothing(capsys, kubeconfig, kube, argv):
    code, out, err = ragserve(capsys, kubeconfig, *argv, "--dry-run")
    assert code == 0, err
    header, body = out.split("\n", 1)
    assert header == (f"# dry run, not sent: JSON merge patch for inferenceservice/{argv[1]} "
                      f"(Content-Type: {MERGE_PATCH})")
    assert json.loads(body)["metadata"] == {"resourceVersion": kube.objects[argv[1]]["metadata"]["resourceVersion"]}
    assert kube.patches == []


# -- errors: one line, exit 1 ------------------------------------------------------


def test_missing_inferenceservice(capsys, kubeconfig):
    code, out, err = ragserve(capsys, kubeconfig, "status", "ghost")
    assert code == 1 and out == ""
    assert err == 'ragserve canary: error: inferenceservice "ghost" not found in namespace "ml"\n'


def test_namespace_flag_as_kubectl_spells_it(capsys, kubeconfig):
    for flag in ("-n", "--namespace"):
        code, _, err = ragserve(capsys, kubeconfig, "status", "rag-embedder", flag, "other")
        assert code == 1 and err == 'ragserve canary: error: inferenceservice "rag-embedder" not found in namespace "other"\n'


def test_rbac_denial_names_verb_and_resource(capsys, kubeconfig, kube):
    kube.forbidden.add(("patch", "rag-embedder"))
    code, _, err = ragserve(capsys, kubeconfig, "promote", "rag-embedder")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith('ragserve canary: error: forbidden: cannot patch inferenceservices.serving.kserve.io '
                          '"rag-embedder" in namespace "ml"')
    assert 'verb "patch" on resource "inferenceservices" in API group "serving.kserve.io"' in err
    assert 'User "system:serviceaccount:ml:ci" cannot patch' in err  # the API server's own words

    kube.forbidden.add(("get", "rag-generator"))
    code, _, err = ragserve(capsys, kubeconfig, "status", "rag-generator")
    assert code == 1 and "cannot get inferenceservices.serving.kserve.io" in err


@pytest.mark.parametrize("action", ["promote", "rollback", "analyze"])
def test_no_canary_in_progress(capsys, kubeconfig, kube, prometheus, action):
    extra = ["--prometheus", prometheus.url] if action == "analyze" else []
    code, _, err = ragserve(capsys, kubeconfig, action, "rag-reranker", *extra)
    assert code == 1 and err.count("\n") == 1
    assert "no canary in progress for inferenceservice 'rag-reranker'" in err
    assert kube.patches == [] and prometheus.queries == []


def test_conflicting_write_is_refused(capsys, kubeconfig, kube):
    kube.modify_before_next_patch = True
    code, _, err = ragserve(capsys, kubeconfig, "rollback", "rag-embedder")
    assert code == 1
    assert err == ('ragserve canary: error: inferenceservice "rag-embedder" changed while it was being updated '
                   "(409 Conflict); run the command again\n")
    assert kube.objects["rag-embedder"]["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_unreachable_api_server(capsys, tmp_path):
    config = tmp_path / "config"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
    }))
    code, _, err = ragserve(capsys, str(config), "status", "rag-embedder")
    assert code == 1 and err.count("\n") == 1
    assert "ragserve canary: error: the Kubernetes API at http://127.0.0.1:" in err and "unavailable" in err


# -- analyze -------------------------------------------------------------------------


def knative_queries(revision: str, window: str = "10m") -> dict[str, str]:
    sel = f'namespace_name="ml",revision_name="{revision}"'
    return {
        "requests": f"sum(increase(revision_app_request_count{{{sel}}}[{window}]))",
        "errors": f'sum(increase(revision_app_request_count{{{sel},response_code_class="5xx"}}[{window}]))',
        "p95": f"histogram_quantile(0.95, sum by (le) (rate(revision_app_request_latencies_bucket{{{sel}}}[{window}])))",
    }


def record_knative(prometheus, *, canary_requests, canary_errors, canary_p95_ms, window="10m"):
    stable, canary = knative_queries(KNATIVE_PREV, window), knative_queries(KNATIVE_LATEST, window)
    prometheus.results.update({
        stable["requests"]: 9000.0, stable["errors"]: 9.0, stable["p95"]: 120.0,
        canary["requests"]: canary_requests, canary["errors"]: canary_errors, canary["p95"]: canary_p95_ms,
    })


def test_analyze_good_canary_promotes(capsys, kubeconfig, kube, prometheus):
    record_knative(prometheus, canary_requests=1000.0, canary_errors=None, canary_p95_ms=130.0)  # no 5xx series at all
    code, out, err = ragserve(capsys, kubeconfig, "analyze", "rag-embedder", "--prometheus", prometheus.url)
    assert code == 0, err
    assert out.splitlines()[-1] == "verdict: promote"
    stable_row = next(line for line in out.splitlines() if line.strip().startswith("stable"))
    assert KNATIVE_PREV in stable_row and "9000" in stable_row and "0.10%" in stable_row and "120.0 ms" in stable_row
    assert "canary 0.00% vs stable 0.10%: -0.10 pp (max +1.00 pp)" in out
    assert "canary 130.0 ms vs stable 120.0 ms: x1.08 (max x1.20)" in out
    assert set(prometheus.queries) <= set(prometheus.results)
    assert kube.patches == []


def test_analyze_bad_canary_rolls_back_with_apply(capsys, kubeconfig, kube, prometheus):
    record_knative(prometheus, canary_requests=1000.0, canary_errors=80.0, canary_p95_ms=480.0, window="30m")
    code, out, err = ragserve(capsys, kubeconfig, "analyze", "rag-embedder", "--prometheus", prometheus.url,
                              "--window", "30m", "--apply")
    assert code == 3, err
    assert "error rate:  FAIL  canary 8.00% vs stable 0.10%: +7.90 pp (max +1.00 pp)" in out
    assert "p95 latency: FAIL  canary 480.0 ms vs stable 120.0 ms: x4.00 (max x1.20)" in out
    assert "verdict: rollback" in out
    assert kube.patches == [("rag-embedder", MERGE_PATCH, {
        "metadata": {"resourceVersion": "1001"}, "spec": {"predictor": {"canaryTrafficPercent": 0}}})]
    assert out.rstrip().endswith("rolled back: canaryTrafficPercent 0, 100% of traffic to the previous revision")


def test_analyze_good_canary_with_apply_promotes(capsys, kubeconfig, kube, prometheus):
    record_knative(prometheus, canary_requests=1000.0, canary_errors=2.0, canary_p95_ms=125.0)
    code, _, err = ragserve(capsys, kubeconfig, "analyze", "rag-embedder", "--prometheus", prometheus.url, "--apply")
    assert code == 0, err
    assert kube.patches == [("rag-embedder", MERGE_PATCH, {
        "metadata": {"resourceVersion": "1001"}, "spec": {"predictor": {"canaryTrafficPercent": None}}})]


def test_analyze_with_too_little_traffic_is_inconclusive(capsys, kubeconfig, kube, prometheus):
    record_knative(prometheus, canary_requests=12.0, canary_errors=6.0, canary_p95_ms=900.0)
    code, out, _ = ragserve(capsys, kubeconfig, "analyze", "rag-embedder", "--prometheus", prometheus.url,
                            "--apply", "--output", "json")
    assert code == 4
    result = json.loads(out)
    assert result["verdict"] == "inconclusive"
    assert result["checks"][0] == {"name": "traffic", "ok": None,
                                   "detail": "canary served 12 requests in 10m; need 50 each"}
    assert kube.patches == []


def test_analyze_standard_mode(capsys, kubeconfig, kube, prometheus):
    def side(workload, requests, errors, p95_seconds):
        pods = f'namespace="ml",pod=~"{workload}-[a-z0-9]+-[a-z0-9]+"'
        mesh = f'reporter="destination",destination_workload_namespace="ml",destination_workload="{workload}"'
        return {
            f"sum(increase(request_predict_seconds_count{{{pods}}}[10m]))": requests,
            f"sum(increase(istio_requests_total{{{mesh}}}[10m]))": requests,
            f'sum(increase(istio_requests_total{{{mesh},response_code=~"5.."}}[10m]))': errors,
            f"histogram_quantile(0.95, sum by (le) (rate(request_predict_seconds_bucket{{{pods}}}[10m])))": p95_seconds,
        }

    prometheus.results.update(side("rag-generator-predictor", 800.0, 4.0, 0.9))
    prometheus.results.update(side("rag-generator-v2-predictor", 200.0, 1.0, 0.95))
    code, out, err = ragserve(capsys, kubeconfig, "analyze", "rag-generator", "--prometheus", prometheus.url,
                              "--apply")
    assert code == 0, err
    assert "canary 950.0 ms vs stable 900.0 ms: x1.06" in out
    (_, _, patch), = kube.patches
    assert patch["spec"]["canary"] is None and patch["spec"]["predictor"]["model"]["storageUri"] == "pvc://models/smollm2-v2"
    assert len(prometheus.queries) == 8


def test_analyze_reports_prometheus_errors(capsys, kubeconfig, prometheus):
    # nothing recorded: the stand-in rejects the query as Prometheus rejects a bad one
    code, _, err = ragserve(capsys, kubeconfig, "analyze", "rag-embedder", "--prometheus", prometheus.url)
    assert code == 1 and err.count("\n") == 1
    assert "Prometheus rejected 'sum(increase(revision_app_request_count{" in err and "bad_data" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [((), "analyze needs --prometheus URL"), (("--prometheus", "http://p", "--window", "10x"), "window: String should match")],
)
def test_analyze_flags_are_checked_before_the_cluster_is_touched(capsys, kube, flags, message):
    code = main(["canary", "analyze", "rag-embedder", "--kubeconfig", "/nonexistent", *flags])
    assert code == 1
    assert message in capsys.readouterr().err


# -- Standard mode round trip on the bundle's own LLM predictor ---------------------

KEPT_FIELDS = ("nodeSelector", "tolerations", "topologySpreadConstraints", "priorityClassName", "affinity",
               "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "autoScaling", "annotations", "labels",
               "serviceAccountName", "securityContext", "timeout")


def rendered_rag(tmp_path, components: list[str]) -> dict:
    """The `rag` InferenceService of overlays/dev with ``components``, as kustomize renders it."""
    import os
    import shutil

    from ragserve.manifests.render import render

    if shutil.which("kubectl") is None:
        pytest.skip("rendering needs kubectl (built-in kustomize)")
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731
    comps = ", ".join(rel(REPO / "inferenceservices" / "components" / c) for c in components)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{rel(REPO / 'inferenceservices' / 'overlays' / 'dev')}]\ncomponents: [{comps}]\n")
    rag = next(o for o in render(tmp_path) if o["kind"] == "InferenceService" and o["metadata"]["name"] == "rag")
    rag["metadata"].update(namespace=NS, resourceVersion="7")
    rag["status"] = {"deploymentMode": "Standard", "conditions": _conditions()}
    return rag


def hpa_variant(rag: dict) -> dict:
    """The same predictor under KServe's HPA: scaleMetric/scaleTarget, and a PriorityClass."""
    rag = copy.deepcopy(rag)
    rag["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] = "hpa"
    predictor = rag["spec"]["predictor"]
    predictor.pop("autoScaling", None)
    predictor.update(scaleMetric="cpu", scaleTarget=80, minReplicas=1, priorityClassName="ragserve-llm")
    return rag


def webhook_errors(obj: dict) -> list[str]:
    from ragserve.manifests.bundle import Bundle
    from ragserve.manifests.rules import check_rules

    return [str(p) for p in check_rules(obj, Bundle([obj])) if p.severity == "error"]


@pytest.mark.parametrize("autoscaler", ["keda", "hpa"])
def test_standard_round_trip_keeps_the_stable_predictor_whole(capsys, kubeconfig, kube, tmp_path, autoscaler):
    rag = rendered_rag(tmp_path, ["gpu", "model-pvc", "scale-to-zero", "standard-mode"])
    if autoscaler == "hpa":
        rag = hpa_variant(rag)
    kube.add(rag)
    before = copy.deepcopy(rag["spec"]["predictor"])
    assert before["nodeSelector"] and before["tolerations"] and before["model"]["storageUri"]

    code, out, err = ragserve(capsys, kubeconfig, "start", "rag", "--runtime-version", "0.1.1",
                              "--env", "RAGSERVE_GENERATION_MAX_TOKENS_CAP=128")
    assert code == 0, err
    assert "spec.canary[] 'candidate' (Deployment rag-candidate-predictor) takes 10%" in out
    obj = kube.objects["rag"]
    canary = obj["spec"]["canary"][0]["predictor"]
    assert obj["spec"]["predictor"] == before  # starting a canary leaves the stable predictor alone
    assert canary["name"] == "candidate" and canary["model"]["name"] == ""
    assert canary["model"]["runtimeVersion"] == "0.1.1"
    assert not {"maxReplicas", "minReplicas", "scaleMetric", "scaleTarget", "autoScaling"} & set(canary)
    for key in ("nodeSelector", "tolerations", "topologySpreadConstraints", "securityContext"):
        assert canary[key] == before[key], key  # derived: the canary runs where the stable runs
    assert canary["model"]["storageUri"] == before["model"]["storageUri"]
    assert canary["model"]["resources"] == before["model"]["resources"]
    assert webhook_errors(obj) == []

    code, _, err = ragserve(capsys, kubeconfig, "promote", "rag")
    assert code == 0, err
    after = kube.objects["rag"]["spec"]
    assert "canary" not in after
    for key in KEPT_FIELDS:
        assert after["predictor"].get(key) == before.get(key), key
    for key in ("storageUri", "resources", "modelFormat", "runtime", "protocolVersion"):
        assert after["predictor"]["model"].get(key) == before["model"].get(key), key
    assert after["predictor"]["model"]["runtimeVersion"] == "0.1.1"
    assert {"name": "RAGSERVE_GENERATION_MAX_TOKENS_CAP", "value": "128"} in after["predictor"]["model"]["env"]
    assert "name" not in after["predictor"]["model"]  # KServe refuses model.name on the stable predictor
    assert webhook_errors(kube.objects["rag"]) == []

    promoted = copy.deepcopy(after["predictor"])
    code, _, err = ragserve(capsys, kubeconfig, "start", "rag", "--runtime-version", "0.1.2", "--percent", "5")
    assert code == 0, err
    code, out, err = ragserve(capsys, kubeconfig, "status", "rag")
    assert "canary: in progress, 5% configured" in out
    assert "deployment rag-candidate-predictor" in out
    code, _, err = ragserve(capsys, kubeconfig, "rollback", "rag")
    assert code == 0, err
    assert kube.objects["rag"]["spec"]["predictor"] == promoted
    assert kube.field_managers == ["ragserve"] * 4
    code, out, _ = ragserve(capsys, kubeconfig, "status", "rag")
    assert "canary: none in progress" in out


def test_rendered_standard_canary_component_promotes_to_the_same_predictor(capsys, kubeconfig, kube, tmp_path):
    rag = rendered_rag(tmp_path, ["gpu", "model-pvc", "standard-mode", "canary/standard"])
    kube.add(rag)
    assert webhook_errors(rag) == []
    code, _, err = ragserve(capsys, kubeconfig, "promote", "rag")
    assert code == 0, err
    assert kube.patches[0][2]["spec"] == {"predictor": {}, "canary": None}
    assert kube.objects["rag"]["spec"]["predictor"] == rag["spec"]["predictor"]


def test_start_knative_makes_a_new_revision_with_canary_traffic(capsys, kubeconfig, kube):
    code, _, err = ragserve(capsys, kubeconfig, "start", "rag-reranker", "--image", "ghcr.io/x/reranker:2",
                            "--percent", "15")
    assert code == 0, err
    assert kube.patches[0][2]["spec"] == {"predictor": {"canaryTrafficPercent": 15,
                                                        "model": {"image": "ghcr.io/x/reranker:2"}}}
    code, _, err = ragserve(capsys, kubeconfig, "start", "rag-embedder", "--image", "x:1")
    assert code == 1 and "already has a canary in progress" in err
    code, _, err = ragserve(capsys, kubeconfig, "start", "rag-reranker")
    assert code == 1 and "say what the canary changes" in err


def test_status_of_an_unreconciled_inferenceservice(capsys, kubeconfig, kube):
    fresh = no_canary_isvc()
    fresh["metadata"].update(name="fresh", annotations={})
    del fresh["status"]
    kube.add(fresh)
    code, out, err = ragserve(capsys, kubeconfig, "status", "fresh")
    assert code == 0, err
    assert "(namespace ml, Knative mode) ready: Unknown" in out
    assert "not reconciled yet: KServe has written no status" in out
    assert "canary: none in progress" in out


def test_a_change_kubectl_apply_would_revert_is_named(capsys, kubeconfig, kube):
    applied = {"spec": {"predictor": {"canaryTrafficPercent": 10, "minReplicas": 1}}}
    obj = knative_isvc()
    obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json.dumps(applied)
    kube.add(obj)
    code, out, err = ragserve(capsys, kubeconfig, "set", "rag-embedder", "40")
    assert code == 0, err
    assert "note: the next `kubectl apply` of this object's manifests sets spec.predictor.canaryTrafficPercent back" in out
    code, out, _ = ragserve(capsys, kubeconfig, "set", "rag-embedder", "10")  # what apply would set anyway
    assert "note:" not in out


def test_knative_canary_percent_reapplied_after_promote_only_arms_the_next_rollout(capsys, kubeconfig, kube):
    """After `ragserve canary promote`, the next `kubectl apply -k` of prod sets canaryTrafficPercent 10 again."""
    code, _, err = ragserve(capsys, kubeconfig, "promote", "rag-embedder")
    assert code == 0, err
    obj = kube.objects["rag-embedder"]
    obj["spec"]["predictor"]["canaryTrafficPercent"] = 10  # what the re-apply writes back
    pstatus = obj["status"]["components"]["predictor"]  # KServe, reconciled: one revision, rolled out
    pstatus.update(latestRolledoutRevision=KNATIVE_LATEST, previousRolledoutRevision=KNATIVE_PREV,
                   traffic=[{"revisionName": KNATIVE_LATEST, "percent": 100, "latestRevision": True}])
    code, out, _ = ragserve(capsys, kubeconfig, "status", "rag-embedder")
    assert "canary: none in progress (canaryTrafficPercent 10 is set: the next spec change starts as a canary at 10%)" in out
    code, _, err = ragserve(capsys, kubeconfig, "promote", "rag-embedder")
    assert code == 1 and "no canary in progress" in err
    obj["metadata"]["generation"] = 3  # a new tag applied, not yet reconciled: the spec says canary
    code, out, _ = ragserve(capsys, kubeconfig, "status", "rag-embedder")
    assert "canary: in progress, 10% configured" in out
