"""The Orpheus token format: special ids, the prompt, and audio ids <-> SNAC codes.

Pure functions over ints and numpy arrays; no torch state. See the model card's token table:
audio id = AUDIO_BASE + p * CODEBOOK_SIZE + code, p the position inside a 7-token frame.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

BEGIN_OF_TEXT = 128000
END_OF_TEXT = 128009
START_OF_SPEECH = 128257
END_OF_SPEECH = 128258  # the one stop token
START_OF_HUMAN = 128259
END_OF_HUMAN = 128260
START_OF_AI = 128261
END_OF_AI = 128262
PAD = 128263

CODEBOOK_SIZE = 4096
FRAME_TOKENS = 7
AUDIO_BASE = 128266
AUDIO_LAST = AUDIO_BASE + FRAME_TOKENS * CODEBOOK_SIZE - 1  # 156937
VOCAB_SIZE = 156940  # checkpoint embedding rows

SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 2048
TOKENS_PER_SECOND = FRAME_TOKENS * SAMPLE_RATE / SAMPLES_PER_FRAME  # 82.03: real time

PROMPT_SUFFIX = (END_OF_TEXT, END_OF_HUMAN, START_OF_AI, START_OF_SPEECH)

# Frame position p -> (SNAC level, index within the frame at that level).
FRAME_LAYOUT = ((0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (2, 2), (2, 3))
LEVEL_WIDTH = (1, 2, 4)  # codes per frame at levels 0, 1, 2

# Column of the [F, 7] frame matrix that feeds each level, in time order at that level.
_LEVEL_COLUMNS = tuple(
    tuple(p for p, (lvl, _) in sorted(enumerate(FRAME_LAYOUT), key=lambda t: t[1]) if lvl == level)
    for level in range(3)
)


class Tokenizer(Protocol):
    def __call__(self, text: str) -> dict: ...


def prompt_text(text: str, voice: str | None) -> str:
    return f"{voice}: {text}" if voice else text


def build_prompt(tokenizer: Tokenizer, text: str, voice: str | None) -> list[int]:
    """[start_of_human] + tokenizer("{voice}: {text}") (BOS first) + the four-id suffix."""
    ids = list(tokenizer(prompt_text(text, voice))["input_ids"])
    if not ids or ids[0] != BEGIN_OF_TEXT:
        ids = [BEGIN_OF_TEXT] + ids  # the training layout always has BOS after start_of_human
    return [START_OF_HUMAN, *ids, *PROMPT_SUFFIX]


def build_clone_prompt(tokenizer: Tokenizer, text: str, transcript: str, reference_ids: Sequence[int]) -> list[int]:
    """The pretrained checkpoint's zero-shot cloning prompt: a first turn in which the reference
    recording's transcript is answered with its audio ids, then the text as a second turn:

        [start_of_human] tokenizer(transcript) [end_of_text, end_of_human, start_of_ai, start_of_speech]
        reference ids [end_of_speech, end_of_ai]
        [start_of_human] tokenizer(text) [end_of_text, end_of_human, start_of_ai, start_of_speech]

    As in Canopy Labs' pretrained-model notebook (canopyai/Orpheus-TTS, colabs/
    Orpheus_0_1_Pretrain_Inference.ipynb: a "zero prompt" of transcript, end tokens, audio codes and
    final tokens 128258 128262, then each text between 128259 and the same end tokens), whose turns
    are laid out as the training data are (colabs/tokenise_speech_dataset.ipynb, create_input_ids).
    The first turn is the same for every request with this voice: the engine caches its keys and
    values (reference_prefix_length)."""
    return [*reference_turn(tokenizer, transcript, reference_ids), *build_prompt(tokenizer, text, None)]


def reference_turn(tokenizer: Tokenizer, transcript: str, reference_ids: Sequence[int]) -> list[int]:
    """The first turn of a cloning prompt: the transcript, answered with the recording's audio ids."""
    return [*build_prompt(tokenizer, transcript, None), *reference_ids, END_OF_SPEECH, END_OF_AI]


def reference_prefix_length(prompt_ids: Sequence[int]) -> int:
    """Ids up to and including the end of a completed first turn (end_of_ai), or 0 when the prompt
    has none: the part of a cloning prompt shared by every request with its voice."""
    try:
        return prompt_ids.index(END_OF_AI) + 1
    except ValueError:
        return 0


def position_range(p: int) -> tuple[int, int]:
    """[lo, hi) of the audio ids allowed at frame position p."""
    lo = AUDIO_BASE + p * CODEBOOK_SIZE
    return lo, lo + CODEBOOK_SIZE


def is_audio_id(token_id: int) -> bool:
    return AUDIO_BASE <= token_id <= AUDIO_LAST


# The id of code 0 at each frame position. Built once: this runs for every frame of every stream.
_POSITION_BASE = AUDIO_BASE + np.arange(FRAME_TOKENS, dtype=np.int64) * CODEBOOK_SIZE


def _out_of_range(codes: np.ndarray) -> np.ndarray:
    """Codes outside 0..CODEBOOK_SIZE-1, in one comparison: negative ones wrap to huge unsigned values."""
    return codes.view(np.uint64) >= CODEBOOK_SIZE


def ids_to_frames(ids: Sequence[int]) -> np.ndarray:
    """Audio ids (stop token excluded) -> codes as an int64 [F, 7] matrix.

    An incomplete trailing frame is dropped. Raises ValueError for an id outside its position's range.
    """
    n = len(ids) // FRAME_TOKENS * FRAME_TOKENS
    codes = np.array(ids[:n], dtype=np.int64).reshape(-1, FRAME_TOKENS) - _POSITION_BASE
    if (bad := _out_of_range(codes)).any():
        row, position = np.argwhere(bad)[0]
        raise ValueError(f"id {ids[row * FRAME_TOKENS + position]} is not an audio id for frame position {position}")
    return codes


def frames_to_ids(frames: np.ndarray) -> list[int]:
    """[F, 7] codes -> flat audio ids."""
    frames = np.asarray(frames, dtype=np.int64)
    if _out_of_range(frames).any():
        raise ValueError(f"SNAC codes must be in 0..{CODEBOOK_SIZE - 1}")
    return (frames + _POSITION_BASE).reshape(-1).tolist()


def frames_to_codes(frames: np.ndarray) -> list[np.ndarray]:
    """[..., F, 7] frames -> SNAC codes [c0 [..., F], c1 [..., 2F], c2 [..., 4F]]."""
    frames = np.asarray(frames)
    lead = frames.shape[:-2]
    return [frames[..., list(cols)].reshape(*lead, -1) for cols in _LEVEL_COLUMNS]


def codes_to_frames(codes: Sequence[np.ndarray]) -> np.ndarray:
    """SNAC codes [c0 [..., F], c1 [..., 2F], c2 [..., 4F]] -> [..., F, 7] frames."""
    c0 = np.asarray(codes[0])
    f = c0.shape[-1]
    lead = c0.shape[:-1]
    frames = np.empty((*lead, f, FRAME_TOKENS), dtype=np.int64)
    for level, cols in enumerate(_LEVEL_COLUMNS):
        level_codes = np.asarray(codes[level]).reshape(*lead, f, LEVEL_WIDTH[level])
        frames[..., list(cols)] = level_codes
    return frames
