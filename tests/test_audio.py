import io
import math
import struct
import wave

import av
import numpy as np
import pytest

from orpheus_local.audio.encoders import FORMATS, StreamEncoder, encode_audio, wav_bytes

SR = 24000
SECONDS = 3.0
# uneven chunk boundaries in seconds, with an empty chunk among them
CUTS = [0.0, 0.05, 0.3, 0.3, 0.71, 1.4, 2.23, SECONDS]
# decoded length may differ from the input by codec framing and encoder delay: two frames at most
SLACK = {"wav": 0, "pcm": 0, "flac": 0, "opus": 2 * 960, "mp3": 2 * 1152, "aac": 2 * 1024}
OUT_RATE = {fmt: 48000 if fmt == "opus" else SR for fmt in FORMATS}


def sine(seconds=SECONDS, freq=440.0):
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chunks(pcm):
    idx = [int(c * SR) for c in CUTS]
    return [pcm[a:b] for a, b in zip(idx, idx[1:])]


def expected_int16(pcm):
    return np.clip(np.rint(pcm.astype(np.float64) * 32768), -32768, 32767).astype("<i2")


def stream(fmt, pcm, speed=1.0):
    """(bytes returned by encode() calls, bytes returned by finish())."""
    enc = StreamEncoder(fmt, speed=speed)
    early = b"".join(enc.encode(c) for c in chunks(pcm))
    return early, enc.finish()


def decode(fmt, data):
    """Decoded mono samples and their rate."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, SR
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    assert frames, "no audio decoded"
    assert {f.layout.nb_channels for f in frames} == {1}
    rates = {f.sample_rate for f in frames}
    assert len(rates) == 1
    return np.concatenate([f.to_ndarray().reshape(-1).astype(np.float32) for f in frames]), rates.pop()


def peak_hz(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.argmax(spectrum) * rate / len(samples)


def test_content_types():
    assert {f: spec.content_type for f, spec in FORMATS.items()} == {
        "wav": "audio/wav",
        "pcm": "application/octet-stream",
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
    }
    assert StreamEncoder("mp3").content_type == "audio/mpeg"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("whole", [False, True], ids=["stream", "whole"])
def test_every_format_decodes_at_its_rate_and_length(fmt, whole):
    pcm = sine()
    data = encode_audio(pcm, fmt) if whole else b"".join(stream(fmt, pcm))
    samples, rate = decode(fmt, data)
    assert rate == OUT_RATE[fmt]
    expected = len(pcm) * rate // SR
    assert abs(len(samples) - expected) <= SLACK[fmt] * rate // SR
    assert abs(peak_hz(samples, rate) - 440) < 5


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_bytes_come_out_before_finish(fmt):
    pcm = sine()
    enc = StreamEncoder(fmt)
    parts = [enc.encode(c) for c in chunks(pcm)]
    if fmt in ("wav", "pcm"):
        assert all(p for p, c in zip(parts, chunks(pcm)) if c.size)
    early = b"".join(parts)
    # what was sent before finish() is itself playable: at least a second of the three fed in
    samples, rate = decode(fmt, early)
    assert len(samples) >= rate


def test_whole_wav_reads_back_exactly():
    pcm = sine()
    with wave.open(io.BytesIO(encode_audio(pcm, "wav"))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SR, 1, 2)
        assert w.getnframes() == len(pcm)
        body = w.readframes(w.getnframes())
    assert np.array_equal(np.frombuffer(body, "<i2"), expected_int16(pcm))
    assert wav_bytes(pcm) == encode_audio(pcm, "wav")


def test_streamed_wav_has_unknown_lengths_and_the_same_samples():
    pcm = sine()
    early, tail = stream("wav", pcm)
    data = early + tail
    riff, riff_size, wave_id = struct.unpack_from("<4sI4s", data, 0)
    assert (riff, riff_size, wave_id) == (b"RIFF", 0xFFFFFFFF, b"WAVE")
    assert struct.unpack_from("<4sIHHIIHH", data, 12) == (b"fmt ", 16, 1, 1, SR, 2 * SR, 2, 16)
    assert struct.unpack_from("<4sI", data, 36) == (b"data", 0xFFFFFFFF)
    assert data[44:] == expected_int16(pcm).tobytes()


def test_pcm_is_exactly_the_int16_samples():
    pcm = sine()
    assert b"".join(stream("pcm", pcm)) == expected_int16(pcm).tobytes()
    assert encode_audio(pcm, "pcm") == expected_int16(pcm).tobytes()


def test_out_of_range_samples_are_clipped():
    pcm = np.array([2.0, -2.0, 0.5, -1.0], np.float32)
    assert np.frombuffer(encode_audio(pcm, "pcm"), "<i2").tolist() == [32767, -32768, 16384, -32768]


@pytest.mark.parametrize("fmt", ["wav", "pcm", "flac", "opus"])
@pytest.mark.parametrize("speed", [2.0, 0.5])
@pytest.mark.parametrize("whole", [False, True], ids=["stream", "whole"])
def test_speed_changes_duration_not_pitch(fmt, speed, whole):
    pcm = sine()
    data = encode_audio(pcm, fmt, speed=speed) if whole else b"".join(stream(fmt, pcm, speed))
    samples, rate = decode(fmt, data)
    assert len(samples) / rate == pytest.approx(SECONDS / speed, rel=0.02)
    assert abs(peak_hz(samples, rate) - 440) < 5


@pytest.mark.parametrize("speed", [0.24, 4.01, 0.0, -1.0, math.nan])
def test_speed_out_of_range(speed):
    with pytest.raises(ValueError, match="speed"):
        StreamEncoder("wav", speed=speed)
    with pytest.raises(ValueError, match="speed"):
        encode_audio(sine(0.1), "wav", speed=speed)


def test_extreme_speeds_are_accepted():
    pcm = sine(1.0)
    for speed in (0.25, 4.0):
        samples, _ = decode("pcm", encode_audio(pcm, "pcm", speed=speed))
        assert len(samples) / SR == pytest.approx(1.0 / speed, rel=0.05)


def test_unknown_format():
    with pytest.raises(ValueError, match="ogg"):
        StreamEncoder("ogg")
    with pytest.raises(ValueError, match="format"):
        encode_audio(sine(0.1), "m4a")
