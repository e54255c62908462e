"""The voices a checkpoint speaks with: read from the voices.json beside its config, else the
English fine-tune's.

A fine-tune learns each speaker as a name said before the text ("tara: Hello"), so its voices are
exactly the names it was trained with, spelt as in training: the multilingual releases use names in
their own scripts (유나, ऋतिका, 长乐), and a private fine-tune has its own. voices.json is either a list
of names, the first being the default, or an object:

    {"voices": ["pierre", "amelie", "marie"], "default": "pierre"}

An empty list declares a checkpoint without voices (a pretrained model, prompted with the text
alone, or with a cloned voice's reference recording before it: only a pretrained model was trained on
such prompts, so only it clones). A name is matched whatever its case or Unicode normalization; the prompt always gets the
checkpoint's own spelling.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from orpheus_local.errors import InputError
from orpheus_local.params import DEFAULT_VOICE, VOICES

VOICES_FILE = "voices.json"


def voice_key(name: str) -> str:
    """What two spellings of one voice name share: NFC (a Korean name typed on one system may come
    decomposed from another), case-folded, without surrounding spaces."""
    return unicodedata.normalize("NFC", name.strip()).casefold()


@dataclass(frozen=True)
class Voices:
    names: tuple[str, ...]
    default: str | None  # None only for a checkpoint without voices
    # Speaks cloned voices: a pretrained checkpoint (None: when it has no voices), or the demo's.
    clones: bool | None = None

    def __post_init__(self) -> None:
        if self.clones is None:
            object.__setattr__(self, "clones", not self.names)

    @classmethod
    def of(cls, names: Iterable[str], default: str | None = None) -> "Voices":
        """ValueError for an empty or repeated name, or a default that is not one of the names."""
        cleaned: list[str] = []
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"a voice name must be a non-empty string, got {name!r}")
            if voice_key(name) in map(voice_key, cleaned):
                raise ValueError(f"voice {name!r} is listed twice")
            cleaned.append(unicodedata.normalize("NFC", name.strip()))
        voices = cls(tuple(cleaned), cleaned[0] if cleaned else None)
        if default is not None:
            if not isinstance(default, str):
                raise ValueError(f"the default voice must be a string, got {default!r}")
            if (found := voices.find(default)) is None:
                raise ValueError(f"the default voice {default!r} is not one of {voices}")
            voices = cls(voices.names, found, voices.clones)
        return voices

    def with_clones(self) -> "Voices":
        """These voices, and cloned ones too (the demo stands in for both kinds of checkpoint)."""
        return Voices(self.names, self.default, clones=True)

    def check_clones(self) -> None:
        """InputError on the voice when this checkpoint cannot speak a cloned voice."""
        if not self.clones:
            raise InputError("voice", f"cloned voices need a pretrained checkpoint (one without voices, e.g. "
                                      f"orpheus-3b-0.1-pretrained); this server serves a fine-tune, whose voices "
                                      f"are {self}")

    def find(self, name: str) -> str | None:
        """The checkpoint's spelling of name, or None when it has no such voice."""
        key = voice_key(name)
        return next((voice for voice in self.names if voice_key(voice) == key), None)

    def check(self, name: str) -> str:
        """find(name), or an InputError on the voice that lists the voices there are."""
        if (found := self.find(name)) is not None:
            return found
        if not self.names:
            raise InputError("voice", f"unknown voice {name!r}; this checkpoint has no voices (it is prompted "
                                      "with the text alone): leave the voice out")
        raise InputError("voice", f"unknown voice {name!r}; choose one of {self}")

    def __str__(self) -> str:
        return ", ".join(self.names)


# The English fine-tune's, and the default for any checkpoint without voices.json: its eight
# trained voices, plus josh and emma, which Segmind lists (they are passed through as a prefix).
ENGLISH_VOICES = Voices(VOICES, DEFAULT_VOICE)


def parse_voice_names(text: str) -> tuple[str, ...]:
    """'a, b,c' -> ('a', 'b', 'c'): the --voices flag's form."""
    names = Voices.of(part for part in text.split(",") if part.strip()).names
    if not names:
        raise ValueError(f"no voice names in {text!r}; give them separated by commas, e.g. pierre,amelie")
    return names


def read_voices_file(path: Path) -> Voices:
    """A voices.json; ValueError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list):
            return Voices.of(data)
        if isinstance(data, dict) and isinstance(data.get("voices"), list) and set(data) <= {"voices", "default"}:
            return Voices.of(data["voices"], data.get("default"))
        raise ValueError('expected a list of names, or {"voices": [...], "default": "..."}')
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a valid voices file: {exc}") from None


def write_voices_file(model_dir: Path, voices: Voices) -> Path:
    path = Path(model_dir) / VOICES_FILE
    body: dict = {"voices": list(voices.names)}
    if voices.default is not None:
        body["default"] = voices.default
    path.write_text(json.dumps(body, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def checkpoint_voices(model_dir: Path | None, names: Iterable[str] | None = None) -> Voices:
    """The voices to serve a checkpoint with: names when given (the first is the default), else its
    voices.json, else the English fine-tune's. ValueError for a voices.json that cannot be read."""
    if names is not None:
        return Voices.of(names)
    if model_dir is not None and (path := Path(model_dir) / VOICES_FILE).is_file():
        return read_voices_file(path)
    return ENGLISH_VOICES
