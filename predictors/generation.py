"""``GenerationPredictor``: an LLM behind KServe V1/V2, the V2 generate extension and OpenAI completions.

Every protocol turns its request into prompt token ids plus
:class:`~ragserve.predictors.backends.SamplingParams` here, and runs them on one
backend (transformers or vLLM), so limits, defaults, timeouts and usage
counting are the same whichever way a client comes in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import SettingsConfigDict

from ragserve.errors import BadRequest, RequestTimeout, describe_validation_errors
from ragserve.kserve_compat import InferRequest, InferResponse, Model
from ragserve.model_assets import PACKAGED_GENERATION
from ragserve.openai.completions import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    CompletionUsage,
    SamplingOptions,
    new_id,
)
from ragserve.settings import ServingSettings
from ragserve.v2 import as_text, bytes_output, make_response, request_parameters, text_input

from .backends import Completion, Delta, GenerationBackend, SamplingParams, create_backend

logger = logging.getLogger("ragserve.generation")

INPUT_NAME = "text_input"
OUTPUT_NAME = "text_output"

# Set by Triton clients and the generate extension on every request; they are
# protocol plumbing, not generation options, so they are not "unknown".
_PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "stream"}
)


class GenerationSettings(ServingSettings):
    """Settings of the LLM generation predictor (env prefix ``RAGSERVE_GENERATION_``)."""

    model_config = SettingsConfigDict(env_prefix="RAGSERVE_GENERATION_")

    model_name: str = "generator"
    """Name the model is served under (KServe passes ``--model_name``)."""

    model: str = PACKAGED_GENERATION
    """Packaged model name, a local Hugging Face folder, or (vllm backend) a model id."""

    backend: Literal["auto", "vllm", "transformers"] = "auto"
    """Engine: ``auto`` takes vLLM when it imports and a GPU is present, else transformers."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the transformers backend runs; ``auto`` picks CUDA when present (``cpu`` also rules out vLLM)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype; ``auto``: float32 on CPU, bfloat16 (or float16) on GPU."""

    max_model_len: int | None = Field(None, gt=0)
    """Context in tokens (prompt + completion); default: the model config's limit."""

    max_tokens: int = Field(256, gt=0)
    """Completion tokens for a request that does not say (``max_tokens`` parameter)."""

    max_tokens_cap: int = Field(2048, gt=0)
    """Most completion tokens one request may ask for; more is a 400."""

    max_batch_size: int = Field(16, gt=0)
    """Sequences decoding at once (more wait for a slot), and most prompts in one V2 request."""

    request_timeout_s: float = Field(300.0, gt=0)
    """Longest a request may take, queueing included; then 504 (or an error event once streaming)."""

    torch_threads: int = Field(0, ge=0)
    """torch intra-op threads (0 = torch's default)."""

    seed: int | None = None
    """Sampling seed for requests that give none (None = fresh randomness per request)."""

    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """vLLM on a GPU only: fraction of GPU memory the engine may take (weights, activations, KV cache)."""

    cpu_kv_cache_gib: float = Field(1.0, gt=0)
    """vLLM on CPU only: KV-cache size in GiB (vLLM's ``VLLM_CPU_KVCACHE_SPACE``); host RAM is shared, so a size, not a fraction."""

    enforce_eager: bool | None = None
    """vLLM only: run without torch.compile / CUDA graphs; unset: on for CPU (compiling takes minutes there), off on a GPU."""

    @model_validator(mode="after")
    def _default_within_cap(self):
        if self.max_tokens > self.max_tokens_cap:
            raise ValueError(f"max_tokens={self.max_tokens} is over max_tokens_cap={self.max_tokens_cap}")
        return self


def sampling_options(parameters: Mapping) -> SamplingOptions:
    """V2 / generate-extension ``parameters`` to validated options; names each bad field."""
    options = {k: v for k, v in parameters.items() if k not in _PROTOCOL_PARAMETERS}
    try:
        return SamplingOptions.model_validate(options)
    except ValidationError as exc:
        raise BadRequest(
            f"invalid parameters: {describe_validation_errors(exc.errors(include_url=False))}",
            param=str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else None,
        ) from None


