"""The manifests in inferenceservices/: every overlay and component renders
and validates against the real KServe CRDs (the pinned release, cached); each
deliberately broken bundle in fixtures/broken_manifests fails with a message
naming the object and the field."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ragserve.cli import main
from ragserve.manifests import ManifestError
from ragserve.manifests.crds import KSERVE_RELEASE, crd_catalog, download_crds
from ragserve.manifests.render import render
from ragserve.manifests.schema import to_jsonschema

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "inferenceservices"
BROKEN = Path(__file__).resolve().parent / "fixtures" / "broken_manifests"

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="rendering needs kubectl (built-in kustomize)")
# validation reads KServe's CRDs at the pinned release (skipped, naming the mirror setting, without them)
needs_crds = pytest.mark.usefixtures("kserve_crd_dir")


def validate(capsys, *args) -> tuple[int, str]:
    rc = main(["validate", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def kustomization(tmp_path: Path, resource: Path, components: list[str]) -> Path:
    """A throwaway overlay; kustomize accepts only relative paths to other kustomizations.
    Over the bare base it pins the images, as every overlay does."""
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731
    comps = ", ".join(rel(MANIFESTS / "components" / c) for c in components)
    images = ""
    if resource == MANIFESTS / "base":
        images = "images:\n" + "".join(
            f"  - {{name: ragserve-{n}, newName: ghcr.io/ragserve/{n}, newTag: 0.1.0}}\n"
            for n in ("embedding", "generation", "rag-transformer"))
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{rel(resource)}]\ncomponents: [{comps}]\n{images}"
    )
    return tmp_path


@needs_crds
@needs_kubectl
@pytest.mark.parametrize("overlay", ["local", "dev", "prod"])
def test_overlay_renders_and_validates_clean(capsys, overlay):
    rc, out = validate(capsys, "--overlay", overlay)
    assert rc == 0, out
    assert "0 errors, 0 warnings" in out, out


@needs_crds
@needs_kubectl
def test_every_overlay_is_validated_by_default(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    rc, out = validate(capsys)
    assert rc == 0, out
    assert sorted(re.findall(r"overlays/(\w+): \d+ objects", out)) == ["dev", "local", "prod"]


# every combination the READMEs document, on the dev overlay (CPU) and on a
# bare base (the GPU predictor as base/ writes it); canary/standard goes last:
# it derives the canary from the predictor the components before it produced
COMBINATIONS = [
    ["gpu"],
    ["gpu", "gpu-mig"],
    ["gpu-timeslice"],
    ["scale-to-zero"],
    ["gpu", "scale-to-zero", "canary"],
    ["gpu", "gpu-timeslice", "scale-to-zero", "canary", "model-pvc"],
    ["model-pvc"],
    ["standard-mode"],
    ["standard-mode", "canary/standard"],
    ["standard-mode", "scale-to-zero", "canary/standard"],
    ["gpu", "gpu-timeslice", "model-pvc", "scale-to-zero", "standard-mode", "canary/standard"],
    ["gpu", "gpu-mig", "standard-mode", "canary/standard"],
    ["mesh"],
    ["mesh", "standard-mode", "canary/standard"],
]


@needs_crds
@needs_kubectl
@pytest.mark.parametrize("folder", ["jobs", "cluster"])
def test_separately_applied_kustomizations_validate_clean(capsys, folder):
    rc, out = validate(capsys, MANIFESTS / folder)
    assert rc == 0 and "0 errors, 0 warnings" in out, out


@needs_kubectl
@pytest.mark.parametrize("overlay", ["local", "dev", "prod"])
def test_cluster_scoped_objects_stay_out_of_the_overlays(overlay):
    """`kubectl delete -k overlays/dev` must not delete what prod needs (PriorityClass)."""
    kinds = {o["kind"] for o in render(MANIFESTS / "overlays" / overlay)}
    assert not kinds & {"PriorityClass", "Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime"}
    (priority_class,) = render(MANIFESTS / "cluster")
    assert "globalDefault" not in priority_class  # the API server's default; spelled out it reads as a change


@needs_kubectl
@pytest.mark.parametrize("components", [c for c in COMBINATIONS if "canary/standard" in c], ids="+".join)
def test_standard_canary_is_derived_from_the_stable_predictor(tmp_path, components):
    rag = next(o for o in render(kustomization(tmp_path, MANIFESTS / "overlays" / "dev", components))
               if o["kind"] == "InferenceService" and o["metadata"]["name"] == "rag")
    stable, (canary,) = rag["spec"]["predictor"], rag["spec"]["canary"]
    dropped = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "autoScaling"}
    assert {k: v for k, v in canary["predictor"].items() if k != "name"} == {
        **{k: v for k, v in stable.items() if k not in dropped}, "model": {**stable["model"], "name": ""}}
    assert canary["predictor"]["name"] == "candidate"


@needs_crds
@needs_kubectl
@pytest.mark.parametrize("base", ["overlays/dev", "base"])
@pytest.mark.parametrize("components", COMBINATIONS, ids="+".join)
def test_component_validates_clean(capsys, tmp_path, components, base):
    rc, out = validate(capsys, kustomization(tmp_path, MANIFESTS / base, components))
    assert rc == 0, out
    # only kinds without a Kubernetes schema (Istio's) may warn
    assert all("PeerAuthentication" in line for line in out.splitlines() if "warning:" in line), out


@needs_crds
@needs_kubectl
def test_knative_canary_is_rejected_in_standard_mode(capsys, tmp_path):
    rc, out = validate(capsys, kustomization(tmp_path, MANIFESTS / "overlays" / "dev", ["standard-mode", "canary"]))
    assert rc == 1
    assert "InferenceService/rag: spec.predictor.canaryTrafficPercent: only Knative mode" in out


BROKEN_CASES = {
    "typo_field": "InferenceService/rag: spec.predictor.minReplica: unknown field",
    "bad_router_type": "InferenceGraph/rag-graph: spec.nodes.root.routerType: 'Broadcast' is not one of",
    "splitter_weights": "InferenceGraph/rag-graph: spec.nodes.root.steps: Splitter weights [60, 30] add up to 90",
    "scale_metric_qps": "InferenceService/embedder: spec.predictor.scaleMetric: 'qps' is not one of",
    "canary_150": "InferenceService/rag: spec.predictor.canaryTrafficPercent: 150 is not a percentage",
    "gpu_request_without_limit": "InferenceService/embedder: spec.predictor.model.resources.limits.nvidia.com/gpu: GPU request without limit",
    "missing_security_context": "InferenceService/rag: spec.transformer.containers[0].securityContext.",
    "graph_unknown_service": "InferenceGraph/rag-graph: spec.nodes.root.steps[0].serviceName: no InferenceService 'embeder'",
    "graph_without_root": "InferenceGraph/rag-graph: spec.nodes.root: missing",
    "two_implementations": "InferenceService/embedder: spec.predictor: exactly one predictor implementation",
    "standard_mode_hpa_min_zero": "InferenceService/embedder: spec.predictor.minReplicas: 0 in Standard mode",
    "mig_without_annotation": "InferenceService/embedder: metadata.annotations.serving.kserve.io/gpu-resource-types: must list 'nvidia.com/mig-1g.10gb'",
    "gpu_scale_to_zero_without_progress_deadline": "InferenceService/rag: spec.predictor.annotations: a GPU predictor scaling from zero needs serving.knative.dev/progress-deadline",
    "scale_to_zero_process_readiness": "InferenceService/embedder: spec.predictor.model.readinessProbe: /v2/health/ready (set by ServingRuntime ragserve-embedding)",
    "bad_quantity": "InferenceService/embedder: spec.predictor.model.resources.limits.memory: '2Gx' is not a Kubernetes quantity",
    "standard_canary_without_model_name": "InferenceService/rag: spec.canary[0].predictor.model.name: required field is missing",
    "unpinned_image": "InferenceService/rag: spec.transformer.containers[0].image: 'ghcr.io/ragserve/rag-transformer:latest' is not pinned",
    "secret_with_values.yaml": "Secret/ragserve-milvus: stringData: Secret values do not belong in the bundle",
    # KServe's validating webhook (issue 12: items 1, 2, 8)
    "keda_scale_metric": "InferenceService/embedder: spec.predictor.scaleMetric: not supported with autoscalerClass keda",
    "canary_without_predictor_name": "InferenceService/rag: spec.canary[0].predictor.name: canary[0] predictor.name is required",
    "canary_max_replicas": "InferenceService/rag: spec.canary[0].predictor.maxReplicas: must not set maxReplicas: a KServe canary uses fixed replicas",
    "canary_autoscaling": "InferenceService/rag: spec.canary[0].predictor.autoScaling: must not set autoScaling",
    "canary_min_replicas_above_stable": "InferenceService/rag: spec.canary[0].predictor.minReplicas: 1 must not exceed stable predictor's minReplicas (0)",
    "canary_in_knative_mode": "InferenceService/rag: spec.canary: only supported in Standard deployment mode",
    "min_replicas_negative": "InferenceService/embedder: spec.predictor.minReplicas: -1 is negative",
    "isvc_bad_name": "InferenceService/2embedder: metadata.name: '2embedder': an InferenceService name must",
    "autoscaler_class_unknown": "InferenceService/embedder: metadata.annotations.serving.kserve.io/autoscalerClass: 'kpa' is not a supported autoscaler class",
    "hpa_metric_concurrency": "InferenceService/embedder: spec.predictor.scaleMetric: 'concurrency' is not an HPA metric",
    "graph_bad_name": "InferenceGraph/rag.graph: metadata.name: 'rag.graph': an InferenceGraph name must",
    "stable_model_name": "InferenceService/rag: spec.predictor.model.name: must be empty",
    # the API server's own validation of core objects
    "label_value_too_long": "ConfigMap/ragserve-settings: metadata.labels.team: label value 'xxx",
    "annotation_bad_key": "ServiceAccount/ragserve: metadata.annotations.ragserve.io/owner/team: annotation key 'ragserve.io/owner/team' has more than one '/'",
    "bad_object_name": "ServiceAccount/RagServe: metadata.name: 'RagServe' must be lowercase",
    "pdb_min_and_max": "PodDisruptionBudget/embedder-predictor: spec.maxUnavailable: minAvailable and maxUnavailable cannot be both set",
    "selector_bad_operator": "NetworkPolicy/ragserve-predictors: spec.podSelector.matchExpressions[0].operator: 'Equals' is not a valid selector operator",
    "bad_port": "NetworkPolicy/ragserve-milvus-clients: spec.egress[0].ports[0].port: 195300 is not a valid port number",
    "bad_cidr": "NetworkPolicy/ragserve-egress: spec.egress[2].to[0].ipBlock.cidr: '10.0.0.0/33' is not a valid CIDR",
    "configmap_bad_key": "ConfigMap/ragserve-settings: data.RAGSERVE RAG TOP K: key 'RAGSERVE RAG TOP K' must be",
    "priorityclass_value_too_high": "PriorityClass/ragserve-llm: value: 2000000000 is above 1000000000",
    # house rule: the GPU quota covers the bundle's maxima (issue 12, item 6)
    "quota_below_gpu_maxima": "ResourceQuota/ragserve-gpu: spec.hard.requests.nvidia.com/gpu: 4 is below the 8",
}


def test_every_broken_fixture_has_an_expectation():
    assert sorted(p.name for p in BROKEN.iterdir()) == sorted(BROKEN_CASES)


@needs_crds
@needs_kubectl
@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_broken_manifest_fails_naming_the_field(capsys, case):
    rc, out = validate(capsys, BROKEN / case)
    assert rc == 1, out
    errors = [line for line in out.splitlines() if ": error: " in line]
    assert errors, out
    # every error is the planted one: the rest of the bundle stays valid
    expected = BROKEN_CASES[case]
    where = expected.split(": ", 2)[0] + ": " + expected.split(": ", 2)[1]
    assert all(where in line for line in errors), out
    assert any(expected in line for line in errors), out


@needs_crds
@needs_kubectl
def test_cli_exit_codes_in_a_real_process():
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "ragserve", "validate", *map(str, a)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    broken = run(BROKEN / "canary_150")
    assert broken.returncode == 1
    assert "spec.predictor.canaryTrafficPercent" in broken.stdout
    missing = run(BROKEN / "no_such_overlay")
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


def test_crds_are_downloaded_once_and_cached(tmp_path, monkeypatch, kserve_crd_dir):
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(kserve_crd_dir), **kw)

        def log_message(self, fmt, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("RAGSERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("RAGSERVE_CRD_BASE_URL", f"http://127.0.0.1:{server.server_port}/")
    try:
        folder = download_crds("v0.0-test")
        assert folder == tmp_path / "crds" / "v0.0-test"
        assert len(requests) == 4
        catalog = crd_catalog(None, "v0.0-test")
        assert catalog.schema("serving.kserve.io/v1beta1", "InferenceService")
        assert len(requests) == 4, "a cached release is not downloaded again"
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_crd_download_names_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGSERVE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("RAGSERVE_CRD_BASE_URL", "http://127.0.0.1:9/")
    with pytest.raises(ManifestError, match="--crd-dir"):
        download_crds("v0.0-offline")


def test_pinned_kserve_release_matches_the_sdk_pin():
    pin = re.search(r'"kserve==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert KSERVE_RELEASE == f"v{pin}"


def test_structural_schema_rejects_unknown_fields_like_kubectl_apply():
    schema = to_jsonschema({
        "type": "object",
        "properties": {
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {"type": "string"}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
            "bare": {"x-kubernetes-int-or-string": True},
            "maybe": {"type": "string", "nullable": True},
        },
    })
    assert schema["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["open"]
    assert schema["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    assert schema["properties"]["bare"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert schema["properties"]["maybe"]["type"] == ["string", "null"]

    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors({"open": {"x": 1}, "labels": {"k": "v"}, "port": "http", "bare": 8080, "maybe": None}))
    assert [e.message for e in validator.iter_errors({"typo": 1})] == ["Additional properties are not allowed ('typo' was unexpected)"]


# -- the local overlay is what `ragserve up` will run --------------------------------


@needs_kubectl
def test_local_overlay_runs_as_plain_ragserve_processes(monkeypatch, tmp_path):
    """What `ragserve up` would start parses with each component's own settings, wired on loopback."""
    from ragserve.cli.serve import COMPONENTS, component_parser
    from ragserve.local.plan import Planner, PortAllocator, RevisionStore
    from ragserve.settings import settings_from_args

    plan = Planner(
        render(MANIFESTS / "overlays" / "local"), ports=PortAllocator(0), store=RevisionStore(tmp_path / "rev.json")
    ).build(milvus_uri="http://127.0.0.1:19530", has_gpu=False)
    settings = {}
    for proc in plan.processes():
        assert proc.argv[1:4] == ["-m", "ragserve", "serve"], proc
        component = proc.argv[4]
        assert component in COMPONENTS, f"{proc.revision}: `ragserve serve {component}` does not exist"
        parser, cls = component_parser(component)
        prefix = cls.model_config["env_prefix"]
        unknown = [k for k in proc.env if k.startswith(prefix) and k[len(prefix):].lower() not in cls.model_fields]
        assert not unknown, f"{proc.revision}: settings {cls.__name__} has no fields for {unknown}"
        with monkeypatch.context() as env:
            for key, value in proc.env.items():
                env.setenv(key, value)
            settings[f"{proc.isvc}-{proc.role}"] = settings_from_args(cls, parser.parse_args(proc.argv[5:]))
    embedder, generator, transformer = settings["embedder-predictor"], settings["rag-predictor"], settings["rag-transformer"]
    ports = [p for s in settings.values() for p in (s.http_port, s.grpc_port)]
    assert len(ports) == len(set(ports)), "local processes share ports"
    assert all(s.host == "127.0.0.1" for s in settings.values())
    assert transformer.predictor_host == f"127.0.0.1:{plan.route('rag', 'predictor').port}"
    assert transformer.embedding_url == plan.route("embedder", "predictor").url
    assert transformer.milvus_uri == "http://127.0.0.1:19530"
    assert (embedder.model_name, generator.model_name, transformer.model_name) == ("embedder", "rag", "rag")


