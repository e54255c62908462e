"""Every error the server answers with, mapped to its HTTP status and body in one place.

Segmind routes answer {"error": message}; OpenAI routes answer
{"error": {"message", "type", "param", "code"}}. The shape is chosen by the request path.
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from orpheus_local.errors import InputError, NotReadyError, QueueFullError

SERVED_MODEL = "orpheus-3b-0.1"
OPENAI_PATHS = ("/v1/audio/", "/v1/models")
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_LOADING_S = 5

MISSING_KEY = "Missing Authorization or x-api-key in header"
INVALID_KEY = "Unauthorized. API key is invalid or may have expired"

# OpenAI's error types by status; the rest are "invalid_request_error" (401 included, as OpenAI does).
_OPENAI_TYPES = {429: "requests", 500: "server_error", 503: "server_error"}
_MODEL_PATH = re.compile(r"^/v[12]/([^/]+)$")


class ApiError(Exception):
    """An answer other than success: status, a message safe to show, and optionally the field at fault."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


class ClientGone(Exception):
    """The client disconnected before its answer was ready; there is nobody left to answer."""


def invalid(field: str, message: str) -> ApiError:
    """400 for a value the client sent, naming its field."""
    return ApiError(400, f"{field}: {message}", param=field, code="invalid_value")


def from_core(exc: Exception, text_field: str = "text") -> ApiError | None:
    """The core's errors in HTTP terms, for every route and the v2 jobs; None for a failure of ours.
    text_field: what the route calls the text (Segmind "text", OpenAI "input")."""
    if isinstance(exc, InputError):
        return invalid(text_field if exc.field == "text" else exc.field, exc.message)
    if isinstance(exc, QueueFullError):
        return busy("the generation queue is full")
    if isinstance(exc, NotReadyError):
        return not_ready()
    return None


def text_too_long(field: str, length: int, limit: int) -> ApiError:
    return ApiError(413, f"{field}: {length} characters is more than the {limit} one request may have; "
                         f"send the text in several requests", param=field, code="text_too_long")


def busy(reason: str, retry_after_s: int = RETRY_AFTER_BUSY_S) -> ApiError:
    """429; retry_after_s: when a place frees, as far as the server knows."""
    when = "retry shortly" if retry_after_s <= RETRY_AFTER_BUSY_S else f"retry in {retry_after_s} s"
    return ApiError(429, f"too many requests: {reason}; {when}", code="rate_limit_exceeded",
                    headers={"Retry-After": str(retry_after_s)})


def not_ready() -> ApiError:
    return ApiError(503, "the model is still loading; retry shortly", code="not_ready",
                    headers={"Retry-After": str(RETRY_AFTER_LOADING_S)})


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down; retry shortly", code="shutting_down",
                    headers={"Retry-After": str(RETRY_AFTER_LOADING_S)})


def generation_failed(request_id: str) -> ApiError:
    return ApiError(500, f"generation failed (request {request_id})", code="generation_failed",
                    headers={"X-Request-Id": request_id})


def unknown_model(name: str, served: tuple[str, ...] = (SERVED_MODEL,)) -> ApiError:
    """404 for a model name that selects no served checkpoint; served: their names, the default first."""
    shown = name if len(name) <= 64 else name[:64] + "..."
    return ApiError(404, f"model {shown!r} not found; this server serves {', '.join(served)}", param="model",
                    code="model_not_found")


def error_response(path: str, error: ApiError) -> JSONResponse:
    if path.startswith(OPENAI_PATHS):
        body = {"error": {
            "message": error.message,
            "type": _OPENAI_TYPES.get(error.status, "invalid_request_error"),
            "param": error.param,
            "code": error.code,
        }}
    else:
        body = {"error": error.message}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def _from_http_exception(request: Request, exc: HTTPException) -> ApiError:
    """Routing's own errors (404 no such path, 405 wrong method) in the API's words."""
    if exc.status_code == 404 and request.method == "POST" and (match := _MODEL_PATH.match(request.url.path)):
        return unknown_model(match.group(1), getattr(request.app.state, "checkpoint_names", (SERVED_MODEL,)))
    messages = {404: "not found", 405: f"method {request.method} not allowed"}
    return ApiError(exc.status_code, messages.get(exc.status_code, str(exc.detail)), headers=dict(exc.headers or {}))


def install(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc)

    async def on_http_exception(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(request.url.path, _from_http_exception(request, exc))

    async def on_client_gone(request: Request, exc: ClientGone) -> Response:
        # 499 (a convention from nginx): counted in the metrics, read by nobody.
        return Response(status_code=499)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the log (Starlette re-raises after this answer), never to the client.
        return error_response(request.url.path, ApiError(500, "internal server error", code="internal_error"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(HTTPException, on_http_exception)
    app.add_exception_handler(ClientGone, on_client_gone)
    app.add_exception_handler(ClientDisconnect, on_client_gone)  # gone (or cut) while sending its body
    app.add_exception_handler(Exception, on_unexpected)
