"""Per-request synthesis parameters: the API contract's fields, defaults and ranges, in one place."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, fields

from orpheus_local.errors import InputError
from orpheus_local.text.tags import check_tags

# The English fine-tune's voices (a checkpoint may declare others: voices.py). Segmind lists josh and
# emma; they are not trained speakers, the name is passed through as prefix.
TRAINED_VOICES = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")
VOICES = TRAINED_VOICES + ("josh", "emma")
DEFAULT_VOICE = "dan"

# field -> (low, high) inclusive
RANGES = {
    "temperature": (0.1, 1.5),
    "top_p": (0.1, 1.0),
    "max_new_tokens": (100, 2000),
    "repetition_penalty": (1.0, 2.0),
}
# Optional: absent means no top-k (as the official vLLM path; transformers' generate() would apply 50).
TOP_K_RANGE = (1, 4096)


@dataclass(frozen=True)
class VoiceReference:
    """A cloned voice: a reference recording's transcript and its audio ids (7 per frame), which
    a pretrained checkpoint is prompted with as a first turn before the text (tokens.build_clone_prompt)."""

    name: str
    transcript: str
    audio_ids: tuple[int, ...]


@dataclass(frozen=True)
class SynthesisParams:
    text: str
    voice: str | None = DEFAULT_VOICE
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 1200
    repetition_penalty: float = 1.1
    seed: int | None = None
    top_k: int | None = None
    # A cloned voice to speak with instead of a checkpoint's voice (voice is then None).
    reference: VoiceReference | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InputError("text", "must be a string")
        if not self.text.strip():
            raise InputError("text", "must not be empty")
        try:
            self.text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (JSON can escape one): no tokenizer takes it
            raise InputError("text", "must be valid Unicode (it has a lone surrogate)") from None
        check_tags(self.text)
        if self.reference is not None:
            object.__setattr__(self, "voice", None)  # the reference is the voice: no name goes before the text
        # Only the voice's form: which names exist depends on the checkpoint, and the Synthesizer
        # serving it checks them (None: no voice, the prompt is the text alone).
        if self.voice is not None:
            if not isinstance(self.voice, str):
                raise InputError("voice", "must be a string")
            if not self.voice.strip():
                raise InputError("voice", "must not be empty")
            object.__setattr__(self, "voice", unicodedata.normalize("NFC", self.voice.strip()))
        for name, (lo, hi) in RANGES.items():
            value = getattr(self, name)
            kind = int if name == "max_new_tokens" else float
            object.__setattr__(self, name, _check_number(name, value, kind, lo, hi))
        if self.top_k is not None:
            object.__setattr__(self, "top_k", _check_number("top_k", self.top_k, int, *TOP_K_RANGE))
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int):
                raise InputError("seed", "must be an integer")
            if not 0 <= self.seed < 2**63:
                raise InputError("seed", "must be in 0..2**63-1")

    def replace(self, **changes) -> "SynthesisParams":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return SynthesisParams(**values)


def _check_number(name: str, value, kind: type, lo: float, hi: float):
    # bool is an int subclass: True is never a valid temperature.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(name, f"must be a number, got {type(value).__name__}")
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise InputError(name, "must be an integer")
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise InputError(name, "must be a finite number")
    if not lo <= value <= hi:
        raise InputError(name, f"must be between {lo} and {hi}, got {value}")
    return value
