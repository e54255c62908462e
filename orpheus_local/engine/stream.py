"""TokenStream: one request's audio ids, from the engine thread to an asyncio consumer."""

from __future__ import annotations

from orpheus_local.handoff import Handoff


class TokenStream(Handoff[list[int]]):
    """Whole frames of audio ids (lists of 7) as they are sampled. Once ended, finish_reason says why:
    "stop" (end_of_speech), "length" (its token cap), or None (cancelled or failed). on_ids: takes
    the ids on the backend's thread instead (see Handoff's on_item)."""

    def __init__(self, request_id: str, loop=None, on_cancel=None, on_ids=None):
        super().__init__(loop, on_cancel, on_item=on_ids)
        self.request_id = request_id
        self.finish_reason: str | None = None

    def finish(self, error: BaseException | None = None, reason: str | None = None) -> None:
        self.finish_reason = reason
        super().finish(error)
