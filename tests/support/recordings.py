"""Reference recordings for the cloning tests, written as clients send them."""

from __future__ import annotations

import io
import wave

import av
import numpy as np


def tone(seconds: float, rate: int = 24000, amplitude: float = 0.3) -> np.ndarray:
    """A voice-like signal: a 150 Hz fundamental with harmonics, its loudness swelling at 3 Hz."""
    t = np.arange(int(seconds * rate)) / rate
    voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6))
    return (amplitude * voiced / 2.3 * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int = 24000, channels: int = 1) -> bytes:
    """16-bit PCM WAV; with two channels, the same samples in both."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    if channels == 2:
        pcm = np.repeat(pcm, 2)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def flac_bytes(samples: np.ndarray, rate: int = 44100) -> bytes:
    """FLAC in its own container, through PyAV (another format than WAV, at another rate)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((np.clip(samples, -1, 1) * 32767).astype(np.int16)[None], format="s16",
                                           layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()
