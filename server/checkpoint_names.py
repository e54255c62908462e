"""--model NAME=PATH: the names of checkpoints served side by side, checked and put in order.

A name is what requests give: OpenAI's model field, and the slug of Segmind's route /v1/NAME. It
must be safe in a URL path, may not be a name that already means something (OpenAI's speech models,
which select the default checkpoint, and the fixed one-segment routes under /v1 and /v2), and the
one named orpheus-3b-0.1, else the first given, is the default.
"""

from __future__ import annotations

import re
from pathlib import Path

from orpheus_local.voices import Voices, checkpoint_voices
from orpheus_local.weights.checkpoint import looks_like_hub_id

from .errors import SERVED_MODEL
from .openai_names import SPEECH_MODELS, is_openai_model

DEMO = "demo"  # PATH of a random-weight checkpoint of its own
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FIXED_SLUGS = frozenset({"models", "requests"})  # /v1/models, /v1/requests/{id}, /v2/requests/{id}


def parse_checkpoints(entries: list[str]) -> dict[str, str]:
    """NAME=PATH entries -> {name: path}, the default first; ValueError naming the entry at fault."""
    checkpoints: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"--model {entry!r}: expected NAME=PATH, e.g. {SERVED_MODEL}=weights/orpheus-3b-0.1-ft "
                             f"or my-voice={DEMO}")
        if not NAME.fullmatch(name):
            raise ValueError(f"--model {entry!r}: a name is 1 to 64 letters, digits, '.', '_' or '-', starting with "
                             "a letter or digit")
        if name in FIXED_SLUGS or (name != SERVED_MODEL and (name in SPEECH_MODELS or is_openai_model(name))):
            raise ValueError(f"--model {entry!r}: {name!r} already means something to clients; choose another name")
        if name in checkpoints:
            raise ValueError(f"--model: {name!r} is given twice")
        checkpoints[name] = path
    if SERVED_MODEL in checkpoints:  # the default leads
        checkpoints = {SERVED_MODEL: checkpoints.pop(SERVED_MODEL), **checkpoints}
    return checkpoints


def checkpoint_voices_of(path: str) -> Voices | None:
    """A --model checkpoint's voices as far as its path tells: the demo's (which clone too), a local
    directory's voices.json (or the English fine-tune's), None for a hub id not downloaded yet."""
    if path == DEMO:
        return checkpoint_voices(None).with_clones()
    if looks_like_hub_id(path):
        return None
    return checkpoint_voices(Path(path).expanduser())
