"""Does a checkpoint really speak? A fixed set of sentences through the whole pipeline, each judged
on what speech must be.

For each sentence: whether every part ended with end_of_speech (a part cut at its budget or at
max_new_tokens did not), whether the audio's length fits the text (EXPECTED_PACE), which guards
fired, the time to first audio and the real-time factor (RTFx: seconds of audio per second of
work). With a transcriber (faster-whisper: whisper_transcriber), the audio is also transcribed and
its word error rate against the text must be at most MAX_WER.

A sentence passes when it reached end_of_speech, its duration is in range and, when transcribed,
its WER is at most MAX_WER. A guard that fired and was followed by a good second attempt is reported
but does not fail the sentence.

The word error rate is the standard one, (substitutions + deletions + insertions) / words of the
text, over words normalized here (emotive tags, bracketed sound descriptions and punctuation out,
case folded). It is computed here rather than with jiwer: the normalization has to be ours anyway,
and the edit distance is a few lines, the same in every install.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from orpheus_local.params import SynthesisParams
from orpheus_local.text.tags import TAG
from orpheus_local.tokens import SAMPLE_RATE

if TYPE_CHECKING:
    from orpheus_local.pipeline.synthesizer import Synthesizer

# The sentences, short and long, with and without emotive tags. The long ones are longer than one
# part at the default max_new_tokens, so they also check the joins between parts.
SENTENCES: tuple[tuple[str, str], ...] = (
    ("short", "The train to the coast leaves early tomorrow morning."),
    ("short-tag", "I told him the joke twice <laugh> and he still did not get it."),
    ("long", "We walked along the river until the light began to fade, talking about the summer we "
             "spent at my grandmother's house. She kept bees in the garden, and every evening she "
             "would bring in a jar of honey and tell us which flowers it came from."),
    ("long-tags", "Honestly, I thought the meeting would never end. <sigh> Everyone had an opinion "
                  "about the new schedule, and nobody wanted to decide anything. Then the projector "
                  "caught fire <gasp> and suddenly we all agreed to meet again next week."),
)

# Spoken English runs at 10 to 20 characters a second; the range allows a fast and a slow reading,
# each emotive tag up to TAG_SECONDS, and EDGE_SECONDS of silence and breaths around the speech.
EXPECTED_PACE = (25.0, 8.0)  # characters a second: fastest, slowest
TAG_SECONDS = 2.0
EDGE_SECONDS = 2.0
MAX_WER = 0.25

# (pcm float32 at sample_rate, sample_rate) -> what was said.
Transcriber = Callable[[np.ndarray, int], str]


@dataclass
class SentenceReport:
    name: str
    text: str
    expected_s: tuple[float, float]
    audio_s: float = 0.0
    end_of_speech: bool = True  # every part ended with end_of_speech
    guards: list[str] = field(default_factory=list)  # "guard:action", as each fired
    first_audio_s: float | None = None
    rtfx: float = 0.0
    transcript: str | None = None
    wer: float | None = None

    @property
    def failures(self) -> list[str]:
        """Why the sentence fails, in words; empty when it passes."""
        low, high = self.expected_s
        reasons = []
        if not self.end_of_speech:
            reasons.append("no end_of_speech")
        if not low <= self.audio_s <= high:
            reasons.append(f"{self.audio_s:.1f} s of audio, expected {low:.1f} to {high:.1f} s")
        if self.wer is not None and self.wer > MAX_WER:
            reasons.append(f"WER {self.wer:.2f} is above {MAX_WER}")
        return reasons

    @property
    def passed(self) -> bool:
        return not self.failures


def expected_seconds(text: str) -> tuple[float, float]:
    """The shortest and longest audio that reads text aloud (see EXPECTED_PACE)."""
    tags = len(TAG.findall(text))
    chars = len(" ".join(TAG.sub(" ", text).split()))
    fastest, slowest = EXPECTED_PACE
    return chars / fastest, chars / slowest + tags * TAG_SECONDS + EDGE_SECONDS


_BRACKETED = re.compile(r"\([^)]*\)|\[[^\]]*\]|\*[^*]*\*")  # "(laughs)", "[sighs]", "*gasps*"
_NOT_WORD = re.compile(r"[^\w']+")


def normalized_words(text: str) -> list[str]:
    """The words of text as the WER compares them: tags, bracketed sounds and punctuation out,
    case folded ("Don't," and "don't" are one word)."""
    text = _BRACKETED.sub(" ", TAG.sub(" ", text)).casefold()
    return [word.strip("'") for word in _NOT_WORD.split(text) if word.strip("'")]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / words of the reference, after normalized_words."""
    ref, hyp = normalized_words(reference), normalized_words(hypothesis)
    if not ref:
        raise ValueError("the reference has no words")
    # Edit distance over words, one row at a time: row[j] is the distance from ref[:i] to hyp[:j].
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, heard in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != heard))
    return row[-1] / len(ref)


