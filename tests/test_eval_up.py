"""`ragserve eval` against `ragserve up` (tiny random generator: plumbing, not answers).

Retrieval is real (the embedder, Milvus Lite and the sample corpus), so the
source figures mean something; the tiny model's answers are gibberish, so the
answer gate must fail.
"""

import json
import subprocess
import sys

import pytest
from test_up import REPO, Up

SAMPLES = REPO / "pipelines" / "eval" / "samples.jsonl"


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ragserve", "eval", str(SAMPLES), *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.slow
def test_eval_through_the_graph(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGSERVE_GENERATION_MODEL", "tiny-random-llama")
    monkeypatch.setenv("RAGSERVE_RAG_TOKENIZER", "tiny-random-llama")
    up = Up(tmp_path)
    try:
        graph = up.endpoints["rag-graph"]
        run = _eval("--url", graph, "--output", "json", "--concurrency", "4", "--top-k", "3",
                    "--parameters", '{"max_tokens": 8}', "--min-hit-at-1", "0.5")
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr
        report = json.loads(run.stdout)
        s = report["summary"]
        assert s["n_questions"] == len(SAMPLES.read_text().splitlines()) and s["errors"] == 0
        assert s["k"] == 3  # the per-request top_k reached the transformer
        assert s["source_hit_at_1"] >= 0.7 and s["source_hit_at_k"] >= s["source_hit_at_1"]
        assert 0 < s["latency_s_p50"] <= s["latency_s_p95"]
        first = report["results"][0]
        assert first["sources"] and all(d.startswith("samples/") for d in first["sources"])
        assert report["gate"] == {"passed": True, "failures": []}

        # the gate: gibberish answers fail an accuracy floor -> exit 1, table names the failure
        gate = _eval("--url", graph, "--limit", "3", "--parameters", '{"max_tokens": 4}',
                     "--min-answer-accuracy", "0.9")
        assert gate.returncode == 1, gate.stdout + gate.stderr
        assert "gate FAILED: answer accuracy" in gate.stdout and "questions 3 (errors 0)" in gate.stdout

        # the rag InferenceService answers the same protocol; a bad filter is a 400 on every question -> exit 2
        bad = _eval("--url", up.endpoints["rag"], "--limit", "2", "--filter", "no such field ==")
        assert bad.returncode == 2, bad.stdout + bad.stderr
        assert "HTTP 400" in bad.stderr and "no question was answered" in bad.stderr
    finally:
        up.stop()
