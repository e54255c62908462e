"""Seconds of audio in a response, counted from the audio itself as its bytes arrive.

WAV and raw pcm are counted chunk by chunk, which is what playback accounting needs; compressed
formats (mp3, opus, aac, flac) are decoded with PyAV once the whole body is in, so only their total
duration is known.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import av

PCM_RATE = 24000  # raw pcm carries no header: Orpheus' rate, 16-bit mono little-endian
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # data chunk lengths a WAV stream writes before its end is known
_MAX_WAV_HEADER = 1 << 16


class AudioError(ValueError):
    """The response body is not audio of the format asked for."""


@dataclass(frozen=True)
class Decoded:
    samples: int  # per channel
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate


class PcmMeter:
    """Raw samples at a known rate: 16-bit mono unless a WAV header says otherwise."""

    def __init__(self, sample_rate: int = PCM_RATE, frame_bytes: int = 2):
        self.sample_rate = sample_rate
        self.frame_bytes = frame_bytes
        self._bytes = 0

    def feed(self, data: bytes) -> float:
        """Seconds of audio that `data` completes (a sample split across chunks counts once whole)."""
        before = self._bytes // self.frame_bytes
        self._bytes += len(data)
        return (self._bytes // self.frame_bytes - before) / self.sample_rate

    def finish(self) -> Decoded:
        return Decoded(self._bytes // self.frame_bytes, self.sample_rate)


class WavMeter:
    """A WAV file or stream: the header is parsed (whatever chunks precede the data), then samples
    are counted like pcm. A stream's "unknown" data length means: everything that follows."""

    def __init__(self):
        self._head = b""
        self._pcm: PcmMeter | None = None
        self._data_left: int | None = None  # bytes of the data chunk still to come; None: unbounded

    def feed(self, data: bytes) -> float:
        if self._pcm is None:
            self._head += data
            header = _parse_wav_header(self._head)
            if header is None:
                return 0.0
            rate, frame_bytes, data_offset, data_size = header
            self._pcm = PcmMeter(rate, frame_bytes)
            self._data_left = None if data_size in _UNKNOWN_SIZES else data_size
            data, self._head = self._head[data_offset:], b""
        if self._data_left is not None:
            data = data[: self._data_left]
            self._data_left -= len(data)
        return self._pcm.feed(data)

    def finish(self) -> Decoded:
        if self._pcm is None:
            raise AudioError("the response ended before the WAV header did")
        return self._pcm.finish()


def _parse_wav_header(buf: bytes) -> tuple[int, int, int, int] | None:
    """(sample rate, bytes per frame, offset of the audio data, data chunk size), or None while the
    header is incomplete."""
    if len(buf) >= 12 and (buf[:4] != b"RIFF" or buf[8:12] != b"WAVE"):
        raise AudioError("not a WAV file")
    fmt, pos = None, 12
    while pos + 8 <= len(buf):
        chunk_id, size = struct.unpack_from("<4sI", buf, pos)
        if chunk_id == b"data":
            if fmt is None:
                raise AudioError("WAV data chunk before its fmt chunk")
            return (*fmt, pos + 8, size)
        if chunk_id == b"fmt ":
            if pos + 8 + 16 > len(buf):
                return None
            _, _, rate, _, frame_bytes, _ = struct.unpack_from("<HHIIHH", buf, pos + 8)
            if not rate or not frame_bytes:
                raise AudioError("WAV fmt chunk with no sample rate or frame size")
            fmt = (rate, frame_bytes)
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    if len(buf) > _MAX_WAV_HEADER:
        raise AudioError("no WAV data chunk in the first 64 KiB")
    return None


class EncodedMeter:
    """A compressed format: kept whole, decoded at the end."""

    def __init__(self):
        self._body = bytearray()

    def feed(self, data: bytes) -> None:
        """None: how much audio a piece of a compressed stream holds is not known until the end."""
        self._body += data

    def finish(self) -> Decoded:
        return decode_duration(bytes(self._body))


def decode_duration(data: bytes) -> Decoded:
    """Samples in the first audio stream of an encoded file, decoded with PyAV."""
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            samples = sum(frame.samples for frame in container.decode(stream))
            return Decoded(samples, stream.codec_context.sample_rate)
    except (av.FFmpegError, IndexError) as exc:
        raise AudioError(f"cannot decode the audio: {exc}") from None


def meter_for(audio_format: str) -> PcmMeter | WavMeter | EncodedMeter:
    if audio_format == "wav":
        return WavMeter()
    if audio_format == "pcm":
        return PcmMeter()
    return EncodedMeter()
