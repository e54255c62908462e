"""WS /v1/audio/speech/stream: speech for voice agents, text in as it is written, audio out as each
sentence completes (the protocol: server/speech_session.py and the README)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from ..errors import ApiError, busy, not_ready, shutting_down
from ..speech_session import ROUTE, SpeechSession
from ..state import ServerState

router = APIRouter(tags=["Voice agents"])

TRY_AGAIN_LATER = 1013  # WebSocket close code: the server cannot take the session now


def _refusal(state: ServerState) -> ApiError | None:
    if state.draining:
        return shutting_down()
    if not state.ready:
        return not_ready()
    if state.speech_sessions >= state.settings.max_speech_sessions:
        return busy(f"{state.settings.max_speech_sessions} speech sessions are open")
    return None


@router.websocket(ROUTE)
async def speech_stream(ws: WebSocket) -> None:
    state: ServerState = ws.app.state.server
    await ws.accept()
    if (refusal := _refusal(state)) is not None:  # said in an event: a browser sees no close reason text
        await ws.send_json({"type": "error", "message": refusal.message, "param": None, "code": refusal.code})
        await ws.close(TRY_AGAIN_LATER, refusal.message[:120])
        return
    state.speech_sessions += 1
    try:
        await SpeechSession(ws, state).run()
    finally:
        state.speech_sessions -= 1