@needs_kubectl
def test_graph_switch_routes_v2_requests_by_input_name():
    from ragserve.graph.gjson import compile_path

    graph = next(o for o in render(MANIFESTS / "overlays" / "prod") if o["kind"] == "InferenceGraph")
    steps = graph["spec"]["nodes"]["root"]["steps"]

    def route(body: dict) -> str | None:
        return next((s["serviceName"] for s in steps if compile_path(s["condition"]).exists(body)), None)

    v2 = lambda name, *data: {"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(data)], "data": list(data)}]}  # noqa: E731
    assert route(v2("text", "a passage", "another")) == "embedder"
    assert route(v2("text_input", "What is KServe?")) == "rag"
    assert route({"instances": ["v1 bodies match no step"]}) is None


# -- the API server's and KServe's rules, one by one (pure functions) ------------------

@pytest.mark.parametrize(("key", "ok"), [
    ("app.kubernetes.io/part-of", True), ("team", True), ("a_b.c-D9", True),
    ("a/b/c", False), ("-team", False), ("x" * 64, False), ("Example.com/team", False), ("/team", False),
])
def test_qualified_names(key, ok):
    from ragserve.manifests.core import qualified_name

    assert (qualified_name(key) is None) == ok


def _deployment(container: dict, **pod) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"app": "d"}},
                     "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [container], **pod}}}}


