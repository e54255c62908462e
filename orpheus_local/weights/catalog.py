"""The checkpoints fetch-weights knows by name: Canopy Labs' English Orpheus 3B releases and their
multilingual research release (April 2025), each with the voices it was fine-tuned with.

Repository ids: the Hugging Face collection "Orpheus Multilingual Research Release" (canopylabs).
Voices: Canopy Labs' release notes, https://canopylabs.ai/releases/orpheus_can_speak_any_language
("Model Release Voices"). A pretrained checkpoint has no voices: it is prompted with the text alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from orpheus_local.voices import Voices

ORG = "canopylabs"


@dataclass(frozen=True)
class Release:
    name: str  # what `fetch-weights --model` takes, and the directory it fetches into
    language: str
    voices: Voices | None  # None: the English fine-tune's, the default when a checkpoint has no voices.json

    @property
    def repo(self) -> str:
        return f"{ORG}/{self.name}"


NO_VOICES = Voices.of([])


def _pair(code: str, language: str, *voices: str) -> tuple[Release, Release]:
    """A language's fine-tune (with its voices) and the pretrained model it was tuned from."""
    return (Release(f"3b-{code}-ft-research_release", language, Voices.of(voices)),
            Release(f"3b-{code}-pretrain-research_release", f"{language} (pretrained)", NO_VOICES))


RELEASES: dict[str, Release] = {release.name: release for release in (
    Release("orpheus-3b-0.1-ft", "English", None),
    Release("orpheus-3b-0.1-pretrained", "English (pretrained)", NO_VOICES),
    *_pair("fr", "French", "pierre", "amelie", "marie"),
    *_pair("de", "German", "jana", "thomas", "max"),
    *_pair("ko", "Korean", "유나", "준서"),
    *_pair("hi", "Hindi", "ऋतिका"),
    *_pair("zh", "Mandarin", "长乐", "白芷"),
    *_pair("es_it", "Spanish and Italian", "javi", "sergio", "maria", "pietro", "giulia", "carlo"),
)}
DEFAULT_RELEASE = "orpheus-3b-0.1-ft"


def find_release(name: str) -> Release | None:
    """The release called name, or whose repository id it is; None when there is none."""
    name = name.strip()
    if name.startswith(f"{ORG}/"):
        name = name[len(ORG) + 1:]
    return RELEASES.get(name)
