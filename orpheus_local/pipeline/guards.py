"""Guards that catch a part running away: no end_of_speech within a budget derived from its text,
a loop of the same frames, or a long stretch of near-silence.

Each watch looks at one attempt of one part; what to do when one fires (generate the part again,
or end it there) is decided by the part (see parts.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from orpheus_local import tokens as fmt


@dataclass(frozen=True)
class GuardLimits:
    # Orpheus speaks about 15 characters a second, 5.5 tokens a character: the budget allows half
    # that pace, plus about 3 s for breaths, tags and silence at either end.
    tokens_per_char: float = 11.0
    slack_tokens: int = 250
    # The same frame, or a cycle of up to repeat_period frames, for repeat_frames frames (about 2 s).
    # Sampled speech, pauses included, never repeats whole frames for that long; a decoding loop does.
    repeat_frames: int = 24
    repeat_period: int = 4
    # Frames quieter than silence_rms (-50 dBFS) for silence_frames in a row (about 3 s): longer
    # than any pause in speech.
    silence_rms: float = 0.003
    silence_frames: int = 35


class Runaway(Exception):
    """A guard fired: `guard` is its name (budget, repeat, silence, or length: max_new_tokens reached).
    at_frame: for a watch given several frames at once, the index among them of the one it fired on."""

    def __init__(self, guard: str, detail: str, at_frame: int | None = None):
        super().__init__(f"{guard} guard: {detail}")
        self.guard = guard
        self.at_frame = at_frame


def token_budget(text: str, max_new_tokens: int, limits: GuardLimits) -> int | None:
    """Audio tokens a part saying `text` may take before it counts as a runaway, in whole frames.

    None when max_new_tokens is the tighter limit: running into the client's own cap is truncation
    the client asked for, not a runaway.
    """
    frames = math.ceil((len(text) * limits.tokens_per_char + limits.slack_tokens) / fmt.FRAME_TOKENS)
    budget = frames * fmt.FRAME_TOKENS
    return budget if budget < max_new_tokens else None


class RepeatWatch:
    """Fires when the last `limits.repeat_frames` frames are one frame, or a short cycle, repeated."""

    def __init__(self, limits: GuardLimits):
        self.length = limits.repeat_frames
        self._recent: deque[tuple[int, ...]] = deque(maxlen=limits.repeat_period)
        self._runs = [0] * (limits.repeat_period + 1)  # [p]: frames in a row equal to the one p back

    def push(self, frames: np.ndarray) -> Runaway | None:
        """Look at [n, 7] frames in order; the Runaway names the frame it fired on (at_frame)."""
        return self._watch(tuple(row) for row in np.asarray(frames).tolist())

    def push_ids(self, ids: list[int]) -> Runaway | None:
        """push() for whole frames of audio ids (a frame of ids repeats exactly when its codes do)."""
        return self._watch(tuple(ids[i:i + fmt.FRAME_TOKENS]) for i in range(0, len(ids), fmt.FRAME_TOKENS))

    def _watch(self, frames) -> Runaway | None:
        quick = len(self._runs) - 1 < self.length  # then no cycle fires without a repeat in it
        for index, frame in enumerate(frames):
            if quick and frame not in self._recent:  # speech, nearly always: every run is broken
                self._runs = [0] * len(self._runs)
                self._recent.append(frame)
                continue
            for period in range(1, len(self._runs)):
                repeats = period <= len(self._recent) and self._recent[-period] == frame
                self._runs[period] = self._runs[period] + 1 if repeats else 0
                if self._runs[period] + period >= self.length:
                    return Runaway("repeat", f"a cycle of {period} frame(s) repeated for {self.length} frames",
                                   at_frame=index)
            self._recent.append(frame)
        return None


class SilenceWatch:
    """Fires after `limits.silence_frames` frames in a row below `limits.silence_rms`."""

    def __init__(self, limits: GuardLimits):
        self.limits = limits
        self._quiet_energy = limits.silence_rms ** 2 * fmt.SAMPLES_PER_FRAME  # rms < x <=> energy < x² n
        self._quiet = 0

    def push(self, pcm: np.ndarray) -> Runaway | None:
        whole = len(pcm) // fmt.SAMPLES_PER_FRAME * fmt.SAMPLES_PER_FRAME  # decoded chunks are whole frames
        frames = np.asarray(pcm[:whole], np.float64).reshape(-1, fmt.SAMPLES_PER_FRAME)
        energy = np.einsum("ij,ij->i", frames, frames)  # sum of squares per frame, in one pass
        for quiet in (energy < self._quiet_energy).tolist():
            self._quiet = self._quiet + 1 if quiet else 0
            if self._quiet >= self.limits.silence_frames:
                return Runaway("silence", f"{self._quiet} frames below {self.limits.silence_rms} RMS")
        return None
