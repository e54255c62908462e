"""Interpreter settings for a serving process.

The host side of a server is one Python process whose threads (event loop, engine, codec) share one
GIL; with the interpreter's defaults, a good part of its CPU goes to waiting for the GIL and to
collecting garbage that reference counting frees anyway.
"""

from __future__ import annotations

import gc
import sys

# A thread that wants the GIL gets it after the holder has run this long (5 ms by default). The
# engine thread wants it back after every device step, and everyone waits on that thread: 5 ms on
# top of a 10 ms step would cost a third of the throughput.
SWITCH_INTERVAL_S = 0.0005
# Young collections every 10,000 container allocations instead of 700: serving allocates many
# short-lived objects (events, chunks, frames) that reference counting frees anyway. An idle server
# collects everything (orpheus_local/memory.py), so a busy spell's garbage does not outlive it.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_for_serving() -> None:
    """Call once, after the imports and before serving."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.freeze()  # what exists now lives as long as the process: no collection need look at it again
    gc.set_threshold(*GC_THRESHOLDS)

