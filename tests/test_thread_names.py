"""The server's threads carry their names into the operating system, where `top -H` and
bench/host.py's per-thread figures read them."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from orpheus_local import tokens as fmt
from orpheus_local.thread_names import name_os_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are read from /proc")


def os_name_of(thread: threading.Thread) -> str:
    return Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()


def test_a_thread_names_itself_cut_to_the_15_bytes_linux_keeps():
    named, done = threading.Event(), threading.Event()
    seen = {}

    def run(name: str) -> None:
        name_os_thread(name)
        named.set()
        done.wait(10)

    for name, expected in (("orpheus-engine", "orpheus-engine"), ("orpheus-reference-long", "orpheus-referen")):
        named.clear()
        done.clear()
        thread = threading.Thread(target=run, args=(name,))
        thread.start()
        assert named.wait(10)
        seen[name] = os_name_of(thread)
        done.set()
        thread.join()
        assert seen[name] == expected


async def test_the_engine_codec_and_encoder_threads_are_named_in_the_os():
    from orpheus_local.audio.simulated import SpeechLikeCodec
    from orpheus_local.audio.worker import CodecWorker
    from orpheus_local.engine.core import EngineCore
    from orpheus_local.engine.driver import EngineDriver
    from orpheus_local.engine.simulated import SimulatedRunner
    from orpheus_local.params import SynthesisParams
    from server.encoding import EncoderPool

    driver = EngineDriver(EngineCore(SimulatedRunner(num_slots=1, step_s=0, frames=2), max_queue=1)).start()
    codec = CodecWorker(SpeechLikeCodec()).start()
    pool = EncoderPool(threads=1)
    try:
        # a round trip through each thread: by its end the thread has named itself
        ids = [i async for frame in driver.submit([1, 2, 3], SynthesisParams(text="x", seed=1), "r") for i in frame]
        audio = codec.open(noise_key=1)
        audio.push_ids(ids)
        audio.end_frames()
        assert sum([len(chunk) async for chunk in audio]) == 2 * fmt.SAMPLES_PER_FRAME
        assert [os_name_of(driver._thread), os_name_of(codec._thread)] == ["orpheus-engine", "orpheus-codec"]
        assert await pool.run(lambda: os_name_of(threading.current_thread())) == "orpheus-encode"
    finally:
        pool.close()
        codec.close()
        driver.close()
