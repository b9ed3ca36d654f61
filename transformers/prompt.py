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
DEFAULT_SOURCE_TEMPLATE = "[{n}] {title}\n{text}"


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


def check_source_template(template: str) -> str:
    """A source template places ``{text}`` and may use ``{n}`` (the citation number) and ``{title}``."""
    if "{text}" not in template:
        raise ValueError("source_template must contain {text}")
    try:
        template.format(n=1, title="", text="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"source_template has a placeholder other than {{n}}/{{title}}/{{text}}: {exc}") from None
    return template


def source_block(n: int, hit: Hit, template: str = DEFAULT_SOURCE_TEMPLATE) -> str:
    block = template.format(n=n, title=hit.title.strip(), text=hit.text.strip())
    # an empty title leaves a trailing space on its line
    return "\n".join(line.rstrip() for line in block.split("\n"))


@dataclass
class Prompt:
    text: str
    """What the generator's V2 ``text_input`` gets (chat template applied when enabled)."""
    messages: list[dict]
    """The same prompt as chat messages (for the predictor's OpenAI chat route)."""
    sources: list[Hit]
    """The chunks in the prompt, in citation order."""
    tokens: int
    question: str = ""
    """The question the sources were retrieved for."""


class PromptBuilder:
    """Render and fit prompts with ``tokenizer`` (a Hugging Face tokenizer of the generator).

    ``system_message`` goes before the prompt as a system turn (without a chat
    template: as the first paragraph of the text); ``source_template`` renders each source; ``best_last`` lists the
    sources from the least to the most similar, so the best one sits next to
    the question (small models attend most to what they read last). Numbering
    stays by rank either way: ``[1]`` is always the best source.
    """

    def __init__(
        self,
        tokenizer,
        template: str,
        *,
        chat_template: bool = True,
        system_message: str = "",
        source_template: str = DEFAULT_SOURCE_TEMPLATE,
        best_last: bool = False,
    ):
        self.tokenizer = tokenizer
        self.template = check_template(template)
        self.chat_template = chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.system_message = system_message.strip()
        self.source_template = check_source_template(source_template)
        self.best_last = best_last

    def count(self, texts: Sequence[str]) -> list[int]:
        ids = self.tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def render(self, question: str, hits: Sequence[Hit], history: Sequence[dict] = ()) -> tuple[str, list[dict]]:
        blocks = [source_block(i + 1, h, self.source_template) for i, h in enumerate(hits)]
        if self.best_last:
            blocks.reverse()
        content = self.template.format(sources="\n\n".join(blocks) or NO_SOURCES, question=question.strip())
        # a conversation that brings its own system message keeps it (templates allow one)
        own = any(m.get("role") == "system" for m in history)
        system = [{"role": "system", "content": self.system_message}] if self.system_message and not own else []
        messages = [*system, *history, {"role": "user", "content": content}]
        if not self.chat_template:
            return "\n\n".join(m["content"] for m in [*system, messages[-1]]), messages
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, messages

    def fit(self, question: str, hits: Sequence[Hit], budget: int, history: Sequence[dict] = ()) -> Prompt:
        """The prompt with as many of ``hits`` (best first) as fit in ``budget`` tokens."""
        text, messages = self.render(question, hits, history)
        [tokens] = self.count([text])
        if tokens <= budget:
            return Prompt(text, messages, list(hits), tokens, question)
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
        costs = self.count([source_block(i + 1, h, self.source_template) + "\n\n" for i, h in enumerate(hits)])
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
                return Prompt(text, messages, list(hits[:keep]), tokens, question)
            keep -= 1
