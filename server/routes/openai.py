"""OpenAI's speech API: POST /v1/audio/speech, and the models it serves (the voices: voices.py)."""

from __future__ import annotations

import base64
import json
import uuid
from contextlib import aclosing
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from orpheus_local.audio.encoders import FORMATS, StreamEncoder, audio_format

from ..auth import key_digest
from ..body import JSON, MULTIPART, read_fields
from ..generation import encoded, pcm_chunks, whole_file
from ..protocol import SpeechRequest, openapi_body, parse
from ..state import State
from ..streaming import start_stream

router = APIRouter(tags=["OpenAI"])

_AUDIO = {fmt.content_type: {} for fmt in FORMATS.values()}


@router.post(
    "/v1/audio/speech", summary="synthesize speech, streamed in the chosen format",
    openapi_extra=openapi_body(SpeechRequest, JSON, MULTIPART), response_class=Response,
    responses={200: {"content": {**_AUDIO, "text/event-stream": {}}, "description": "audio bytes or SSE events"}},
)
async def speech(request: Request, state: State) -> Response:
    state.synthesizer()  # 503 while loading or stopping, before reading the body
    body = parse(SpeechRequest, await read_fields(request, state.settings.max_body_bytes))
    model = state.model_for(body.model)
    synth = state.synthesizer(model)
    names = await state.names_for(key_digest(request.state), body.voice, model)
    params = body.synthesis_params(state.settings.max_text_chars, names)
    request_id = uuid.uuid4().hex
    headers = {"X-Request-Id": request_id, "X-Model": model}
    if ignored := body.ignored_fields():
        headers["X-Ignored-Fields"] = ", ".join(ignored)
    if not body.stream:
        chunks = pcm_chunks(synth, params, request_id, state.metrics, whole_file=True, text_field="input")
        audio = await whole_file(request, state.admission, state.encoders, chunks, body.response_format, body.speed)
        return Response(audio, media_type=audio_format(body.response_format).content_type, headers=headers)
    encoder = StreamEncoder(body.response_format, speed=body.speed)
    chunks = pcm_chunks(synth, params, request_id, state.metrics, text_field="input")
    audio = encoded(state.admission, state.encoders, chunks, encoder)
    if body.stream_format == "sse":
        return await start_stream(request, _sse_events(audio), "text/event-stream", headers)
    return await start_stream(request, audio, encoder.content_type, headers)


def _event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _sse_events(audio: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI's speech events: one delta per encoded chunk (base64), then done."""
    async with aclosing(audio):
        async for data in audio:
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    yield _event({"type": "speech.audio.done"})


@router.get("/v1/models", summary="the model names /v1/audio/speech accepts: the served checkpoints', OpenAI's "
                                  "(and dated gpt-4o-mini-tts names) and the aliases")
async def models(state: State) -> dict:
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": state.created, "owned_by": "canopylabs"}
                 for name in state.openai_names.model_names()],
    }
