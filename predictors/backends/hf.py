"""The transformers backend: any Hugging Face causal LM, CPU or GPU, with continuous batching.

One scheduler thread owns the model. Each iteration it drops sequences whose
client went away, admits waiting ones up to ``max_batch_size`` (prefilled
together), and runs ONE decode step for every running sequence; a sequence
that finishes leaves the batch at once and a new one may take its place on the
next step. Tokens reach each request's asyncio queue through
``call_soon_threadsafe``, one callback per step.

We schedule steps ourselves rather than use transformers' continuous-batching
manager: that one has no per-request seed and its paged attention is slow on
CPU (SmolLM2, one thread, 8 sequences x 64 tokens: ``generate_batch`` 36 tok/s,
this loop ~70), while this loop keeps per-request temperature, top-p, seed and
stop sequences exact (see hf_batch for the cache).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragserve.errors import NotReady
from ragserve.metrics import BATCH_SIZE, GENERATION_ACTIVE, GENERATION_CANCELLED, GENERATION_TOKENS
from ragserve.model_assets import resolve_generation_model

from .base import Delta, GenerationBackend, SamplingParams
from .detokenize import IncrementalDetokenizer, StopMatcher

if TYPE_CHECKING:
    from ..generation import GenerationSettings

logger = logging.getLogger("ragserve.generation")

_STOP = object()


@dataclass(eq=False)
class _Sequence:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    detok: IncrementalDetokenizer
    stops: StopMatcher
    generator: Any = None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    generated: int = 0
    unreported: int = 0
    last_token: int = -1
    finished: bool = False
    cancelled: bool = False  # set by the event loop; read by the scheduler thread


def context_length(config) -> int:
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


class TransformersBackend(GenerationBackend):
    name = "transformers"

    def __init__(self, settings: GenerationSettings):
        super().__init__()
        self.settings = settings
        self.device = "cpu"
        self._lm = None
        self._eos: frozenset[int] = frozenset()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._batch = None
        self._labels = (settings.model_name,)

    # -- lifecycle -------------------------------------------------------------
    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .hf_batch import CausalLM

        s = self.settings
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        self.device = s.device if s.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        path = resolve_generation_model(s.model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(s.dtype, self.device))
        model = model.to(self.device).eval()
        self.max_model_len = s.max_model_len or context_length(model.config)
        eos = model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self._eos = frozenset(e for e in [*eos, self.tokenizer.eos_token_id] if e is not None)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self._eos, default=0)
        self._lm = CausalLM(model, pad)
        self._warm_up()
        self._thread = threading.Thread(target=self._run, name=f"{s.model_name}-scheduler", daemon=True)
        self._thread.start()
        logger.info(
            "transformers backend: %s on %s (%s), context %d, up to %d sequences per step, %d torch threads",
            path, self.device, model.dtype, self.max_model_len, s.max_batch_size, torch.get_num_threads(),
        )

    async def warm_up(self) -> None:
        """Nothing left to do on the serving loop: :meth:`load` ran a prefill and a decode step."""

    def _warm_up(self) -> None:
        # One prefill and one decode step: first-call allocations happen now,
        # not in the first request, and an unmergeable cache fails the load.
        import torch

        from .hf_batch import KVBatch, check_cache

        with torch.inference_mode():
            batch, logits = KVBatch.prefill(self._lm, [None], [self.encode("Hello")])
            check_cache(batch.cache)
            batch.decode(self._lm, [int(logits.argmax(-1)[0])])

    def close(self) -> None:
        if self._thread is not None:
            self._stopping = True  # a full batch never reads the inbox: the flag stops it between steps
            self._inbox.put(_STOP)
            self._thread.join(timeout=30)
            self._thread = None
        self._lm = None

    @property
    def active_sequences(self) -> int:
        batch = self._batch
        return len(batch) if batch is not None else 0

    @property
    def dead_reason(self) -> str | None:
        if self._thread is None:
            return "the transformers engine is not running"
        if not self._thread.is_alive():
            return "the transformers engine's scheduler thread stopped; the server exits to be restarted"
        return None

    # -- the request side (event loop) -------------------------------------------
    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        if self.dead_reason is not None:
            raise NotReady(self.dead_reason)
        from .sampling import make_generator

        seq = _Sequence(
            list(prompt_ids),
            params,
            asyncio.get_running_loop(),
            IncrementalDetokenizer(self.tokenizer),
            StopMatcher(params.stop),
            make_generator(params.seed, self.device),
        )
        self._inbox.put(seq)
        try:
            while True:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Closed early (client gone, timeout): the scheduler drops the row before its next step.
            seq.cancelled = True

    # -- the scheduler thread ------------------------------------------------------
    def _run(self) -> None:
        import torch

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        ending = NotReady("model is shutting down")
        try:
            with torch.inference_mode():
                while not self._stopping:
                    newcomers = self._admit()
                    if newcomers is None:
                        break
                    try:
                        self._iterate(newcomers)
                    except Exception as exc:  # a failed step fails its sequences, not the engine
                        logger.exception("generation step failed")
                        rows = dict.fromkeys((self._batch.rows if self._batch is not None else []) + newcomers)
                        self._batch = None
                        self._deliver([(s, exc) for s in rows])
                    GENERATION_ACTIVE.labels(*self._labels).set(self.active_sequences)
        except Exception:  # the scheduler itself failed: the thread ends, and dead_reason says so
            logger.exception("the transformers engine's scheduler thread crashed")
            ending = NotReady("the transformers engine's scheduler thread crashed")
        finally:  # nobody waits forever: what was running or queued gets an answer
            leftovers = list(self._batch.rows) if self._batch is not None else []
            while not self._inbox.empty():
                item = self._inbox.get()
                leftovers += [item] if item is not _STOP else []
            self._batch = None
            self._deliver([(s, ending) for s in leftovers])

    def _admit(self) -> list[_Sequence] | None:
        """Waiting sequences that fit in the batch; blocks only while nothing runs. None: stop."""
        running = self.active_sequences
        newcomers: list[_Sequence] = []
        while running + len(newcomers) < self.settings.max_batch_size:
            try:
                seq = self._inbox.get(block=running == 0 and not newcomers)
            except queue.Empty:
                break
            if seq is _STOP:
                for waiting in newcomers:  # failed with the rest on the way out
                    self._inbox.put(waiting)
                return None
            if seq.cancelled:
                GENERATION_CANCELLED.labels(*self._labels).inc()
                continue
            newcomers.append(seq)
        return newcomers

    def _iterate(self, newcomers: list[_Sequence]) -> None:
        from .hf_batch import KVBatch

        batch = self._prune(self._batch)
        if newcomers:
            fresh, logits = KVBatch.prefill(self._lm, newcomers, [s.prompt for s in newcomers])
            BATCH_SIZE.labels(*self._labels).observe(len(newcomers))
            GENERATION_TOKENS.labels(*self._labels, "prompt").inc(sum(len(s.prompt) for s in newcomers))
            self._emit(fresh.rows, logits)
            if batch is None:
                batch = fresh
            else:
                batch.merge(fresh)
            batch = self._prune(batch)
        if batch is not None:
            self._batch = batch
            logits = batch.decode(self._lm, [s.last_token for s in batch.rows])
            BATCH_SIZE.labels(*self._labels).observe(len(batch))
            self._emit(batch.rows, logits)
            batch = self._prune(batch)
        self._batch = batch

    def _prune(self, batch):
        """Cut finished and cancelled rows out of ``batch``; None when none is left."""
        if batch is None:
            return None
        keep = []
        for i, seq in enumerate(batch.rows):
            if seq.finished:
                continue
            if seq.cancelled:
                seq.finished = True
                GENERATION_CANCELLED.labels(*self._labels).inc()
                continue
            keep.append(i)
        if not keep:
            return None
        if len(keep) < len(batch):
            batch.keep(keep)
        return batch

    def _emit(self, rows: list[_Sequence], logits) -> None:
        from .sampling import sample_next

        tokens = sample_next(logits, [s.params for s in rows], [s.generator for s in rows])
        GENERATION_TOKENS.labels(*self._labels, "completion").inc(len(rows))
        events = []
        for seq, token in zip(rows, tokens):
            delta = self._advance(seq, token)
            if delta is not None:
                events.append((seq, delta))
        self._deliver(events)

    def _advance(self, seq: _Sequence, token: int) -> Delta | None:
        """Account one new token of ``seq``; the delta to send, if any."""
        seq.generated += 1
        seq.unreported += 1
        seq.last_token = token
        params = seq.params
        eos = token in self._eos and not params.ignore_eos
        text = "" if eos else seq.detok.push(token)
        finish = "stop" if eos else ("length" if seq.generated >= params.max_tokens else None)
        if finish is not None:
            text += seq.detok.flush()
        text, stopped = seq.stops.feed(text)
        if stopped:
            finish = "stop"
        elif finish is not None:
            text += seq.stops.flush()
        if not text and finish is None:
            return None
        seq.finished = finish is not None
        delta = Delta(text, seq.unreported, finish)
        seq.unreported = 0
        return delta

    @staticmethod
    def _deliver(events: list[tuple[_Sequence, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        for seq, item in events:
            by_loop[seq.loop].append((seq.queue, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that request's event loop is closed: nobody is listening
                pass


def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, item in items:
        q.put_nowait(item)


def _torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)
