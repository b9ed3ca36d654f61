"""Scoring one answer, and the summary of a run. Pure functions, no I/O.

Per question:

- **source rank**: the rank of the first returned source whose ``doc_id`` or ``uri``
  is an expected source (``samples/faq.jsonl`` also matches ``samples/faq.jsonl#gpu``);
  hit@1, hit@k and MRR follow from it.
- **answer**: *correct* when the normalized answer contains an expected fact as whole
  words (``16`` does not match ``160``), or, for a ``reference`` answer, at least
  ``reference_recall`` of its content words; otherwise *refused* when it says it does
  not know (see :data:`REFUSALS`), else *wrong*; *error* when the request failed.
- **citation**: correct when the answer cites at least one ``[n]``, every cited ``n``
  is a returned source, and one of them is an expected source.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

# Normalized phrases that mark "the sources do not say" answers.
REFUSALS = (
    "i do not know", "i don t know", "i dont know", "do not know the answer", "cannot answer", "can t answer",
    "unable to answer", "not able to answer", "no information", "not enough information",
    "do not contain", "does not contain", "don t contain", "doesn t contain", "do not mention",
    "does not mention", "not mentioned", "not provided", "no relevant sources", "cannot be determined",
)
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were which with "
    "what when where who why how does do did can".split()
)
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def normalize(text: str) -> str:
    """Lowercase, accents and punctuation dropped, ``%`` spelled out, spaces collapsed."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().replace("%", " percent ")
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text).split())


def contains_fact(answer: str, facts: Sequence[str]) -> bool:
    padded = f" {normalize(answer)} "
    return any(f" {normalize(f)} " in padded for f in facts if normalize(f))


def reference_recall(answer: str, reference: str) -> float:
    """Share of the reference answer's content words that the answer contains."""
    want = {w for w in normalize(reference).split() if w not in _STOPWORDS}
    if not want:
        return 0.0
    have = set(normalize(answer).split())
    return len(want & have) / len(want)


def is_refusal(answer: str) -> bool:
    padded = f" {normalize(answer)} "
    return not padded.strip() or any(f" {r} " in padded for r in REFUSALS)


def cited_numbers(answer: str) -> list[int]:
    """The ``[n]`` (and ``[n, m]``) citations in order of first appearance."""
    seen: list[int] = []
    for group in _CITATION.findall(answer):
        for n in (int(x) for x in group.split(",")):
            if n not in seen:
                seen.append(n)
    return seen


def source_matches(source: dict, expected: Sequence[str]) -> bool:
    ids = {str(source.get("doc_id") or ""), str(source.get("uri") or "")} - {""}
    return any(e in ids or any(i.startswith(e + "#") for i in ids) for e in expected)


def source_rank(sources: Sequence[dict], expected: Sequence[str]) -> int | None:
    """1-based rank of the first expected source, None when none was returned."""
    return next((i + 1 for i, s in enumerate(sources) if source_matches(s, expected)), None)


@dataclass
class CaseResult:
    id: str
    question: str
    answer: str = ""
    status: str = "error"
    """correct, refused, wrong or error."""
    source_rank: int | None = None
    sources: list[str] = field(default_factory=list)
    """doc ids of the returned sources, in citation order."""
    cited: list[int] = field(default_factory=list)
    citation_ok: bool = False
    latency_s: float | None = None
    revision: str = ""
    """Who answered, from the response's revision header (canary splits), if present."""
    error: str = ""


def score(case, answer: str, sources: Sequence[dict], *, reference_recall_min: float = 0.6) -> dict:
    """The scored fields of a :class:`CaseResult` for one answer with its sources."""
    correct = contains_fact(answer, case.answers) or (
        bool(case.reference) and reference_recall(answer, case.reference) >= reference_recall_min
    )
    status = "correct" if correct else "refused" if is_refusal(answer) else "wrong"
    cited = cited_numbers(answer)
    citation_ok = bool(cited) and all(1 <= n <= len(sources) for n in cited) and any(
        source_matches(sources[n - 1], case.sources) for n in cited
    )
    return {
        "answer": answer,
        "status": status,
        "source_rank": source_rank(sources, case.sources),
        "sources": [str(s.get("doc_id", "")) for s in sources],
        "cited": cited,
        "citation_ok": citation_ok,
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    n_questions: int
    errors: int
    source_hit_at_1: float
    source_hit_at_k: float
    mrr: float
    k: int
    """Most sources returned for one question (the k of hit@k)."""
    answer_accuracy: float
    citation_accuracy: float
    refusal_rate: float
    wrong_rate: float
    latency_s_p50: float | None
    latency_s_p95: float | None


def summarize(results: Sequence[CaseResult]) -> Summary:
    """Rates over every question (a failed request counts against each rate)."""
    n = len(results)

    def rate(count: int) -> float:
        return round(count / n, 4) if n else 0.0

    ranks = [r.source_rank for r in results]
    latencies = [r.latency_s for r in results if r.latency_s is not None and r.status != "error"]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    return Summary(
        n_questions=n,
        errors=sum(r.status == "error" for r in results),
        source_hit_at_1=rate(sum(k == 1 for k in ranks)),
        source_hit_at_k=rate(sum(k is not None for k in ranks)),
        mrr=round(sum(1 / k for k in ranks if k) / n, 4) if n else 0.0,
        k=max((len(r.sources) for r in results), default=0),
        answer_accuracy=rate(sum(r.status == "correct" for r in results)),
        citation_accuracy=rate(sum(r.citation_ok for r in results)),
        refusal_rate=rate(sum(r.status == "refused" for r in results)),
        wrong_rate=rate(sum(r.status == "wrong" for r in results)),
        latency_s_p50=None if p50 is None else round(p50, 4),
        latency_s_p95=None if p95 is None else round(p95, 4),
    )
