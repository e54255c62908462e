"""orpheus-local: serve | synth | check | fetch-weights | bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path

from orpheus_local.check import SENTENCES
from orpheus_local.errors import InputError
from orpheus_local.params import RANGES, TOP_K_RANGE, SynthesisParams
from orpheus_local.tokens import SAMPLE_RATE
from orpheus_local.voices import parse_voice_names
from orpheus_local.weights.catalog import DEFAULT_RELEASE, RELEASES
from orpheus_local.weights.checkpoint import DEFAULT_WEIGHTS_DIR, CheckpointError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from orpheus_local.config import EngineConfig

    d = EngineConfig()
    p.add_argument("--weights", default=d.model, help="Orpheus model directory or hub id (default: %(default)s)")
    p.add_argument("--snac", default=d.snac, help="SNAC 24 kHz codec directory or hub id (default: %(default)s)")
    p.add_argument("--demo", action="store_true", help="random-weight model of the real layout: noise, not speech")
    p.add_argument("--demo-dir", type=Path, default=d.demo_dir, help="where --demo builds its random weights "
                                                                     "(default: %(default)s)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--backend", default=d.backend, choices=["engine", "reference"], help="batched engine or transformers generate()")
    p.add_argument("--voices", type=_voice_names, default=None, metavar="A,B,...",
                   help="the checkpoint's voice names, the first the default, over its voices.json "
                        "(default: voices.json, else the English fine-tune's)")


def _voice_names(text: str) -> tuple[str, ...]:
    try:
        return parse_voice_names(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _engine_config(args, max_slots: int = 1):
    from orpheus_local.config import EngineConfig

    return EngineConfig(model=args.weights, snac=args.snac, voices=args.voices, demo=args.demo, demo_dir=args.demo_dir,
                        device=args.device, dtype=args.dtype, backend=args.backend, max_slots=max_slots)


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
        if params.voice is None:
            params = params.replace(voice=synth.voices.default)
        start = time.perf_counter()
        pcm = asyncio.run(synth.synthesize(params))
        elapsed = time.perf_counter() - start
    except InputError as exc:  # a voice this checkpoint does not have
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        synth.close()
    out = Path(args.output)
    fmt_name = out.suffix.lstrip(".").lower() or "wav"
    out.write_bytes(encode_audio(pcm, fmt_name))
    seconds = len(pcm) / SAMPLE_RATE
    print(f"wrote {out}: {seconds:.2f} s of audio in {elapsed:.2f} s")
    return 0


def cmd_check(args) -> int:
    from orpheus_local.check import run_check
    from orpheus_local.pipeline.synthesizer import Synthesizer

    try:  # the parameters' form, before anything is loaded
        SynthesisParams(text="-", voice=args.voice, max_new_tokens=args.max_new_tokens, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    transcriber = None if args.no_transcribe else _transcriber(args.whisper_model)
    if args.demo:
        print(DEMO_NOTICE)
    # Up to 4 slots: a long sentence's parts generate together, as they do when served.
    synth = Synthesizer.load(_engine_config(args, max_slots=4))
    parts_log = logging.getLogger("orpheus_local.pipeline.parts")
    level = parts_log.level
    if not args.verbose:  # the table reports every guard that fires: no warning line for each
        parts_log.setLevel(logging.ERROR)
    try:
        voice = args.voice or synth.voices.default
        reports = asyncio.run(run_check(synth, args.sentences or SENTENCES, voice=voice,
                                        max_new_tokens=args.max_new_tokens, transcriber=transcriber, seed=args.seed))
    except InputError as exc:  # a voice this checkpoint does not have
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        parts_log.setLevel(level)
        synth.close()
    print(f"checkpoint: {'random demo weights' if args.demo else args.weights}; voice: {voice or 'none'}; "
          f"max_new_tokens: {args.max_new_tokens}")
    _print_reports(reports)
    passed = sum(report.passed for report in reports)
    print(f"{passed} of {len(reports)} sentences pass.")
    if transcriber is None:
        print("WER not measured" + (" (--no-transcribe)." if args.no_transcribe else
                                    ": install faster-whisper with pip install 'orpheus-local[check]'."))
    if args.demo:
        print("--demo: the pipeline ran end to end (random weights cannot pass the speech checks; exit status 0).")
        return 0
    return 0 if passed == len(reports) else 1


DEMO_NOTICE = ("--demo: random weights make noise, not speech: they cannot pass the speech checks (end_of_speech, "
               "duration, WER), and every sentence below fails them. This run shows that the pipeline works end to "
               "end; its exit status is 0 when it does.")


def _sentences(text: str) -> tuple[tuple[str, str], ...]:
    """--sentences short,long -> those of SENTENCES, in the order given."""
    texts = dict(SENTENCES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or (unknown := [name for name in names if name not in texts]):
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) if names else 'no name'}: the sentences are "
                                         f"{', '.join(texts)}")
    return tuple((name, texts[name]) for name in names)


def _transcriber(model: str):
    """faster-whisper's transcriber, or None when it is not installed."""
    from orpheus_local.check import whisper_transcriber

    try:
        return whisper_transcriber(model)
    except ImportError:
        return None
    except Exception as exc:  # a model that cannot be downloaded or loaded
        raise CheckpointError(f"cannot load the faster-whisper model {model!r}: {exc} (--no-transcribe skips the "
                              "word error rate)") from None


