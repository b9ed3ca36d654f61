"""The RAG prompt: a template with numbered sources, fitted to the generator's context.

Tokens are counted with the generator's own tokenizer on the exact text the
generator will see (chat template included), so "fits" means fits. When the
retrieved chunks do not all fit, the lowest-ranked ones are dropped first; the
sources that remain are numbered ``[1]..[n]`` in rank order, and exactly those
are returned to the client, so a citation ``[2]`` in the answer always points
at the second returned source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ragserve.errors import BadRequest

from .milvus_store import Hit

DEFAULT_TEMPLATE = (
    "Answer the question using only the numbered sources below. Cite the sources you use "
    "by their number, like [1]. If the sources do not contain the answer, say that you do not know.\n\n"
    "Sources:\n{sources}\n\nQuestion: {question}"
)
NO_SOURCES = "(no relevant sources were found)"


def check_template(template: str) -> str:
    """A template must place ``{sources}`` and ``{question}`` and nothing else in braces."""
    for key in ("{sources}", "{question}"):
        if key not in template:
            raise ValueError(f"prompt_template must contain {key}")
    try:
        template.format(sources="", question="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"prompt_template has a placeholder other than {{sources}}/{{question}}: {exc}") from None
    return template


def source_block(n: int, hit: Hit) -> str:
    head = f"[{n}] {hit.title}".rstrip()
    return f"{head}\n{hit.text.strip()}"


@dataclass
class Prompt:
    text: str
    """What the generator's V2 ``text_input`` gets (chat template applied when enabled)."""
    messages: list[dict]
    """The same prompt as chat messages (for the predictor's OpenAI chat route)."""
    sources: list[Hit]
    """The chunks in the prompt, in citation order."""
    tokens: int


class PromptBuilder:
    """Render and fit prompts with ``tokenizer`` (a Hugging Face tokenizer of the generator)."""

    def __init__(self, tokenizer, template: str, *, chat_template: bool = True):
        self.tokenizer = tokenizer
        self.template = check_template(template)
        self.chat_template = chat_template and bool(getattr(tokenizer, "chat_template", None))

    def count(self, texts: Sequence[str]) -> list[int]:
        ids = self.tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def render(self, question: str, hits: Sequence[Hit], history: Sequence[dict] = ()) -> tuple[str, list[dict]]:
        blocks = "\n\n".join(source_block(i + 1, h) for i, h in enumerate(hits)) or NO_SOURCES
        content = self.template.format(sources=blocks, question=question.strip())
        messages = [*history, {"role": "user", "content": content}]
        if not self.chat_template:
            return content, messages
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, messages

    def fit(self, question: str, hits: Sequence[Hit], budget: int, history: Sequence[dict] = ()) -> Prompt:
        """The prompt with as many of ``hits`` (best first) as fit in ``budget`` tokens."""
        text, messages = self.render(question, hits, history)
        [tokens] = self.count([text])
        if tokens <= budget:
            return Prompt(text, messages, list(hits), tokens)
        # Estimate from per-block counts, then confirm on the real text: block
        # counts are not exactly additive at the seams.
        empty, _ = self.render(question, [], history)
        [base] = self.count([empty])
        if base > budget:
            raise BadRequest(
                f"the question needs {base} prompt tokens with the template, over the budget of {budget} "
                "(context_tokens minus max_tokens); shorten it or lower max_tokens",
                param="question",
            )
        costs = self.count([source_block(i + 1, h) + "\n\n" for i, h in enumerate(hits)])
        keep, used = 0, base
        for cost in costs:
            if used + cost > budget:
                break
            used += cost
            keep += 1
        while True:
            text, messages = self.render(question, hits[:keep], history)
            [tokens] = self.count([text])
            if tokens <= budget or keep == 0:
                return Prompt(text, messages, list(hits[:keep]), tokens)
            keep -= 1
