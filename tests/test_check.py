"""`orpheus-local check`: the word error rate's arithmetic and thresholds with a stub transcriber,
the expected durations, and the command run end to end on random weights."""

from __future__ import annotations

import numpy as np
import pytest

from orpheus_cli.main import main
from orpheus_local import check
from orpheus_local.audio.crossfade import CROSSFADE_SAMPLES
from orpheus_local.check import (
    MAX_WER,
    SENTENCES,
    SentenceReport,
    check_sentence,
    expected_seconds,
    run_check,
    word_error_rate,
)
from orpheus_local.text.split import part_chars, split_text
from orpheus_local.tokens import SAMPLE_RATE, SAMPLES_PER_FRAME
from orpheus_local.voices import ENGLISH_VOICES

TEXT = "The train to the coast leaves early tomorrow morning."  # 9 words


@pytest.mark.parametrize("heard, wer", [
    ("the train to the coast leaves early tomorrow morning", 0.0),
    ("THE TRAIN, to the coast... leaves early tomorrow (laughs) morning!", 0.0),  # case, punctuation, sounds
    ("the plane to the coast leaves early tomorrow morning", 1 / 9),  # a substitution
    ("the train to coast leaves early tomorrow morning", 1 / 9),  # a deletion
    ("the train to the coast leaves very early tomorrow morning", 1 / 9),  # an insertion
    ("a train to coast leaves early tomorrow morning today", 3 / 9),
    ("", 1.0),  # nothing heard: every word deleted
    ("the train to the coast leaves early tomorrow morning " * 3, 2.0),  # 18 insertions
])
def test_the_word_error_rate_counts_substitutions_deletions_and_insertions(heard, wer):
    assert word_error_rate(TEXT, heard) == pytest.approx(wer, abs=1e-12)


def test_emotive_tags_are_not_words_to_be_heard():
    assert word_error_rate("I told him <laugh> twice, didn't I?", "I told him twice didn't I") == 0.0
    assert word_error_rate("<sigh> Fine.", "[sighs] fine") == 0.0


def test_expected_duration_comes_from_the_texts_length_and_tags():
    # 41 characters spoken (the tag and the spaces around it count as one space), one tag
    text = "I told him the joke twice <laugh> and he laughed."
    assert expected_seconds(text) == (41 / 25, 41 / 8 + 2.0 + 2.0)


def report(**fields) -> SentenceReport:
    """A report that passes every check, with fields changed."""
    values = {"name": "short", "text": TEXT, "expected_s": (2.0, 9.0), "audio_s": 4.0, "end_of_speech": True,
              "wer": 0.0, **fields}
    return SentenceReport(**values)


@pytest.mark.parametrize("fields, failures", [
    ({}, []),
    ({"wer": None}, []),  # not transcribed: nothing to judge
    ({"wer": MAX_WER}, []),  # the threshold itself passes
    ({"wer": 3 / 9}, ["WER 0.33 is above 0.25"]),
    ({"end_of_speech": False}, ["no end_of_speech"]),
    ({"audio_s": 1.5}, ["1.5 s of audio, expected 2.0 to 9.0 s"]),
    ({"audio_s": 9.5, "wer": 1.0, "end_of_speech": False},
     ["no end_of_speech", "9.5 s of audio, expected 2.0 to 9.0 s", "WER 1.00 is above 0.25"]),
])
def test_a_sentence_passes_only_when_every_check_does(fields, failures):
    assert report(**fields).failures == failures
    assert report(**fields).passed is (failures == [])


async def test_a_sentence_is_streamed_measured_and_transcribed(synthesizer):
    heard = []

    def transcriber(pcm, sample_rate):
        heard.append((len(pcm), sample_rate))
        return "the train to coast leaves early tomorrow morning"

    result = await check_sentence(synthesizer, "short", TEXT, voice="tara", max_new_tokens=100, seed=3,
                                  transcriber=transcriber)
    # 100 tokens speak 16 characters a part: each part is cut at 14 frames by the length guard
    # (random weights never say end_of_speech), the parts joined with crossfades.
    parts = len(split_text(TEXT, part_chars(100)))
    samples = parts * 14 * SAMPLES_PER_FRAME - (parts - 1) * CROSSFADE_SAMPLES
    assert parts > 1 and result.end_of_speech is False and result.guards == ["length:truncate"] * parts
    assert result.audio_s == samples / SAMPLE_RATE and heard == [(samples, SAMPLE_RATE)]
    assert result.transcript == "the train to coast leaves early tomorrow morning" and result.wer == 1 / 9
    assert result.first_audio_s is not None and 0 < result.first_audio_s and result.rtfx > 0
    assert result.failures[0] == "no end_of_speech"


