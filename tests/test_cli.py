import os
import subprocess
import sys
import wave

import pytest

from orpheus_local import tokens as fmt
from orpheus_local.params import SynthesisParams


def run_cli(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "orpheus_cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


async def test_synth_writes_the_wav_the_engine_generates(demo_dirs, tmp_path, synthesizer):
    model_dir, snac_dir = demo_dirs
    out = tmp_path / "out.wav"
    result = run_cli("synth", "Hello <laugh> world", "--voice", "tara", "--weights", str(model_dir),
                     "--snac", str(snac_dir), "--seed", "7", "--max-new-tokens", "250", "-o", str(out))
    assert result.returncode == 0, result.stderr
    # 250 tokens speak the text in one part (part_chars), cut at max_new_tokens by the length guard
    params = SynthesisParams(text="Hello <laugh> world", voice="tara", max_new_tokens=250, seed=7)
    ids = [i async for chunk in synthesizer.stream_ids(params) for i in chunk]
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        assert w.getnframes() == fmt.SAMPLES_PER_FRAME * (len(ids) // 7) > 0


def test_demo_flag_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo.wav"
    result = run_cli("synth", "Hello <laugh>", "--demo", "-o", str(out), "--max-new-tokens", "100",
                     env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    with wave.open(str(out)) as w:
        assert w.getframerate() == 24000 and w.getnframes() % 2048 == 0
    assert (tmp_path / ".cache" / "orpheus-local" / "demo").is_dir()


@pytest.mark.parametrize("args,message", [
    (["--temperature", "3"], "temperature: must be between"),
    (["--max-new-tokens", "5"], "max_new_tokens: must be between"),
])
def test_bad_parameters_exit_with_the_field_named(args, message, demo_dirs, tmp_path):
    result = run_cli("synth", "hi", "--weights", str(demo_dirs[0]), "-o", str(tmp_path / "x.wav"), *args)
    assert result.returncode == 2 and message in result.stderr


def test_missing_weights_say_how_to_get_them(tmp_path):
    result = run_cli("synth", "hi", "--weights", str(tmp_path / "none"), "-o", str(tmp_path / "x.wav"))
    assert result.returncode == 2
    assert "orpheus-local fetch-weights" in result.stderr and "--demo" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["serve"], ["synth", "hi", "-o", "x.wav"]])
def test_default_weights_missing_exit_at_once_with_the_fix(command, tmp_path):
    # From a directory with no weights/: the default path is local, never mistaken for a hub id.
    result = subprocess.run([sys.executable, "-m", "orpheus_cli", *command], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2
    assert "not found at weights/orpheus-3b-0.1-ft" in result.stderr
    assert "orpheus-local fetch-weights" in result.stderr and "--demo" in result.stderr
