"""Per-request state inside the engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from .. import format as fmt
from ..params import SynthesisParams
from .stream import TokenStream


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SynthesisParams
    stream: TokenStream
    seed: int
    ignore_eos: bool = False
    max_tokens: int = 0  # ids to sample at most; 0: params.max_new_tokens
    status: Status = Status.WAITING
    slot: int | None = None
    generated: list[int] = field(default_factory=list)
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None

    @property
    def frame_position(self) -> int:
        """Position inside the 7-token frame of the next token to sample."""
        return len(self.generated) % fmt.FRAME_TOKENS

    @property
    def cancelled(self) -> bool:
        return self.stream.cancelled.is_set()

    def budget_left(self) -> int:
        return (self.max_tokens or self.params.max_new_tokens) - len(self.generated)
