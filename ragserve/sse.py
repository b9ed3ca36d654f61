"""Server-sent events for streamed generation (OpenAI streams and the V2 generate extension).

The first event is awaited before the response starts, so everything that can
fail early (a bad parameter, a request that times out in the queue) still gets
its real HTTP status. After that the status line is gone: an error becomes a
final ``data: {"error": ...}`` event in the shape the route's clients expect.
A client that disconnects cancels the body task; closing the event iterator
then drops its sequence from the engine.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import orjson
from fastapi.responses import StreamingResponse

from .errors import RagserveError, error_payload

logger = logging.getLogger("ragserve")


def _event(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def sse_response(events: AsyncIterator[dict], path: str, *, done_marker: bool) -> StreamingResponse:
    """Stream ``events`` as SSE; ``done_marker`` ends with OpenAI's ``data: [DONE]``."""
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await events.aclose()
        raise

    async def body():
        try:
            if first is not None:
                yield _event(first)
                async for event in events:
                    yield _event(event)
        except Exception as exc:
            if not isinstance(exc, RagserveError):
                logger.exception("stream on %s failed", path)
            yield _event(error_payload(exc, path)[1])
        finally:
            await events.aclose()
        if done_marker:
            yield b"data: [DONE]\n\n"

    return _EventStream(body(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


class _EventStream(StreamingResponse):
    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A disconnect can cancel the response while it waits in send();
            # close the events now, not whenever the generator is collected.
            await self.body_iterator.aclose()
