"""A cloned voice's reference recording: any file PyAV reads, to 24 kHz mono samples, checked, and
encoded by SNAC into the Orpheus audio ids the cloning prompt carries.

Every problem is an InputError on the field "audio" that says what is wrong: not audio, too short,
too long, silent. Decoding stops as soon as the recording is known to be too long, so a small file
that would decode to hours of samples costs no more than MAX_SECONDS of them.
"""

from __future__ import annotations

import io

import av
import numpy as np

from orpheus_local import tokens as fmt
from orpheus_local.audio.snac import SnacCodec
from orpheus_local.errors import InputError

MIN_SECONDS, MAX_SECONDS = 3.0, 30.0
# RMS below this (-60 dBFS) is silence, or a recording too quiet to take a voice from.
SILENCE_RMS = 10 ** (-60 / 20)
FIELD = "audio"


def read_recording(data: bytes) -> np.ndarray:
    """float32 mono samples at 24 kHz; InputError when the recording cannot serve as a reference."""
    pcm = _decode(data)
    seconds = len(pcm) / fmt.SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise InputError(FIELD, f"the recording is {seconds:.1f} s long; a reference needs {MIN_SECONDS:g} to "
                                f"{MAX_SECONDS:g} s of speech")
    if float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) < SILENCE_RMS:
        raise InputError(FIELD, "the recording is silent (below -60 dBFS); record the speaker's voice")
    return pcm


def reference_ids(codec: SnacCodec, pcm: np.ndarray) -> list[int]:
    """Samples -> Orpheus audio ids, 7 per 2048 samples (the last frame padded with silence)."""
    return fmt.frames_to_ids(codec.encode(pcm))


def _decode(data: bytes) -> np.ndarray:
    limit = int(MAX_SECONDS * fmt.SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise InputError(FIELD, "the file has no audio stream; send a recording (wav, mp3, ogg, flac, m4a, ...)")
            stream = container.streams.audio[0]
            # The channels are averaged here: FFmpeg's own downmix adds them at -3 dB, which can clip.
            resampler = av.AudioResampler(format="fltp", rate=fmt.SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    total += _take(out, chunks)
                if total > limit:
                    raise InputError(FIELD, f"the recording is longer than {MAX_SECONDS:g} s; send {MIN_SECONDS:g} "
                                            f"to {MAX_SECONDS:g} s of speech")
            for out in resampler.resample(None):
                total += _take(out, chunks)
    except InputError:
        raise
    except (av.error.FFmpegError, ValueError, EOFError) as exc:  # PyAV's words for "not a file it reads"
        raise InputError(FIELD, f"cannot read the file as audio ({exc.__class__.__name__}); send a recording "
                                f"(wav, mp3, ogg, flac, m4a, ...)") from None
    if total > limit:
        raise InputError(FIELD, f"the recording is longer than {MAX_SECONDS:g} s; send {MIN_SECONDS:g} to "
                                f"{MAX_SECONDS:g} s of speech")
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def _take(frame: av.AudioFrame, chunks: list[np.ndarray]) -> int:
    samples = frame.to_ndarray().mean(axis=0, dtype=np.float32)  # planar: [channels, n]
    chunks.append(samples)
    return len(samples)
