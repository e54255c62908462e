"""Per-request state inside the engine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from orpheus_local.params import SynthesisParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(eq=False)
class Request:
    """One generation. Owned by the engine's stepping thread once added, except `aborted`, which
    abort() sets from any thread under the scheduler's lock."""

    request_id: str
    prompt_ids: list[int]
    params: SynthesisParams
    seed: int
    ignore_eos: bool = False
    max_tokens: int = 0  # ids to sample at most; 0: params.max_new_tokens
    status: Status = Status.WAITING
    slot: int | None = None
    generated: list[int] = field(default_factory=list)
    aborted: bool = False
    limit: int = field(init=False)  # ids it may generate: max_tokens, else params.max_new_tokens

    def __post_init__(self):
        self.limit = self.max_tokens or self.params.max_new_tokens


@dataclass(eq=False)
class StepOutput:
    """What one step did for one request: whole frames of new audio ids, and whether it ended
    (reason "stop" or "length", or an error; a cancelled request ends with neither)."""

    request: Request
    ids: list[int] = field(default_factory=list)
    finished: bool = False
    reason: str | None = None
    error: BaseException | None = None
