"""Segmind's API: synchronous v1, asynchronous v2 jobs and their poll URLs."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from orpheus_local.audio.encoders import StreamEncoder

from ..auth import CLIENT_KEY_DIGEST
from ..body import JSON, MULTIPART, SEGMIND_UNSUPPORTED_MEDIA_TYPE, read_fields
from ..errors import SERVED_MODEL, ApiError
from ..generation import encoded, pcm_chunks, whole_file
from ..jobs import COMPLETED, FAILED, StoredJob
from ..protocol import SegmindRequest, openapi_body, parse
from ..state import State
from ..streaming import start_stream

router = APIRouter(tags=["Segmind"])

_WAV = {200: {"content": {"audio/wav": {}}, "description": "24 kHz mono 16-bit WAV"}}
_BODY = openapi_body(SegmindRequest, JSON, MULTIPART)


async def _read(request: Request, state: State) -> SegmindRequest:
    fields = await read_fields(request, state.settings.max_body_bytes, unsupported_status=SEGMIND_UNSUPPORTED_MEDIA_TYPE)
    return parse(SegmindRequest, fields)


@router.post(f"/v1/{SERVED_MODEL}", summary="synthesize speech, answered with the WAV file",
             openapi_extra=_BODY, response_class=Response, responses=_WAV)
async def synthesize(request: Request, state: State) -> Response:
    return await _synthesize(request, state, None)


@router.post(f"/v2/{SERVED_MODEL}", summary="submit a job; poll its status_url, then fetch its response_url",
             openapi_extra=_BODY)
async def submit(request: Request, state: State) -> dict:
    return await _submit(request, state, None)


def model_routes(names: tuple[str, ...]) -> APIRouter:
    """/v1/NAME and /v2/NAME of each checkpoint served by that name (--model NAME=PATH), besides
    /v1/orpheus-3b-0.1 and /v2/orpheus-3b-0.1, which always select the default. Each path is fixed,
    so no route of the API is shadowed; a slug that names nothing is a 404 (errors.py)."""
    models = APIRouter(tags=["Segmind"])
    for name in names:
        if name == SERVED_MODEL:
            continue
        models.add_api_route(f"/v1/{name}", _v1_route(name), methods=["POST"], openapi_extra=_BODY,
                             response_class=Response, responses=_WAV,
                             summary=f"synthesize speech with {name}, answered with the WAV file")
        models.add_api_route(f"/v2/{name}", _v2_route(name), methods=["POST"], openapi_extra=_BODY,
                             summary=f"submit a job for {name}; poll its status_url, then fetch its response_url")
    return models


def _v1_route(model: str):
    async def synthesize_with(request: Request, state: State) -> Response:
        return await _synthesize(request, state, model)
    return synthesize_with


def _v2_route(model: str):
    async def submit_to(request: Request, state: State) -> dict:
        return await _submit(request, state, model)
    return submit_to


async def _synthesize(request: Request, state: State, model: str | None) -> Response:
    """model: the served checkpoint's name; None: the default."""
    synth = state.synthesizer(model)
    body = await _read(request, state)
    names = await state.names_for(_client(request), body.voice, model)
    params = body.synthesis_params(state.settings.max_text_chars, names)
    request_id = uuid.uuid4().hex
    started = time.perf_counter()
    chunks = pcm_chunks(synth, params, request_id, state.metrics, whole_file=not body.stream)
    headers = {"X-Remaining-Credits": str(state.settings.remaining_credits), "X-Request-Id": request_id,
               "X-Model": model or state.checkpoint_names[0]}
    if body.stream:
        # The generation time is unknown when the headers leave, so a stream goes without it.
        encoder = StreamEncoder("wav", speed=body.speed)
        return await start_stream(request, encoded(state.admission, state.encoders, chunks, encoder), encoder.content_type,
                                  headers)
    audio = await whole_file(request, state.admission, state.encoders, chunks, "wav", body.speed)
    headers["X-Generation-Time"] = f"{time.perf_counter() - started:.3f}"
    return Response(audio, media_type="audio/wav", headers=headers)


