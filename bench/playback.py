"""Playback accounting for streamed audio: did each chunk arrive before the audio before it ran out?"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Playback:
    ttfa: float  # seconds from request start to the first audio
    audio_seconds: float
    underruns: int  # chunks that arrived after the audio before them had finished playing
    stall_seconds: float  # total silence a listener would hear after playback started

    @property
    def realtime(self) -> bool:
        return self.underruns == 0


def playback(start: float, arrivals: list[float], durations: list[float]) -> Playback:
    """arrivals: wall time each chunk arrived; durations: seconds of audio in each chunk.

    Playback starts when the first chunk arrives; a stall pushes the rest of the schedule back.
    """
    if not arrivals:
        return Playback(float("nan"), 0.0, 0, 0.0)
    play_until = arrivals[0]  # when the audio received so far runs out
    underruns, stall = 0, 0.0
    for arrived, seconds in zip(arrivals, durations):
        if arrived > play_until + 1e-9:
            underruns += 1
            stall += arrived - play_until
            play_until = arrived
        play_until += seconds
    return Playback(arrivals[0] - start, sum(durations), underruns, stall)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of the values; nan for none."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
