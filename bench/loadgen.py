"""A lean closed-loop HTTP/1.1 load generator for the benchmarks.

The benchmarks run client and server on the same two cores, so the client
must cost as little CPU as possible: each worker keeps one keep-alive
connection, sends pre-encoded request bytes and reads just enough of the
response to find its end. (Think `wrk`, in 80 lines of asyncio.)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def post_request(host: str, port: int, path: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return statistics.quantiles(self.latencies_ms, n=100)[int(q) - 1] if len(self.latencies_ms) > 1 else self.latencies_ms[0]


async def run_load(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    total: int,
    check: Callable[[int, bytes], bool] | None = None,
) -> LoadResult:
    """Send ``total`` requests (cycling through ``requests``) from ``concurrency`` workers."""
    counter = iter(range(total))
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in counter:
                t0 = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, body = await _read_response(reader)
                latencies.append((time.perf_counter() - t0) * 1000)
                if status != 200 or (check is not None and not check(status, body)):
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(total, errors, time.perf_counter() - start, latencies)
