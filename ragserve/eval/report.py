"""What ``ragserve eval`` prints: a progress bar, the per-question table, the summary, the gate."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import TextIO

from .metrics import CaseResult, Summary


class ProgressBar:
    """``[#####.....] 12/42 correct 9`` redrawn in place on a terminal."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30):
        self.total, self.stream, self.width = total, stream, width
        self.done = self.correct = 0

    def __call__(self, result: CaseResult) -> None:
        self.done += 1
        self.correct += result.status == "correct"
        filled = self.width * self.done // max(self.total, 1)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} correct {self.correct}"
        )
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def gate_failures(summary: Summary, min_answer_accuracy: float | None, min_hit_at_1: float | None) -> list[str]:
    failures = []
    if min_answer_accuracy is not None and summary.answer_accuracy < min_answer_accuracy:
        failures.append(f"answer accuracy {summary.answer_accuracy:.3f} < {min_answer_accuracy:.3f}")
    if min_hit_at_1 is not None and summary.source_hit_at_1 < min_hit_at_1:
        failures.append(f"source hit@1 {summary.source_hit_at_1:.3f} < {min_hit_at_1:.3f}")
    return failures


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(results: Sequence[CaseResult], summary: Summary, failures: Sequence[str] = ()) -> str:
    id_w = max([len("id"), *(len(r.id) for r in results)])
    lines = [f"{'id':<{id_w}}  {'answer':<8}{'rank':>5}{'cited':>8}{'cite ok':>8}{'latency':>9}  answer / error"]
    for r in results:
        rank = "-" if r.source_rank is None else str(r.source_rank)
        cited = ",".join(map(str, r.cited)) or "-"
        latency = "-" if r.latency_s is None else f"{r.latency_s:.2f}s"
        text = r.error if r.status == "error" else r.answer
        lines.append(
            f"{r.id:<{id_w}}  {r.status:<8}{rank:>5}{_clip(cited, 7):>8}{'yes' if r.citation_ok else 'no':>8}"
            f"{latency:>9}  {_clip(text, 70)}"
        )
    s = summary
    p50 = "-" if s.latency_s_p50 is None else f"{s.latency_s_p50:.2f}s"
    p95 = "-" if s.latency_s_p95 is None else f"{s.latency_s_p95:.2f}s"
    lines += [
        "",
        f"questions {s.n_questions} (errors {s.errors})",
        f"sources   hit@1 {s.source_hit_at_1:.3f}  hit@{s.k} {s.source_hit_at_k:.3f}  MRR {s.mrr:.3f}",
        f"answers   correct {s.answer_accuracy:.3f}  refused {s.refusal_rate:.3f}  wrong {s.wrong_rate:.3f}"
        f"  citations correct {s.citation_accuracy:.3f}",
        f"latency   p50 {p50}  p95 {p95}",
    ]
    if failures:
        lines.append("gate FAILED: " + "; ".join(failures))
    return "\n".join(lines)


def as_json(results: Sequence[CaseResult], summary: Summary, failures: Sequence[str], settings: dict) -> dict:
    return {
        "summary": dataclasses.asdict(summary),
        "gate": {"passed": not failures, "failures": list(failures)},
        "settings": settings,
        "results": [dataclasses.asdict(r) for r in results],
    }
