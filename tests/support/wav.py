"""The one WAV reader of the tests."""

from __future__ import annotations

import io
import wave

STREAMED = b"\xff\xff\xff\xff"  # the length fields of a WAV whose end was not known when it was sent


def wav_samples(content: bytes) -> int:
    """Samples of a 24 kHz mono 16-bit WAV, whole (its sizes must match its bytes) or streamed (its
    sizes say "unknown" and the data runs to the end). Fails an assertion otherwise."""
    assert content[:4] == b"RIFF" and content[8:12] == b"WAVE", "not a WAV"
    with wave.open(io.BytesIO(content)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        frames = w.getnframes()
        data = w.readframes(frames)
    if content[4:8] == STREAMED:
        assert len(content) == 44 + len(data) and len(data) % 2 == 0
        return len(data) // 2
    assert len(data) == 2 * frames, "a WAV shorter than its header says"
    return frames
