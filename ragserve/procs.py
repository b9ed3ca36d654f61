"""Child server processes on loopback: start, wait for readiness, stop.

Used by ``ragserve up``, the benchmarks and the tests, so all three start
servers exactly the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

# grpcio >= 1.81 restarts its poller thread in a forked child; when Popen then closes
# the child's fds before exec, that thread aborts the child with "epoll_wait ... Bad file
# descriptor" (grpc/grpc#43055) -- seen here as a server "exited with -6 before ready".
# Two guards: children are started without ``preexec_fn`` (which forces CPython's plain
# fork(); without it CPython uses vfork(), which runs no fork handlers), and gRPC's fork
# handling is off in the processes that start them (set before gRPC loads).
GRPC_FORK_SAFE_ENV = {"GRPC_EXPERIMENTS": "-event_engine_fork"}


def grpc_fork_safe() -> None:
    """Switch gRPC's fork handlers off unless the user configured gRPC experiments."""
    for key, value in GRPC_FORK_SAFE_ENV.items():
        os.environ.setdefault(key, value)


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that Linux SIGTERMs it when its parent dies (``setpriv --pdeathsig``).

    Children live in their own process group (so Ctrl-C reaches only the parent,
    which stops them in order); this guarantees no orphans even when the
    parent is SIGKILLed. The death signal survives the exec of ``argv``. Where
    setpriv(1) is missing (not Linux), children are only stopped by the parent.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else list(argv)


_issued_ports: set[int] = set()
_issued_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now that this process has not handed out before.

    The kernel gives a closed ephemeral port out again (3,000 bind(0) calls here repeat
    ~10 %), and a port handed out here is often bound only later, by a child started after
    the next allocation: without the record, two children of ``ragserve up`` got one port.
    """
    with _issued_lock:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _issued_ports:
                _issued_ports.add(port)
                return port
    raise OSError(f"no free port on {host} that this process has not handed out already")


class ServerProcess:
    """One ``python -m ragserve serve ...`` (or any command) child process."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        ready_url: str,
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        name: str = "server",
    ):
        self.args = list(args)
        self.ready_url = ready_url
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self.name = name
        self.proc: subprocess.Popen | None = None
        self._log = None

    @classmethod
    def ragserve(cls, component: str, *options: str, http_port: int, grpc_port: int | None = None, **kw):
        args = [sys.executable, "-m", "ragserve", "serve", component, "--http-port", str(http_port)]
        if grpc_port is None:
            args += ["--enable-grpc", "false"]
        else:
            args += ["--grpc-port", str(grpc_port)]
        args += list(options)
        return cls(args, ready_url=f"http://127.0.0.1:{http_port}/v2/health/ready", name=component, **kw)

    def start(self) -> ServerProcess:
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            die_with_parent(self.args),
            env=self.env,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            # Our own process group (a stop takes its children too), but not our own session: Linux
            # schedules each session as one group (autogroup), and in a session of its own a vLLM
            # server's spinning engine starved its event loop, holding streams back for seconds.
            process_group=0,
        )
        return self

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Block until the ready URL answers 200; returns seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before ready{self.log_tail()}")
            try:
                if httpx.get(self.ready_url, timeout=1.0).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n--- " + str(self.log_path) + " ---\n" + "\n".join(tail)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL the whole process group (fault injection)."""
        if self.alive:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
