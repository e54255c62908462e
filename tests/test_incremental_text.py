"""SentenceBuffer: text arriving a few characters at a time becomes speakable parts as soon as each
sentence is complete; and the session's message pacing."""

from __future__ import annotations

import random

import pytest

from orpheus_local.text.incremental import SentenceBuffer
from server.speech_session import MessagePacer


def typed(text: str, buffer: SentenceBuffer, seed: int = 0) -> list[tuple[int, str]]:
    """(characters appended so far, part) for each part taken while typing text in 1-3 character pieces."""
    rng, taken, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 3)
        buffer.append(text[i:i + n])
        i += n
        taken += [(i, part) for part in buffer.take()]
    return taken


@pytest.mark.parametrize("text,ready", [
    ("Hello there. ", ["Hello there."]),
    ("Hello there.", []),  # "there.com"? not known yet
    ("Wait! ", ["Wait!"]),
    ('He said "stop." ', ['He said "stop."']),
    ("Really? Yes", ["Really?"]),
    ("It costs 3.", []),
    ("It costs 3.5 dollars. Then", ["It costs 3.5 dollars."]),
    ("Ask Dr. ", []),  # an abbreviation: the segmenter does not end a sentence there
    ("Ask Dr. Smith. ", ["Ask Dr. Smith."]),
    ("One. Two. Three", ["One. Two."]),  # complete sentences that arrive together are one part
])
def test_a_sentence_is_taken_once_it_is_complete_whatever_follows(text, ready):
    buffer = SentenceBuffer()
    buffer.append(text)
    assert buffer.take() == ready
    assert buffer.take() == []  # taken once


def test_each_sentence_is_ready_as_soon_as_its_last_character_and_a_space_arrive():
    text = "Hi there. How are you today? I am fine, thanks. Bye"
    buffer = SentenceBuffer()
    taken = typed(text, buffer, seed=3)
    assert [part for _, part in taken] == ["Hi there.", "How are you today?", "I am fine, thanks."]
    for appended, part in taken:  # ready by the space after it, at most two more characters
        end = text.index(part) + len(part) + 1
        assert end <= appended <= end + 2
    assert buffer.flush() == ["Bye"] and buffer.flush() == [] and len(buffer) == 0


def test_a_clause_too_long_to_wait_for_is_cut_at_a_comma_and_nothing_is_lost():
    text = ("This sentence goes on for a long time, far longer than one part may be, "
            "so it is cut before its end arrives. Short one. ")
    buffer = SentenceBuffer(max_chars=60)
    taken = typed(text, buffer, seed=1)
    parts = [part for _, part in taken] + buffer.flush()
    assert parts[0] == "This sentence goes on for a long time,"
    assert taken[0][0] < text.index("cut before")  # before its sentence ended
    assert all(len(p) <= 60 for p in parts)
    assert " ".join(parts) == " ".join(text.split())


def test_whatever_the_pieces_the_parts_say_exactly_what_was_appended():
    text = ("Mr. Brown arrived at 3 p.m. on Monday! Did he? He did, and then (after a while) he left. "
            "The end <laugh> came quickly. Then silence")
    for seed in range(5):
        buffer = SentenceBuffer(max_chars=40)
        parts = [part for _, part in typed(text, buffer, seed)] + buffer.flush()
        assert " ".join(parts) == text
        assert all("<" not in p or ">" in p.split("<")[-1] for p in parts)  # no tag cut in two


def test_clear_drops_the_buffered_text():
    buffer = SentenceBuffer()
    buffer.append("Half a sent")
    buffer.clear()
    buffer.append("New. ")
    assert buffer.take() == ["New."]


def test_the_pacer_lets_a_burst_through_then_spaces_messages_at_the_rate():
    now = [0.0]
    pacer = MessagePacer(rate=4, clock=lambda: now[0])
    assert [pacer.delay() for _ in range(4)] == [0, 0, 0, 0]  # a burst of `rate`
    assert pacer.delay() == pytest.approx(0.25)  # then one every 1/rate
    assert pacer.delay() == pytest.approx(0.5)
    now[0] = 10.0  # an idle while refills the burst, no more
    assert [pacer.delay() for _ in range(4)] == [0, 0, 0, 0] and pacer.delay() > 0
