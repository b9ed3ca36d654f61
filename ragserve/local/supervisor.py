"""Supervise local child servers: ordered start, readiness, restart with backoff, clean stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from ..procs import ServerProcess

logger = logging.getLogger("ragserve.up")


def http_ready(url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    return check


@dataclass
class Child:
    """One supervised process; ``make`` builds a fresh (not yet started) ServerProcess."""

    name: str
    make: Callable[[], ServerProcess]
    ready: Callable[[], Awaitable[bool]]
    process: ServerProcess | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_restart_at: float | None = None
    backoff_s: float = 1.0
    info: dict = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.process.proc.pid if self.process and self.process.proc else None


class Supervisor:
    """Start children in order (each ready before the next), watch them, stop them in reverse.

    A child that dies is reported and restarted with exponential backoff
    (1 s doubling to ``max_backoff_s``; reset once it has stayed up for
    ``stable_after_s``).
    """

    def __init__(
        self,
        *,
        max_backoff_s: float = 30.0,
        stable_after_s: float = 60.0,
        ready_timeout_s: float = 300.0,
        on_restart: Callable[[Child], None] | None = None,
    ):
        self.children: list[Child] = []
        self.on_restart = on_restart
        self.max_backoff_s = max_backoff_s
        self.stable_after_s = stable_after_s
        self.ready_timeout_s = ready_timeout_s
        self._watch: asyncio.Task | None = None

    def add(self, child: Child) -> Child:
        self.children.append(child)
        return child

    async def _wait_ready(self, child: Child) -> float:
        start = time.monotonic()
        while time.monotonic() - start < self.ready_timeout_s:
            if not child.process.alive:
                raise RuntimeError(f"{child.name} exited with {child.process.proc.returncode} before it was ready"
                                   f"{child.process.log_tail()}")
            if await child.ready():
                return time.monotonic() - start
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{child.name} not ready after {self.ready_timeout_s:.0f}s{child.process.log_tail()}")

    def _spawn(self, child: Child) -> None:
        child.process = child.make().start()
        child.started_at = time.monotonic()

    async def start(self, child: Child) -> float:
        self._spawn(child)
        return await self._wait_ready(child)

    async def start_all(self) -> None:
        for child in self.children:
            if child.process is None:
                seconds = await self.start(child)
                logger.info("%s ready in %.1fs (pid %d)", child.name, seconds, child.pid)

    def watch(self) -> asyncio.Task:
        self._watch = asyncio.get_running_loop().create_task(self._watch_loop(), name="ragserve-supervisor")
        return self._watch

    async def _watch_loop(self, interval: float = 0.5) -> None:
        while True:
            now = time.monotonic()
            for child in self.children:
                proc = child.process
                if proc is None:
                    continue
                if proc.alive:
                    if child.backoff_s > 1.0 and now - child.started_at > self.stable_after_s:
                        child.backoff_s = 1.0
                    continue
                if child.next_restart_at is None:
                    logger.warning(
                        "%s (pid %s) exited with %s; restarting in %.0fs",
                        child.name, child.pid, proc.proc.returncode, child.backoff_s,
                    )
                    proc.stop()
                    child.next_restart_at = now + child.backoff_s
                elif now >= child.next_restart_at:
                    child.next_restart_at = None
                    child.restarts += 1
                    child.backoff_s = min(child.backoff_s * 2, self.max_backoff_s)
                    self._spawn(child)
                    logger.info("%s restarted (pid %d, restart #%d)", child.name, child.pid, child.restarts)
                    if self.on_restart is not None:
                        self.on_restart(child)
            await asyncio.sleep(interval)

    def remove(self, child: Child) -> None:
        """Stop a child for good (a revision taken out of service)."""
        if child in self.children:
            self.children.remove(child)
        if child.process is not None:
            child.process.stop()

    def stop_all(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for child in reversed(self.children):
            if child.process is not None:
                child.process.stop()
