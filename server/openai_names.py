"""OpenAI's names for voices and models, and what they mean here.

Clients written for OpenAI send its built-in voice names and its model names; a server that answers
them with 400 and 404 is not a drop-in. Each built-in voice maps to the trained voice closest in
character (a table the settings can change), and every OpenAI speech model name selects the served
checkpoint (more names through the settings' aliases).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from orpheus_local.params import TRAINED_VOICES

from .errors import SERVED_MODEL

# OpenAI's built-in voices -> trained voices, by character: the female voices to tara, leah, jess,
# mia and zoe, the male ones to leo, dan and zac (deep ones to leo, soft ones to dan).
OPENAI_VOICES: dict[str, str] = {
    "alloy": "tara", "ash": "dan", "ballad": "dan", "coral": "leah", "echo": "zac", "fable": "dan",
    "onyx": "leo", "nova": "jess", "sage": "mia", "shimmer": "zoe", "verse": "zac", "marin": "tara",
    "cedar": "leo",
}
# Model names every request may give: ours, and OpenAI's speech models.
SPEECH_MODELS = (SERVED_MODEL, "orpheus", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
_DATED = re.compile(r"gpt-4o-mini-tts-\d{4}-\d{2}-\d{2}")  # OpenAI's snapshots, e.g. gpt-4o-mini-tts-2025-12-15


@dataclass(frozen=True)
class OpenAINames:
    """The voice table and the model aliases one server uses (settings merged over the defaults)."""

    voices: dict[str, str] = field(default_factory=lambda: dict(OPENAI_VOICES))
    model_aliases: dict[str, str] = field(default_factory=dict)  # another name -> a served checkpoint

    @classmethod
    def configured(cls, voices: dict[str, str], model_aliases: dict[str, str]) -> "OpenAINames":
        """ValueError naming the entry when a voice maps to no trained voice or an alias to no served
        checkpoint."""
        for name, voice in voices.items():
            if voice.strip().lower() not in TRAINED_VOICES:
                raise ValueError(f"voice {name!r} maps to {voice!r}, which is not one of {', '.join(TRAINED_VOICES)}")
        for name, model in model_aliases.items():
            if model != SERVED_MODEL:
                raise ValueError(f"model alias {name!r} names {model!r}; this server serves {SERVED_MODEL}")
        table = {**OPENAI_VOICES, **{k.strip().lower(): v.strip().lower() for k, v in voices.items()}}
        return cls(table, dict(model_aliases))

    def voice(self, name: str) -> str:
        """The trained voice an OpenAI voice name stands for; any other name as it is."""
        return self.voices.get(name.strip().lower(), name)

    def accepts_model(self, name: str) -> bool:
        return name in SPEECH_MODELS or name in self.model_aliases or bool(_DATED.fullmatch(name))

    def model_names(self) -> list[str]:
        return [*SPEECH_MODELS, *(name for name in self.model_aliases if name not in SPEECH_MODELS)]
