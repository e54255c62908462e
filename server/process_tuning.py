"""Interpreter and allocator settings for a serving process.

The host side of a server is one Python process whose threads (event loop, engine, codec) share one
GIL; with the interpreter's and the C allocator's defaults, a good part of its CPU goes to waiting
for the GIL, collecting garbage and faulting in memory it has just handed back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

# A thread that wants the GIL gets it after the holder has run this long (5 ms by default). The
# engine thread wants it back after every device step, and everyone waits on that thread: 5 ms on
# top of a 10 ms step would cost a third of the throughput.
SWITCH_INTERVAL_S = 0.0005
# Young collections every 10,000 container allocations instead of 700: serving allocates many
# short-lived objects (events, chunks, frames) that reference counting frees anyway.
GC_THRESHOLDS = (10_000, 20, 20)
# glibc gives freed memory at the top of a heap back to the kernel once more than this is free; each
# audio chunk is a few hundred KiB, so the next one faulted in fresh zeroed pages (5% of the server's
# CPU at 64 streams). Blocks under MMAP_THRESHOLD come from the heap, whose memory is reused.
TRIM_THRESHOLD_BYTES = 64 << 20
MMAP_THRESHOLD_BYTES = 4 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def tune_for_serving() -> None:
    """Call once, after the imports and before serving."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.freeze()  # what exists now lives as long as the process: no collection need look at it again
    gc.set_threshold(*GC_THRESHOLDS)
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc (macOS, musl): its own defaults stay
        pass
