"""The names a request may give for voices and models, and what they mean here.

Voices are the served checkpoint's own (orpheus_local/voices.py: its voices.json, --voices, or the
English fine-tune's). Clients written for OpenAI send its built-in voice names and its model names;
a server that answers them with 400 and 404 is not a drop-in. Each built-in voice maps to the
English voice closest in character (a table the settings can change); the table applies only to
voices the checkpoint has, so serving another checkpoint drops the default entries it cannot speak
(map OpenAI's names onto its voices with --openai-voices). A checkpoint's own voice name always
means that voice. A cloned voice (POST /v1/audio/voices) is its owner's alone: a request's names
carry the caller's clone of the name it gives, if there is one (with_clone). Every OpenAI speech model name selects the default checkpoint; a
served checkpoint's own name (--model NAME=PATH) selects it, and the settings' aliases may name any
served checkpoint.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from orpheus_local.errors import InputError, NotReadyError
from orpheus_local.params import VoiceReference
from orpheus_local.voices import ENGLISH_VOICES, Voices, voice_key

from .errors import SERVED_MODEL

# OpenAI's built-in voices -> trained voices, by character: the female voices to tara, leah, jess,
# mia and zoe, the male ones to leo, dan and zac (deep ones to leo, soft ones to dan).
OPENAI_VOICES: dict[str, str] = {
    "alloy": "tara", "ash": "dan", "ballad": "dan", "coral": "leah", "echo": "zac", "fable": "dan",
    "onyx": "leo", "nova": "jess", "sage": "mia", "shimmer": "zoe", "verse": "zac", "marin": "tara",
    "cedar": "leo",
}
# Model names every request may give: ours, and OpenAI's speech models.
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
SPEECH_MODELS = (SERVED_MODEL, "orpheus", *OPENAI_MODELS)
_DATED = re.compile(r"gpt-4o-mini-tts-\d{4}-\d{2}-\d{2}")  # OpenAI's snapshots, e.g. gpt-4o-mini-tts-2025-12-15


@dataclass(frozen=True)
class OpenAINames:
    """The served voices, the OpenAI voice table over them and the model aliases one server uses
    (settings merged over the defaults). served is None while the checkpoint's voices are unknown: a
    hub id, read once it is downloaded (requests are refused with 503 until then)."""

    voices: dict[str, str] = field(default_factory=lambda: dict(OPENAI_VOICES))  # OpenAI name -> served voice
    model_aliases: dict[str, str] = field(default_factory=dict)  # another name -> a served checkpoint
    served: Voices | None = ENGLISH_VOICES
    clone: VoiceReference | None = None  # the caller's cloned voice of the name the request gives
    checkpoints: tuple[str, ...] = (SERVED_MODEL,)  # the served checkpoints' names, the default first

    def with_clone(self, clone: VoiceReference | None) -> "OpenAINames":
        return self if clone is None else dataclasses.replace(self, clone=clone)

    @classmethod
    def configured(cls, voices: dict[str, str], model_aliases: dict[str, str],
                   served: Voices | None = ENGLISH_VOICES, checkpoints: tuple[str, ...] = (SERVED_MODEL,),
                   strict: bool = True) -> "OpenAINames":
        """ValueError naming the entry when a configured voice maps to no served voice (or is one
        itself), or an alias to no served checkpoint. strict False (a checkpoint other than the
        default): configured voices it cannot speak are left out instead."""
        for name, model in model_aliases.items():
            if model != SERVED_MODEL and model not in checkpoints:
                raise ValueError(f"model alias {name!r} names {model!r}; this server serves "
                                 f"{', '.join(dict.fromkeys((SERVED_MODEL, *checkpoints)))}")
        configured = {name.strip().lower(): voice for name, voice in voices.items()}
        if served is None:  # checked once the voices are known
            return cls({}, dict(model_aliases), None, checkpoints=checkpoints)
        table = {}
        for name, voice in {**OPENAI_VOICES, **configured}.items():
            target = served.find(voice)
            if name in configured and strict:
                if target is None:
                    listed = str(served) or "no voices"
                    raise ValueError(f"voice {name!r} maps to {voice!r}, which is not one of {listed}")
                if served.find(name) is not None:
                    raise ValueError(f"voice {name!r} is a voice of the checkpoint itself; it cannot map to another")
            if target is not None and served.find(name) is None:
                table[name] = target
        return cls(table, dict(model_aliases), served, checkpoints=checkpoints)

    def voice(self, name: str | None) -> str | VoiceReference | None:
        """The served voice a request's voice name stands for: one of the checkpoint's, the caller's
        cloned voice, or an OpenAI name mapped to one; the checkpoint's default for none (None or
        blank: a form that leaves it empty). InputError for any other name, and for a cloned voice
        on a checkpoint that does not clone."""
        if self.served is None:
            raise NotReadyError("the checkpoint's voices are not known until it has loaded")
        if name is None or not name.strip():
            return self.served.default
        if (found := self.served.find(name)) is not None:
            return found
        if self.clone is not None and voice_key(self.clone.name) == voice_key(name):
            self.served.check_clones()
            return self.clone
        if (mapped := self.voices.get(name.strip().lower())) is not None:
            return mapped
        if self.served.clones:
            listed = f"one of {self.served} or " if self.served.names else ""
            raise InputError("voice", f"unknown voice {name!r}; choose {listed}one of your cloned voices "
                                      "(GET /v1/audio/voices lists them, POST /v1/audio/voices makes one)")
        return self.served.check(name)  # raises, listing the voices there are

    def model_for(self, name: str) -> str | None:
        """The served checkpoint a request's model name selects: its own name, the default for
        OpenAI's speech models, an alias's target; None for any other name."""
        if name in self.checkpoints:
            return name
        if is_openai_model(name) or name in SPEECH_MODELS:
            return self.checkpoints[0]
        if (target := self.model_aliases.get(name)) is not None:
            return target if target in self.checkpoints else self.checkpoints[0]
        return None

    def accepts_model(self, name: str) -> bool:
        return self.model_for(name) is not None

    def model_names(self) -> list[str]:
        return list(dict.fromkeys((*SPEECH_MODELS, *self.checkpoints, *self.model_aliases)))


def is_openai_model(name: str) -> bool:
    """One of OpenAI's speech model names, dated snapshots included."""
    return name in OPENAI_MODELS or bool(_DATED.fullmatch(name))
