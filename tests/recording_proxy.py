"""A reverse proxy on loopback that records request headers and can be switched off.

Put in front of a real predictor, it shows what the transformer sent downstream
(``x-request-id``, ``traceparent``) and, stopped, refuses connections exactly
as a crashed predictor does. Restarted, it listens on the same port again.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn

from ragserve.procs import free_port

_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class RecordingProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, lowercased headers)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    async def _app(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append((scope["method"], scope["path"], headers))
        query = scope.get("query_string", b"").decode()
        async with httpx.AsyncClient(base_url=self.upstream, timeout=120) as client:
            request = client.build_request(
                scope["method"], scope["path"] + (f"?{query}" if query else ""), content=body,
                headers={k: v for k, v in headers.items() if k not in _HOP},
            )
            response = await client.send(request, stream=True)
            try:
                await send({
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(k.encode(), v.encode()) for k, v in response.headers.items() if k.lower() not in _HOP],
                })
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await response.aclose()

    def start(self) -> RecordingProxy:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        config = uvicorn.Config(
            self._app, interface="asgi3", log_level="warning", lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("recording proxy did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._sock.close()
            self._server = None

    def headers_for(self, path_suffix: str) -> list[dict]:
        return [h for _, path, h in self.requests if path.endswith(path_suffix)]