@pytest.mark.parametrize(("container", "pod", "expected"), [
    ({"name": "c", "ports": [{"containerPort": 8080, "name": "http1", "hostPort": 0}]}, {}, []),
    ({"name": "c", "ports": [{"containerPort": 0}]}, {}, ["spec.template.spec.containers[0].ports[0].containerPort"]),
    ({"name": "c", "ports": [{"containerPort": 80, "name": "a--b"}]}, {}, ["spec.template.spec.containers[0].ports[0].name"]),
    ({"name": "c", "ports": [{"containerPort": 80, "name": "8080"}]}, {}, ["spec.template.spec.containers[0].ports[0].name"]),
    ({"name": "c", "readinessProbe": {"httpGet": {"port": "HTTP"}}}, {}, ["spec.template.spec.containers[0].readinessProbe.httpGet.port"]),
    ({"name": "c"}, {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, ["spec.template.spec.tolerations[0].value"]),
    ({"name": "c"}, {"nodeSelector": {"gpu": "yes please"}}, ["spec.template.spec.nodeSelector.gpu"]),
    ({"name": "c"}, {"topologySpreadConstraints": [{"labelSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}]},
     ["spec.template.spec.topologySpreadConstraints[0].labelSelector.matchExpressions[0].values"]),
])
def test_core_rules_in_pod_templates(container, pod, expected):
    from ragserve.manifests.core import check_core_rules

    assert [p.path for p in check_core_rules(_deployment(container, **pod))] == expected


def test_core_rules_cidr_except_and_config_keys():
    from ragserve.manifests.core import check_core_rules

    policy = {"kind": "NetworkPolicy", "metadata": {"name": "p"}, "spec": {"podSelector": {}, "egress": [
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "192.168.0.0/16"]}}],
         "ports": [{"port": 8000, "endPort": 7000}]}]}}
    assert [(p.path, p.message) for p in check_core_rules(policy)] == [
        ("spec.egress[0].ports[0].endPort", "7000 is below port 8000"),
        ("spec.egress[0].to[0].ipBlock.except[1]", "192.168.0.0/16 is not inside cidr 10.0.0.0/8")]
    config = {"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"port": "x", "a": "1"}, "binaryData": {"a": "MQ=="}}
    assert [p.path for p in check_core_rules(config)] == ["binaryData.a"]  # data keys named like fields are data


@pytest.mark.parametrize(("annotations", "scale_metric", "error"), [
    ({}, "concurrency", None),
    ({}, "cpu", "'cpu' is not a Knative (KPA) metric"),
    ({"autoscaling.knative.dev/class": "hpa.autoscaling.knative.dev"}, "cpu", None),
    ({"serving.kserve.io/deploymentMode": "Standard", "serving.kserve.io/autoscalerClass": "hpa"}, "memory", None),
    ({"serving.kserve.io/deploymentMode": "Standard", "serving.kserve.io/autoscalerClass": "external"}, "rps", None),
])
def test_webhook_scale_metric_by_mode_and_autoscaler(annotations, scale_metric, error):
    from ragserve.manifests.webhook import check_webhook

    isvc = {"kind": "InferenceService", "metadata": {"name": "m", "annotations": annotations},
            "spec": {"predictor": {"scaleMetric": scale_metric, "model": {"modelFormat": {"name": "x"}}}}}
    messages = [p.message for p in check_webhook(isvc)]
    if error is None:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith(error), messages


def test_webhook_canary_names():
    from ragserve.manifests.webhook import check_webhook

    canary = lambda name: {"trafficPercent": 10, "predictor": {"name": name, "model": {"name": ""}}}  # noqa: E731
    isvc = {"kind": "InferenceService",
            "metadata": {"name": "m", "annotations": {"serving.kserve.io/deploymentMode": "Standard"}},
            "spec": {"predictor": {"name": "v1", "model": {}}, "canary": [canary("v2"), canary("v2"), canary("v1")]}}
    assert [(p.path, p.message.split(":")[0]) for p in check_webhook(isvc)] == [
        ("spec.canary[1].predictor.name", "'v2' is duplicated"),
        ("spec.canary[2].predictor.name", "'v1' conflicts with stable predictor's name")]
