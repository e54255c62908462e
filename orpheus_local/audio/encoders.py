"""Audio encoding: float32 mono PCM in, wav / pcm / mp3 / opus / aac / flac bytes out, chunk by chunk.

`StreamEncoder` hands out the bytes produced so far after every chunk, for chunked HTTP responses.
Streams are written to a write-only sink, so muxers that would seek back to patch a header at the end
leave it incomplete (FLAC's STREAMINFO sample count stays "unknown", MP3 goes without its Xing frame),
which players accept; `encode_audio` writes a whole file into a seekable buffer, so those come out
complete.
"""

from __future__ import annotations

import io
import math
import struct
import wave
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from orpheus_local.tokens import SAMPLE_RATE

SPEED_MIN, SPEED_MAX = 0.25, 4.0
_UNKNOWN_LENGTH = 0xFFFFFFFF  # RIFF/data size of a WAV stream whose end is not known yet


@dataclass(frozen=True)
class AudioFormat:
    """How one response_format is written: its content type and, for PyAV formats, muxer and codec."""

    content_type: str
    container: str | None = None  # PyAV muxer; None for the formats written here by hand (wav, pcm)
    codec: str | None = None
    rate: int | None = None  # fixed codec sample rate; None: the input's
    bit_rate: int | None = None
    codec_options: dict[str, str] = field(default_factory=dict)
    muxer_options: dict[str, str] = field(default_factory=dict)


FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("audio/wav"),
    # audio/L16 means big-endian samples (RFC 2586) and audio/pcm is not a registered type, so raw
    # little-endian s16 is labelled as plain bytes; the client chose the format and knows the layout.
    "pcm": AudioFormat("application/octet-stream"),
    # The encoders' effort is set for a server encoding hundreds of streams on a few cores: LAME's
    # quality 7 ("fast") costs about half its default's CPU, and Opus at complexity 5 a third of
    # complexity 10, each with little to hear in speech at these bit rates.
    "mp3": AudioFormat("audio/mpeg", "mp3", "libmp3lame", bit_rate=64000, codec_options={"compression_level": "7"}),
    # Opus takes 24 kHz as it is (no resampling; players decode Ogg Opus at 48 kHz, as always);
    # speech needs no more than 32 kbit/s. Ogg pages close every 200 ms (default 1 s) so playback
    # can start sooner, for about 1.5 kbit/s of page headers.
    "opus": AudioFormat(
        "audio/ogg", "ogg", "libopus", rate=24000, bit_rate=32000, codec_options={"compression_level": "5"},
        muxer_options={"page_duration": "200000"},
    ),
    # ADTS rather than MP4: every frame carries its own header, so the stream can be played as it arrives.
    "aac": AudioFormat("audio/aac", "adts", "aac", bit_rate=64000),
    "flac": AudioFormat("audio/flac", "flac", "flac"),
}


def audio_format(fmt: str) -> AudioFormat:
    """The entry of FORMATS for `fmt`; ValueError naming the choices for anything else."""
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown audio format {fmt!r}; expected one of {', '.join(FORMATS)}") from None


def check_speed(speed: float) -> float:
    if not SPEED_MIN <= speed <= SPEED_MAX:  # also rejects NaN
        raise ValueError(f"speed must be between {SPEED_MIN} and {SPEED_MAX}, got {speed}")
    return float(speed)


def to_int16(pcm: np.ndarray) -> np.ndarray:
    """Float samples -> little-endian int16, clipped; the same scaling ffmpeg uses, so all formats agree."""
    return np.clip(np.rint(np.asarray(pcm, np.float32) * 32768.0), -32768, 32767).astype("<i2")


def wav_bytes(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A complete 16-bit mono WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(to_int16(pcm).tobytes())
    return out.getvalue()


def wav_stream_header(sample_rate: int = SAMPLE_RATE) -> bytes:
    """The 44-byte header of a 16-bit mono WAV stream, its lengths set to "unknown"."""
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", _UNKNOWN_LENGTH, b"WAVE",
        b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16,  # PCM, 1 channel, 2 bytes a sample
        b"data", _UNKNOWN_LENGTH,
    )  # fmt: skip


def encode_audio(pcm: np.ndarray, fmt: str, sample_rate: int = SAMPLE_RATE, speed: float = 1.0) -> bytes:
    """One complete file of `pcm` in `fmt`, its header lengths filled in."""
    spec = audio_format(fmt)
    pcm = _clip(pcm)
    if check_speed(speed) != 1.0:
        tempo = _Tempo(speed, sample_rate)
        pcm = np.concatenate([tempo.process(pcm), tempo.flush()])
    if fmt == "wav":
        return wav_bytes(pcm, sample_rate)
    if spec.codec is None:
        return to_int16(pcm).tobytes()
    out = io.BytesIO()
    writer = _AvWriter(spec, sample_rate, out)
    writer.write(pcm)
    writer.close()
    return out.getvalue()


