"""Streaming SNAC decoder against one-shot decoding and the official 4-frame-window scheme.

Real 24 kHz SNAC architecture with random weights (compute does not depend on the weights), random
codes, side by side in one run. Compute is the wall time of the decode calls; ratios are medians
over interleaved repeats.

    python bench/decoder.py --json bench/results/decoder-cpu.json
    python bench/decoder.py --streams 64 --json bench/results/decoder-h100.json   # on a GPU
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from orpheus_local import tokens as fmt  # noqa: E402
from orpheus_local.audio.snac import SnacCodec  # noqa: E402
from orpheus_local.audio.windows import FRAME_SECONDS, StreamDecoder, Window  # noqa: E402
from orpheus_local.weights.checkpoint import load_snac  # noqa: E402
from orpheus_local.weights.demo import build_demo_snac  # noqa: E402

OFFICIAL_WINDOW = 4  # frames re-decoded for every new frame; samples 2048:4096 are kept


def official_windows(frames: np.ndarray) -> list[Window]:
    """The official streaming scheme, for comparison only: once n >= 4 frames exist, decode the last
    4 and keep the second. Frame 0 and the last two frames are never heard."""
    return [Window(frames[n - OFFICIAL_WINDOW:n], 1, 1, n - OFFICIAL_WINDOW + 1)
            for n in range(OFFICIAL_WINDOW, len(frames) + 1)]


def streamed_windows(frames: np.ndarray, speed: float, noise_key: int) -> tuple[list[Window], int]:
    """Windows a StreamDecoder hands out while frames arrive one at a time at `speed` x real time,
    on a simulated clock; and the tokens generated when the first window left."""
    now = [0.0]
    decoder = StreamDecoder(clock=lambda: now[0], noise_key=noise_key)
    windows, first_tokens = [], 0
    for i in range(len(frames)):
        now[0] = i * FRAME_SECONDS / speed
        decoder.push(frames[i:i + 1])
        while (w := decoder.ready_window()) is not None:
            first_tokens = first_tokens or fmt.FRAME_TOKENS * decoder.frames_pushed
            windows.append(w)
    decoder.finish()
    windows += list(iter(decoder.ready_window, None))
    return windows, first_tokens


def timed_rounds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, in interleaved rounds so that changing load on shared
    cores hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = np.sum((reference.astype(np.float64) - test) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / noise)) if noise else float("inf")


def keep_freed_memory() -> None:
    # glibc returns large freed blocks to the OS, so every long decode faults its activations in
    # again (page zeroing, several times the compute on CPU). That penalises the one-shot decode most;
    # keeping freed memory makes the ratios compare compute.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def run(args, tmp: Path) -> dict:
    snac_dir = build_demo_snac(tmp / "snac", seed=0)
    codec = SnacCodec(load_snac(snac_dir, args.device), args.device)  # as served: noise on
    quiet = SnacCodec(load_snac(snac_dir, args.device), args.device, noise=False)  # for the SNR
    frames = np.random.default_rng(args.seed).integers(0, fmt.CODEBOOK_SIZE, (args.frames, fmt.FRAME_TOKENS))
    key = args.seed
    windows, first_tokens = streamed_windows(frames, args.speed, key)
    official = official_windows(frames)
    whole_file = StreamDecoder.whole_file(noise_key=key)  # the fixed windows of audio returned whole
    whole_file.push(frames)
    whole_file.finish()
    fixed = list(iter(whole_file.ready_window, None))

    # `streams` streams on the same schedule: each tick decodes their windows in one batched call.
    n = args.streams
    whole = Window(frames, 0, len(frames), 0, key)
    t = timed_rounds({
        "one_shot": lambda: codec.decode_windows([whole] * n),
        "streamed": lambda: [codec.decode_windows([w] * n) for w in windows],
        "official": lambda: [codec.decode_windows([w] * n) for w in official],
        "whole_file": lambda: [codec.decode_windows([w] * n) for w in fixed],
    }, args.repeats)

    streamed = np.concatenate(quiet.decode_windows(windows))
    assert len(streamed) == fmt.SAMPLES_PER_FRAME * len(frames)
    one_shot_noisy = codec.decode(frames, noise_key=key)
    return {
        "decoder_overhead": median_ratio(t["streamed"], t["one_shot"]),
        "official_window_overhead": median_ratio(t["official"], t["one_shot"]),
        "whole_file_overhead": median_ratio(t["whole_file"], t["one_shot"]),
        "first_audio_tokens": first_tokens,
        "official_first_audio_tokens": fmt.FRAME_TOKENS * OFFICIAL_WINDOW,
        "stream_snr_db": snr_db(quiet.decode(frames), streamed),
        # Seeded noise is a function of the stream position: streamed audio keeps to the seams budget.
        "stream_snr_db_noise_on": snr_db(one_shot_noisy, np.concatenate(codec.decode_windows(windows))),
        "whole_file_snr_db_noise_on": snr_db(one_shot_noisy, np.concatenate(codec.decode_windows(fixed))),
        "decoded_frames_ratio": sum(len(w.frames) for w in windows) / len(frames),
        "chunk_frames": [w.count for w in windows],
        **{f"{name}_s": statistics.median(times) for name, times in t.items()},
        "frames": len(frames), "audio_s": len(frames) * FRAME_SECONDS, "generation_speed": args.speed,
        "streams": n,
        "repeats": args.repeats, "device": args.device, "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
    }


def print_table(r: dict) -> None:
    rows = [
        ("decoder overhead (streamed / one-shot compute)", f"{r['decoder_overhead']:.2f}x", "<= 1.5x"),
        ("official 4-frame window overhead", f"{r['official_window_overhead']:.2f}x", "~4x"),
        ("first audio after (tokens)", r["first_audio_tokens"], "<= 14 (official 28)"),
        ("streamed vs one-shot SNR, noise off (dB)", f"{r['stream_snr_db']:.1f}", ">= 40"),
        ("streamed vs one-shot SNR, seeded noise on (dB)", f"{r['stream_snr_db_noise_on']:.1f}", ">= 40"),
        ("whole-file windows vs one-shot SNR, noise on (dB)", f"{r['whole_file_snr_db_noise_on']:.1f}", ""),
        ("whole-file windows overhead", f"{r['whole_file_overhead']:.2f}x", ""),
        ("frames decoded per frame streamed", f"{r['decoded_frames_ratio']:.2f}", ""),
    ]
    print(f"{r['streams']} x {r['frames']} frames ({r['audio_s']:.1f} s) generated at {r['generation_speed']}x "
          f"real time, {r['device']}, {r['torch_threads']} threads; compute: one-shot {r['one_shot_s']:.3f} s, "
          f"streamed {r['streamed_s']:.3f} s, official {r['official_s']:.3f} s, whole file {r['whole_file_s']:.3f} s")
    print(f"chunks (frames): {r['chunk_frames']}")
    for name, value, target in rows:
        print(f"  {name:<48} {value!s:>8}   {target}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--frames", type=int, default=140, help="stream length (140 frames = 12 s)")
    p.add_argument("--speed", type=float, default=3.0,
                   help="generation speed, x real time, that paces the frames (default: the single-stream target)")
    p.add_argument("--streams", type=int, default=1,
                   help="streams decoded together, one batched call per tick (on a GPU one stream is launch-bound)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on shared cores a second thread stalls whenever a core is busy)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args, Path(tmp))
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