def _print_reports(reports) -> None:
    from orpheus_local.check import MAX_WER

    rows = [("sentence", "end_of_speech", "audio", "expected", "guards", "first audio", "RTFx", "WER", "result")]
    for r in reports:
        low, high = r.expected_s
        rows.append((
            r.name, "yes" if r.end_of_speech else "no", f"{r.audio_s:.1f} s", f"{low:.1f}-{high:.1f} s",
            _guards(r.guards), "-" if r.first_audio_s is None else f"{r.first_audio_s:.2f} s",
            f"{r.rtfx:.1f}x", "-" if r.wer is None else f"{r.wer:.2f}", "pass" if r.passed else "FAIL",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for r in reports:
        if r.transcript is not None:
            print(f"{r.name}: heard {r.transcript!r}")
        if r.failures:
            print(f"{r.name}: {'; '.join(r.failures)}")
    print(f"A sentence passes with end_of_speech, its duration in the expected range and, when transcribed, "
          f"a WER of at most {MAX_WER}.")


def _guards(fired: list[str]) -> str:
    """"length:truncate x3, repeat:regenerate": each guard and action once, with how often it fired."""
    counts = Counter(fired)
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.items()) or "-"


def cmd_fetch(args) -> int:
    from orpheus_local.voices import checkpoint_voices
    from orpheus_local.weights.checkpoint import fetch_weights

    model_dir, snac_dir = fetch_weights(args.dest, args.model)
    voices = checkpoint_voices(model_dir)
    print(f"model: {model_dir}\ncodec: {snac_dir}\nvoices: {str(voices) or 'none (prompted with the text alone)'}")
    print(f"serve it with: orpheus-local serve --weights {model_dir} --snac {snac_dir}")
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
    s.add_argument("--voice", default=None, help="one of the checkpoint's voices (default: its default voice, "
                   f"{d['voice']} for the English fine-tune)")
    for name, kind in (("temperature", float), ("top_p", float), ("max_new_tokens", int), ("repetition_penalty", float)):
        low, high = RANGES[name]
        s.add_argument(f"--{name.replace('_', '-')}", type=kind, default=d[name],
                       help=f"{low} to {high} (default: %(default)s)")
    s.add_argument("--top-k", type=int, default=None, help=f"{TOP_K_RANGE} (default: no top-k)")
    s.add_argument("--seed", type=int, default=None, help="make the result reproducible")
    _add_model_args(s)
    s.set_defaults(func=cmd_synth)

    c = sub.add_parser(
        "check", help="synthesize a fixed set of sentences and check that the checkpoint really speaks",
        description="Synthesize a fixed set of sentences and report, for each, end_of_speech, its duration against "
                    "the text's, the guards that fired, time to first audio, RTFx and, with faster-whisper "
                    "installed, the word error rate. Exit status: 0 when every sentence passes (with --demo: when "
                    "the pipeline ran end to end, since random weights cannot pass), 1 when one fails, 2 for a "
                    "missing checkpoint, an unknown voice or a bad flag.")
    c.add_argument("--voice", default=None, help="one of the checkpoint's voices (default: its default voice)")
    c.add_argument("--sentences", type=_sentences, default=None, metavar="NAME,...",
                   help=f"only these of the sentences: {', '.join(name for name, _ in SENTENCES)} (default: all)")
    low, high = RANGES["max_new_tokens"]
    c.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"],
                   help=f"{low} to {high} (default: %(default)s)")
    c.add_argument("--seed", type=int, default=0, help="the first sentence's seed, the next ones count up "
                                                       "(default: %(default)s)")
    c.add_argument("--whisper-model", default="base.en", help="faster-whisper model for the word error rate "
                                                              "(default: %(default)s)")
    c.add_argument("--no-transcribe", action="store_true", help="skip the word error rate even when faster-whisper "
                                                                "is installed")
    _add_model_args(c)
    c.set_defaults(func=cmd_check)

    f = sub.add_parser("fetch-weights", help="download a model and the codec from the Hugging Face hub and check "
                       "every file against the hub's sizes and sha256")
    f.add_argument("--dest", default=str(DEFAULT_WEIGHTS_DIR))
    f.add_argument("--model", default=DEFAULT_RELEASE, metavar="NAME",
                   help=f"which checkpoint: {', '.join(RELEASES)} (weights/README.md lists their languages and "
                        "voices; default: %(default)s)")
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
