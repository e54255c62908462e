"""SentenceBuffer: text that arrives a few characters at a time (an LLM's answer, token by token),
handed out as speakable parts as soon as each sentence is complete.

A sentence is complete once the segmenter (pysbd, as for long text) would end it there whatever
came next: the buffer ends in a sentence mark and whitespace, and with a new sentence appended
("The") the segmenter starts that new sentence right there. So "Hello there. " is complete, "Dr. "
and "It costs 3." are not. The segmenter only runs when an append brought a candidate (a sentence
mark followed by whitespace), and only on the text not yet handed out, so its cost stays small.

A clause longer than a part's limit is cut before the sentence ends (at a clause mark or a space,
as split_text cuts), so the first audio never waits for a very long sentence.
"""

from __future__ import annotations

import re

from orpheus_local.text.split import MAX_PART_CHARS, pack, sentence_starts

# A sentence mark, closing quotes or brackets, then whitespace: where a sentence may end.
_CANDIDATE = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*\s")
# What "whatever came next" is tried with: an ordinary sentence start.
_PROBE = "The"


class SentenceBuffer:
    """append() text, take() the parts ready to speak; flush() takes the rest (the speaker's turn
    is over, or the client asked to speak what it has).

    Parts are whole sentences packed up to max_chars (several short sentences that arrived together
    become one part), and the parts taken, joined by spaces, say exactly what was appended."""

    def __init__(self, max_chars: int = MAX_PART_CHARS):
        self.max_chars = max_chars
        self._text = ""
        self._scanned = 0  # candidates before this offset were looked at already

    def __len__(self) -> int:
        return len(self._text)

    @property
    def text(self) -> str:
        """What is buffered and not yet taken."""
        return self._text

    def append(self, text: str) -> None:
        self._text += text

    def take(self) -> list[str]:
        """The parts ready now: every complete sentence, and the leading parts of an incomplete
        sentence longer than max_chars. What is left waits for more text."""
        end = self._complete_end()
        parts = self._cut(end) if end else []
        if len(self._text) > self.max_chars:  # a clause too long to wait for its sentence's end
            head = pack(self._text, [0], self.max_chars)[:-1]
            taken = self._consume(head)
            parts += taken
        return parts

    def flush(self) -> list[str]:
        """Everything buffered, as parts (nothing if it is only whitespace)."""
        parts = self._cut(len(self._text)) if self._text.strip() else []
        self._text, self._scanned = "", 0
        return parts

    def clear(self) -> None:
        self._text, self._scanned = "", 0

    def _complete_end(self) -> int:
        """The offset just past the last complete sentence (0: none is complete)."""
        text, scan_from = self._text, max(0, self._scanned - 3)  # a candidate may straddle appends
        self._scanned = len(text)
        if not _CANDIDATE.search(text, scan_from):
            return 0
        probe = text + _PROBE if text[-1].isspace() else text
        return max((s for s in sentence_starts(probe) if s <= len(text)), default=0)

    def _cut(self, end: int) -> list[str]:
        """The parts of text[:end] (whole sentences packed up to max_chars); the rest stays."""
        head, self._text = self._text[:end], self._text[end:]
        self._scanned = 0
        if not head.strip():
            return []
        return pack(head, sentence_starts(head), self.max_chars) if len(head) > self.max_chars else [head.strip()]

    def _consume(self, parts: list[str]) -> list[str]:
        """Drop the given leading parts (as pack cut them) from the buffer."""
        for part in parts:
            at = self._text.find(part)
            self._text = self._text[at + len(part):]
        self._scanned = 0
        return parts
