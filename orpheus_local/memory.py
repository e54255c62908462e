"""Hand the C allocator's free memory back to the system.

glibc keeps the peak of a busy spell (decoder activations, encoder buffers: hundreds of MB under
load); malloc_trim returns what is free in every arena. Cyclic garbage is collected first, so that
buffers it still holds are free to return. Elsewhere than glibc only the collection happens.
"""

from __future__ import annotations

import ctypes
import gc


def _find_malloc_trim():
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> None:
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
