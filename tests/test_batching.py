"""The adaptive batcher with a real (tiny, deterministic) forward function."""

import asyncio
import threading

import pytest

from ragserve.batching import AdaptiveBatcher, plan_forward_passes


def test_plan_groups_by_length_under_token_budget():
    lengths = [100, 3, 98, 5, 4, 99]
    passes = plan_forward_passes(lengths, max_batch_tokens=300, max_batch_size=32)
    assert passes == [[1, 4, 3], [2, 5, 0]]  # short ones together, long ones together
    for p in passes:
        assert len(p) * max(lengths[i] for i in p) <= 300


def test_plan_respects_max_batch_size_and_oversized_items():
    assert plan_forward_passes([1] * 5, max_batch_tokens=1000, max_batch_size=2) == [[0, 1], [2, 3], [4]]
    assert plan_forward_passes([500, 10], max_batch_tokens=100, max_batch_size=8) == [[1], [0]]


class Recorder:
    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.calls.append(list(items))
        return [s.upper() for s in items]


def test_concurrent_submits_share_passes_and_get_their_own_results():
    forward = Recorder()

    async def main():
        b = AdaptiveBatcher(forward, model_name="t", max_batch_size=64, max_latency_ms=50)
        reqs = [[f"r{i}a", f"r{i}b"] for i in range(10)]
        results = await asyncio.gather(*(b.submit(r, [len(x) for x in r]) for r in reqs))
        b.close()
        return reqs, results

    reqs, results = asyncio.run(main())
    for r, res in zip(reqs, results):
        assert res == [x.upper() for x in r]
    assert sum(len(c) for c in forward.calls) == 20
    assert len(forward.calls) < 10


def test_batch_never_exceeds_max_batch_size():
    forward = Recorder()

    async def main():
        b = AdaptiveBatcher(forward, model_name="t", max_batch_size=4, max_latency_ms=20)
        await asyncio.gather(*(b.submit([f"{i}x", f"{i}y", f"{i}z"], [2, 2, 2]) for i in range(5)))
        b.close()

    asyncio.run(main())
    assert all(len(c) <= 4 for c in forward.calls)
    assert sum(len(c) for c in forward.calls) == 15


def test_forward_error_fails_only_that_batch():
    def forward(items):
        if "boom" in items:
            raise RuntimeError("boom")
        return items

    async def main():
        b = AdaptiveBatcher(forward, model_name="t", max_batch_size=8, max_latency_ms=0)
        with pytest.raises(RuntimeError):
            await b.submit(["boom"], [1])
        ok = await b.submit(["fine"], [1])
        b.close()
        return ok

    assert asyncio.run(main()) == ["fine"]


def test_batching_off_runs_each_request_alone():
    forward = Recorder()

    async def main():
        b = AdaptiveBatcher(forward, model_name="t", enabled=False)
        await asyncio.gather(*(b.submit([str(i)], [1]) for i in range(6)))
        b.close()

    asyncio.run(main())
    assert [len(c) for c in forward.calls] == [1] * 6
