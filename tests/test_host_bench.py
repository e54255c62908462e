"""The simulated device behind bench/host.py: the real pipeline around it, exact in what it serves."""

from __future__ import annotations

import json

import numpy as np
from support.asgi import SPEECH, serve

from orpheus_local import tokens as fmt
from orpheus_local.audio.simulated import SpeechLikeCodec
from orpheus_local.audio.windows import Window
from orpheus_local.config import EngineConfig
from orpheus_local.engine.core import EngineCore
from orpheus_local.engine.simulated import SimulatedRunner
from orpheus_local.params import SynthesisParams
from orpheus_local.pipeline.guards import GuardLimits, RepeatWatch
from orpheus_local.pipeline.synthesizer import Synthesizer


def test_a_simulated_request_speaks_its_frames_then_stops():
    core = EngineCore(SimulatedRunner(num_slots=2, step_s=0, frames=30), max_queue=4)
    request = core.add([1, 2, 3], SynthesisParams(text="Hello there.", max_new_tokens=1200), "r")
    ids, reason = [], None
    for _ in range(300):
        for out in core.step():
            ids += out.ids
            reason = out.reason if out.finished else reason
        if not core.has_work():
            break
    frames = fmt.ids_to_frames(ids)
    assert reason == "stop" and frames.shape == (30, 7) and request.generated == ids
    assert RepeatWatch(GuardLimits()).push(frames) is None  # varied enough for the loop guard


def test_the_speech_like_codec_gives_each_window_its_length_in_samples():
    windows = [Window(np.zeros((left + count + 1, 7), np.int64), left, count, start=0)
               for left, count in ((0, 1), (2, 4), (2, 32))]
    assert [len(pcm) for pcm in SpeechLikeCodec().decode_windows(windows)] == [2048, 8192, 65536]


async def test_the_server_around_a_simulated_device_serves_exact_lengths(demo_dirs):
    config = EngineConfig(demo_dir=demo_dirs[0].parent, simulated_step_ms=0.1, max_slots=4)
    synth = Synthesizer.load(config)
    try:
        async with serve(synth) as (client, _):
            response = await client.post(SPEECH, json={"input": "Hello there.", "response_format": "pcm"})
    finally:
        synth.close()
    assert response.status_code == 200 and len(response.content) == 43 * fmt.SAMPLES_PER_FRAME * 2


def test_bench_host_reports_cpu_per_audio_second_for_each_format(tmp_path):
    from bench import host

    out = tmp_path / "host.json"
    host.main(["--formats", "pcm", "--concurrency", "2", "--rounds", "1", "--step-ms", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    [level] = result["levels"]
    assert level["requests"] == 2 and level["errors"] == {} and level["audio_s"] == round(2 * 43 * 2048 / 24000, 2)
    assert result["server_cpu_ms_per_audio_s"]["pcm"] == level["server_cpu_ms_per_audio_s"] > 0
    # by thread: every role, the named threads found (the engine and the codec worked), adding up to
    # the process's figure (/proc counts in clock ticks: 10 ms each, rounded per thread)
    by_thread = result["server_cpu_ms_per_audio_s_by_thread"]["pcm"]
    assert set(by_thread) == {"event loop", "engine", "codec", "encoders", "other"}
    assert by_thread["event loop"] > 0 and by_thread["engine"] > 0
    tick_ms_per_audio_s = 10 / level["audio_s"]
    assert abs(sum(by_thread.values()) - level["server_cpu_ms_per_audio_s"]) <= 6 * tick_ms_per_audio_s
    # wake-ups: the engine sleeps in every simulated step (a request speaks 301 ids, one a step)
    wakeups = result["server_wakeups_per_s_by_thread"]["pcm"]
    assert set(wakeups) == set(by_thread) and wakeups == level["server_wakeups_per_s_by_thread"]
    assert wakeups["engine"] * level["wall_s"] >= 290 and wakeups["codec"] > 0
    assert set(result["realtime_streams"]) == {"pcm"}  # its value depends on this machine's speed
    assert result["client_processes"] == 1


def test_bench_host_gives_each_client_process_at_most_256_streams():
    from bench.host import client_processes

    assert [client_processes(levels) for levels in ([2], [16, 64, 256], [257], [300, 600])] == [1, 1, 2, 3]


def test_bench_codec_step_measures_each_tree_in_its_own_processes_and_gives_their_ratio(tmp_path):
    from bench import codec_step

    out = tmp_path / "codec-step.json"
    codec_step.main(["--streams", "4", "16", "--steps", "50", "--rounds", "1", "--against", str(codec_step.ROOT),
                     "--json", str(out)])
    result = json.loads(out.read_text())
    assert [level["streams"] for level in result["levels"]] == [4, 16]
    for level in result["levels"]:
        for key in ("idle_step_us", "cost_handover_us"):
            assert level[f"{key}_this"] > 0 and level[f"{key}_against"] > 0
            assert level[f"{key}_ratio"] == round(level[f"{key}_against"] / level[f"{key}_this"], 2)
