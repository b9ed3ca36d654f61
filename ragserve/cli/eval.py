"""``ragserve eval DATASET [--url URL]``: answer quality and retrieval of a RAG endpoint on a labeled set.

Flags are generated from :class:`~ragserve.eval.runner.EvalSettings` (env vars
``RAGSERVE_EVAL_*``). Exit status: 0 done (and the gate passed), 1 below
``--min-answer-accuracy`` / ``--min-hit-at-1``, 2 a bad dataset or flag, or no
question answered at all (the message names the endpoint and the error).
"""

from __future__ import annotations

import argparse

_EPILOG = (
    "Dataset: JSONL rows {\"question\", \"source\" (doc id or uri), \"answer\" (substring) or \"reference\"}; "
    "see pipelines/eval/samples.jsonl. Exit 0 ok, 1 gate failed, 2 bad input or nothing answered."
)


def register(sub) -> None:
    from ragserve.eval.runner import EvalSettings
    from ragserve.settings import add_settings_arguments

    p = sub.add_parser(
        "eval",
        help="measure retrieval and answer quality of a RAG endpoint on a labeled question set",
        description="Ask each question of DATASET through a V2 endpoint returning text_output + sources; "
        "report source hit@1/hit@k/MRR, answer accuracy, citation accuracy, refusals and latency.",
        epilog=_EPILOG,
    )
    p.add_argument("dataset", metavar="DATASET", help="JSONL question set, e.g. pipelines/eval/samples.jsonl")
    add_settings_arguments(p, EvalSettings)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from pydantic import ValidationError

    from ragserve.errors import RagserveError, describe_validation_errors
    from ragserve.eval.dataset import load_dataset
    from ragserve.eval.metrics import summarize
    from ragserve.eval.report import ProgressBar, as_json, gate_failures, render_table
    from ragserve.eval.runner import EvalSettings, evaluate
    from ragserve.settings import settings_from_args

    try:
        settings = settings_from_args(EvalSettings, args)
        cases = load_dataset(args.dataset)
    except ValidationError as exc:
        print(f"ragserve eval: error: {describe_validation_errors(exc.errors())}", file=sys.stderr)
        return 2
    except RagserveError as exc:
        print(f"ragserve eval: error: {exc.message}", file=sys.stderr)
        return 2
    total = min(len(cases), settings.limit or len(cases))
    show = settings.progress and settings.output == "table" and sys.stderr.isatty()
    results = evaluate(cases, settings, on_result=ProgressBar(total) if show else None)
    summary = summarize(results)
    failures = gate_failures(summary, settings.min_answer_accuracy, settings.min_hit_at_1)
    if settings.output == "json":
        described = {"dataset": args.dataset, "endpoint": settings.endpoint(), "parameters": settings.request_parameters()}
        print(json.dumps(as_json(results, summary, failures, described), indent=2, ensure_ascii=False))
    else:
        print(render_table(results, summary, failures))
    if summary.errors == summary.n_questions:
        print(f"ragserve eval: error: no question was answered by {settings.endpoint()}: {results[0].error}",
              file=sys.stderr)
        return 2
    return 1 if failures else 0
