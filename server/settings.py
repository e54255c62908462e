"""ServerSettings: every server option, from flags, ORPHEUS_* environment variables or defaults."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orpheus_local.config import EngineConfig
from orpheus_local.voices import Voices, checkpoint_voices, parse_voice_names
from orpheus_local.weights.checkpoint import looks_like_hub_id
from orpheus_local.weights.demo import demo_seed

from .checkpoint_names import DEMO, checkpoint_voices_of, parse_checkpoints
from .errors import SERVED_MODEL
from .job_store import check_url
from .openai_names import OpenAINames

_ENGINE_DEFAULTS = EngineConfig()


class ServerSettings(BaseSettings):
    """Serve Orpheus 3B over HTTP. Each setting can also be set as ORPHEUS_<NAME> (e.g. ORPHEUS_PORT=9000); flags win."""

    model_config = SettingsConfigDict(
        env_prefix="ORPHEUS_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        cli_prog_name="orpheus-local serve",
    )

    # --- model ---
    weights: str = Field(_ENGINE_DEFAULTS.model, description="Orpheus model directory or hub id")
    snac: str = Field(_ENGINE_DEFAULTS.snac, description="SNAC 24 kHz codec directory or hub id")
    voices: str | None = Field(
        None, description="comma-separated voice names of the served checkpoint, the first the default, over its "
                          "voices.json; unset: voices.json beside its config.json, else the English fine-tune's")
    model: list[str] = Field(
        default_factory=list, description="serve several checkpoints side by side: NAME=PATH (a directory, a hub id, "
                                          "or demo for random weights of their own), once per checkpoint; a request "
                                          "picks one by its model field or at /v1/NAME. The one named "
                                          f"{SERVED_MODEL}, else the first, is the default. Unset: --weights alone, "
                                          f"as {SERVED_MODEL}")
    demo: bool = Field(False, description="serve a random-weight model of the real layout (noise, not speech)")
    demo_dir: Path = Field(_ENGINE_DEFAULTS.demo_dir, description="where --demo builds its random weights")
    device: str | None = Field(None, description="torch device; unset: cuda when present, else cpu")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(None, description="weights dtype; unset: bfloat16 on cuda, float32 on cpu")
    backend: Literal["engine", "reference"] = Field(
        _ENGINE_DEFAULTS.backend, description="engine (batched) or reference (transformers generate)")
    max_slots: int | None = Field(None, ge=1, description="concurrent sequences in the KV cache; unset: derived from memory")
    max_queue: int = Field(_ENGINE_DEFAULTS.max_queue, ge=1, description="requests waiting for a slot in the engine")
    warmup: bool = Field(True, description="run one short generation before reporting ready")
    simulated_step_ms: float | None = Field(
        None, gt=0, description="benchmarks of the host side only (bench/host.py): no model and no codec, "
                                "each engine step sleeps this many ms")

    # --- HTTP ---
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    api_keys_file: Path | None = Field(
        None, description="file with one API key per line ('#' starts a comment); without it the server is open"
    )
    remaining_credits: Decimal = Field(Decimal(1000), description="value of the X-Remaining-Credits header")
    max_body_bytes: int = Field(1 << 20, ge=1, description="largest request body accepted (413 above)")
    max_text_chars: int = Field(20000, ge=1, description="longest text one request may have (413 above), and the "
                                                          "most a speech session may hold unspoken")
    receive_timeout_s: float = Field(
        15.0, gt=0, description="seconds a client has to send a whole request (headers and body) before its connection is closed")
    send_timeout_s: float = Field(
        30.0, gt=0, description="seconds a client may read nothing while its response waits to be sent, before it is dropped")
    max_connections: int = Field(
        2048, ge=1, description="open connections at most: a new one replaces the oldest that has not sent a whole "
                                "request, else gets 503 (lowered to fit the process's file limit)")
    max_in_flight: int = Field(256, ge=1, description="requests generating or queued before new ones get 429")
    max_codec_backlog_s: float = Field(
        2.0, gt=0, description="seconds of audio-decoding work queued before new requests get 429")
    max_jobs: int = Field(1000, ge=1, description="v2 jobs kept in the store (queued, running and finished), counted across the servers sharing it")
    job_ttl_s: float = Field(3600.0, gt=0, description="seconds a finished v2 result is kept")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")
    log_format: Literal["text", "json"] = Field("text", description="log lines as text, or as one JSON object each")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="on SIGTERM or SIGINT, seconds the requests in flight get to finish (a second signal stops at once)")

    # --- v2 jobs and links ---
    max_jobs_per_key: int = Field(
        100, ge=1, description="v2 jobs one API key may have stored (queued, running, and finished until they expire or "
                               "are deleted) before its new ones get 429; not applied on an open server (no keys), "
                               "where every client is the same and max_jobs alone bounds the store")
    public_url: str | None = Field(
        None, description="base URL clients reach the server at (e.g. https://tts.example.com): v2 links are built "
                          "from it; unset or empty: from the Host header of each request")
    trusted_proxies: str = Field(
        "", description="comma-separated addresses whose X-Forwarded-For and X-Forwarded-Proto headers are trusted; "
                        "empty: none")

    # --- cloned voices (a pretrained checkpoint, or --demo) ---
    max_voice_bytes: int = Field(
        16 << 20, ge=1, description="largest POST /v1/audio/voices body (the reference recording and its fields; 413 "
                                    "above)")
    max_voices_per_key: int = Field(
        100, ge=1, description="cloned voices one API key may keep (all clients together on an open server)")

    # --- v2 job store ---
    state_dir: Path = Field(
        Path("~/.local/state/orpheus-local"), validate_default=True,
        description="directory for the server's state: the cloned voices (voices.sqlite3) and the v2 job store's "
                    "SQLite file (jobs.sqlite3) unless --jobs-url says otherwise")
    jobs_url: str | None = Field(
        None, description="where v2 jobs and their results are kept, shared by every server that is given the same: "
                          "redis://[:password@]host[:port][/db] (servers on many machines), or "
                          "sqlite:///path/to/file; unset: jobs.sqlite3 under --state-dir (the servers of one machine)")

    @field_validator("voices")
    @classmethod
    def check_voices(cls, value: str | None) -> str | None:
        if value is not None:
            parse_voice_names(value)
        return value

    @field_validator("state_dir")
    @classmethod
    def expand_state_dir(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("jobs_url")
    @classmethod
    def check_jobs_url(cls, value: str | None) -> str | None:
        return check_url(value) if value else None

    # --- replicas on Ray Serve ---
    replicas: int = Field(
        0, ge=0, description="serve through Ray Serve with this many replicas, each with its own engine (one GPU each "
                             "on CUDA); 0: one process, no Ray")
    max_replicas: int | None = Field(
        None, ge=1, description="with --replicas: let Ray Serve autoscale between --replicas and this many")
    target_ongoing_requests: float | None = Field(
        None, gt=0, description="with --max-replicas: requests under way per replica that autoscaling aims at; "
                                "unset: half of --max-in-flight")
    ray_address: str | None = Field(
        None, description="with --replicas: join this Ray cluster (e.g. auto, or ray://head:10001) instead of "
                          "starting one on this machine")

    # --- speech sessions (WS /v1/audio/speech/stream) ---
    max_speech_sessions: int = Field(
        256, ge=1, description="speech sessions open at once; a new one over this is closed with code 1013")
    session_idle_timeout_s: float = Field(
        120.0, gt=0, description="a speech session that sends nothing and has nothing left to say for this long is "
                                 "closed")
    session_messages_per_s: float = Field(
        500.0, gt=0, description="messages a speech session may send per second on average (bursts of as many); "
                                 "faster ones are read more slowly, not refused")

    # --- OpenAI clients ---
    openai_voices: dict[str, str] = Field(
        default_factory=dict, description="OpenAI voice names mapped to trained voices, as JSON, over the default "
                                          "table (GET /v1/audio/voices shows it), e.g. '{\"alloy\": \"leah\"}'")
    model_aliases: dict[str, str] = Field(
        default_factory=dict, description="more model names for /v1/audio/speech, as JSON: name -> served "
                                          "checkpoint, e.g. '{\"my-tts\": \"orpheus-3b-0.1\"}'")

    @field_validator("public_url")
    @classmethod
    def check_public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        try:
            absolute = (parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query
                        and not parts.fragment and (parts.port or 0) >= 0)  # .port raises for a bad port
        except ValueError:
            absolute = False
        if not absolute:
            raise ValueError("must be an absolute http(s) URL such as https://tts.example.com")
        return value.rstrip("/")

    @model_validator(mode="after")
    def check_replicas(self) -> "ServerSettings":
        if self.max_replicas is not None and self.max_replicas < max(self.replicas, 1):
            raise ValueError("max_replicas must be at least replicas (and --replicas at least 1 to autoscale)")
        if (self.ray_address or self.target_ongoing_requests) and not self.replicas:
            raise ValueError("ray_address and target_ongoing_requests need --replicas")
        return self

    @field_validator("model")
    @classmethod
    def check_models(cls, value: list[str]) -> list[str]:
        parse_checkpoints(value)
        return value

    @model_validator(mode="after")
    def check_several_checkpoints(self) -> "ServerSettings":
        if not self.model:
            return self
        given = self.model_fields_set
        clashes = [flag for flag, field in (("--weights", "weights"), ("--demo", "demo"), ("--voices", "voices"),
                                            ("--simulated-step-ms", "simulated_step_ms"))
                   if field in given and getattr(self, field)]
        if clashes:
            raise ValueError(f"--model serves each checkpoint given with it; it does not go with {', '.join(clashes)} "
                             f"(give the default as --model {SERVED_MODEL}=PATH, a demo as NAME=demo, voices in a "
                             "voices.json beside each checkpoint's config)")
        for alias in self.model_aliases:
            if alias in self.checkpoints():
                raise ValueError(f"model alias {alias!r} is the name of a served checkpoint")
        return self

    @model_validator(mode="after")
    def check_openai_names(self) -> "ServerSettings":
        for name in self.checkpoint_names():  # a voice or alias that names nothing served: a settings error at start-up
            self.openai_names(model=name)
        return self

    def checkpoints(self) -> dict[str, str]:
        """--model's NAME -> PATH, the default first; empty when --model is not given."""
        return parse_checkpoints(self.model)

    def checkpoint_names(self) -> tuple[str, ...]:
        """The served checkpoints' names, the default first: SERVED_MODEL alone without --model."""
        return tuple(self.checkpoints()) or (SERVED_MODEL,)

    def served_voices(self, model: str | None = None) -> Voices | None:
        """The voices of the checkpoint named model (None: the default) as far as the settings tell:
        --voices, else a local checkpoint's voices.json (or the English fine-tune's); None for a hub
        id, whose voices.json is read once it is downloaded. ValueError for a voices.json that cannot
        be read."""
        if self.model:
            return checkpoint_voices_of(self.checkpoints()[model or self.checkpoint_names()[0]])
        if self.voices is not None:
            voices = Voices.of(parse_voice_names(self.voices))
            return voices.with_clones() if self.demo else voices
        if self.demo:
            return checkpoint_voices(None).with_clones()  # the demo stands in for a pretrained checkpoint too
        if self.simulated_step_ms is not None:
            return checkpoint_voices(None)
        if looks_like_hub_id(self.weights):
            return None
        return checkpoint_voices(Path(self.weights).expanduser())

    def openai_names(self, served: Voices | None = None, model: str | None = None) -> OpenAINames:
        """The names requests may use with the checkpoint named model (None: the default): for
        served, the voices loading found; else served_voices(model). The OpenAI voice table must
        fit the default checkpoint; another one keeps the entries it can speak."""
        served = served if served is not None else self.served_voices(model)
        names = self.checkpoint_names()
        return OpenAINames.configured(self.openai_voices, self.model_aliases, served, checkpoints=names,
                                      strict=model in (None, names[0]))

    def engine_configs(self) -> dict[str, EngineConfig]:
        """Each --model checkpoint's configuration, the default first; a demo's weights are its own,
        seeded by its name."""
        base = dataclasses.replace(self.engine_config(), voices=None, demo=False)
        return {name: dataclasses.replace(base, model=path, demo=path == DEMO, demo_seed=demo_seed(name))
                for name, path in self.checkpoints().items()}

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.weights,
            snac=self.snac,
            voices=parse_voice_names(self.voices) if self.voices is not None else None,
            demo=self.demo,
            demo_dir=self.demo_dir,
            device=self.device,
            dtype=self.dtype,
            backend=self.backend,
            max_slots=self.max_slots,
            max_queue=self.max_queue,
            simulated_step_ms=self.simulated_step_ms,
        )
