"""The labeled question set: one JSON object per line.

Fields of a row::

    question   the question (required)
    source     the expected source: a doc id or uri as the transformer returns it
               (``samples/security.txt``, ``samples/faq.jsonl#gpu``); a list means "any of these"
    answer     the expected fact: a substring the answer must contain after normalization
               (case, punctuation and spacing ignored); a list means "any of these"
    reference  a reference answer instead of (or besides) ``answer``: the answer must contain
               most of its content words (see :func:`ragserve.eval.metrics.reference_recall`)
    id         a name for the row in reports (default: its line number)

``expected_source`` / ``expected_answer`` are accepted as long forms of ``source`` / ``answer``.
A row whose expected fact already appears in its question is rejected: echoing the
question would pass it, so it could never fail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ragserve.errors import BadRequest

from .metrics import normalize


@dataclass(frozen=True)
class EvalCase:
    id: str
    question: str
    sources: tuple[str, ...]
    answers: tuple[str, ...] = ()
    reference: str = ""


_ALIASES = {"expected_source": "source", "expected_answer": "answer"}
_FIELDS = {"id", "question", "source", "answer", "reference"}


def _strings(value, where: str, name: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise BadRequest(f"{where}: '{name}' must be a non-empty string or a list of them", param=name)
    return tuple(v.strip() for v in items)


def parse_case(row: object, where: str, default_id: str) -> EvalCase:
    if not isinstance(row, dict):
        raise BadRequest(f"{where}: each line must be a JSON object")
    row = {_ALIASES.get(k, k): v for k, v in row.items()}
    unknown = sorted(set(row) - _FIELDS)
    if unknown:
        raise BadRequest(f"{where}: unknown field(s) {unknown}; expected {sorted(_FIELDS)}", param=unknown[0])
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise BadRequest(f"{where}: 'question' (a non-empty string) is required", param="question")
    if "source" not in row:
        raise BadRequest(f"{where}: 'source' (the expected doc id or uri) is required", param="source")
    sources = _strings(row["source"], where, "source")
    answers = _strings(row["answer"], where, "answer") if "answer" in row else ()
    reference = row.get("reference", "")
    if not isinstance(reference, str):
        raise BadRequest(f"{where}: 'reference' must be a string", param="reference")
    if not answers and not reference.strip():
        raise BadRequest(f"{where}: give the expected fact as 'answer' (a substring) or 'reference'", param="answer")
    asked = f" {normalize(question)} "
    echoed = [a for a in answers if f" {normalize(a)} " in asked]
    if echoed:
        raise BadRequest(f"{where}: expected answer {echoed[0]!r} is already in the question", param="answer")
    return EvalCase(str(row.get("id", default_id)), question.strip(), sources, answers, reference.strip())


def load_dataset(path: str | Path) -> list[EvalCase]:
    """Read and check a JSONL question set; errors name the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadRequest(f"cannot read eval dataset {path}: {exc.strerror or exc}", param="dataset") from None
    cases, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"{where}: not JSON: {exc.msg}", param="dataset") from None
        case = parse_case(row, where, default_id=str(n))
        if case.id in seen:
            raise BadRequest(f"{where}: duplicate id {case.id!r}", param="id")
        seen.add(case.id)
        cases.append(case)
    if not cases:
        raise BadRequest(f"eval dataset {path} has no questions", param="dataset")
    return cases
