"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import RETRY_AFTER_LOADING_S
from ..state import State

router = APIRouter(tags=["operations"])


# HEAD too: load balancers probe with it (left out of the OpenAPI document, which lists GET).
@router.get("/health", summary="the process is up")
@router.head("/health", include_in_schema=False)
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="the model is loaded and warmed up, and the server is not stopping",
            responses={503: {"description": "not ready yet, or stopping"}})
@router.head("/ready", include_in_schema=False)
async def ready(state: State) -> JSONResponse:
    if state.draining:
        body = {"status": "draining"}
    elif state.ready and (problem := state.problem()) is not None:
        body = {"status": "failed", "error": problem}  # a thread it needs has stopped: replace this server
    elif state.ready:
        return JSONResponse({"status": "ready"})
    else:
        body = {"status": "failed", "error": state.load_error} if state.load_error else {"status": "loading"}
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_LOADING_S)})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(state: State) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
