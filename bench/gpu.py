"""GPU benchmark at the real model size (random weights, bf16), in process.

Reports single-stream tokens/s, time to first audio, and the largest number of concurrent streams
that all play without an underrun with p99 time to first audio under 500 ms.

    python bench/gpu.py --json bench/results/h100.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.playback import percentile, playback  # noqa: E402
from orpheus_local import tokens as fmt  # noqa: E402
from orpheus_local.config import EngineConfig  # noqa: E402
from orpheus_local.params import SynthesisParams  # noqa: E402
from orpheus_local.pipeline.synthesizer import Synthesizer  # noqa: E402
from orpheus_local.weights.demo import build_demo_model, build_demo_snac  # noqa: E402

TEXT = "Hey there, this is a longer sentence to measure how fast the server speaks <laugh> under load."


async def one_stream(synth: Synthesizer, tokens: int, seed: int) -> dict:
    params = SynthesisParams(text=TEXT, voice="tara", max_new_tokens=tokens, seed=seed)
    start = time.perf_counter()
    arrivals, durations = [], []
    async for pcm in synth.stream(params, ignore_eos=True):
        arrivals.append(time.perf_counter())
        durations.append(len(pcm) / fmt.SAMPLE_RATE)
    pb = playback(start, arrivals, durations)
    frames = round(sum(durations) * fmt.SAMPLE_RATE) // fmt.SAMPLES_PER_FRAME
    return {"ttfa": pb.ttfa, "audio_s": pb.audio_seconds, "tokens": frames * fmt.FRAME_TOKENS, "underruns": pb.underruns,
            "stall_s": pb.stall_seconds, "wall_s": arrivals[-1] - start}


async def level(synth: Synthesizer, concurrency: int, tokens: int) -> dict:
    start = time.perf_counter()
    runs = await asyncio.gather(*(one_stream(synth, tokens, seed=i) for i in range(concurrency)))
    wall = time.perf_counter() - start
    ttfas = [r["ttfa"] for r in runs]
    realtime = sum(r["underruns"] == 0 for r in runs)
    return {
        "concurrency": concurrency,
        "ttfa_p50_ms": 1000 * percentile(ttfas, 50), "ttfa_p95_ms": 1000 * percentile(ttfas, 95),
        "ttfa_p99_ms": 1000 * percentile(ttfas, 99),
        "realtime_streams": realtime,
        "aggregate_tokens_per_s": sum(r["tokens"] for r in runs) / wall,  # the tokens actually produced
        "rtfx_aggregate": sum(r["audio_s"] for r in runs) / wall,
        "max_stall_s": max(r["stall_s"] for r in runs),
        "ok": realtime == concurrency and percentile(ttfas, 99) < 0.5,
    }


async def single_stream_speed(synth: Synthesizer, tokens: int, repeats: int) -> dict:
    rates, ttfas = [], []
    for i in range(repeats):
        params = SynthesisParams(text=TEXT, voice="tara", max_new_tokens=tokens, seed=100 + i)
        first = None
        count = 0
        async for ids in synth.stream_ids(params, ignore_eos=True):
            now = time.perf_counter()
            first = first or now
            count += len(ids)
        rates.append((count - 7) / (time.perf_counter() - first))
        r = await one_stream(synth, 200, seed=200 + i)
        ttfas.append(r["ttfa"])
    return {"tokens_per_s_p50": percentile(rates, 50), "realtime_factor": percentile(rates, 50) / fmt.TOKENS_PER_SECOND,
            "ttfa_p50_ms": 1000 * percentile(ttfas, 50), "ttfa_p95_ms": 1000 * percentile(ttfas, 95)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=700, help="forced audio tokens per stream in the load test")
    ap.add_argument("--levels", default="1,16,32,64,128,192,256")
    ap.add_argument("--shape", default="real")
    ap.add_argument("--device", default="cuda", help="cpu runs the same code on a small shape, to check it")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="orpheus-bench-"))
    t = time.perf_counter()
    model_dir = build_demo_model(work / "model", seed=0, shape=args.shape, dtype="bfloat16", device=args.device)
    snac_dir = build_demo_snac(work / "snac", seed=0)
    print(f"built random {args.shape} checkpoint in {time.perf_counter() - t:.1f} s", flush=True)

    dtype = "bfloat16" if args.device == "cuda" else "float32"
    config = EngineConfig(model=str(model_dir), snac=str(snac_dir), device=args.device, dtype=dtype,
                          max_slots=args.slots, max_prompt_tokens=128, max_new_tokens=1200, max_queue=4096)
    t = time.perf_counter()
    synth = Synthesizer.load(config)
    print(f"loaded in {time.perf_counter() - t:.1f} s", flush=True)

    async def run() -> dict:
        await one_stream(synth, 100, seed=0)  # warm-up
        single = await single_stream_speed(synth, 1000, repeats=3)
        print(json.dumps(single), flush=True)
        levels = []
        for c in (int(x) for x in args.levels.split(",")):
            if c > args.slots:
                break
            await level(synth, min(c, 8), 100)  # warm-up for this batch size
            result = await level(synth, c, args.tokens)
            print(json.dumps(result), flush=True)
            levels.append(result)
        return {"single_stream": single, "levels": levels}

    results = asyncio.run(run())
    synth.close()
    best = max((lv["concurrency"] for lv in results["levels"] if lv["ok"]), default=0)
    results.update({
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "none (cpu)", "torch": torch.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "shape": args.shape,
        "realtime_streams": best,
    })
    print(f"\n{results['gpu']}: single stream {results['single_stream']['tokens_per_s_p50']:.0f} tok/s "
          f"({results['single_stream']['realtime_factor']:.2f}x real time), TTFA p50 "
          f"{results['single_stream']['ttfa_p50_ms']:.0f} ms; real-time streams: {best}")
    print(f"{'conc':>5} {'ttfa p50':>9} {'p95':>7} {'p99':>7} {'rt/all':>8} {'tok/s':>8} {'RTFx':>6}")
    for lv in results["levels"]:
        print(f"{lv['concurrency']:>5} {lv['ttfa_p50_ms']:>9.0f} {lv['ttfa_p95_ms']:>7.0f} {lv['ttfa_p99_ms']:>7.0f} "
              f"{lv['realtime_streams']:>3}/{lv['concurrency']:<4} {lv['aggregate_tokens_per_s']:>8.0f} {lv['rtfx_aggregate']:>6.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