async def check_sentence(synth: Synthesizer, name: str, text: str, *, voice: str | None, max_new_tokens: int, seed: int,
                         transcriber: Transcriber | None = None) -> SentenceReport:
    """One sentence streamed through synth, measured as a client would see it."""
    report = SentenceReport(name, text, expected_seconds(text))

    def on_guard(guard: str, action: str) -> None:
        report.guards.append(f"{guard}:{action}")
        if action == "truncate":  # the part ended where the guard fired: no end_of_speech
            report.end_of_speech = False

    params = SynthesisParams(text=text, voice=voice, max_new_tokens=max_new_tokens, seed=seed)
    chunks = []
    started = time.perf_counter()
    async for pcm in synth.stream(params, on_guard=on_guard):
        if report.first_audio_s is None and pcm.size:
            report.first_audio_s = time.perf_counter() - started
        chunks.append(pcm)
    elapsed = time.perf_counter() - started
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    report.audio_s = len(audio) / SAMPLE_RATE
    report.rtfx = report.audio_s / elapsed if elapsed > 0 else 0.0
    if transcriber is not None:
        report.transcript = await asyncio.to_thread(transcriber, audio, SAMPLE_RATE)
        report.wer = word_error_rate(text, report.transcript)
    return report


async def run_check(synth: Synthesizer, sentences=SENTENCES, *, voice: str | None = None, max_new_tokens: int = 1200,
                    transcriber: Transcriber | None = None, seed: int = 0) -> list[SentenceReport]:
    """Every sentence in turn, in the checkpoint's default voice unless voice is given, each with its
    own seed: seed plus its place in SENTENCES (the same when it is checked alone), or in sentences."""
    voice = synth.voices.default if voice is None else voice
    places = {name: i for i, (name, _) in enumerate(SENTENCES)}
    return [await check_sentence(synth, name, text, voice=voice, max_new_tokens=max_new_tokens,
                                 seed=seed + places.get(name, i), transcriber=transcriber)
            for i, (name, text) in enumerate(sentences)]


def whisper_transcriber(model: str = "base.en", device: str = "auto", language: str | None = "en") -> Transcriber:
    """A Transcriber on faster-whisper (the `check` extra); ImportError when it is not installed.
    The model is downloaded from the Hugging Face hub on first use."""
    from faster_whisper import WhisperModel

    from orpheus_local.audio.encoders import encode_audio

    whisper = WhisperModel(model, device=device)

    def transcribe(pcm: np.ndarray, sample_rate: int) -> str:
        # As a WAV file: faster-whisper decodes and resamples it to its 16 kHz itself.
        wav = io.BytesIO(encode_audio(pcm, "wav", sample_rate))
        segments, _ = whisper.transcribe(wav, language=language, beam_size=5)
        return " ".join(segment.text.strip() for segment in segments)

    return transcribe
