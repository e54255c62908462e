"""Splitting long text into parts that one generation can speak.

One Orpheus generation drifts on long inputs and is capped by max_new_tokens (1200 tokens is about
14.6 s), so long text is split at sentence boundaries (pysbd's rule-based segmenter: abbreviations,
decimals and quotes do not end a sentence) and the sentences are packed into parts of at most
part_chars(max_new_tokens) characters. A sentence longer than that is cut at a clause mark or a
space. No cut ever falls inside a tag.

pysbd's time grows with the square of its input (10 s on 20,000 characters of short lines), so it
never sees more than PIECE_CHARS at once: the text is first cut into pieces at cheap, safe places
(pieces), each piece is segmented on its own (sentence_starts), and the sentences are packed into
parts across the pieces (pack). split_text does the three in one call; a caller that must stay
responsive drives sentence_starts a piece at a time.
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
# The most pysbd segments at once: about 20 ms on the slowest input (short lines), a few ms on prose.
PIECE_CHARS = 500
_CLAUSE_END = re.compile(r"[,;:\u2013\u2014)](?=\s)")  # , ; : en dash, em dash, closing parenthesis
_SPACE = re.compile(r"\s")
# Where a piece may end, best first. pysbd (clean=False) ends a sentence at every line break, so a
# cut there changes none of its sentences. Then the end of a sentence that surely is one: ! or ?,
# or a period after two lowercase letters (not "Dr." nor "p.m."), then a space and a capital; last
# any space. Each match ends where the next piece begins.
_PIECE_ENDS = (
    re.compile(r"\n"),
    re.compile(r"(?:(?<=[a-z]{2})\.|[!?])[\"'\u201d\u2019)]*\s+(?=[A-Z\"'\u201c\u2018(<0-9])"),
    _SPACE,
)


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
    starts = [start for begin, end in pieces(text) for start in sentence_starts(text, begin, end)]
    return pack(text, starts, max_chars)


def pieces(text: str) -> list[tuple[int, int]]:
    """(begin, end) of consecutive pieces of at most PIECE_CHARS covering the text, each ending at
    the best place _PIECE_ENDS finds in its second half, else at PIECE_CHARS (before a tag that
    would straddle it). A piece's start is taken for a sentence start."""
    spans, begin = [], 0
    while len(text) - begin > PIECE_CHARS:
        end = _piece_end(text, begin)
        spans.append((begin, end))
        begin = end
    return [*spans, (begin, len(text))]


def sentence_starts(text: str, begin: int = 0, end: int | None = None) -> list[int]:
    """Offsets in text where the sentences of text[begin:end] begin (after their leading
    whitespace), as pysbd finds them; begin itself is always the first."""
    import pysbd  # loaded on the first long text only

    piece = text[begin:end]
    starts, pos = [begin], 0
    for sentence in pysbd.Segmenter(language="en", clean=False).segment(piece):
        sentence = sentence.strip()
        found = piece.find(sentence, pos)
        if found < 0 or not sentence:  # the segmenter changed the text: keep the rest whole
            continue
        if begin + found > starts[-1]:
            starts.append(begin + found)
        pos = found + len(sentence)
    return starts


def pack(text: str, starts: list[int], max_chars: int) -> list[str]:
    """split_text's parts, given where the text's sentences start (sorted): as many whole sentences
    as fit in max_chars, a sentence too long for one part cut by _cut. A start inside a tag is none."""
    tags = [m.span() for m in TAG.finditer(text)]
    starts = [0, *(s for s in starts if not _inside(tags, s)), len(text)]
    parts, begin = [], 0
    while begin < len(text):
        last_fitting = starts[bisect_right(starts, begin + max_chars) - 1]
        end = last_fitting if last_fitting > begin else _cut(text, begin, max_chars, tags)
        if part := text[begin:end].strip():
            parts.append(part)
        begin = end
    return parts


def _piece_end(text: str, begin: int) -> int:
    limit = begin + PIECE_CHARS
    for pattern in _PIECE_ENDS:
        ends = [m.end() for m in pattern.finditer(text, begin + PIECE_CHARS // 2, limit)]
        if ends:
            return ends[-1]
    # No space at all: cut at the limit, or before a tag straddling it (a tag longer than a piece
    # is cut: pack ignores a start inside it).
    tag_start = text.rfind("<", begin + 1, limit)
    if tag_start >= 0 and (tag := TAG.match(text, tag_start)) and tag.end() > limit:
        return tag_start
    return limit


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
