"""Answer accuracy of prompt variants, in-process: a minute per variant instead of a `ragserve up` run.

The same pieces as the served graph, without servers: ``pipelines/samples``
chunked as ingest chunks it, embedded with the packaged MiniLM, the
``rerank_candidates`` most similar chunks per question reranked as the transformer reranks them
(``rerank_candidates``), the prompt rendered by the transformer's
``PromptBuilder``, and the packaged SmolLM2 generating greedily. Answers are
scored with ``ragserve eval``'s own ``contains_fact``, citations with
``attribute_citations``' ``attributed_source``. The ``local`` variant is what the
local overlay sends (its accuracy matches `bench/rag_quality.py`'s served run).

    python bench/rag_prompts.py                     # every variant
    python bench/rag_prompts.py --only local,one_source

Writes ``bench/results/rag_prompts.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from report import save  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# the transformer's settings under `ragserve up`: the base map, then the local overlay's
OVERLAY = {
    **yaml.safe_load((ROOT / "inferenceservices/base/configmap-settings.yaml").read_text())["data"],
    **yaml.safe_load((ROOT / "inferenceservices/overlays/local/settings.yaml").read_text())["data"],
}
EXAMPLE = ("Example:\nText: The index cache holds 512 entries and is flushed every 10 minutes.\n"
           "Question: How often is the index cache flushed?\nAnswer: Every 10 minutes.\n\n")
LOCAL = dict(
    top_k=int(OVERLAY["RAGSERVE_RAG_TOP_K"]),
    system=OVERLAY["RAGSERVE_RAG_SYSTEM_MESSAGE"],
    template=OVERLAY["RAGSERVE_RAG_PROMPT_TEMPLATE"],
    source=OVERLAY["RAGSERVE_RAG_SOURCE_TEMPLATE"],
    best_last=OVERLAY["RAGSERVE_RAG_SOURCE_ORDER"] == "best_last",
)
VARIANTS = {
    "local": {},
    "one_source": dict(top_k=1),
    "three_sources": dict(top_k=3),
    "question_first": dict(template="Question: {question}\n\nText:\n{sources}\n\nQuestion: {question}"),
    "worked_example": dict(template=EXAMPLE + "Text:\n{sources}\n\nQuestion: {question}\nAnswer:"),
    "worked_example_one_source": dict(top_k=1, template=EXAMPLE + "Text:\n{sources}\n\nQuestion: {question}\nAnswer:"),
    "exact_words_system": dict(system="Answer the question with the exact words from the text. Be brief."),
    "no_system": dict(system=""),
    # an extractive answer: the 135M model copies a sentence more reliably than it states a fact
    "quote_sentence": dict(system="Copy the one sentence from the text that answers the question, word for word."),
    "quote_sentence_one_source": dict(top_k=1, system="Copy the one sentence from the text that answers the "
                                                      "question, word for word."),
    # decoding, not prompt: every token of the prompt's sources gets +copy_bias on its logit
    "copy_bias_2": dict(copy_bias=2.0),
    "copy_bias_4": dict(copy_bias=4.0),
}


def candidates(cases) -> list[list]:
    """The chunks the served search returns per question (``rerank_candidates`` of them, most similar first)."""
    from sentence_transformers import SentenceTransformer

    from ragserve.model_assets import resolve_embedding_model
    from ragserve.pipelines.chunker import load_tokenizer
    from ragserve.pipelines.ingest import IngestSettings, chunk_documents
    from ragserve.pipelines.loaders import load_documents
    from ragserve.transformers.milvus_store import Hit

    settings = IngestSettings()  # chunked as `ragserve ingest pipelines/samples` chunks (doc ids "samples/...")
    model = resolve_embedding_model(settings.local_model)
    rows = chunk_documents(load_documents([ROOT / "pipelines/samples"]), load_tokenizer(model),
                           chunk_tokens=settings.chunk_tokens, overlap=settings.chunk_overlap)
    encoder = SentenceTransformer(model, device="cpu")
    chunks = encoder.encode([r["text"] for r in rows], normalize_embeddings=True, batch_size=32)
    questions = encoder.encode([c.question for c in cases], normalize_embeddings=True)
    fetch = int(OVERLAY["RAGSERVE_RAG_RERANK_CANDIDATES"])
    out = []
    for q in questions:
        scores = chunks @ q
        out.append([Hit(rows[i]["id"], rows[i]["doc_id"], rows[i]["chunk_index"], rows[i]["title"], rows[i]["uri"],
                        rows[i]["text"], float(scores[i])) for i in np.argsort(-scores)[:fetch]])
    return out


def copy_bias(tokenizer, sources: list[list], bias: float):
    """A logits processor adding ``bias`` to every token of each row's sources (and to end of turn)."""
    from transformers import LogitsProcessor

    rows = []
    for hits in sources:
        ids = {tokenizer.eos_token_id}
        for hit in hits:  # a word mid-sentence tokenizes with its leading space
            ids.update(tokenizer(hit.text, add_special_tokens=False)["input_ids"])
            ids.update(tokenizer(" " + hit.text, add_special_tokens=False)["input_ids"])
        rows.append(torch.tensor(sorted(ids)))

    class CopyBias(LogitsProcessor):
        def __call__(self, input_ids, scores):
            for row, ids in enumerate(rows):
                scores[row, ids] += bias
            return scores

    return [CopyBias()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--output", default=str(ROOT / "bench/results/rag_prompts.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragserve.eval.dataset import load_dataset
    from ragserve.eval.metrics import contains_fact, source_matches
    from ragserve.model_assets import PACKAGED_GENERATION, resolve_generation_model
    from ragserve.transformers.attribution import attributed_source
    from ragserve.transformers.prompt import PromptBuilder
    from ragserve.transformers.rerank import rerank

    cases = load_dataset(ROOT / "pipelines/eval/samples.jsonl")
    hits = candidates(cases)
    path = resolve_generation_model(PACKAGED_GENERATION)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    weight = float(OVERLAY.get("RAGSERVE_RAG_LEXICAL_WEIGHT", 1.0))

    results = {}
    for name, override in VARIANTS.items():
        if args.only and name not in args.only.split(","):
            continue
        cfg = {**LOCAL, **override}
        builder = PromptBuilder(tokenizer, cfg["template"], system_message=cfg["system"],
                                source_template=cfg["source"], best_last=cfg["best_last"])
        kept = [rerank(c.question, h, top_k=cfg["top_k"], weight=weight) for c, h in zip(cases, hits)]
        prompts = [builder.render(c.question, k)[0] for c, k in zip(cases, kept)]
        started, answers = time.perf_counter(), []
        for i in range(0, len(prompts), 6):
            batch = tokenizer(prompts[i:i + 6], return_tensors="pt", padding=True, add_special_tokens=False)
            bias = copy_bias(tokenizer, kept[i:i + 6], cfg["copy_bias"]) if cfg.get("copy_bias") else None
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                                     logits_processor=bias)
            answers += [a.strip() for a in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)]
        correct = sum(contains_fact(a, c.answers) for a, c in zip(answers, cases))
        cited = 0
        for a, c, k in zip(answers, cases, kept):
            n = attributed_source(c.question, a, k)
            cited += n is not None and source_matches({"doc_id": k[n - 1].doc_id}, c.sources)
        results[name] = {"answer_accuracy": round(correct / len(cases), 3),
                         "attributed_citation_accuracy": round(cited / len(cases), 3),
                         "top_k": cfg["top_k"], **({"copy_bias": cfg["copy_bias"]} if cfg.get("copy_bias") else {}),
                         "seconds": round(time.perf_counter() - started, 1)}
        print(f"{name:28s} answer accuracy {correct / len(cases):.3f}  attributed citations {cited / len(cases):.3f}", flush=True)
    save({"benchmark": "rag_prompts", "model": PACKAGED_GENERATION, "n_questions": len(cases), "decoding": "greedy",
          "variants": results}, args.output)


if __name__ == "__main__":
    main()
