"""The RAG transformer's pure parts: prompt fitting, retrieval options, headers, settings."""

import pytest
from pydantic import ValidationError

from ragserve.errors import BadRequest
from ragserve.openai.completions import ChatCompletionRequest
from ragserve.transformers.chat import split_conversation
from ragserve.transformers.clients import base_url, trace_headers
from ragserve.transformers.milvus_store import Hit
from ragserve.model_assets import generation_tokenizer
from ragserve.transformers.prompt import DEFAULT_TEMPLATE, PromptBuilder, check_template
from ragserve.transformers.rag import RagTransformer, RagTransformerSettings, RetrievalOptions, source_json


@pytest.fixture(scope="module")
def tokenizer():
    return generation_tokenizer("tiny-random-llama")


def hit(i: int, words: int = 40) -> Hit:
    text = " ".join(f"fact{i}-{w}" for w in range(words))
    return Hit(f"c{i}", f"doc{i}.md", 0, f"Doc {i}", f"doc{i}.md", text, 1.0 - i / 100)


def test_all_sources_fit_numbered_in_rank_order(tokenizer):
    builder = PromptBuilder(tokenizer, DEFAULT_TEMPLATE)
    hits = [hit(i, 5) for i in range(3)]
    p = builder.fit("What is fact1?", hits, budget=2000)
    assert p.sources == hits
    assert p.text.startswith("<|im_start|>") and p.text.rstrip().endswith("<|im_start|>assistant")
    for n, h in enumerate(hits, 1):
        assert f"[{n}] {h.title}\n{h.text}" in p.text
    assert p.tokens == len(tokenizer(p.text, add_special_tokens=False)["input_ids"])
    assert p.messages[-1]["role"] == "user" and "Question: What is fact1?" in p.messages[-1]["content"]


@pytest.mark.parametrize("budget", [200, 300, 400])
def test_lowest_ranked_sources_are_dropped_first(tokenizer, budget):
    builder = PromptBuilder(tokenizer, DEFAULT_TEMPLATE)
    hits = [hit(i, 10) for i in range(8)]
    p = builder.fit("Which fact?", hits, budget=budget)
    assert p.tokens <= budget
    assert p.sources == hits[: len(p.sources)], "a prefix of the ranking survives"
    assert 0 < len(p.sources) < len(hits)
    # as many as fit: one more would not
    longer = builder.render("Which fact?", hits[: len(p.sources) + 1])[0]
    assert len(tokenizer(longer, add_special_tokens=False)["input_ids"]) > budget


def test_question_alone_over_budget_is_a_named_400(tokenizer):
    builder = PromptBuilder(tokenizer, DEFAULT_TEMPLATE)
    with pytest.raises(BadRequest) as err:
        builder.fit("word " * 500, [hit(0)], budget=100)
    assert err.value.param == "question" and "budget of 100" in err.value.message


def test_no_sources_still_makes_a_prompt(tokenizer):
    p = PromptBuilder(tokenizer, DEFAULT_TEMPLATE, chat_template=False).fit("Anything?", [], budget=500)
    assert p.sources == [] and "(no relevant sources were found)" in p.text
    assert p.text == p.messages[-1]["content"]  # no chat template: the raw text


def test_history_stays_in_the_prompt(tokenizer):
    history = [{"role": "user", "content": "Earlier question"}, {"role": "assistant", "content": "Earlier answer"}]
    p = PromptBuilder(tokenizer, DEFAULT_TEMPLATE).fit("Follow-up?", [hit(0, 3)], 2000, history)
    assert p.messages[:2] == history and "Earlier answer" in p.text


@pytest.mark.parametrize(
    "template, needle",
    [("{question} only", "must contain {sources}"), ("{sources} only", "must contain {question}"),
     ("{sources} {question} {extra}", "placeholder other than")],
)
def test_bad_templates_are_rejected_at_settings_time(template, needle):
    with pytest.raises(ValueError, match=needle):
        check_template(template)
    with pytest.raises(ValidationError, match="prompt_template"):
        RagTransformerSettings(prompt_template=template)


