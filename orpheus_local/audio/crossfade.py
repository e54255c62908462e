"""Joining parts' audio, chunk by chunk, with a short equal-power crossfade at each join.

The join of audio a and the next part b, with n = min(overlap, len(a), len(b)), is

    a[:-n] + (a[-n:] * cos(t) + b[:n] * sin(t)) + b[n:],   t[k] = pi/2 * (k + 0.5) / n

so parts of lengths L0..Lm join to exactly sum(L) - sum(n) samples (sum(L) - m * overlap when every
part is at least `overlap` long). cos^2 + sin^2 = 1 keeps the loudness steady across the join, and
the fade removes the step that butting two parts together would leave (an audible click).
The output does not depend on how the parts are chunked.
"""

from __future__ import annotations

import numpy as np

from orpheus_local import tokens as fmt

# 30 ms: long enough to hide the step between two parts, short enough not to smear a syllable.
CROSSFADE_SAMPLES = int(0.03 * fmt.SAMPLE_RATE)
_EMPTY = np.zeros(0, np.float32)


def equal_power_mix(out: np.ndarray, into: np.ndarray) -> np.ndarray:
    """out faded out while into fades in; both the same length."""
    t = (np.arange(len(out)) + 0.5) * (np.pi / 2 / max(len(out), 1))
    return (out * np.cos(t) + into * np.sin(t)).astype(np.float32)


class Crossfade:
    """Streams parts joined as above: start_part(), push() each chunk, end_part(), for each part.

    Until the next part starts, the last `overlap` samples of the audio so far are held back, since
    the join mixes them; the last part holds nothing back.
    """

    def __init__(self, overlap: int = CROSSFADE_SAMPLES):
        self.overlap = overlap
        self._held = _EMPTY  # the end of the output so far, not yet handed out
        self._fade_from = _EMPTY  # the previous parts' held end, waiting to be mixed with this part
        self._head = _EMPTY  # this part's first samples, collected until they cover _fade_from
        self._hold = 0

    def start_part(self, *, last: bool) -> None:
        self._fade_from, self._held, self._head = self._held, _EMPTY, _EMPTY
        self._hold = 0 if last else self.overlap

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """This part's next chunk in; the samples that are final out (possibly none)."""
        if self._fade_from.size:
            self._head = np.concatenate([self._head, pcm])
            if len(self._head) < len(self._fade_from):
                return _EMPTY
            n = len(self._fade_from)
            pcm = np.concatenate([equal_power_mix(self._fade_from, self._head[:n]), self._head[n:]])
            self._fade_from = self._head = _EMPTY
        return self._emit(pcm)

    def end_part(self) -> np.ndarray:
        """The final samples left once this part is over (a part shorter than the fade joins over its length)."""
        n = len(self._head)
        pcm = np.concatenate([self._fade_from[:len(self._fade_from) - n],
                              equal_power_mix(self._fade_from[len(self._fade_from) - n:], self._head)])
        self._fade_from = self._head = _EMPTY
        return self._emit(pcm)

    def _emit(self, pcm: np.ndarray) -> np.ndarray:
        if not self._hold and not self._held.size:  # the last part, nothing held: passes through
            return np.asarray(pcm, np.float32)
        pcm = np.concatenate([self._held, np.asarray(pcm, np.float32)])
        keep = min(self._hold, len(pcm))
        self._held = pcm[len(pcm) - keep:]
        return pcm[:len(pcm) - keep]