class RecordingSynth:
    """Stands in for the Synthesizer: one frame of silence per sentence, the parameters kept."""

    voices = ENGLISH_VOICES

    def __init__(self):
        self.asked = []

    async def stream(self, params, on_guard=None):
        self.asked.append(params)
        yield np.zeros(SAMPLES_PER_FRAME, np.float32)


async def test_each_sentence_has_its_own_seed_also_when_checked_alone():
    synth = RecordingSynth()
    await run_check(synth, seed=10, max_new_tokens=300)
    await run_check(synth, [SENTENCES[2]], seed=10, max_new_tokens=300)
    assert [(p.text, p.seed) for p in synth.asked] == [
        *((text, 10 + i) for i, (_, text) in enumerate(SENTENCES)), (SENTENCES[2][1], 12)]
    assert {(p.voice, p.max_new_tokens) for p in synth.asked} == {("dan", 300)}  # the checkpoint's default voice


def run_check_command(capsys, *args) -> tuple[int, str]:
    status = main(["check", "--device", "cpu", "--max-new-tokens", "100", *args])
    return status, capsys.readouterr().out


@pytest.fixture
def nothing_heard(monkeypatch):
    """faster-whisper stood in for by a transcriber that hears nothing (as it would in noise)."""
    monkeypatch.setattr(check, "whisper_transcriber", lambda model: lambda pcm, rate: "")


def test_check_demo_runs_end_to_end_and_says_random_weights_cannot_pass(demo_dirs, capsys, nothing_heard):
    # One sentence of the four keeps it short: on a CPU the demo speaks about as fast as real time.
    status, out = run_check_command(capsys, "--demo", "--demo-dir", str(demo_dirs[0].parent), "--sentences",
                                    "short-tag")
    assert status == 0
    assert "random weights make noise, not speech: they cannot pass the speech checks" in out
    [header, row] = [line for line in out.splitlines() if line.startswith(("sentence ", "short-tag "))]
    assert header.split() == ["sentence", "end_of_speech", "audio", "expected", "guards", "first", "audio", "RTFx",
                              "WER", "result"]
    # no end_of_speech, every part cut at max_new_tokens, nothing heard: a WER of 1
    assert row.split()[1] == "no" and " length:truncate x" in row and row.endswith(" 1.00  FAIL")
    assert "short-tag: heard ''" in out and "0 of 1 sentences pass." in out
    assert "--demo: the pipeline ran end to end" in out


@pytest.mark.parametrize("wers, status, summary", [
    ((0.0, 0.25), 0, "2 of 2 sentences pass."),
    ((0.0, 0.3), 1, "1 of 2 sentences pass."),
])
def test_the_exit_status_is_0_only_when_every_sentence_passes(demo_dirs, capsys, monkeypatch, nothing_heard,
                                                               wers, status, summary):
    async def reports(synth, sentences, **kw):
        return [report(name=name, wer=wer) for (name, _), wer in zip(sentences, wers)]

    monkeypatch.setattr(check, "run_check", reports)
    model_dir, snac_dir = demo_dirs
    code, out = run_check_command(capsys, "--weights", str(model_dir), "--snac", str(snac_dir),
                                  "--sentences", "short,long")
    assert code == status and summary in out and "random weights" not in out


def test_check_refuses_a_voice_the_checkpoint_lacks_and_an_unknown_sentence(demo_dirs, capsys, nothing_heard):
    model_dir, snac_dir = demo_dirs
    status = main(["check", "--device", "cpu", "--weights", str(model_dir), "--snac", str(snac_dir),
                   "--voice", "pierre"])
    assert status == 2
    assert "voice: unknown voice 'pierre'; choose one of tara, leah" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["check", "--sentences", "short,medium"])
    assert usage.value.code == 2
    assert "medium: the sentences are short, short-tag, long, long-tags" in capsys.readouterr().err