def test_settings_env_prefix_and_defaults(monkeypatch):
    monkeypatch.setenv("RAGSERVE_RAG_TOP_K", "9")
    monkeypatch.setenv("RAGSERVE_RAG_MILVUS_TOKEN", "user:secret")
    s = RagTransformerSettings()
    assert s.model_name == "rag" and s.top_k == 9 and s.collection == "ragserve_docs"
    assert s.milvus_token.get_secret_value() == "user:secret" and "secret" not in repr(s)
    assert s.predictor_protocol == "v2" and s.index_type == "HNSW"


def test_request_filter_is_anded_with_the_configured_one():
    model = RagTransformer(RagTransformerSettings(filter='lang == "en"', top_k=4, score_threshold=0.2))
    assert model.options(None) == (4, '(lang == "en")', 0.2)
    opts = RetrievalOptions(top_k=2, filter='topic == "legal"', score_threshold=0.5)
    assert model.options(opts) == (2, '(lang == "en") and (topic == "legal")', 0.5)
    with pytest.raises(ValidationError):
        RetrievalOptions.model_validate({"top_k": "3"})  # strict: a string is not a count


def test_trace_headers_forward_request_id_and_w3c_context_only():
    incoming = {"X-Request-Id": "r1", "traceparent": "00-abc-def-01", "tracestate": "k=v", "authorization": "Bearer x"}
    assert trace_headers(incoming) == {"x-request-id": "r1", "traceparent": "00-abc-def-01", "tracestate": "k=v"}
    generated = trace_headers({})
    assert len(generated["x-request-id"]) == 32 and trace_headers({})["x-request-id"] != generated["x-request-id"]


def test_predictor_host_gets_a_scheme():
    assert base_url("rag-predictor.ns") == "http://rag-predictor.ns"
    assert base_url("https://x:8443/") == "https://x:8443"


