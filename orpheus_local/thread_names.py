"""Thread names the operating system sees, so that `top -H`, `ps -L` and /proc/PID/task tell the
server's threads apart (the engine, the codec, the encoders): before Python 3.14 a thread's name is
Python's alone, and every thread shows the process's name."""

from __future__ import annotations

import ctypes
import sys
import threading

_PR_SET_NAME = 15  # prctl option: the calling thread's name
_LINUX_NAME_BYTES = 15  # the kernel keeps 16 bytes, the terminating NUL included


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread `name` (default: its Python name) in the operating system, cut to the
    15 bytes Linux keeps. Does nothing where that is not possible."""
    if _PRCTL is not None:
        name = threading.current_thread().name if name is None else name
        _PRCTL(_PR_SET_NAME, name.encode()[:_LINUX_NAME_BYTES], 0, 0, 0)
