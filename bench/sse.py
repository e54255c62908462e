"""Audio out of OpenAI's speech server-sent events (`stream_format: "sse"`): each
`speech.audio.delta` event carries base64 audio; `speech.audio.done` ends the stream."""

from __future__ import annotations

import base64
import json

from .audio_meter import AudioError


class SpeechEvents:
    """Feed the body as it arrives; get back the audio bytes of the events it completed."""

    def __init__(self):
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        # Joined before normalising, so a CRLF split across two reads is still one line end.
        self._buf = (self._buf + data).replace(b"\r\n", b"\n")
        *events, self._buf = self._buf.split(b"\n\n")
        return b"".join(_audio(event) for event in events)

    def finish(self) -> bytes:
        """The audio of a last event that ended without a blank line."""
        rest, self._buf = self._buf, b""
        return _audio(rest)


def _audio(event: bytes) -> bytes:
    data = b"\n".join(line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
    if not data.strip():
        return b""  # comments, keep-alives, id/retry lines
    try:
        payload = json.loads(data)
        if payload.get("type") == "speech.audio.delta":
            return base64.b64decode(payload["audio"], validate=True)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # bad JSON or base64, odd shape
        raise AudioError(f"malformed speech event: {exc}") from None
    if payload.get("type") == "error" or "error" in payload:
        raise AudioError(f"the stream reported an error: {payload.get('error', payload)}")
    return b""
