"""Splitting long text into parts that one generation can speak.

One Orpheus generation drifts on long inputs and is capped by max_new_tokens (1200 tokens is about
14.6 s), so long text is split at sentence boundaries (pysbd's rule-based segmenter: abbreviations,
decimals and quotes do not end a sentence) and the sentences are packed into parts of at most
part_chars(max_new_tokens) characters. A sentence longer than that is cut at a clause mark or a
space. No cut ever falls inside a tag.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right

from orpheus_local.text.tags import TAG
from orpheus_local.tokens import TOKENS_PER_SECOND

# Longer parts drift even when max_new_tokens would allow them.
MAX_PART_CHARS = 200
# A part must fit its token budget even when spoken slowly: Orpheus speaks about 15 characters a
# second, but slow voices, tags and pauses take it well below that. Sized at 10 characters a second
# with a second for breaths at either end, the default 1200 tokens (14.6 s) give 136 characters.
SLOW_CHARS_PER_SECOND = 10.0
EDGE_SECONDS = 1.0
MIN_PART_CHARS = 16  # a few words: below that a part would cut words, whatever its budget
_CLAUSE_END = re.compile(r"[,;:\u2013\u2014)](?=\s)")  # , ; : en dash, em dash, closing parenthesis
_SPACE = re.compile(r"\s")


def part_chars(max_new_tokens: int) -> int:
    """The longest part that max_new_tokens can speak at a slow pace (MIN..MAX_PART_CHARS)."""
    seconds = max_new_tokens / TOKENS_PER_SECOND - EDGE_SECONDS
    return max(MIN_PART_CHARS, min(MAX_PART_CHARS, int(seconds * SLOW_CHARS_PER_SECOND)))


def split_text(text: str, max_chars: int = MAX_PART_CHARS) -> list[str]:
    """Parts of at most max_chars, in order; a text that fits is returned whole and unchanged.

    Parts are whole sentences where a sentence fits, with surrounding whitespace removed; the parts
    joined by spaces say exactly what the text says.
    """
    if len(text) <= max_chars:
        return [text]
    tags = [m.span() for m in TAG.finditer(text)]
    starts = [0, *(s for s in _sentence_starts(text) if not _inside(tags, s)), len(text)]
    parts, begin = [], 0
    while begin < len(text):
        last_fitting = starts[bisect_right(starts, begin + max_chars) - 1]
        end = last_fitting if last_fitting > begin else _cut(text, begin, max_chars, tags)
        if part := text[begin:end].strip():
            parts.append(part)
        begin = end
    return parts


def _sentence_starts(text: str) -> list[int]:
    """Offsets where pysbd's sentences begin (after their leading whitespace)."""
    import pysbd  # loaded on the first long text only

    starts, pos = [], 0
    for sentence in pysbd.Segmenter(language="en", clean=False).segment(text):
        found = text.find(sentence.strip(), pos)
        if found < 0 or not sentence.strip():  # the segmenter changed the text: keep the rest whole
            continue
        starts.append(found)
        pos = found + len(sentence.strip())
    return starts


def _cut(text: str, begin: int, max_chars: int, tags: list[tuple[int, int]]) -> int:
    """Where to end a part inside a sentence too long for one: the last clause mark in the second
    half of the allowed length, else the last space, else max_chars (moved out of a tag)."""
    limit = begin + max_chars
    window = text[begin:limit]
    for pattern, earliest in ((_CLAUSE_END, max_chars // 2), (_SPACE, 1)):
        ends = [m.end() for m in pattern.finditer(window) if m.end() >= earliest]
        ends = [begin + e for e in ends if not _inside(tags, begin + e)]
        if ends:
            return ends[-1]
    for a, b in tags:
        if a < limit < b:
            return a if a > begin else b
    return limit


def _inside(tags: list[tuple[int, int]], pos: int) -> bool:
    """Is pos strictly inside one of the tags (sorted, not overlapping)?"""
    before = bisect_left(tags, (pos,)) - 1  # the last tag starting before pos
    return before >= 0 and pos < tags[before][1]
