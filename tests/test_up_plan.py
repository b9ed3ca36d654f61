"""How `ragserve up` turns a bundle into local revisions (no processes started)."""

import copy

import pytest

from ragserve.local.plan import Planner, PortAllocator, RevisionStore
from ragserve.manifests.problem import ManifestError


def isvc(args, canary_percent=None, transformer=False):
    spec = {
        "predictor": {
            "containers": [{"name": "kserve-container", "image": "x", "command": ["python", "-m", "ragserve", "serve",
                                                                                 "generation"], "args": list(args)}]
        }
    }
    if canary_percent is not None:
        spec["predictor"]["canaryTrafficPercent"] = canary_percent
    if transformer:
        spec["transformer"] = {"containers": [{
            "name": "kserve-container", "image": "t", "command": ["python", "-m", "ragserve", "serve", "rag-transformer"],
            "args": ["--predictor_protocol=v2"],
            "env": [{"name": "RAGSERVE_RAG_EMBEDDING_URL", "value": "http://embedder-predictor.ml.svc.cluster.local"},
                    {"name": "RAGSERVE_RAG_MILVUS_URI", "valueFrom": {"secretKeyRef": {"name": "m", "key": "uri"}}}],
        }]}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "rag"},
            "spec": spec}


def embedder():
    obj = isvc(["--model_name=embedder"])
    obj["metadata"]["name"] = "embedder"
    return obj


def plan(objects, store):
    return Planner(objects, ports=PortAllocator(0), store=store).build("http://127.0.0.1:19530", has_gpu=False)


def test_knative_canary_runs_the_last_rollout_next_to_the_new_spec(tmp_path):
    store = RevisionStore(tmp_path / "rev.json")
    first = plan([isvc(["--model=a"])], store).route("rag", "predictor")
    assert (first.stable.revision, first.canary) == ("rag-predictor-00001", None)

    second = plan([isvc(["--model=b"], canary_percent=20)], store).route("rag", "predictor")
    assert second.stable.revision == "rag-predictor-00001" and "--model=a" in second.stable.argv
    assert second.canary.revision == "rag-predictor-00002" and "--model=b" in second.canary.argv
    assert second.canary_percent == 20

    # promoted (canaryTrafficPercent removed): the new spec is the rollout
    third = plan([isvc(["--model=b"])], store).route("rag", "predictor")
    assert (third.stable.revision, third.canary) == ("rag-predictor-00002", None)


def test_first_rollout_with_a_canary_percent_gets_everything(tmp_path):
    p = plan([isvc(["--model=a"], canary_percent=10)], RevisionStore(tmp_path / "rev.json"))
    assert p.route("rag", "predictor").canary is None
    assert any("first revision gets 100%" in w for w in p.warnings)


def test_loopback_wiring(tmp_path):
    p = plan([embedder(), isvc(["--model=a"], transformer=True)], RevisionStore(tmp_path / "rev.json"))
    transformer = p.route("rag", "transformer").stable
    assert f"--predictor_host=127.0.0.1:{p.route('rag', 'predictor').port}" in transformer.argv
    assert "--host=127.0.0.1" in transformer.argv
    assert transformer.env["RAGSERVE_RAG_EMBEDDING_URL"] == p.route("embedder", "predictor").url
    assert transformer.env["RAGSERVE_RAG_MILVUS_URI"] == "http://127.0.0.1:19530"
    assert p.entry("rag").role == "transformer" and p.entry("embedder").role == "predictor"
    # model names are not mistaken for service addresses
    assert "--model_name=embedder" in p.route("embedder", "predictor").stable.argv
    roles = [proc.role for proc in p.processes()]
    assert roles.index("transformer") > max(i for i, r in enumerate(roles) if r == "predictor")


def test_command_not_runnable_locally_is_a_clear_error(tmp_path):
    obj = isvc([])
    obj["spec"]["predictor"]["containers"][0]["command"] = ["/opt/triton/bin/tritonserver"]
    with pytest.raises(ManifestError, match="not on PATH"):
        plan([obj], RevisionStore(tmp_path / "rev.json"))
    no_cmd = copy.deepcopy(obj)
    del no_cmd["spec"]["predictor"]["containers"][0]["command"]
    no_cmd["spec"]["predictor"]["containers"][0]["args"] = []
    with pytest.raises(ManifestError, match="no command"):
        plan([no_cmd], RevisionStore(tmp_path / "rev2.json"))


def test_free_ports_are_never_handed_out_twice():
    # The kernel gives closed ephemeral ports out again (~10 % repeats over 3,000 here); `ragserve
    # up` allocates every child's ports before the children bind them, so a repeat meant two
    # children on one port (a transformer's gRPC port on the embedder's HTTP port).
    free = PortAllocator(0)
    ports = [free() for _ in range(3000)]
    assert len(set(ports)) == len(ports)
