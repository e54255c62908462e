"""orpheus-local: serve | synth | fetch-weights | bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import fields
from pathlib import Path

from orpheus_local.params import RANGES, TOP_K_RANGE, VOICES, SynthesisParams
from orpheus_local.tokens import SAMPLE_RATE
from orpheus_local.weights.checkpoint import DEFAULT_WEIGHTS_DIR, CheckpointError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from orpheus_local.config import EngineConfig

    d = EngineConfig()
    p.add_argument("--weights", default=d.model, help="Orpheus model directory or hub id (default: %(default)s)")
    p.add_argument("--snac", default=d.snac, help="SNAC 24 kHz codec directory or hub id (default: %(default)s)")
    p.add_argument("--demo", action="store_true", help="random-weight model of the real layout: noise, not speech")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--backend", default=d.backend, choices=["engine", "reference"], help="batched engine or transformers generate()")


def _engine_config(args):
    from orpheus_local.config import EngineConfig

    return EngineConfig(model=args.weights, snac=args.snac, demo=args.demo, device=args.device,
                        dtype=args.dtype, backend=args.backend, max_slots=1)


def cmd_synth(args) -> int:
    from orpheus_local.audio.encoders import encode_audio
    from orpheus_local.pipeline.synthesizer import Synthesizer

    try:
        params = SynthesisParams(
            text=args.text, voice=args.voice or None, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty, seed=args.seed,
            top_k=args.top_k,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    synth = Synthesizer.load(_engine_config(args))
    try:
        start = time.perf_counter()
        pcm = asyncio.run(synth.synthesize(params))
        elapsed = time.perf_counter() - start
    finally:
        synth.close()
    out = Path(args.output)
    fmt_name = out.suffix.lstrip(".").lower() or "wav"
    out.write_bytes(encode_audio(pcm, fmt_name))
    seconds = len(pcm) / SAMPLE_RATE
    print(f"wrote {out}: {seconds:.2f} s of audio in {elapsed:.2f} s")
    return 0


def cmd_fetch(args) -> int:
    from orpheus_local.weights.checkpoint import fetch_weights

    model_dir, snac_dir = fetch_weights(args.dest)
    print(f"model: {model_dir}\ncodec: {snac_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orpheus-local", description="Local Orpheus 3B text-to-speech server.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the HTTP server (orpheus-local serve --help)", add_help=False)

    s = sub.add_parser("synth", help="synthesize one text to an audio file")
    s.add_argument("text")
    s.add_argument("-o", "--output", default="out.wav", help="output file; the suffix picks the format (wav, mp3, flac, opus, aac, pcm)")
    d = {f.name: f.default for f in fields(SynthesisParams)}  # the API's defaults, one source
    s.add_argument("--voice", default=d["voice"], choices=VOICES, help="default: %(default)s")
    for name, kind in (("temperature", float), ("top_p", float), ("max_new_tokens", int), ("repetition_penalty", float)):
        low, high = RANGES[name]
        s.add_argument(f"--{name.replace('_', '-')}", type=kind, default=d[name],
                       help=f"{low} to {high} (default: %(default)s)")
    s.add_argument("--top-k", type=int, default=None, help=f"{TOP_K_RANGE} (default: no top-k)")
    s.add_argument("--seed", type=int, default=None, help="make the result reproducible")
    _add_model_args(s)
    s.set_defaults(func=cmd_synth)

    f = sub.add_parser("fetch-weights", help="download the model and the codec from the Hugging Face hub and check "
                       "every file against the hub's sizes and sha256")
    f.add_argument("--dest", default=str(DEFAULT_WEIGHTS_DIR))
    f.set_defaults(func=cmd_fetch)

    sub.add_parser("bench", help="latency benchmark against a base URL (orpheus-local bench --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # serve and bench own their flags: hand them the rest of the command line.
    if argv and argv[0] == "serve":
        from server.main import main as serve_main

        return serve_main(argv[1:])
    if argv and argv[0] == "bench":
        try:
            from bench.latency import main as bench_main
        except ImportError as exc:  # the benchmark's own dependencies are an extra
            print(f"error: {exc}; install them with: pip install 'orpheus-local[bench]'", file=sys.stderr)
            return 2

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
