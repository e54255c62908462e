"""Interpreter settings for a serving process.

The host side of a server is one Python process whose threads (event loop, engine, codec) share one
GIL; with the interpreter's default switch interval the engine thread waits too long for it, and a
full garbage collection over the start-up heap stalls all of them at once.
"""

from __future__ import annotations

import gc
import sys

# A thread that wants the GIL gets it after the holder has run this long (5 ms by default). The
# engine thread wants it back after every device step, and everyone waits on that thread: 5 ms on
# top of a 10 ms step would cost a third of the throughput.
SWITCH_INTERVAL_S = 0.0005
# The collector keeps its default thresholds: collecting every 10,000 allocations instead of 700
# saved about 2% of the server's CPU at 64 streams, but a load's peak heap then stayed fragmented
# after it (the memory check in tests/test_load.py went from +1.5% to +6..10%).


def tune_for_serving() -> None:
    """Call once, after the imports and before serving."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def settle_heap() -> None:
    """Call once the model is loaded, before marking the server ready. What exists now (modules,
    the tokenizer, the model's Python objects: about 250,000 objects) lives as long as the process,
    so the collector stops walking it: a full collection then takes microseconds instead of 150 ms
    or more, which it would spend holding the GIL, every other thread (the event loop, the engine)
    stalled meanwhile."""
    gc.collect()
    gc.freeze()
