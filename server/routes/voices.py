"""The voices: GET /v1/audio/voices lists the checkpoint's and the caller's cloned ones;
POST /v1/audio/voices clones a voice from a reference recording (a pretrained checkpoint, or --demo);
DELETE /v1/audio/voices/{name} removes one. A cloned voice is the caller's key's alone."""

from __future__ import annotations

import asyncio
import re
import unicodedata

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from orpheus_local.errors import InputError

from ..auth import key_digest
from ..body import MULTIPART, read_upload
from ..errors import ApiError, from_core, invalid, not_ready
from ..state import State

router = APIRouter(tags=["OpenAI"])

NAME = re.compile(r"[\w-]{1,64}")  # letters of any script, digits, _ and -: safe in a URL path
MAX_TRANSCRIPT_CHARS = 1000

_FORM = {"requestBody": {"required": True, "content": {MULTIPART: {"schema": {
    "type": "object", "required": ["name", "audio", "transcript"],
    "properties": {
        "name": {"type": "string", "pattern": NAME.pattern, "description": "the voice's name, as requests give it"},
        "audio": {"type": "string", "format": "binary",
                  "description": "the reference recording: 3 to 30 s of one speaker, any format FFmpeg reads"},
        "transcript": {"type": "string", "maxLength": MAX_TRANSCRIPT_CHARS,
                       "description": "the words spoken in the recording"},
        "model": {"type": "string", "description": "the served checkpoint that encodes it (one that clones); "
                                                   "absent: the default"},
    }}}}}}


@router.get("/v1/audio/voices", summary="the served checkpoint's voices and default, the OpenAI voice names mapped "
                                        "to them, and your cloned voices")
async def voices(request: Request, state: State, model: str | None = None) -> dict:
    """model: a served checkpoint (or a name that selects one, as /v1/audio/speech takes); absent: the default."""
    names = state.names_by_model[state.model_for(model)] if model else state.openai_names
    if names.served is None:  # a hub checkpoint not downloaded yet
        raise not_ready()
    store = state.cloned_voices
    cloned = [v.as_json() for v in await store.list(key_digest(request.state))] if store.is_open else []
    return {"voices": list(names.served.names), "default": names.served.default, "openai_voices": names.voices,
            "cloning": names.served.clones, "cloned_voices": cloned}


@router.post("/v1/audio/voices", summary="clone a voice from a reference recording and its transcript (a pretrained "
                                         "checkpoint)", openapi_extra=_FORM, status_code=201)
async def clone(request: Request, state: State) -> JSONResponse:
    state.synthesizer()  # 503 while loading or stopping, before reading the body
    fields, files = await read_upload(request, state.settings.max_voice_bytes)
    # The checkpoint whose codec encodes the recording (absent: the default); it must clone.
    synth = state.synthesizer(state.model_for(fields["model"]) if fields.get("model") else None)
    name = _new_name(fields.get("name"), state)
    if "audio" not in files:
        raise invalid("audio", "is required: the reference recording, as a file part of the form")
    transcript = fields.get("transcript")
    if transcript is None or not transcript.strip():
        raise invalid("transcript", "is required: the words spoken in the recording")
    if len(transcript) > MAX_TRANSCRIPT_CHARS:
        raise invalid("transcript", f"{len(transcript)} characters is more than {MAX_TRANSCRIPT_CHARS}; use a "
                                    "shorter recording")
    try:
        async with state.cloning:
            reference = await asyncio.to_thread(synth.clone_voice, name, transcript, files["audio"])
    except InputError as exc:
        raise from_core(exc) from None
    stored = await state.cloned_voices.add(key_digest(request.state), reference,
                                          quota=state.settings.max_voices_per_key)
    if stored == "exists":
        raise ApiError(409, f"name: you already have a voice {name!r}; DELETE /v1/audio/voices/{name} first",
                       param="name", code="voice_exists")
    if stored == "quota":
        raise ApiError(409, f"you have {state.settings.max_voices_per_key} cloned voices, the most one key may keep; "
                            "delete one first", param="name", code="too_many_voices")
    return JSONResponse(stored.as_json(), status_code=201)


@router.delete("/v1/audio/voices/{name}", summary="remove one of your cloned voices", status_code=204)
async def remove(name: str, request: Request, state: State) -> Response:
    if not state.cloned_voices.is_open:  # opened at start-up
        raise not_ready()
    if not await state.cloned_voices.delete(key_digest(request.state), name):
        raise ApiError(404, f"you have no cloned voice {name!r}", param="name", code="voice_not_found")
    return Response(status_code=204)


def _new_name(name: str | None, state: State) -> str:
    """A cloned voice's name, unless it is missing, malformed, or already a name of every client's."""
    if name is None or not name.strip():
        raise invalid("name", "is required: what requests will call the voice")
    name = unicodedata.normalize("NFC", name.strip())
    if not NAME.fullmatch(name):
        raise invalid("name", "must be 1 to 64 letters, digits, _ or -")
    names = state.openai_names
    if names.served is not None and names.served.find(name) is not None:
        raise invalid("name", f"{name!r} is a voice of the checkpoint; choose another name")
    if name.lower() in names.voices:
        raise invalid("name", f"{name!r} is an OpenAI voice name mapped to {names.voices[name.lower()]!r}; choose "
                              "another name")
    return name
