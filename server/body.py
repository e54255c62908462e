"""Reading a request body into a dict of fields: JSON or multipart form, within a size limit; or a
multipart form with files (an upload)."""

from __future__ import annotations

import json

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from .errors import ApiError

JSON = "application/json"
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body larger than {limit} bytes", code="body_too_large")


async def _read_bounded(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to exceed limit: by Content-Length when the client
    sends one, and by the bytes actually received either way (a chunked body has none)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


# A body of another media type is 415 Unsupported Media Type, except on Segmind's routes, whose
# documented answer (and so what its clients may check for) is 406.
UNSUPPORTED_MEDIA_TYPE, SEGMIND_UNSUPPORTED_MEDIA_TYPE = 415, 406


async def read_fields(request: Request, limit: int, *, unsupported_status: int = UNSUPPORTED_MEDIA_TYPE) -> dict:
    """The request's fields; form values stay strings (the models accept numeric strings)."""
    media = _media_type(request)
    is_json = media == JSON or media.endswith("+json")
    if not is_json and media != MULTIPART:
        raise ApiError(unsupported_status, f"Content-Type must be {JSON} or {MULTIPART}, got {media or 'none'}",
                       code="unsupported_media_type")
    body = await _read_bounded(request, limit)
    if is_json:
        return _json_object(body)
    return await _form_fields(request, body)


MAX_INT_DIGITS = 30  # far past any field's range; Python refuses int strings over 4300 digits anyway


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def _json_object(body: bytes) -> dict:
    try:
        value = json.loads(body, parse_int=_json_int)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}", code="invalid_json") from None
    except RecursionError:  # arrays or objects nested deeper than the parser's stack
        raise ApiError(400, "malformed JSON body: nested too deeply", code="invalid_json") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the JSON body must be an object", code="invalid_json")
    return value


async def _form_fields(request: Request, body: bytes) -> dict:
    # The body is already read (and bounded); the form parser reads it again from memory.
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(request.scope, replay).form() as form:
            # Uploaded files are not fields of this API: a file under "text" reads as no text.
            return {key: value for key, value in form.multi_items() if isinstance(value, str)}
    except (MultiPartException, HTTPException) as exc:
        detail = getattr(exc, "message", None) or getattr(exc, "detail", "")
        raise ApiError(400, f"malformed multipart body: {detail}", code="invalid_multipart") from None


async def read_upload(request: Request, limit: int, *, max_files: int = 4) -> tuple[dict[str, str], dict[str, bytes]]:
    """A multipart form's text fields and its files' contents, the whole body within limit."""
    media = _media_type(request)
    if media not in (MULTIPART, URLENCODED):  # a form without its file: told what is missing, not 415
        raise ApiError(UNSUPPORTED_MEDIA_TYPE, f"Content-Type must be {MULTIPART}, got {media or 'none'}",
                       code="unsupported_media_type")
    body = await _read_bounded(request, limit)

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    try:
        async with Request(request.scope, replay).form(max_files=max_files) as form:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.setdefault(key, await value.read())
                else:
                    fields.setdefault(key, value)
    except (MultiPartException, HTTPException) as exc:
        detail = getattr(exc, "message", None) or getattr(exc, "detail", "")
        raise ApiError(400, f"malformed multipart body: {detail}", code="invalid_multipart") from None
    return fields, files
