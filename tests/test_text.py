"""Splitting long text into parts, and the emotive tags a request may use."""

import random
import re

import pysbd
import pytest

from orpheus_local.params import SynthesisParams
from orpheus_local.text.split import MAX_PART_CHARS, PIECE_CHARS, pieces, split_text
from orpheus_local.text.tags import SUPPORTED_TAGS, TAG, check_tags

SENTENCES = [
    "Today has been... exhausting.",
    "<sigh> I need a nap.",
    'Dr. Smith said "Wait!" and left at 5 p.m. sharp.',
    "Mr. Jones paid $3.50 for a coffee <laugh> which is a lot.",
    "Was it worth it?",
    "<gasp> Really!",
    "The U.S. team won, again, for the third year running; nobody was surprised.",
]


def words(text: str) -> list[str]:
    return text.split()


def assert_whole_tags(part: str) -> None:
    """Every angle bracket in the part belongs to a complete supported tag."""
    rest = TAG.sub("", part)
    assert "<" not in rest and ">" not in rest, part
    assert all(tag in SUPPORTED_TAGS for tag in TAG.findall(part)), part


def test_text_that_fits_is_one_unchanged_part():
    text = "  Hello there. <laugh> How are you?  "
    assert split_text(text) == [text]


def test_long_text_is_split_after_whole_sentences_in_order():
    text = " ".join(SENTENCES * 40)
    parts = split_text(text)
    assert len(parts) > 1 and all(len(p) <= MAX_PART_CHARS for p in parts)
    assert words(" ".join(parts)) == words(text)  # nothing lost, added or reordered
    for part in parts:
        assert part[-1] in '.!?"', part  # every part ends a sentence
        assert not part.endswith(("Dr.", "Mr.", "U.S.", "p.m.", "$3.")), part  # abbreviations are not ends
        assert_whole_tags(part)


def test_a_sentence_too_long_for_one_part_is_cut_at_a_clause_then_at_a_space():
    clauses = ", ".join(["this clause goes on and on for a while"] * 12) + "."
    parts = split_text(clauses)
    assert all(len(p) <= MAX_PART_CHARS for p in parts)
    assert all(p.endswith(",") for p in parts[:-1]) and parts[-1].endswith(".")
    spaces = " ".join(["word"] * 150) + "."
    parts = split_text(spaces)
    assert all(len(p) <= MAX_PART_CHARS for p in parts) and words(" ".join(parts)) == words(spaces)


def test_a_cut_never_falls_inside_a_tag():
    # No space anywhere: the cut is forced near max_chars, where a tag straddles the limit.
    text = "x" * 196 + "<chuckle>" + "y" * 300
    parts = split_text(text)
    assert "".join(parts) == text
    assert parts[0] == "x" * 196 and parts[1].startswith("<chuckle>")
    for part in parts:
        assert len(part) <= MAX_PART_CHARS
        assert_whole_tags(part)


def test_tags_survive_splitting_anywhere():
    rng = random.Random(0)
    pieces = ["word", "longerword", "a", "end.", "stop!", "why?", "comma,", "x" * 40]
    pieces += [f"<{tag}>" for tag in SUPPORTED_TAGS]
    for _ in range(30):
        text = "".join(rng.choice(pieces) + rng.choice(["", " ", " ", "\n"]) for _ in range(rng.randint(50, 400)))
        if not text.strip():
            continue
        parts = split_text(text, max_chars=rng.choice([20, 50, MAX_PART_CHARS]))
        assert re.sub(r"\s", "", "".join(parts)) == re.sub(r"\s", "", text)
        assert sum(len(TAG.findall(p)) for p in parts) == len(TAG.findall(text))
        for part in parts:
            assert_whole_tags(part)


def test_a_5000_character_text_splits_into_bounded_parts_quickly():
    text = " ".join(SENTENCES * 100)[:5000]
    parts = split_text(text)
    assert 25 <= len(parts) <= 40 and all(0 < len(p) <= MAX_PART_CHARS for p in parts)


