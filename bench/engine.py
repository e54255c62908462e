"""Engine against transformers generate(), side by side in one run, on random weights.

    python bench/engine.py --json engine.json

Each measurement runs in its own process (clean memory figures, no warm caches shared) on the same
checkpoint, prompt and forced length (end_of_speech ignored). Keys:
  engine_vs_generate_1           mini model, one stream: engine tokens/s over generate() tokens/s
  engine_vs_generate_8           mini model, 8 concurrent requests against 8 sequential generate() calls
  engine_vs_generate_real_shape  Orpheus 3B shape (random, bf16), one stream, 16 tokens
  rss_mb_engine_8, rss_mb_reference   peak resident memory of those processes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXT = "Hey there, this is a benchmark sentence <laugh> for the Orpheus engine."


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage: ru_maxrss survives exec, so it would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _prompt(model_dir):
    from orpheus_local import tokens as fmt
    from orpheus_local.weights.checkpoint import load_tokenizer

    return fmt.build_prompt(load_tokenizer(model_dir), TEXT, "tara")


def run_reference(model_dir: str, dtype: str, tokens: int, requests: int, repeats: int) -> dict:
    from orpheus_local.params import SynthesisParams
    from orpheus_local.reference.generator import ReferenceGenerator

    gen = ReferenceGenerator.load(model_dir, "cpu", dtype)
    prompt = _prompt(model_dir)
    params = SynthesisParams(text=TEXT, seed=0)
    gen.generate(prompt, params, ignore_eos=True, max_tokens=min(tokens, 8))  # warm-up
    times, produced = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        count = 0
        for i in range(requests):  # one request at a time: all generate() can do
            count += len(gen.generate(prompt, params.replace(seed=i), ignore_eos=True, max_tokens=tokens))
        times.append(time.perf_counter() - start)
        produced.append(count)
    return _result(times, produced)


def _result(times: list[float], produced: list[int]) -> dict:
    """Median time of the repeats and the tokens each produced (counted, not assumed: all repeats
    must have produced the same forced length)."""
    if len(set(produced)) != 1:
        raise RuntimeError(f"forced lengths differ between repeats: {produced}")
    return {"seconds": statistics.median(times), "tokens": produced[0], "rss_mb": _peak_rss_mb()}


def run_engine(model_dir: str, dtype: str, tokens: int, requests: int, repeats: int) -> dict:
    from orpheus_local.config import EngineConfig
    from orpheus_local.engine.core import EngineCore
    from orpheus_local.engine.driver import EngineDriver
    from orpheus_local.params import SynthesisParams

    config = EngineConfig(model=model_dir, device="cpu", max_slots=max(requests, 1), max_prompt_tokens=128,
                          max_new_tokens=max(tokens, 100))
    engine = EngineDriver(EngineCore.load(config, model_dir, "cpu", dtype)).start()
    prompt = _prompt(model_dir)
    params = SynthesisParams(text=TEXT, seed=0)

    async def batch(n: int, count: int) -> int:
        async def one(i) -> int:
            stream = engine.submit(prompt, params.replace(seed=i), f"r{i}", ignore_eos=True, max_tokens=count)
            return sum([len(ids) async for ids in stream])
        return sum(await asyncio.gather(*(one(i) for i in range(n))))

    async def measure() -> tuple[list[float], list[int]]:
        await batch(requests, min(tokens, 8))  # warm-up
        times, produced = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            produced.append(await batch(requests, tokens))
            times.append(time.perf_counter() - start)
        return times, produced

    times, produced = asyncio.run(measure())
    engine.close()
    return _result(times, produced)


def machine_info(args) -> dict:
    import os
    import platform

    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": args.threads, "date": time.strftime("%Y-%m-%d"),
            "command": "python bench/engine.py " + " ".join(sys.argv[1:])}


def in_subprocess(part: str, **kw) -> dict:
    args = [sys.executable, "-m", "bench.engine", "--part", part] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tokens", type=int, default=203, help="forced tokens per request, mini model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-real-shape", action="store_true", help="skip the 3B-shape run (needs ~16 GB RAM)")
    # internal: one measurement in this process
    ap.add_argument("--part", choices=["reference", "engine"])
    ap.add_argument("--model-dir")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--requests", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each measuring process")
    args = ap.parse_args()

    if args.part:
        import torch

        torch.set_num_threads(args.threads)
        fn = run_reference if args.part == "reference" else run_engine
        print(json.dumps(fn(args.model_dir, args.dtype, args.tokens, args.requests, args.repeats)))
        return

    from orpheus_local.weights.demo import build_demo_model

    work = Path(tempfile.mkdtemp(prefix="orpheus-bench-"))
    mini = str(build_demo_model(work / "mini", seed=0, shape="mini"))
    rows = []

    def compare(name: str, model_dir: str, dtype: str, tokens: int, requests: int, repeats: int) -> dict:
        kw = dict(model_dir=model_dir, dtype=dtype, tokens=tokens, requests=requests, repeats=repeats,
                  threads=args.threads)
        ref = in_subprocess("reference", **kw)
        eng = in_subprocess("engine", **kw)
        ratio = (eng["tokens"] / eng["seconds"]) / (ref["tokens"] / ref["seconds"])
        rows.append((name, ref["tokens"] / ref["seconds"], eng["tokens"] / eng["seconds"], ratio))
        print(f"{name:<32} generate() {rows[-1][1]:8.1f} tok/s   engine {rows[-1][2]:8.1f} tok/s   x{ratio:.2f}", flush=True)
        return {"ratio": ratio, "ref": ref, "eng": eng}

    one = compare("mini, 1 stream", mini, "float32", args.tokens, 1, args.repeats)
    eight = compare("mini, 8 concurrent vs sequential", mini, "float32", args.tokens, 8, args.repeats)
    results = {
        "engine_vs_generate_1": one["ratio"],
        "engine_vs_generate_8": eight["ratio"],
        "rss_mb_engine_8": eight["eng"]["rss_mb"],
        "rss_mb_reference": eight["ref"]["rss_mb"],
    }
    if not args.skip_real_shape:
        real = str(build_demo_model(work / "real", seed=0, shape="real", dtype="bfloat16"))
        results["engine_vs_generate_real_shape"] = compare("real 3B shape, bf16, 16 tokens", real, "bfloat16", 16, 1, args.repeats)["ratio"]
    results["rows"] = [dict(zip(("case", "generate_tok_s", "engine_tok_s", "ratio"), r)) for r in rows]
    results.update(machine_info(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
