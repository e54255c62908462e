"""EncoderPool: audio encoding (PyAV codecs, the atempo filter, WAV packing) on worker threads.

Encoding a chunk takes milliseconds of CPU; at 128+ streams on one GPU that work alone would stall
the event loop and every request with it. PyAV releases the GIL while it encodes, so a few threads
do it in parallel. A stream awaits each chunk's encoding before handing over the next, so its bytes
stay in order; the pool's threads belong to the pool and only run the functions given to run().
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from orpheus_local.thread_names import name_os_thread

T = TypeVar("T")

THREAD_NAME = "orpheus-encode"  # every thread of the pool, in Python and in the OS


class EncoderPool:
    def __init__(self, threads: int | None = None):
        threads = threads or min(8, os.cpu_count() or 1)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=THREAD_NAME, initializer=name_os_thread,
                                            initargs=(THREAD_NAME,))

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