class StreamEncoder:
    """Encodes one stream: each encode() and finish() returns the bytes that are ready so far.

    Codecs and Ogg pages hold a little audio back, so their first bytes come after a codec frame or
    a page (a fraction of a second of audio); wav and pcm bytes come out at once.
    """

    def __init__(self, fmt: str, sample_rate: int = SAMPLE_RATE, speed: float = 1.0):
        spec = audio_format(fmt)
        self.content_type = spec.content_type
        # speed 1.0 skips the filter so the samples pass through bit-exact
        self._tempo = _Tempo(speed, sample_rate) if check_speed(speed) != 1.0 else None
        self._header = wav_stream_header(sample_rate) if fmt == "wav" else b""
        self._sink = _Drain()
        self._writer = _AvWriter(spec, sample_rate, self._sink) if spec.codec else None

    @property
    def light(self) -> bool:
        """Encoding is a sample conversion (wav or pcm at speed 1): microseconds a chunk, cheaper to
        run where the chunk is than to hand to another thread."""
        return self._writer is None and self._tempo is None

    def encode(self, pcm: np.ndarray) -> bytes:
        if self.light:  # straight to the samples: to_int16 clips as _clip would
            return self._emit(pcm)
        pcm = _clip(pcm)
        return self._emit(self._tempo.process(pcm) if self._tempo else pcm)

    def finish(self) -> bytes:
        """Flushes the filter and the encoder and writes the trailer; the encoder is done afterwards."""
        out = self._emit(self._tempo.flush() if self._tempo else np.empty(0, np.float32))
        if self._writer is not None:
            self._writer.close()
            out += self._sink.take()
        return out

    def _emit(self, pcm: np.ndarray) -> bytes:
        if self._writer is None:
            out, self._header = self._header + to_int16(pcm).tobytes(), b""
            return out
        self._writer.write(pcm)
        return self._sink.take()


def _clip(pcm: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(pcm, np.float32).reshape(-1), -1.0, 1.0)


def _frame(pcm: np.ndarray, sample_rate: int, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = Fraction(1, sample_rate)
    return frame


class _Drain:
    """A write-only file for PyAV: collects what the muxer writes until take() hands it out."""

    def __init__(self):
        self._buf = bytearray()

    def write(self, data) -> int:
        self._buf += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class _AvWriter:
    """One PyAV container with one mono audio stream; packets reach `sink` as soon as they are encoded."""

    def __init__(self, spec: AudioFormat, sample_rate: int, sink):
        rate = spec.rate or sample_rate
        # flush_packets passes every packet on at once instead of holding it in avio's 32 KiB buffer
        options = {"flush_packets": "1", **spec.muxer_options}
        self._container = av.open(sink, "w", format=spec.container, container_options=options)
        self._stream = self._container.add_stream(spec.codec, rate=rate, layout="mono", options=spec.codec_options)
        if spec.bit_rate:
            self._stream.bit_rate = spec.bit_rate
        self._resampler = av.AudioResampler(format=self._stream.codec_context.format, layout="mono", rate=rate)
        self._sample_rate = sample_rate
        self._pts = 0  # muxers need timestamps: counted in input samples

    def write(self, pcm: np.ndarray) -> None:
        if pcm.size:
            self._encode(self._resampler.resample(_frame(pcm, self._sample_rate, self._pts)))
            self._pts += pcm.size

    def close(self) -> None:
        self._encode(self._resampler.resample(None))
        self._container.mux(self._stream.encode(None))
        self._container.close()

    def _encode(self, frames) -> None:
        for frame in frames:
            self._container.mux(self._stream.encode(frame))


class _Tempo:
    """Pitch-preserving time stretch through ffmpeg's atempo filter, fed and drained chunk by chunk."""

    def __init__(self, speed: float, sample_rate: int):
        # the filter contexts do not keep their graph alive: hold it here
        self._graph = graph = av.filter.Graph()
        self._src = graph.add_abuffer(
            format="flt", sample_rate=sample_rate, layout="mono", time_base=Fraction(1, sample_rate)
        )
        # Older ffmpeg limits one atempo to 0.5..2.0: chain equal steps that each stay inside it.
        steps = max(1, math.ceil(abs(math.log2(speed))))
        node = self._src
        for _ in range(steps):
            step = graph.add("atempo", repr(speed ** (1 / steps)))
            node.link_to(step)
            node = step
        self._sink = graph.add("abuffersink")
        node.link_to(self._sink)
        graph.configure()
        self._sample_rate = sample_rate
        self._pts = 0

    def process(self, pcm: np.ndarray) -> np.ndarray:
        if pcm.size:
            self._src.push(_frame(pcm, self._sample_rate, self._pts))
            self._pts += pcm.size
        return self._pull()

    def flush(self) -> np.ndarray:
        self._src.push(None)
        return self._pull()

    def _pull(self) -> np.ndarray:
        out = []
        while True:
            try:
                out.append(self._sink.pull().to_ndarray().reshape(-1))
            except (av.BlockingIOError, av.EOFError):
                break
        return np.concatenate(out) if out else np.empty(0, np.float32)
