"""SpeechLikeCodec: SnacCodec's decode_windows at no cost, for measuring everything around the codec.

Every window decodes to exactly the length SNAC would give it, cut from one second of noise made
once: low-passed and swelling four times a second like syllables, never near the silence guard's
threshold. Encoders work on it about as hard as on speech (LAME takes half again as long on a
constant level as on this, so a flat tone would overstate their cost).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from orpheus_local import tokens as fmt
from orpheus_local.audio.windows import Window


def _speech_like_second(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(fmt.SAMPLE_RATE) / fmt.SAMPLE_RATE
    noise = np.convolve(rng.standard_normal(fmt.SAMPLE_RATE), np.ones(8) / 8, mode="same")  # below ~3 kHz
    envelope = 0.06 + 0.05 * np.sin(2 * np.pi * 4 * t)  # 4 swells a second: syllables
    return (noise * envelope * 2.5).astype(np.float32)


class SpeechLikeCodec:
    def __init__(self):
        self._second = _speech_like_second()
        # the second looped 4 times: any window a stream decodes (32 frames at most) is one slice of it
        self._looped = np.tile(self._second, 4)

    def decode_windows(self, windows: Sequence[Window]) -> list[np.ndarray]:
        return [self.audio(w.start * fmt.SAMPLES_PER_FRAME, w.count * fmt.SAMPLES_PER_FRAME) for w in windows]

    def audio(self, start: int, length: int) -> np.ndarray:
        """`length` samples of the looped second, from sample `start` of a stream."""
        n = len(self._second)
        offset = start % n
        if offset + length <= len(self._looped):
            return self._looped[offset:offset + length].copy()  # the caller may change its chunk
        return np.tile(self._second, (offset + length) // n + 1)[offset:offset + length]