@pytest.fixture
def segmented(monkeypatch) -> list[int]:
    """The length of every text pysbd's segmenter is given."""
    real, lengths = pysbd.Segmenter, []

    class Recording:
        def __init__(self, **kw):
            self.inner = real(**kw)

        def segment(self, text):
            lengths.append(len(text))
            return self.inner.segment(text)

    monkeypatch.setattr(pysbd, "Segmenter", Recording)
    return lengths


def test_short_lines_are_segmented_a_piece_at_a_time_and_packed_whole(segmented):
    text = "a\n" * 10000  # pysbd's slowest input: 10 s in one call, quadratic in the length
    assert split_text(text) == ["\n".join(["a"] * 100)] * 100
    assert segmented == [PIECE_CHARS] * 40  # every character once


@pytest.mark.parametrize("text", ["word " * 4000, "x" * 20000])  # no punctuation; not even a space
def test_text_without_sentences_is_segmented_a_piece_at_a_time(segmented, text):
    parts = split_text(text)
    assert segmented == [PIECE_CHARS] * 40
    assert all(0 < len(p) <= MAX_PART_CHARS for p in parts)
    assert words(" ".join(parts)) == words(text) if " " in text else "".join(parts) == text


def test_prose_is_segmented_a_piece_at_a_time_and_split_as_a_whole(segmented):
    text = " ".join(SENTENCES * 100)[:20000]
    parts = split_text(text)
    assert segmented == [end - begin for begin, end in pieces(text)] and len(segmented) == 43
    assert sum(segmented) == len(text) and max(segmented) <= PIECE_CHARS
    assert all(0 < len(p) <= MAX_PART_CHARS for p in parts) and words(" ".join(parts)) == words(text)
    for part in parts[:-1]:  # (the last one ends where the 20,000 characters were cut)
        assert part[-1] in '.!?"', part
        assert not part.endswith(("Dr.", "Mr.", "U.S.", "p.m.", "$3.")), part
        assert_whole_tags(part)


@pytest.mark.parametrize("text, end", [
    # a line break in the piece's second half first (pysbd ends a sentence at every one),
    ("word " * 60 + "line\n" + "more words. Then " * 20, 305),
    # then a sentence end that surely is one, not "Dr." nor "p.m." (after "cured. ", before "Then"),
    ("word " * 60 + "Dr. Smith came at 5 p.m. sharp and cured. Then" + " it went on" * 30, 342),
    ("word " * 60 + "he said Wow! and so on" + " words" * 50, 497),  # ("and" is no sentence's start)
    # then the last space; with none, the limit, moved before a tag that straddles it.
    ("x" * 480 + " " + "y" * 200, 481),
    ("x" * 495 + "<laugh>" + "y" * 300, 495),
    ("x" * 800, 500),
])
def test_pieces_end_at_a_line_break_then_a_sentence_end_then_a_space(text, end):
    assert pieces(text)[0] == (0, end)
    spans = pieces(text)
    assert [b for b, _ in spans[1:]] == [e for _, e in spans[:-1]] and spans[-1][1] == len(text)


@pytest.mark.parametrize("tag", SUPPORTED_TAGS)
def test_supported_tags_pass(tag):
    check_tags(f"Well <{tag}> that is that.")
    assert SynthesisParams(text=f"<{tag}> hi").text == f"<{tag}> hi"


@pytest.mark.parametrize("text, named", [
    ("I am so <happy> today", "<happy>"),
    ("<laugh> then <whisper> softly", "<whisper>"),
    ("<Laugh> in capitals", "<Laugh>"),
    ("special <|eot_id|> token", "<|eot_id|>"),
    ("<custom_token_3>", "<custom_token_3>"),
])
def test_other_tags_are_rejected_by_name(text, named):
    with pytest.raises(ValueError, match=re.escape(f"text: unsupported tag {named}; the supported tags are <laugh>")):
        SynthesisParams(text=text)


def test_angle_brackets_that_are_not_tags_are_text():
    check_tags("if a < b and c > d then <3 it")
