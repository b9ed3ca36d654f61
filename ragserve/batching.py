"""Adaptive batching: concurrent requests share forward passes.

Requests are queued; one worker takes whatever is waiting (up to
``max_batch_size`` items, waiting at most ``max_latency_ms`` for peers when the
model is idle), sorts the items by length and cuts them into forward passes
that minimize padded work (under ``max_batch_tokens``), runs them in a worker
thread, and hands each request back exactly its own results. Per-request
options never enter the batch: callers apply them to their own slice, so
merging cannot mix one client's parameters into another's (MLServer#1541).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .metrics import BATCH_QUEUE_SECONDS, BATCH_REQUESTS, BATCH_SIZE

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Request(Generic[Item]):
    items: Sequence[Item]
    lengths: Sequence[int]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


def plan_forward_passes(
    lengths: Sequence[int],
    max_batch_tokens: int,
    max_batch_size: int,
    pass_overhead_tokens: int = 32,
) -> list[list[int]]:
    """Split items into forward passes of similar length, minimizing padded work.

    A pass of ``n`` items padded to its longest item ``L`` costs about
    ``pass_overhead_tokens + n * L`` token-steps. Items are sorted by length and
    cut into contiguous groups that minimize the total (an exact dynamic
    program over at most ``max_batch_size`` items per group), subject to
    ``n <= max_batch_size`` and ``n * L <= max_batch_tokens`` (a single item
    longer than the budget still gets its own pass). Merging many short
    requests with one long one thus never pads the short ones to its length.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sorted_lengths = [max(1, lengths[i]) for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest plan for the first j items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = sorted_lengths[j - 1]
        for size in range(1, min(max_batch_size, j) + 1):
            if size > 1 and size * longest > max_batch_tokens:
                break
            cost = best[j - size] + pass_overhead_tokens + size * longest
            if cost < best[j]:
                best[j], cut[j] = cost, j - size
    passes: list[list[int]] = []
    j = n
    while j > 0:
        passes.append(order[cut[j] : j])
        j = cut[j]
    return passes[::-1]


class AdaptiveBatcher(Generic[Item, Result]):
    """Merge concurrent :meth:`submit` calls into calls of ``forward(items) -> results``.

    ``forward`` is synchronous (a model call) and runs on a dedicated thread so
    the event loop keeps accepting requests while a pass runs.
    """

    def __init__(
        self,
        forward: Callable[[list[Item]], Sequence[Result]],
        *,
        model_name: str,
        max_batch_size: int = 32,
        max_latency_ms: float = 5.0,
        max_batch_tokens: int = 8192,
        pass_overhead_tokens: int = 32,
        enabled: bool = True,
    ):
        self._forward = forward
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.max_latency = max_latency_ms / 1000.0
        self.max_batch_tokens = max_batch_tokens
        self.pass_overhead_tokens = pass_overhead_tokens
        self.enabled = enabled
        self._queue: asyncio.Queue[_Request] | None = None
        self._carry: _Request | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{model_name}-forward")
        self._lock: asyncio.Lock | None = None

    async def submit(self, items: Sequence[Item], lengths: Sequence[int]) -> list[Result]:
        """Run ``items`` (with their token ``lengths``) and return their results in order."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            # Batching off: each request is its own forward pass, one at a time.
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                BATCH_SIZE.labels(self.model_name).observe(len(items))
                BATCH_REQUESTS.labels(self.model_name).observe(1)
                return list(await loop.run_in_executor(self._executor, self._forward, list(items)))
        self._ensure_worker()
        request = _Request(items, lengths, loop.create_future())
        await self._queue.put(request)
        return await request.future

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"{self.model_name}-batcher")

    async def _collect(self) -> list[_Request]:
        if self._carry is not None:
            first, self._carry = self._carry, None
        else:
            first = await self._queue.get()
        batch, size = [first], len(first.items)
        # Wait for peers up to max_latency from now, not from when the first one
        # arrived: under closed-loop load the queue holds one cohort of clients
        # while the other is still receiving its answers; letting it catch up
        # merges both into one batch, which groups lengths better.
        deadline = time.perf_counter() + self.max_latency
        while size < self.max_batch_size:
            try:
                nxt = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if size + len(nxt.items) > self.max_batch_size:
                self._carry = nxt  # does not fit: it opens the next batch
                break
            batch.append(nxt)
            size += len(nxt.items)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch = [r for r in batch if not r.future.cancelled()]
            if not batch:
                continue
            items: list[Item] = []
            lengths: list[int] = []
            now = time.perf_counter()
            for r in batch:
                items.extend(r.items)
                lengths.extend(r.lengths)
                BATCH_QUEUE_SECONDS.labels(self.model_name).observe(now - r.enqueued)
            BATCH_REQUESTS.labels(self.model_name).observe(len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self._run_passes, items, lengths)
            except Exception as exc:  # a failed pass fails the requests in it, not the worker
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            start = 0
            for r in batch:
                end = start + len(r.items)
                if not r.future.done():
                    r.future.set_result(results[start:end])
                start = end

    def _run_passes(self, items: list[Item], lengths: list[int]) -> list[Any]:
        results: list[Any] = [None] * len(items)
        for indices in plan_forward_passes(
            lengths, self.max_batch_tokens, self.max_batch_size, self.pass_overhead_tokens
        ):
            BATCH_SIZE.labels(self.model_name).observe(len(indices))
            outputs = self._forward([items[i] for i in indices])
            for i, out in zip(indices, outputs):
                results[i] = out
        return results

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._executor.shutdown(wait=False, cancel_futures=True)
