"""The interpreter's thread switch interval for a serving process."""

from __future__ import annotations

import sys

# A thread that wants the GIL gets it after the holder has run this long (5 ms by default). The
# engine thread wants it back after every device step, and everyone waits on that thread: 5 ms on
# top of a 10 ms step would cost a third of the throughput.
SWITCH_INTERVAL_S = 0.0005


def favour_the_engine_thread() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
