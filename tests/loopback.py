"""Run a small ASGI app on a loopback port in a background thread (real HTTP, no mocks)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn


class LoopbackServer:
    """``with LoopbackServer(app) as srv: httpx.get(srv.url + "/...")``."""

    def __init__(self, app):
        # bind first and hand uvicorn the socket: no window for another process to take the port
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("loopback server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@contextlib.contextmanager
def serving(standin):
    """Serve ``standin.app`` on loopback for the block and set ``standin.url``."""
    with LoopbackServer(standin.app) as srv:
        standin.url = srv.url
        yield standin
