"""The codec worker's step when no window is due, at a given number of open streams: the cost of the
20 ms tick that looks for paced windows, and of handing the measured decode cost to the streams.

    python bench/codec_step.py                                  # this checkout, 64 and 256 streams
    python bench/codec_step.py --against ../old --json codec-step.json

Each tree is measured in processes of its own (its orpheus_local imported from it), alternating
rounds with --against, so the two are compared side by side on the same machine in the same minutes.
The streams use the zero-cost stand-in codec; each has had its first window and waits to grow its
next one, as most streams do on most ticks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(streams: int, steps: int) -> dict[str, float]:
    """Microseconds of CPU per idle step and per hand-over of the decode cost, in this process."""
    import asyncio
    import time

    from orpheus_local import tokens as fmt
    from orpheus_local.audio.simulated import SpeechLikeCodec
    from orpheus_local.audio.worker import CodecCore

    async def run() -> dict[str, float]:
        core = CodecCore(SpeechLikeCodec())
        frame = [fmt.AUDIO_BASE + k * fmt.CODEBOOK_SIZE + 5 for k in range(fmt.FRAME_TOKENS)]
        opened = [core.open(noise_key=i) for i in range(streams)]
        for stream in opened:
            stream.push_ids(frame * 3)
        while core.step():  # the first windows, and whatever else is due at once
            pass
        started = time.thread_time()
        for _ in range(steps):
            core.step()
        idle = (time.thread_time() - started) / steps
        observe = core._observe
        # the hand-over after a decode call: the older worker took the open streams as a third argument
        arguments = (0.001, 10) if observe.__code__.co_argcount == 3 else (0.001, 10, opened)
        started = time.thread_time()
        for _ in range(steps):
            observe(*arguments)
        handover = (time.thread_time() - started) / steps
        return {"idle_step_us": 1e6 * idle, "cost_handover_us": 1e6 * handover}

    return asyncio.run(run())


def _measure_in_subprocess(source: Path, streams: int, steps: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--worker", str(streams), str(steps)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=2000, help="steps timed per process")
    parser.add_argument("--rounds", type=int, default=5, help="processes per tree and stream count")
    parser.add_argument("--against", type=Path, help="another orpheus-local checkout, measured alternately")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(*args.worker)))
        return
    trees = {"this": ROOT} | ({"against": args.against.resolve()} if args.against else {})
    result: dict = {"command": "python bench/codec_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "rounds": args.rounds, "steps": args.steps, "levels": []}
    for streams in args.streams:
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(_measure_in_subprocess(tree, streams, args.steps))
        level: dict = {"streams": streams}
        for name in trees:
            for key in ("idle_step_us", "cost_handover_us"):
                level[f"{key}_{name}"] = round(statistics.median(r[key] for r in runs[name]), 1)
        if args.against:
            for key in ("idle_step_us", "cost_handover_us"):
                level[f"{key}_ratio"] = round(level[f"{key}_against"] / level[f"{key}_this"], 2)
        print(json.dumps(level), flush=True)
        result["levels"].append(level)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