class GenerationPredictor(Model):
    """Prompt -> text. One backend serves V1, V2 REST/gRPC, the generate extension and OpenAI routes."""

    def __init__(self, settings: GenerationSettings | None = None, backend: GenerationBackend | None = None):
        settings = settings or GenerationSettings()
        super().__init__(settings.model_name)
        self.settings = settings
        self.backend = backend  # None: chosen from settings in load()

    # -- lifecycle -------------------------------------------------------
    def load(self) -> bool:
        if self.backend is None:
            self.backend = create_backend(self.settings)
        try:
            self.backend.load()
        except BaseException:  # a failed or interrupted load stops what it started (an engine process)
            self.backend.close()
            raise
        logger.info("generation backend %s ready, context %d", self.backend.name, self.backend.max_model_len)
        self.ready = True
        return self.ready

    async def warm_up(self) -> None:
        """Called by the server on its event loop after :meth:`load`, before it listens."""
        started = time.perf_counter()
        await self.backend.warm_up()
        logger.info("generation backend %s warmed up in %.1f s", self.backend.name, time.perf_counter() - started)

    def stop(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.ready = False

    @property
    def not_ready_reason(self) -> str | None:
        """Why this model cannot serve now (the engine died, ...), for readiness and 503s; None when it can."""
        if not self.ready:
            return "not loaded"
        return self.dead_reason

    @property
    def dead_reason(self) -> str | None:
        """Why the loaded engine can no longer serve (only a new process recovers); None while it can."""
        return self.backend.dead_reason if self.ready and self.backend is not None else None

    async def healthy(self) -> bool:
        """KServe's model readiness: loaded, and the engine still running."""
        return self.not_ready_reason is None

    # -- metadata ---------------------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [-1]}]

    # -- the shared path ----------------------------------------------------
    def encode_prompt(self, text: str, *, param: str, chat: bool = False) -> list[int]:
        """Token ids of a prompt that leaves room for at least one completion token."""
        # A chat template already holds its special tokens.
        ids = self.backend.encode(text, add_special_tokens=not chat)
        if not ids:
            # a tokenizer without a BOS token encodes "" to nothing, and a model cannot start from nothing
            raise BadRequest(f"{param} is empty: the prompt must have at least one token", param=param)
        limit = self.backend.max_model_len
        if len(ids) >= limit:
            raise BadRequest(
                f"{param} has {len(ids)} tokens; the context limit is {limit} tokens (max_model_len) "
                "including at least 1 completion token",
                param=param,
            )
        return ids

    def sampling_params(
        self, options: SamplingOptions, prompt_tokens: int, max_tokens: int | None = None
    ) -> SamplingParams:
        """Validated options plus server defaults; ``max_tokens`` overrides the options' own."""
        s = self.settings
        wanted = max_tokens or options.max_tokens or s.max_tokens
        if wanted > s.max_tokens_cap:
            raise BadRequest(
                f"max_tokens={wanted} is over this server's cap of {s.max_tokens_cap} (max_tokens_cap)",
                param="max_tokens",
            )
        return SamplingParams(
            # A completion never runs past the context: it ends with finish_reason "length".
            max_tokens=min(wanted, self.backend.max_model_len - prompt_tokens),
            temperature=1.0 if options.temperature is None else options.temperature,
            top_p=1.0 if options.top_p is None else options.top_p,
            stop=options.stop_sequences(),
            seed=options.seed if options.seed is not None else s.seed,
            ignore_eos=options.ignore_eos,
        )

    def _timed_out(self) -> RequestTimeout:
        return RequestTimeout(f"generation did not finish within request_timeout_s={self.settings.request_timeout_s:g}s")

    async def run(self, batch: Sequence[tuple[list[int], SamplingParams]]) -> list[Completion]:
        """Generate a batch to completion within ``request_timeout_s``."""
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await self.backend.generate(batch)
        except TimeoutError:
            raise self._timed_out() from None

    async def stream(self, ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        """Stream one sequence; the whole stream must end within ``request_timeout_s``."""
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        deltas = self.backend.stream(ids, params)
        try:
            while True:
                try:
                    # The backend stream runs in this task (wait_for would run it in another):
                    # a timeout or a disconnect unwinds it here, which drops the sequence, and
                    # its cleanup never races the aclose() below ("already running").
                    async with asyncio.timeout_at(deadline):
                        delta = await anext(deltas)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise self._timed_out() from None
                yield delta
        finally:
            await deltas.aclose()

    def _prepare(
        self, prompts: Sequence[str], options: SamplingOptions, param: str
    ) -> list[tuple[list[int], SamplingParams]]:
        batch = []
        for i, prompt in enumerate(prompts):
            ids = self.encode_prompt(prompt, param=param if len(prompts) == 1 else f"{param}[{i}]")
            batch.append((ids, self.sampling_params(options, len(ids))))
        return batch

    # -- KServe V1 / V2 -------------------------------------------------------
    async def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        return await self._predict_v1(payload)

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        texts = text_input(request, INPUT_NAME, max_items=self.settings.max_batch_size)
        batch = self._prepare(texts, sampling_options(request_parameters(request)), INPUT_NAME)
        results = await self.run(batch)
        usage = {
            "prompt_tokens": sum(len(ids) for ids, _ in batch),
            "completion_tokens": sum(r.completion_tokens for r in results),
        }
        return make_response(request, self.name, [bytes_output(OUTPUT_NAME, [r.text for r in results])], parameters=usage)

    async def _predict_v1(self, body) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
            raise BadRequest('V1 body must be {"instances": ["prompt", ...], "parameters": {...}}', param="instances")
        prompts = [as_text(t, f"instances[{i}]") for i, t in enumerate(body["instances"])]
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadRequest("parameters must be an object", param="parameters")
        results = await self.run(self._prepare(prompts, sampling_options(parameters), "instances"))
        return {"predictions": [r.text for r in results]}

    # -- V2 generate extension (ragserve.generate_routes) ---------------------
    async def generate(self, prompt: str, parameters: Mapping) -> dict:
        """``POST /v2/models/{m}/generate``: the text and its usage."""
        [(ids, params)] = self._prepare([prompt], sampling_options(parameters), INPUT_NAME)
        [result] = await self.run([(ids, params)])
        return {
            "text_output": result.text,
            "finish_reason": result.finish_reason,
            "prompt_tokens": len(ids),
            "completion_tokens": result.completion_tokens,
        }

    def generate_stream(self, prompt: str, parameters: Mapping) -> AsyncIterator[dict]:
        """``POST /v2/models/{m}/generate_stream``: ``text_output`` deltas; the last has usage."""
        [(ids, params)] = self._prepare([prompt], sampling_options(parameters), INPUT_NAME)
        return self._generate_events(ids, params)

    async def _generate_events(self, ids: list[int], params: SamplingParams) -> AsyncIterator[dict]:
        completion_tokens = 0
        async with aclosing(self.stream(ids, params)) as deltas:
            async for delta in deltas:
                completion_tokens += delta.tokens
                event = {"text_output": delta.text}
                if delta.finish_reason is not None:
                    event.update(finish_reason=delta.finish_reason, prompt_tokens=len(ids), completion_tokens=completion_tokens)
                yield event

    # -- OpenAI ----------------------------------------------------------------
    async def create_completion(self, request: CompletionRequest, headers: dict | None = None):
        """OpenAI ``POST /openai/v1/completions``: a response, or an iterator of chunks when streaming."""
        prompt = request.prompt
        if isinstance(prompt, str):
            prompts = [prompt]
        elif prompt and all(isinstance(p, str) for p in prompt):
            prompts = list(prompt)
        elif not prompt:
            raise BadRequest("prompt is empty: send a string or a non-empty list of strings", param="prompt")
        else:
            raise BadRequest("token-id prompts are not supported; send text", param="prompt")
        if len(prompts) > self.settings.max_batch_size:
            raise BadRequest(f"{len(prompts)} prompts is over max_batch_size={self.settings.max_batch_size}", param="prompt")
        if request.stream and len(prompts) > 1:
            raise BadRequest("streaming takes a single prompt", param="prompt")
        batch = self._prepare(prompts, request, "prompt")
        rid, created = new_id("cmpl")
        if request.stream:
            return self._completion_chunks(rid, created, *batch[0], _include_usage(request))
        results = await self.run(batch)
        return CompletionResponse(
            id=rid,
            created=created,
            model=self.name,
            choices=[CompletionChoice(index=i, text=r.text, finish_reason=r.finish_reason) for i, r in enumerate(results)],
            usage=CompletionUsage.of(sum(len(ids) for ids, _ in batch), sum(r.completion_tokens for r in results)),
        )

    async def _completion_chunks(self, rid, created, ids, params, include_usage: bool) -> AsyncIterator[dict]:
        completion_tokens = 0
        async with aclosing(self.stream(ids, params)) as deltas:
            async for delta in deltas:
                completion_tokens += delta.tokens
                choice = CompletionChoice(index=0, text=delta.text, finish_reason=delta.finish_reason)
                yield CompletionResponse(id=rid, created=created, model=self.name, choices=[choice]).model_dump()
        if include_usage:
            usage = CompletionUsage.of(len(ids), completion_tokens)
            yield CompletionResponse(id=rid, created=created, model=self.name, choices=[], usage=usage).model_dump()

    async def create_chat_completion(self, request: ChatCompletionRequest, headers: dict | None = None):
        """OpenAI ``POST /openai/v1/chat/completions``: a response, or an iterator of chunks when streaming."""
        try:
            prompt = self.backend.apply_chat_template([{"role": m.role, "content": m.text()} for m in request.messages])
        except Exception as exc:  # the model's template rejects this conversation (e.g. role order)
            raise BadRequest(f"messages do not fit the model's chat template: {exc}", param="messages") from None
        ids = self.encode_prompt(prompt, param="messages", chat=True)
        params = self.sampling_params(request, len(ids), request.max_completion_tokens)
        rid, created = new_id("chatcmpl")
        if request.stream:
            return self._chat_chunks(rid, created, ids, params, _include_usage(request))
        [result] = await self.run([(ids, params)])
        return ChatCompletionResponse(
            id=rid,
            created=created,
            model=self.name,
            choices=[ChatChoice(index=0, message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
            usage=CompletionUsage.of(len(ids), result.completion_tokens),
        )

    async def _chat_chunks(self, rid, created, ids, params, include_usage: bool) -> AsyncIterator[dict]:
        def chunk(delta: ChatDelta, finish=None, usage=None) -> dict:
            choices = [] if usage else [ChatChunkChoice(index=0, delta=delta, finish_reason=finish)]
            return ChatCompletionChunk(id=rid, created=created, model=self.name, choices=choices, usage=usage).model_dump()

        completion_tokens = 0
        first = True
        async with aclosing(self.stream(ids, params)) as deltas:
            async for delta in deltas:
                if first:  # after the first token, so a request stuck in the queue still gets a 504
                    yield chunk(ChatDelta(role="assistant", content=""))
                    first = False
                completion_tokens += delta.tokens
                yield chunk(ChatDelta(content=delta.text or None), delta.finish_reason)
        if include_usage:
            yield chunk(ChatDelta(), usage=CompletionUsage.of(len(ids), completion_tokens))


def _include_usage(request) -> bool:
    return bool(request.stream_options and request.stream_options.include_usage)


def create_server(settings: GenerationSettings):
    """Load the predictor and build its server (what ``ragserve serve generation`` runs)."""
    from ragserve.server import ModelServer

    model = GenerationPredictor(settings)
    model.load()
    return ModelServer([model], settings)