def test_question_is_the_last_user_message():
    req = ChatCompletionRequest.model_validate({"model": "rag", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer"}, {"role": "user", "content": "second"}]})
    question, history = split_conversation(req)
    assert question == "second" and [m["role"] for m in history] == ["system", "user", "assistant"]
    with pytest.raises(BadRequest, match="user message"):
        split_conversation(ChatCompletionRequest.model_validate({"model": "rag", "messages": [{"role": "system", "content": "x"}]}))


def test_source_json_carries_what_a_client_cites():
    s = source_json(hit(3, 200), index=0, rank=1, snippet_chars=50)
    assert s["doc_id"] == "doc3.md" and s["chunk_id"] == "c3" and s["rank"] == 1 and s["title"] == "Doc 3"
    assert len(s["snippet"]) == 51 and s["snippet"].endswith("…")


def test_prompt_style_settings_shape_the_prompt(tokenizer):
    builder = PromptBuilder(
        tokenizer, "{sources}\n\nQ: {question}", system_message="Answer in one sentence.",
        source_template="Source {n}: {text}", best_last=True,
    )
    p = builder.fit("What is fact1?", [hit(0, 3), hit(1, 3)], budget=2000)
    assert p.messages[0] == {"role": "system", "content": "Answer in one sentence."}
    user = p.messages[-1]["content"]
    # the best source sits next to the question and keeps its number [1]: citations still point at sources[0]
    assert user.index("Source 2: fact1-0") < user.index("Source 1: fact0-0") < user.index("Q: What is fact1?")
    assert p.sources == [hit(0, 3), hit(1, 3)]
    assert "Answer in one sentence." in p.text and "SmolLM" not in p.text  # replaces the template's default
    own = [{"role": "system", "content": "be brief"}]
    assert [m["role"] for m in builder.fit("Q?", [hit(0, 3)], 2000, own).messages] == ["system", "user"]


def test_default_stop_sequences_apply_unless_the_request_sets_them():
    import asyncio

    class Recorder:
        async def embed(self, texts, headers):
            import numpy as np

            return np.zeros((len(texts), 4), dtype="float32")

    class Store:
        def search(self, vectors, **kw):
            return [[hit(0, 3)] for _ in vectors]

    settings = RagTransformerSettings(stop="\n", tokenizer="tiny-random-llama")
    model = RagTransformer(settings, embedder=Recorder(), store=Store(), generator=object(),
                           tokenizer=generation_tokenizer("tiny-random-llama"))
    model.prompt = PromptBuilder(model.tokenizer, settings.prompt_template)
    plan = asyncio.run(model.plan(["Q?"], options=None, sampling={}, headers={}))
    assert plan.parameters["stop"] == "\n"
    plan = asyncio.run(model.plan(["Q?"], options=None, sampling={"stop": "END"}, headers={}))
    assert plan.parameters["stop"] == "END"


def test_bad_source_template_is_rejected_at_settings_time():
    with pytest.raises(ValidationError, match="source_template must contain"):
        RagTransformerSettings(source_template="[{n}] {title}")
    with pytest.raises(ValidationError, match="placeholder other than"):
        RagTransformerSettings(source_template="{text} {uri}")


def test_rerank_puts_the_chunk_that_states_the_fact_first():
    from ragserve.transformers.rerank import rerank

    topical = Hit("c1", "samples/benchmarks.pdf", 0, "Benchmark notes", "u", "An HNSW index over chunks found 97 percent.", 0.62)
    stating = Hit("c2", "samples/vector-store.html", 0, "Vector store", "u", "HNSW with a graph degree of M = 16.", 0.55)
    other = Hit("c3", "samples/x.md", 0, "X", "u", "Nothing relevant here.", 0.50)
    q = "Which graph degree M does the HNSW index use?"
    assert rerank(q, [topical, stating, other], top_k=2, weight=1.0) == [stating, topical]
    assert rerank(q, [topical, stating, other], top_k=2, weight=0.0) == [topical, stating]  # off: vector order
    assert rerank("the of a?", [topical, stating], top_k=1, weight=1.0) == [topical]  # no content words


def test_attributed_citation_points_at_the_source_the_answer_came_from():
    from ragserve.transformers.attribution import citation_suffix

    pager = Hit("c1", "samples/on-call.html", 0, "On call", "u", "The rotation hands over every Tuesday at 09:00 UTC.", 0.7)
    secret = Hit("c2", "samples/security.txt", 0, "Security", "u", "The Milvus token lives in the Secret milvus-credentials.", 0.6)
    q = "Where is the Milvus token stored?"
    # [2]: "milvus" and "token" are the question's own words, "secret"/"credentials" are what the answer added
    assert citation_suffix(q, "It is stored in the Secret milvus-credentials.", [pager, secret]) == " [2]"
    assert citation_suffix("When does the rotation hand over?", "Every Tuesday at 09:00.", [pager, secret]) == " [1]"
    assert citation_suffix(q, "Secret milvus-credentials, see [2].", [pager, secret]) == ""  # the model cited
    assert citation_suffix(q, "The Milvus token is stored.", [pager, secret]) == ""  # nothing new to support
    assert citation_suffix(q, "In vault 42.", [pager, secret]) == ""  # invented: no source shares a word
    assert citation_suffix(q, "It is stored in the Secret milvus-credentials.", []) == ""


def test_attribute_citations_setting_adds_the_citation(monkeypatch):
    from ragserve.transformers.prompt import Prompt

    hits = [Hit("c1", "a.md", 0, "A", "a.md", "The batcher waits 5 milliseconds.", 0.9)]
    prompt = Prompt("text", [], hits, 10, "How long does the batcher wait?")
    monkeypatch.setenv("RAGSERVE_RAG_ATTRIBUTE_CITATIONS", "true")
    assert RagTransformer(RagTransformerSettings()).citation(prompt, "5 milliseconds.") == " [1]"
    monkeypatch.delenv("RAGSERVE_RAG_ATTRIBUTE_CITATIONS")
    assert RagTransformer(RagTransformerSettings()).citation(prompt, "5 milliseconds.") == ""
