"""OpenAI chat completions through the RAG transformer, with sources.

The last user message is the question; earlier messages stay in the prompt as
history. Retrieval options ride in an extra request field, and the sources come
back in an extra response field (OpenAI clients keep unknown fields)::

    client.chat.completions.create(model="rag", messages=[...],
                                   extra_body={"retrieval": {"top_k": 3, "filter": 'lang == "en"'}})
    response.sources  ->  [{"rank": 1, "doc_id": ..., "score": ..., "snippet": ...}, ...]

With ``stream: true`` the first event carries ``sources`` (and an empty
assistant delta); the generator's token events follow as they arrive. Streams
go to the predictor's OpenAI chat route, because KServe's V2 protocol has no
streaming; and clients must call the ``rag`` InferenceService directly, since
KServe's InferenceGraph router does not stream (kserve#2837).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ragserve.errors import BadRequest
from ragserve.openai.completions import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionUsage,
    new_id,
)

from .rag import RetrievalOptions

if TYPE_CHECKING:
    from .rag import RagTransformer

_SAMPLING = ("temperature", "top_p", "stop", "seed", "ignore_eos")


class RagChatCompletionRequest(ChatCompletionRequest):
    retrieval: RetrievalOptions | None = None
    """ragserve extension: per-request ``top_k``, ``filter``, ``score_threshold``."""


class RagChatCompletionResponse(ChatCompletionResponse):
    sources: list[dict]
    """ragserve extension: the chunks in the prompt, in citation order."""


def split_conversation(request: ChatCompletionRequest) -> tuple[str, list[dict]]:
    """The question (the last user message) and the messages before it."""
    messages = [{"role": m.role, "content": m.text()} for m in request.messages]
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None or not messages[last]["content"].strip():
        raise BadRequest("messages must contain a non-empty user message (the question)", param="messages")
    return messages[last]["content"], messages[:last]


async def chat_completion(model: RagTransformer, request: ChatCompletionRequest, headers: dict | None):
    question, history = split_conversation(request)
    sampling = {k: getattr(request, k) for k in _SAMPLING if getattr(request, k) not in (None, False)}
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens:
        sampling["max_tokens"] = max_tokens
    plan = await model.plan(
        [question], options=getattr(request, "retrieval", None), sampling=sampling, headers=headers, history=history
    )
    sources = model.sources(plan)
    rid, created = new_id("chatcmpl")
    if request.stream:
        return _stream(model, plan, request, sources, rid, created)
    answer = await model.predict(plan)
    finish = "length" if answer.completion_tokens >= plan.parameters["max_tokens"] else "stop"
    text = answer.texts[0] + model.citation(plan.prompts[0], answer.texts[0])
    return RagChatCompletionResponse(
        id=rid,
        created=created,
        model=model.name,
        choices=[ChatChoice(index=0, message=AssistantMessage(content=text), finish_reason=finish)],
        usage=CompletionUsage.of(answer.prompt_tokens, answer.completion_tokens),
        sources=sources,
    )


async def _stream(model: RagTransformer, plan, request, sources: list[dict], rid: str, created: int) -> AsyncIterator[dict]:
    body = {"messages": plan.prompts[0].messages, **plan.parameters}
    if request.stream_options is not None:
        body["stream_options"] = request.stream_options.model_dump()
    upstream = model.generator.stream_chat(body, plan.headers)
    try:
        # Wait for the generator's first event before answering, so a generator
        # that is down still gets a real status code instead of an error event.
        first = await anext(upstream, None)
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model.name}
        yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
               "sources": sources}
        if first is None:
            return
        cite = _citing(model, plan.prompts[0]) if model.settings.attribute_citations else (lambda event: event)
        yield {**cite(first), **head}
        async for event in upstream:
            yield {**cite(event), **head}
    finally:
        await upstream.aclose()


def _citing(model: RagTransformer, prompt):
    """Passes chunk events through; the one that finishes the answer gets its citation."""
    parts: list[str] = []

    def cite(event: dict) -> dict:
        if not event.get("choices"):
            return event
        choice = event["choices"][0]
        content = choice["delta"].get("content") or ""
        parts.append(content)
        if choice.get("finish_reason") is None:
            return event
        suffix = model.citation(prompt, "".join(parts))
        if not suffix:
            return event
        choice = {**choice, "delta": {**choice["delta"], "content": content + suffix}}
        return {**event, "choices": [choice, *event["choices"][1:]]}

    return cite