async def _submit(request: Request, state: State, model: str | None) -> dict:
    synth = state.synthesizer(model)
    body = await _read(request, state)
    names = await state.names_for(_client(request), body.voice, model)
    params = body.synthesis_params(state.settings.max_text_chars, names)
    job = await state.jobs.submit(lambda job_id: pcm_chunks(synth, params, job_id, state.metrics, whole_file=True),
                                  speed=body.speed, owner=_client(request), quota=state.settings.max_jobs_per_key)
    status_url = _link(request, state, "job_status", job.id)
    return {
        "request_id": job.id,
        "status": job.status,
        "poll_url": status_url,
        "status_url": status_url,
        "response_url": _link(request, state, "job_result", job.id),
    }


def _client(request: Request) -> str | None:
    """The API key the request presented (its digest: what owns a job); None on an open server."""
    return getattr(request.state, CLIENT_KEY_DIGEST, None)


def _link(request: Request, state: State, name: str, request_id: str) -> str:
    """An absolute URL of a job's route: under public_url when it is set, else at the host the client used."""
    if (base := state.settings.public_url) is not None:
        return base + request.app.url_path_for(name, request_id=request_id)
    return str(request.url_for(name, request_id=request_id))


def _not_found(state: State, request_id: str) -> ApiError:
    hours = state.settings.job_ttl_s / 3600
    shown = request_id if len(request_id) <= 64 else request_id[:64] + "..."  # echo no more than an id's worth
    return ApiError(404, f"request {shown} not found (results are kept {hours:g} h)", code="not_found")


async def _job(state: State, request_id: str, request: Request) -> StoredJob:
    """The job from the store shared by every server process: any of them answers for any job."""
    job = await state.jobs.find(request_id, owner=_client(request))
    if job is None:
        raise _not_found(state, request_id)
    return job


def _failed(job: StoredJob, body: dict) -> JSONResponse:
    # Segmind answers a FAILED job with 422 and the failure in the body.
    return JSONResponse({**body, "error": job.error}, status_code=422)


@router.get("/v2/requests/{request_id}/status", name="job_status", summary="a job's status")
async def job_status(request_id: str, request: Request, state: State):
    job = await _job(state, request_id, request)
    body = {
        "request_id": job.id,
        "status": job.status,
        "status_url": _link(request, state, "job_status", job.id),
        "response_url": _link(request, state, "job_result", job.id),
        "metrics": job.metrics(state.jobs.clock()),
    }
    return _failed(job, body) if job.status == FAILED else body


@router.get("/v2/requests/{request_id}", name="job_result", summary="a job's result: output is the audio's URL")
@router.get("/v1/requests/{request_id}", name="job_result_v1", summary="a job's result (older poll path)")
async def job_result(request_id: str, request: Request, state: State):
    job = await _job(state, request_id, request)
    body = {"request_id": job.id, "status": job.status, "metrics": job.metrics(state.jobs.clock())}
    if job.status == FAILED:
        return _failed(job, body)
    if job.status == COMPLETED:
        body["output"] = _link(request, state, "job_output", job.id)
    return body


@router.delete("/v2/requests/{request_id}", name="job_delete",
               summary="forget a job, cancelling its generation if still queued or running: 200 with "
                       "{request_id, status: DELETED}; its URLs answer 404 from then on")
async def job_delete(request_id: str, request: Request, state: State) -> dict:
    if not await state.jobs.delete(request_id, owner=_client(request)):
        raise _not_found(state, request_id)
    return {"request_id": request_id, "status": "DELETED"}


@router.get("/v2/requests/{request_id}/output.wav", name="job_output", summary="a completed job's audio",
            response_class=Response, responses=_WAV)
async def job_output(request_id: str, request: Request, state: State) -> Response:
    job = await _job(state, request_id, request)
    if job.status != COMPLETED:
        raise ApiError(404, f"request {request_id} has no audio: it is {job.status}", code="not_found")
    if (audio := await state.jobs.audio(job.id)) is None:  # deleted, or expired, since
        raise _not_found(state, request_id)
    return Response(audio, media_type="audio/wav")
