"""One error root for ragserve and its single mapping to HTTP and gRPC status.

Raise a :class:`RagserveError` subclass anywhere in a request path; the server
renders it (``{"error": "..."}`` on KServe routes, the OpenAI error object on
``/openai`` routes, a gRPC status on gRPC) and keeps serving. KServe's own
exceptions and request-validation errors go through the same table, so a bad
request is never a 500: only bugs are.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

import grpc


class RagserveError(Exception):
    """Base of every error ragserve raises on purpose."""

    status_code: int = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    error_type: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(RagserveError):
    """The request is malformed; the message names the offending field."""

    status_code = HTTPStatus.BAD_REQUEST
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    error_type = "invalid_request_error"


class PayloadTooLarge(BadRequest):
    """The body (or a batch) is over a configured size limit."""

    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class NotFound(RagserveError):
    status_code = HTTPStatus.NOT_FOUND
    grpc_code = grpc.StatusCode.NOT_FOUND
    error_type = "not_found_error"


class Overloaded(RagserveError):
    """Too many requests in flight; the client should back off and retry."""

    status_code = HTTPStatus.TOO_MANY_REQUESTS
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_type = "rate_limit_error"


class DependencyUnavailable(RagserveError):
    """A downstream dependency (Milvus, a predictor) cannot be reached."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = grpc.StatusCode.UNAVAILABLE
    error_type = "dependency_unavailable"

    def __init__(self, dependency: str, detail: str):
        super().__init__(f"{dependency} unavailable: {detail}")
        self.dependency = dependency


class RequestTimeout(RagserveError):
    status_code = HTTPStatus.GATEWAY_TIMEOUT
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    error_type = "timeout_error"


class NotReady(RagserveError):
    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = grpc.StatusCode.UNAVAILABLE
    error_type = "not_ready"


@dataclass(frozen=True)
class ErrorInfo:
    status_code: int
    grpc_code: grpc.StatusCode
    error_type: str
    message: str
    param: str | None = None


def classify(exc: BaseException) -> ErrorInfo:
    """The one table from an exception to what the client sees."""
    if isinstance(exc, RagserveError):
        return ErrorInfo(exc.status_code, exc.grpc_code, exc.error_type, exc.message, exc.param)

    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    from .kserve_compat import (
        InvalidInput,
        ModelNotFound,
        ModelNotReady,
        ServerNotLive,
        ServerNotReady,
        UnsupportedProtocol,
    )

    bad = (HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error")
    if isinstance(exc, (RequestValidationError, ValidationError)):
        return ErrorInfo(*bad, describe_validation_errors(exc.errors()))
    if isinstance(exc, InvalidInput):
        return ErrorInfo(*bad, str(exc))
    if isinstance(exc, ModelNotFound):
        return ErrorInfo(HTTPStatus.NOT_FOUND, grpc.StatusCode.NOT_FOUND, "not_found_error", str(exc))
    if isinstance(exc, (ModelNotReady, ServerNotReady, ServerNotLive)):
        return ErrorInfo(HTTPStatus.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, "not_ready", str(exc))
    if isinstance(exc, (NotImplementedError, UnsupportedProtocol)):
        return ErrorInfo(
            HTTPStatus.NOT_IMPLEMENTED, grpc.StatusCode.UNIMPLEMENTED, "not_implemented", str(exc) or "not implemented"
        )
    return ErrorInfo(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        grpc.StatusCode.INTERNAL,
        "internal_error",
        f"internal error ({type(exc).__name__}); see server logs",
    )


def describe_validation_errors(errors, root: str = "body") -> str:
    """Turn pydantic's error list into one line naming each field (``root`` when there is no field)."""
    parts = []
    for err in errors:
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            parts.append(f"request body is not valid JSON{': ' + str(detail) if detail else ''}")
            continue
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
        where = ".".join(loc) if loc else root
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def error_payload(exc: BaseException, path: str) -> tuple[ErrorInfo, dict]:
    """The status and JSON body a REST client gets for ``exc`` on ``path``.

    ``/openai/`` routes answer with the OpenAI error object (which the official
    clients parse); KServe routes with KServe's ``{"error": "..."}``.
    """
    info = classify(exc)
    if path.startswith("/openai/"):
        body: dict = {"error": {"message": info.message, "type": info.error_type, "param": info.param, "code": None}}
    else:
        body = {"error": info.message}
    return info, body
