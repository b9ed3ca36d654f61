"""`ragserve up` end to end: the local overlay as processes, asked through the graph, stopped by SIGINT."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "up"


class Up:
    """A `ragserve up` subprocess and the endpoints its table printed."""

    def __init__(self, tmp_path: Path, *args: str, timeout: float = 600):
        self.state_dir = tmp_path / ".ragserve"  # `ragserve ingest` run from tmp_path finds it by default
        self.log = open(tmp_path / "up.log", "w+")
        env = {**os.environ, "RAGSERVE_GENERATION_MAX_TOKENS_CAP": "64"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ragserve", "up", "--base-port", "0", "--state-dir", str(self.state_dir), *args],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        self.endpoints = self._wait(timeout)

    def _wait(self, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.log.seek(0)
            text = self.log.read()
            if "is running" in text:
                return {m[1]: m[2] for m in re.finditer(r"^  (?:graph|isvc)\s+(\S+)\s+(http://\S+)$", text, re.M)}
            if self.proc.poll() is not None:
                raise RuntimeError(f"ragserve up exited {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(1)
        raise TimeoutError("ragserve up did not come up")

    def state(self) -> dict:
        return json.loads((self.state_dir / "up.json").read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by a dead parent) is gone for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _canary(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ragserve", "canary", *args, "--kubeconfig", str(state_dir / "kubeconfig")],
        capture_output=True, text=True, timeout=60,
    )


def _ask(graph: str, question: str, timeout: float = 300) -> httpx.Response:
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [question]}]}
    return httpx.post(f"{graph}/v2/models/rag/infer", json=body, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["", "milvus-lite"], ids=["default-engine", "milvus-lite"])
def test_up_answers_through_the_graph_and_stops_every_child(tmp_path, engine):
    up = Up(tmp_path, *(["--milvus-engine", engine] if engine else []))
    try:
        children = [c["pid"] for c in up.state()["children"]]
        assert len(children) == 4  # milvus, embedder, generator, transformer
        [milvus] = [e for e in up.state()["endpoints"] if e["kind"] == "milvus"]
        # the overlay's RAGSERVE_LOCAL_MILVUS_ENGINE (milvus-standalone), or the flag
        assert milvus["name"] == (engine or "milvus-standalone")
        graph = up.endpoints["rag-graph"]
        question = "Which port does the ragserve on-call rotation page on?"
        body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [question]}]}
        r = httpx.post(f"{graph}/v2/models/rag/infer", json=body, timeout=300)
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
        assert outputs["text_output"][0].strip()
        sources = [json.loads(s) for s in outputs["sources"]]
        assert sources and all(s["doc_id"].startswith("samples/") for s in sources)

        # the Switch sends embedding requests to the embedder
        emb = httpx.post(f"{graph}/v2/models/embedder/infer", timeout=60,
                         json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]})
        assert emb.status_code == 200 and emb.json()["outputs"][0]["shape"] == [1, 384]

        # streaming clients call the rag InferenceService directly with the openai client
        from openai import OpenAI

        client = OpenAI(base_url=f"{up.endpoints['rag']}/openai/v1", api_key="unused", timeout=300)
        chunks = list(client.chat.completions.create(
            model="rag", messages=[{"role": "user", "content": question}], stream=True, max_tokens=16))
        assert any(c.choices and c.choices[0].delta.content for c in chunks)

        # your own documents, with no flags: ingest goes to the running graph's Milvus and embedder
        docs = tmp_path / "mydocs"
        docs.mkdir()
        (docs / "badger.md").write_text("# Project Badger\n\nProject Badger's release train departs every "
                                        "Thursday at 14:00 from the platform team's staging cluster.\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGSERVE_INGEST_", "RAGSERVE_UP_"))}
        ingest = subprocess.run([sys.executable, "-m", "ragserve", "ingest", "mydocs"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert ingest.returncode == 0, ingest.stderr[-3000:]
        assert json.loads(ingest.stdout.strip().splitlines()[-1])["documents"] == 1
        assert "running graph" in ingest.stderr
        body["inputs"][0]["data"] = ["When does Project Badger's release train depart?"]
        r = httpx.post(f"{graph}/v2/models/rag/infer", json=body, timeout=300)
        assert r.status_code == 200, r.text
        cited = [json.loads(s)["doc_id"] for s in next(o for o in r.json()["outputs"] if o["name"] == "sources")["data"]]
        assert cited[0].endswith("badger.md"), cited

        status = subprocess.run([sys.executable, "-m", "ragserve", "status", "--state-dir", str(up.state_dir)],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "ready" in status.stdout
        canary = _canary(up.state_dir, "status", "rag")
        assert canary.returncode == 0, canary.stderr
        assert "rag-predictor-00001" in canary.stdout

        # Milvus killed: restarted like any child, on its port with its data; answers resume
        [child] = [c for c in up.state()["children"] if c["name"] == "milvus"]
        os.kill(child["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _ask(graph, question).status_code == 200:
            time.sleep(0.5)
        assert [c["restarts"] for c in up.state()["children"] if c["name"] == "milvus"] == [1]
        r = _ask(graph, question)
        assert r.status_code == 200, r.text
    finally:
        up.stop()
    assert up.proc.returncode == 0
    time.sleep(1)
    assert [pid for pid in children if _alive(pid)] == []
    assert not (up.state_dir / "up.json").exists()


@pytest.mark.slow
def test_local_canary_splits_traffic_and_promotes(tmp_path):
    up = Up(tmp_path, "--path", str(FIXTURES / "embedder-canary.yaml"), timeout=300)
    try:
        url = up.endpoints["embedder"]
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["canary"]}]}
        with httpx.Client(timeout=60) as client:
            served = [client.post(f"{url}/v2/models/embedder/infer", json=body).headers["x-ragserve-revision"]
                      for _ in range(200)]
        share = served.count("embedder-predictor-00002") / len(served)
        assert set(served) == {"embedder-predictor-00001", "embedder-predictor-00002"}
        assert 0.2 <= share <= 0.4, share  # 30% +- 10 points over 200 calls

        # the runner's own per-revision metrics stand in for Prometheus
        verdict = _canary(up.state_dir, "analyze", "embedder", "--local", "--min-requests", "20",
                          "--max-p95-ratio", "10")
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr  # promote: both revisions answer 200s
        assert "verdict: promote" in verdict.stdout and "embedder-predictor-00002" in verdict.stdout

        assert _canary(up.state_dir, "set", "embedder", "100").returncode == 0
        with httpx.Client(timeout=60) as client:
            assert {client.post(f"{url}/v2/models/embedder/infer", json=body).headers["x-ragserve-revision"]
                    for _ in range(10)} == {"embedder-predictor-00002"}
        promoted = _canary(up.state_dir, "promote", "embedder")
        assert promoted.returncode == 0, promoted.stderr
        status = _canary(up.state_dir, "status", "embedder")
        assert "none in progress" in status.stdout, status.stdout
        assert [c["name"] for c in up.state()["children"]] == ["embedder-predictor-00002"]
        none_left = _canary(up.state_dir, "rollback", "embedder")
        assert none_left.returncode == 1 and "no canary in progress" in none_left.stderr

        # a child that dies is reported and restarted (with backoff), and serves again
        [child] = up.state()["children"]
        os.kill(child["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and up.state()["children"][0]["restarts"] == 0:
            time.sleep(0.5)
        assert up.state()["children"][0]["restarts"] == 1
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline:
                if client.post(f"{url}/v2/models/embedder/infer", json=body).status_code == 200:
                    break
                time.sleep(0.5)
            assert client.post(f"{url}/v2/models/embedder/infer", json=body).status_code == 200
        up.log.seek(0)
        assert "restarting in" in up.log.read()

        down = subprocess.run([sys.executable, "-m", "ragserve", "down", "--state-dir", str(up.state_dir)],
                              capture_output=True, text=True, timeout=90)
        assert down.returncode == 0, down.stderr
        assert up.proc.wait(30) == 0
    finally:
        up.stop()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["Knative", "Standard"])
def test_canary_started_by_patch_runs_the_new_revision(tmp_path, mode):
    """`ragserve canary start` against `ragserve up`: the patched spec runs as the next revision."""
    manifest = (FIXTURES / "embedder.yaml").read_text()
    if mode == "Standard":
        manifest = manifest.replace("  name: embedder\n", "  name: embedder\n  annotations:\n"
                                    "    serving.kserve.io/deploymentMode: Standard\n")
    (tmp_path / "embedder.yaml").write_text(manifest)
    up = Up(tmp_path, "--path", str(tmp_path / "embedder.yaml"), timeout=300)
    try:
        url = up.endpoints["embedder"]
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["canary"]}]}

        def norms(n: int) -> dict[str, set[float]]:
            seen: dict[str, set[float]] = {}
            with httpx.Client(timeout=60) as client:
                for _ in range(n):
                    r = client.post(f"{url}/v2/models/embedder/infer", json=body)
                    assert r.status_code == 200, r.text
                    vector = r.json()["outputs"][0]["data"]
                    seen.setdefault(r.headers["x-ragserve-revision"], set()).add(
                        round(sum(v * v for v in vector) ** 0.5, 3))
            return seen

        def status() -> str:
            return _canary(up.state_dir, "status", "embedder").stdout

        started = _canary(up.state_dir, "start", "embedder", "--env", "RAGSERVE_EMBEDDING_NORMALIZE=false",
                          "--percent", "50")
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "embedder-predictor-00002" not in norms(4):
            time.sleep(0.5)
        seen = norms(60)
        assert set(seen) == {"embedder-predictor-00001", "embedder-predictor-00002"}, seen
        assert seen["embedder-predictor-00001"] == {1.0}  # the stable revision normalizes
        assert seen["embedder-predictor-00002"] != {1.0}  # the canary runs the patched env
        assert "embedder-predictor-00002" in status()

        promoted = _canary(up.state_dir, "promote", "embedder")
        assert promoted.returncode == 0, promoted.stderr
        assert set(norms(10)) == {"embedder-predictor-00002"}
        assert [c["name"] for c in up.state()["children"]] == ["embedder-predictor-00002"]

        # a revision that cannot start is reported, and the stable one keeps every request
        bad = _canary(up.state_dir, "start", "embedder", "--env", "RAGSERVE_EMBEDDING_MODEL=/nonexistent/model",
                      "--percent", "50")
        assert bad.returncode == 0, bad.stderr
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "did not become ready" not in status():
            time.sleep(0.5)
        assert "embedder-predictor-00003 did not become ready" in status(), status()
        if mode == "Knative":
            assert "latestCreatedRevision=embedder-predictor-00003" in status()
        assert set(norms(10)) == {"embedder-predictor-00002"}
        assert [c["name"] for c in up.state()["children"]] == ["embedder-predictor-00002"]
        rolled_back = _canary(up.state_dir, "rollback", "embedder")
        assert rolled_back.returncode == 0, rolled_back.stderr
        assert "embedder-predictor-00003" not in {c["name"] for c in up.state()["children"]}  # not retried
        assert set(norms(10)) == {"embedder-predictor-00002"}
    finally:
        up.stop()
