"""Request models of the three APIs (Segmind v1/v2, OpenAI speech) and their one mapping to
SynthesisParams. Defaults and ranges come from orpheus_local.params."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, Field, ValidationError

from orpheus_local.audio.encoders import FORMATS, SPEED_MAX, SPEED_MIN
from orpheus_local.errors import InputError
from orpheus_local.params import RANGES, TOP_K_RANGE, SynthesisParams, VoiceReference

from .errors import SERVED_MODEL, from_core, invalid, text_too_long, unknown_model
from .openai_names import SPEECH_MODELS, OpenAINames

_DEFAULTS = {f.name: f.default for f in fields(SynthesisParams)}


def _finite_number(value):
    # pydantic would read true as 1.0, and compare NaN with a range ("should be <= 1.5"): neither is a
    # number a client meant.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return value  # not a number at all: pydantic says so
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return value


Number = Annotated[float, BeforeValidator(_finite_number)]
Integer = Annotated[int, BeforeValidator(_finite_number)]


def _voice_name(value):
    """A voice given as an object, as OpenAI's API also allows ({"id": "coral"}), becomes its name."""
    if isinstance(value, dict):
        if not isinstance(value.get("id"), str):
            raise ValueError('a voice object needs an "id" string, e.g. {"id": "tara"}')
        return value["id"]
    return value


Voice = Annotated[str, BeforeValidator(_voice_name)]
_VOICE_DESCRIPTION = ("speaker: one of the served checkpoint's voices, one of your cloned voices (on a "
                      "pretrained checkpoint), or an OpenAI voice name mapped to one (GET /v1/audio/voices); "
                      'also as an object, {"id": "tara"}; absent or empty: the checkpoint\'s default')


def _ranged(name: str, description: str):
    low, high = RANGES[name]
    return Field(_DEFAULTS[name], ge=low, le=high, description=description)


class Sampling(BaseModel):
    """Orpheus sampling fields, shared by every route (extensions under the OpenAI API)."""

    temperature: Number = _ranged("temperature", "sampling temperature")
    top_p: Number = _ranged("top_p", "nucleus sampling mass")
    max_new_tokens: Integer = _ranged("max_new_tokens", "most audio tokens to generate (7 per 2048 samples)")
    repetition_penalty: Number = _ranged("repetition_penalty", "penalty for repeated tokens")
    seed: Integer | None = Field(None, ge=0, le=2**63 - 1, description="seed for reproducible sampling (extension)")
    top_k: Integer | None = Field(None, ge=TOP_K_RANGE[0], le=TOP_K_RANGE[1],
                                  description="keep only the k most likely audio ids; absent: no top-k (extension)")

    def _synthesis_params(self, field: str, text: str, voice: Voice | None, max_chars: int,
                          names: OpenAINames) -> SynthesisParams:
        """The one mapping to SynthesisParams; its checks (empty text, unknown voice or tag) become
        400s, text longer than max_chars a 413. An OpenAI voice name becomes the voice it maps to, no
        voice the checkpoint's default, the caller's cloned voice its reference."""
        if len(text) > max_chars:
            raise text_too_long(field, len(text), max_chars)
        try:
            served = names.voice(voice)
            reference = served if isinstance(served, VoiceReference) else None
            return SynthesisParams(
                text=text, voice=None if reference else served, reference=reference, temperature=self.temperature, top_p=self.top_p,
                max_new_tokens=self.max_new_tokens, repetition_penalty=self.repetition_penalty, seed=self.seed,
                top_k=self.top_k,
            )
        except InputError as exc:
            raise from_core(exc, field) from None


class SegmindRequest(Sampling):
    """Body of POST /v1/orpheus-3b-0.1 and /v2/orpheus-3b-0.1 (JSON or multipart form)."""

    text: str = Field(description="what to say; emotion tags like <sigh> or <laugh> are spoken as such")
    voice: Voice | None = Field(None, description=_VOICE_DESCRIPTION)
    speed: Number = Field(1.0, ge=SPEED_MIN, le=SPEED_MAX, description="playback speed factor, pitch kept (extension)")
    stream: bool = Field(False, description="send a chunked WAV as audio is generated (extension, v1 only)")

    def synthesis_params(self, max_chars: int, names: OpenAINames) -> SynthesisParams:
        return self._synthesis_params("text", self.text, self.voice, max_chars, names)


class SpeechRequest(Sampling):
    """Body of POST /v1/audio/speech (OpenAI)."""

    model: str = Field(SERVED_MODEL, description=f"one of {', '.join(SPEECH_MODELS)}, a dated gpt-4o-mini-tts, or "
                                                 "an alias from the settings (GET /v1/models)")
    input: str = Field(description="what to say (no 4,096-character cap: long text is split at sentences)")
    voice: Voice | None = Field(None, description=_VOICE_DESCRIPTION)
    instructions: str | None = Field(None, max_length=4096, description="accepted and ignored: Orpheus takes its "
                                     "style from the voice and from emotion tags in the text (X-Ignored-Fields says so)")
    response_format: Literal[tuple(FORMATS)] = Field("mp3", description="audio encoding")
    speed: Number = Field(1.0, ge=SPEED_MIN, le=SPEED_MAX, description="playback speed factor")
    stream_format: Literal["audio", "sse"] = Field("audio", description="raw audio bytes or server-sent events")
    stream: bool = Field(True, description="false: one complete file with its real sizes, sent when done; "
                         "a seeded request then gives the same bytes on every run (extension)")

    def synthesis_params(self, max_chars: int, names: OpenAINames) -> SynthesisParams:
        if not names.accepts_model(self.model):
            raise unknown_model(self.model)
        if not self.stream and self.stream_format == "sse":
            raise invalid("stream", "server-sent events are a stream; stream false needs stream_format audio")
        return self._synthesis_params("input", self.input, self.voice, max_chars, names)

    def ignored_fields(self) -> list[str]:
        """Fields of OpenAI's API given here that change nothing in the audio."""
        return ["instructions"] if self.instructions else []


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: dict) -> M:
    """Validate fields into model; the first problem becomes a 400 that names its field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "body"
        message = "is required" if error["type"] == "missing" else error["msg"]
        raise invalid(field, message) from None


def openapi_body(model: type[BaseModel], *content_types: str) -> dict:
    """openapi_extra documenting a body that the route reads itself (JSON and form fields alike)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {ct: {"schema": schema} for ct in content_types}}}
