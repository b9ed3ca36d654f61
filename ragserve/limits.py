"""ASGI middlewares for the request limits every ragserve server enforces."""

from __future__ import annotations

import json

from .errors import Overloaded, PayloadTooLarge, RagserveError, error_payload

# Only inference counts against the limit: health, readiness, metadata and
# metrics must answer even when the server is saturated.
_INFERENCE_SUFFIXES = ("/infer", ":predict", "/generate", "/generate_stream")


async def _send_error(send, exc: RagserveError, path: str) -> None:
    info, payload = error_payload(exc, path)
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": int(info.status_code),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """Reject bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app, max_bytes: int, error: type[PayloadTooLarge] = PayloadTooLarge):
        self.app = app
        self.max_bytes = max_bytes
        self.error = error

    def _error(self) -> PayloadTooLarge:
        return self.error(f"request body is over the {self.max_bytes}-byte limit (setting max_body_bytes)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    return await _send_error(send, self._error(), path)
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_error(send, self._error(), path)


class ConcurrencyLimitMiddleware:
    """Answer 429 when ``limit`` inference requests are already in flight (0 = no limit)."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit
        self.in_flight = 0

    @staticmethod
    def _limited(path: str) -> bool:
        return path.endswith(_INFERENCE_SUFFIXES) or path.startswith("/openai/")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.limit or not self._limited(scope.get("path", "")):
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            exc = Overloaded(f"server is at its limit of {self.limit} concurrent requests; retry later")
            return await _send_error(send, exc, scope.get("path", ""))
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
