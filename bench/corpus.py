"""Texts the benchmark speaks: a built-in English corpus, or the lines of a user's file."""

from __future__ import annotations

from pathlib import Path

# Short, medium and long sentences, interleaved so that any run of requests mixes lengths; some
# carry the emotive tags Orpheus speaks (<laugh>, <sigh>, <chuckle>, <gasp>, ...).
CORPUS: tuple[str, ...] = (
    "Hello there.",
    "Thanks for calling, how can I help you today?",
    "I checked the schedule twice, and the last train to the coast leaves at eleven forty, so we "
    "still have time for dinner if we order quickly and skip dessert.",
    "Oh no <sigh> not again.",
    "Honestly, I did not expect the demo to work on the first try <laugh> but here we are.",
    "Before you go, let me walk you through the three steps: unplug the router, wait thirty seconds, "
    "then plug it back in and watch for the green light <chuckle> which usually fixes everything.",
    "Yes, that works for me.",
    "Wait <gasp> you finished the whole marathon without stopping?",
    "The quarterly report shows steady growth in every region, although shipping costs rose faster "
    "than we planned <sigh> so next year's budget will need a closer look before we commit to it.",
    "Good morning!",
    "Could you repeat the last part a little more slowly, please?",
    "When I was a kid, my grandmother used to tell the same story every summer about the storm that "
    "flooded the village <laugh> and every year the water got a little deeper.",
)


def load_texts(path: Path) -> list[str]:
    """One text per line; blank lines are skipped. ValueError for a file with no text."""
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{path} has no text: expected one text per line")
    return texts
