"""ServerSettings: every server option, from flags, ORPHEUS_* environment variables or defaults."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orpheus_local.config import EngineConfig

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
    demo: bool = Field(False, description="serve a random-weight model of the real layout (noise, not speech)")
    demo_dir: Path = Field(_ENGINE_DEFAULTS.demo_dir, description="where --demo builds its random weights")
    device: str | None = Field(None, description="torch device; unset: cuda when present, else cpu")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(None, description="weights dtype; unset: bfloat16 on cuda, float32 on cpu")
    backend: Literal["engine", "reference"] = Field(
        _ENGINE_DEFAULTS.backend, description="engine (batched) or reference (transformers generate)")
    max_slots: int | None = Field(None, ge=1, description="concurrent sequences in the KV cache; unset: derived from memory")
    max_queue: int = Field(_ENGINE_DEFAULTS.max_queue, ge=1, description="requests waiting for a slot in the engine")
    warmup: bool = Field(True, description="run one short generation before reporting ready")

    # --- HTTP ---
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    api_keys_file: Path | None = Field(
        None, description="file with one API key per line ('#' starts a comment); without it the server is open"
    )
    remaining_credits: Decimal = Field(Decimal(1000), description="value of the X-Remaining-Credits header")
    max_body_bytes: int = Field(1 << 20, ge=1, description="largest request body accepted (413 above)")
    max_text_chars: int = Field(20000, ge=1, description="longest text one request may have (413 above)")
    max_in_flight: int = Field(256, ge=1, description="requests generating or queued before new ones get 429")
    max_jobs: int = Field(1000, ge=1, description="v2 jobs kept in memory (queued, running and finished)")
    job_ttl_s: float = Field(3600.0, gt=0, description="seconds a finished v2 result is kept")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")
    log_format: Literal["text", "json"] = Field("text", description="log lines as text, or as one JSON object each")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="on SIGTERM or SIGINT, seconds the requests in flight get to finish (a second signal stops at once)")

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.weights,
            snac=self.snac,
            demo=self.demo,
            demo_dir=self.demo_dir,
            device=self.device,
            dtype=self.dtype,
            backend=self.backend,
            max_slots=self.max_slots,
            max_queue=self.max_queue,
        )
