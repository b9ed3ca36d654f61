"""``ragserve eval``'s pure parts (dataset, scoring) and the canary quality gate.

The end-to-end run against `ragserve up` is in test_eval_up.py. The canary
gate is checked against two real HTTP V2 endpoints on loopback that stand in
for two revisions of a RAG service: one answers from the corpus, the other is
a broken canary (the fault under test) that answers "I do not know".
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from loopback import serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ragserve.canary.analyze import AnalysisSettings, measure_quality, judge_quality
from ragserve.errors import BadRequest
from ragserve.eval.dataset import EvalCase, load_dataset
from ragserve.eval.metrics import (
    CaseResult, cited_numbers, contains_fact, is_refusal, normalize, percentile, score, summarize,
)

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "pipelines" / "eval" / "samples.jsonl"


def case(**kw) -> EvalCase:
    return EvalCase(**{"id": "q", "question": "How often are the credentials rotated?",
                       "sources": ("samples/security.txt",), "answers": ("45 days",), **kw})


def src(doc_id: str) -> dict:
    return {"doc_id": doc_id, "uri": doc_id}


# -- dataset --------------------------------------------------------------------


def test_the_shipped_set_covers_every_sample_document():
    cases = load_dataset(SAMPLES)
    assert len(cases) >= 30 and len({c.id for c in cases}) == len(cases)
    corpus = {f"samples/{p.name}" for p in (REPO / "pipelines" / "samples").iterdir()}
    expected = {s.split("#")[0] for c in cases for s in c.sources}
    assert expected == corpus  # every document is asked about, and nothing outside the corpus
    # the eval set is not ingested with the samples
    assert not any(p.suffix == ".jsonl" and "eval" in p.name for p in (REPO / "pipelines" / "samples").iterdir())


@pytest.mark.parametrize("line, needle", [
    ('{"question": "Q?", "answer": "x"}', "'source'"),
    ('{"question": "", "source": "a", "answer": "x"}', "'question'"),
    ('{"question": "Q?", "source": "a"}', "'answer' (a substring) or 'reference'"),
    ('{"question": "Q?", "source": "a", "answer": [1]}', "'answer' must be"),
    ('{"question": "Q?", "source": "a", "answer": "x", "extra": 1}', "unknown field"),
    ('{"question": "Is it 45 days?", "source": "a", "answer": "45 days"}', "already in the question"),
    ('not json', "not JSON"),
    ('[1, 2]', "JSON object"),
])
def test_bad_rows_are_named_with_file_and_line(tmp_path, line, needle):
    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "Fine?", "source": "a", "answer": "yes"}\n' + line + "\n")
    with pytest.raises(BadRequest, match="set.jsonl:2") as err:
        load_dataset(path)
    assert needle in err.value.message


def test_long_field_names_and_alternatives(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"question": "Q?", "expected_source": ["a", "b"], "expected_answer": ["x", "y"]}) + "\n")
    [c] = load_dataset(path)
    assert c.sources == ("a", "b") and c.answers == ("x", "y") and c.id == "1"


# -- scoring --------------------------------------------------------------------


def test_normalized_whole_word_match():
    assert normalize("The  ragserve_docs, 97%!") == "the ragserve docs 97 percent"
    assert contains_fact("They are rotated every 45 Days.", ["45 days"])
    assert contains_fact("97% of them", ["97 percent"])
    assert not contains_fact("M is 160", ["16"])  # a number inside another is not the fact
    assert contains_fact("Kestrel", ["kestrel"]) and not contains_fact("", ["x"])


def test_refusals_and_citations():
    assert is_refusal("I don't know.") and is_refusal("The sources do not contain the answer.") and is_refusal("  ")
    assert not is_refusal("Every 45 days [1].")
    assert cited_numbers("A [2] and B [1, 3] and again [2]") == [2, 1, 3]


def test_score_separates_correct_refused_and_wrong():
    sources = [src("samples/vector-store.html"), src("samples/security.txt")]
    right = score(case(), "Every 45 days [2].", sources)
    assert right["status"] == "correct" and right["source_rank"] == 2 and right["citation_ok"]
    wrong_cite = score(case(), "Every 45 days [1].", sources)
    assert wrong_cite["status"] == "correct" and not wrong_cite["citation_ok"]
    assert not score(case(), "Every 45 days [3].", sources)["citation_ok"]  # [3] was never returned
    assert score(case(), "I do not know.", sources)["status"] == "refused"
    assert score(case(), "Every 30 days.", sources)["status"] == "wrong"
    assert score(case(), "x", [src("samples/other.md")])["source_rank"] is None
    faq = case(sources=("samples/faq.jsonl",))
    assert score(faq, "x", [src("samples/faq.jsonl#gpu")])["source_rank"] == 1  # a file matches its rows


def test_reference_answers_count_content_words():
    ref = case(answers=(), reference="The platform team rotates the Milvus credentials every 45 days.")
    assert score(ref, "The platform team rotates Milvus credentials every 45 days", [])["status"] == "correct"
    assert score(ref, "The credentials are rotated.", [])["status"] == "wrong"


def test_summary_rates_count_errors_against_every_rate():
    results = [
        CaseResult("a", "", status="correct", source_rank=1, sources=["x", "y"], citation_ok=True, latency_s=1.0),
        CaseResult("b", "", status="refused", source_rank=2, sources=["x", "y"], latency_s=3.0),
        CaseResult("c", "", status="wrong", source_rank=None, sources=["x"], latency_s=2.0),
        CaseResult("d", "", status="error", error="HTTP 503"),
    ]
    s = summarize(results)
    assert (s.n_questions, s.errors, s.k) == (4, 1, 2)
    assert (s.answer_accuracy, s.refusal_rate, s.wrong_rate, s.citation_accuracy) == (0.25, 0.25, 0.25, 0.25)
    assert (s.source_hit_at_1, s.source_hit_at_k, s.mrr) == (0.25, 0.5, round((1 + 0.5) / 4, 4))
    assert (s.latency_s_p50, s.latency_s_p95) == (2.0, 2.9)
    assert percentile([], 50) is None


# -- the canary quality gate ----------------------------------------------------------


class RagRevisions:
    """Two revisions behind one address, split like ``ragserve up``'s ingress: the stable one
    answers each question with its expected fact and source, the canary one refuses."""

    def __init__(self, cases: list[EvalCase], canary_percent: int):
        self.by_question = {c.question: c for c in cases}
        self.canary_percent = canary_percent
        self.rng = random.Random(7)
        self.app = Starlette(routes=[Route("/v2/models/rag/infer", self.infer, methods=["POST"])])

    async def infer(self, request: Request):
        body = await request.json()
        c = self.by_question[body["inputs"][0]["data"][0]]
        canary = self.rng.random() * 100 < self.canary_percent
        answer = "I do not know." if canary else f"{c.answers[0]} [1]"
        sources = [json.dumps({"index": 0, "rank": 1, "doc_id": c.sources[0], "uri": c.sources[0]})]
        outputs = [{"name": "text_output", "datatype": "BYTES", "shape": [1], "data": [answer]},
                   {"name": "sources", "datatype": "BYTES", "shape": [1], "data": sources}]
        revision = "rag-predictor-00002" if canary else "rag-predictor-00001"
        return JSONResponse({"model_name": "rag", "outputs": outputs}, headers={"x-ragserve-revision": revision})


def test_quality_gate_catches_a_canary_that_stopped_answering():
    cases = load_dataset(SAMPLES)
    targets = {"stable": "rag-predictor-00001", "canary": "rag-predictor-00002"}
    with serving(RagRevisions(cases, canary_percent=30)) as rag:
        settings = AnalysisSettings(local=True, eval_dataset=str(SAMPLES), eval_url=rag.url, eval_rounds=2)
        quality = measure_quality(targets, settings)
    assert quality["stable"].answers + quality["canary"].answers == 2 * len(cases)
    assert quality["stable"].answer_accuracy == 1.0 and quality["canary"].answer_accuracy == 0.0
    check = judge_quality(quality, settings)
    assert check.ok is False and "canary accuracy 0.000" in check.detail

    few = AnalysisSettings(local=True, eval_dataset=str(SAMPLES), eval_url="http://x", eval_min_answers=1000)
    assert judge_quality(quality, few).ok is None  # too few answers on a side: no verdict


def test_quality_gate_through_separate_urls_passes_equal_revisions():
    cases = load_dataset(SAMPLES)
    with serving(RagRevisions(cases, 0)) as stable, serving(RagRevisions(cases, 0)) as canary:
        settings = AnalysisSettings(local=True, eval_dataset=str(SAMPLES), eval_stable_url=stable.url,
                                    eval_canary_url=canary.url)
        quality = measure_quality({"stable": "s", "canary": "c"}, settings)
    check = judge_quality(quality, settings)
    assert check.ok is True and quality["canary"].answers == len(cases)


def test_analyze_eval_flags_need_an_address(capsys):
    from ragserve.cli import main

    code = main(["canary", "analyze", "rag", "--local", "--eval-dataset", str(SAMPLES), "--kubeconfig", "/nonexistent"])
    assert code == 1
    assert "--eval-dataset needs --eval-url" in capsys.readouterr().err
