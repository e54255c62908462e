"""SimulatedRunner: the model runner's interface with no model, for measuring everything around the
device (scheduler, driver, parts, codec worker, server) on any machine.

Each prefill and decode step sleeps step_s, as a GPU step would block in its host sync, and with the
GIL released, as that sync releases it. Every request then speaks `frames` frames of varied audio
ids (no guard mistakes them for a loop) and stops with end_of_speech.
"""

from __future__ import annotations

import time

from orpheus_local import tokens as fmt
from orpheus_local.engine.request import Request


class SimulatedRunner:
    def __init__(self, num_slots: int, step_s: float, frames: int = 43, max_prompt_tokens: int = 512):
        self.num_slots = num_slots
        self.step_s = step_s
        self.audio_tokens = frames * fmt.FRAME_TOKENS  # 43 frames: 3.7 s of audio
        self.max_prompt_tokens = max_prompt_tokens
        self.max_reference_tokens = 0  # no cloned voices on a simulated device

    def prefill(self, requests: list[Request]) -> list[int]:
        time.sleep(self.step_s)
        return self._next_ids(requests)

    def decode(self, requests: list[Request]) -> list[int]:
        time.sleep(self.step_s)
        return self._next_ids(requests)

    def release(self, request: Request) -> None:
        pass

    def _next_ids(self, requests: list[Request]) -> list[int]:
        """Each request's next id: varied codes, the same on every run, then end_of_speech. One
        expression for the batch: a device hands its ids over at once, for a few microseconds."""
        last, base, size, width = self.audio_tokens, fmt.AUDIO_BASE, fmt.CODEBOOK_SIZE, fmt.FRAME_TOKENS
        return [fmt.END_OF_SPEECH if (n := len(r.generated)) >= last
                else base + (n % width) * size + (r.seed + n * 2654435761) % size for r in requests]
