"""`orpheus-local serve`: settings from flags and environment, start-up errors, and one real server
process answering over TCP."""

from __future__ import annotations

import signal

import httpx
import pytest
from support.process import start_server
from support.wav import wav_samples

from orpheus_local.weights.checkpoint import CheckpointError, resolve_model_dir
from server.main import main
from server.settings import ServerSettings

SHORT = {"text": "Hello there.", "voice": "tara", "max_new_tokens": 100, "seed": 1}


def test_help_documents_every_setting(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "ORPHEUS_" in out
    for name in ServerSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in out


def test_flags_win_over_environment_over_defaults(monkeypatch):
    assert ServerSettings(_cli_parse_args=[]).port == 8000
    monkeypatch.setenv("ORPHEUS_PORT", "9000")
    monkeypatch.setenv("ORPHEUS_DEMO", "true")
    from_env = ServerSettings(_cli_parse_args=[])
    assert (from_env.port, from_env.demo) == (9000, True)
    from_flags = ServerSettings(_cli_parse_args=["--port", "7000", "--no-demo", "--api-keys-file", "keys.txt"])
    assert (from_flags.port, from_flags.demo, str(from_flags.api_keys_file)) == (7000, False, "keys.txt")


def test_settings_build_the_engine_config():
    settings = ServerSettings(_cli_parse_args=["--weights", "w/model", "--snac", "w/snac", "--device", "cpu",
                                               "--backend", "reference", "--max-slots", "4", "--max-queue", "8"])
    config = settings.engine_config()
    assert (config.model, config.snac, config.device, config.backend, config.max_slots, config.max_queue) == (
        "w/model", "w/snac", "cpu", "reference", 4, 8)


def test_missing_checkpoint_exits_at_once_with_the_core_message(tmp_path, capsys):
    missing = tmp_path / "no-model"
    with pytest.raises(CheckpointError) as expected:
        resolve_model_dir(missing)
    assert main(["--weights", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {expected.value}"


def test_bad_flag_value_exits_with_a_message(capsys):
    assert main(["--port", "eighty"]) == 2
    assert "port" in capsys.readouterr().err


def test_unreadable_keys_file_exits_with_a_message(tmp_path, demo_dirs, capsys):
    assert main(["--demo", "--demo-dir", str(demo_dirs[0].parent), "--api-keys-file", str(tmp_path / "none")]) == 2
    assert "none" in capsys.readouterr().err


def test_load_failure_in_the_lifespan_stops_the_server(monkeypatch, tmp_path, capsys):
    from orpheus_local.pipeline.synthesizer import Synthesizer

    def fail(config):
        raise CheckpointError("cannot download Orpheus model 'someone/else': hub error 500.")

    monkeypatch.setattr(Synthesizer, "load", staticmethod(fail))
    assert main(["--demo", "--demo-dir", str(tmp_path), "--port", "0"]) == 1
    assert capsys.readouterr().err.strip() == "error: cannot download Orpheus model 'someone/else': hub error 500."


def test_serve_demo_process_answers_over_tcp(demo_config, demo_dirs):
    server = start_server("--demo", "--demo-dir", str(demo_dirs[0].parent), "--device", "cpu",
                          "--backend", demo_config.backend, threads=2)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            assert client.get("/health").json() == {"status": "ok"}

            response = client.post("/v1/orpheus-3b-0.1", json=SHORT)
            assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
            samples = wav_samples(response.content)
            assert samples > 0 and samples % 2048 == 0

            with client.stream("POST", "/v1/orpheus-3b-0.1", json={**SHORT, "stream": True}) as streamed:
                assert streamed.headers["transfer-encoding"] == "chunked"
                data = streamed.read()
            assert data[4:8] == b"\xff\xff\xff\xff" and wav_samples(data) % 2048 == 0
    finally:
        server.signal(signal.SIGINT)
        code = server.wait(timeout=30)
    assert code == 0, server.output
    assert "no API keys configured: the server is open" in server.output
    assert "ready to serve" in server.output
