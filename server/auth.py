"""API keys: x-api-key or Authorization: Bearer, on every route but the health probes and the
playground's page; a WebSocket may also give ?api_key= (a browser cannot set its headers)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import INVALID_KEY, MISSING_KEY, ApiError, error_response

# The probes, and the playground's page and files (server/routes/playground.py): they hold no data, and
# the page's calls to the API carry a key like any other client's.
OPEN_PATHS = frozenset({"/health", "/ready", "/", "/playground/playground.js", "/playground/playground.css",
                        "/playground/tags.json"})
# WebSocket close code for a missing or wrong key (4000-4999 are the application's; 401 inside).
WS_UNAUTHORIZED = 4401
# request.state's name for which configured key a request presented (its index in the keys file).
CLIENT_KEY = "api_key_index"
# request.state's name for the SHA-256 hex digest of that key: a v2 job is the submitting key's alone,
# and the job store knows it by this digest, the same in every server process and after a restart.
CLIENT_KEY_DIGEST = "api_key_digest"


def key_digest(state) -> str | None:
    """The SHA-256 digest of the key a request presented (request.state's), which owns its v2 jobs
    and cloned voices; None on an open server."""
    return getattr(state, CLIENT_KEY_DIGEST, None)


def load_keys(path: Path | None) -> tuple[bytes, ...]:
    """One key per line; blank lines and '#' comments are skipped."""
    if path is None:
        return ()
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(line.encode() for line in lines if line)


def presented_key(headers: Headers) -> str | None:
    if key := headers.get("x-api-key"):
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def key_index(key: str, keys: tuple[bytes, ...]) -> int | None:
    """Which of keys this is, or None. Every key is compared, in constant time and as digests of one
    length, so timing tells nothing about any key, not even its length."""
    digest = hashlib.sha256(key.encode()).digest()
    matches = [hmac.compare_digest(digest, hashlib.sha256(known).digest()) for known in keys]
    return matches.index(True) if any(matches) else None


class ApiKeyAuth:
    """ASGI middleware: with keys configured, refuse requests without a valid one (401)."""

    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...]):
        self.app = app
        self.keys = keys
        self.digests = tuple(hashlib.sha256(known).hexdigest() for known in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        key = presented_key(Headers(scope=scope))
        if key is None and scope["type"] == "websocket":
            key = QueryParams(scope.get("query_string", b"")).get("api_key") or None
        index = None if key is None else key_index(key, self.keys)
        if key is None:
            error = ApiError(401, MISSING_KEY, code="missing_api_key")
        elif index is None:
            error = ApiError(401, INVALID_KEY, code="invalid_api_key")
        else:
            state = scope.setdefault("state", {})
            state[CLIENT_KEY], state[CLIENT_KEY_DIGEST] = index, self.digests[index]
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await _refuse_websocket(error, receive, send)
        await error_response(scope["path"], error)(scope, receive, send)


async def _refuse_websocket(error: ApiError, receive: Receive, send: Send) -> None:
    """Accept, say why in an error event (a browser cannot read a refused handshake's status or a
    close reason's details), close with WS_UNAUTHORIZED; nothing else happens on the socket."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    event = {"type": "error", "message": error.message, "param": None, "code": error.code}
    await send({"type": "websocket.send", "text": json.dumps(event)})
    await send({"type": "websocket.close", "code": WS_UNAUTHORIZED, "reason": error.code})
