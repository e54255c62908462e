"""Find, fetch and load checkpoints: the Orpheus model directory, its tokenizer, and SNAC.

A model directory has the Hugging Face layout: config.json, model.safetensors (or shards listed in
model.safetensors.index.json) and tokenizer files. A SNAC directory has config.json and
pytorch_model.bin. Anything missing gives one CheckpointError that names it and the fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_REPO = "canopylabs/orpheus-3b-0.1-ft"
SNAC_REPO = "hubertsiuzdak/snac_24khz"
DEFAULT_WEIGHTS_DIR = Path("weights")
MODEL_SUBDIR = "orpheus-3b-0.1-ft"
SNAC_SUBDIR = "snac_24khz"
FETCH_HINT = (
    "Get the weights with `orpheus-local fetch-weights --dest weights/` (the model is gated: accept its "
    f"licence at https://huggingface.co/{MODEL_REPO} and set HF_TOKEN), or run with --demo for a "
    "random-weight model."
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says what is missing and how to get it."""


def looks_like_hub_id(ref: str) -> bool:
    return bool(_HUB_ID.match(ref)) and not Path(ref).exists()


def missing_model_files(model_dir: Path) -> list[str]:
    """Names of the files a complete model directory lacks (empty when complete)."""
    missing = [] if (model_dir / "config.json").is_file() else ["config.json"]
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index ({exc}). {FETCH_HINT}") from None
        missing += [s for s in shards if not (model_dir / s).is_file()]
    elif not (model_dir / "model.safetensors").is_file():
        missing.append("model.safetensors (or model.safetensors.index.json with its shards)")
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer.json")
    return missing


def missing_snac_files(snac_dir: Path) -> list[str]:
    return [f for f in ("config.json", "pytorch_model.bin") if not (snac_dir / f).is_file()]


def resolve_model_dir(ref: str | os.PathLike) -> Path:
    """A complete local model directory for a path or a hub id (hub ids go through the local cache)."""
    return _resolve(str(ref), MODEL_REPO, missing_model_files, "Orpheus model")


def resolve_snac_dir(ref: str | os.PathLike) -> Path:
    return _resolve(str(ref), SNAC_REPO, missing_snac_files, "SNAC codec")


def _resolve(ref: str, default_repo: str, missing_files, what: str) -> Path:
    path = Path(ref).expanduser()
    if path.is_dir():
        missing = missing_files(path)
        if missing:
            raise CheckpointError(f"{what} directory {path} is incomplete: missing {', '.join(missing)}. {FETCH_HINT}")
        return path
    if looks_like_hub_id(ref):
        return _snapshot(ref, missing_files, what)
    raise CheckpointError(f"{what} not found at {path}. {FETCH_HINT}")


def _snapshot(repo_id: str, missing_files, what: str, local_dir: Path | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, local_dir=local_dir, token=os.environ.get("HF_TOKEN")))
    except LocalEntryNotFoundError:
        raise CheckpointError(f"cannot download {what} {repo_id!r}: the hub is unreachable and it is not cached. {FETCH_HINT}") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        reason = "access denied (gated model: accept the licence and set HF_TOKEN)" if status in (401, 403) else f"hub error {status}"
        raise CheckpointError(f"cannot download {what} {repo_id!r}: {reason}. {FETCH_HINT}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot download {what} {repo_id!r}: {exc}. {FETCH_HINT}") from None
    missing = missing_files(path)
    if missing:
        raise CheckpointError(f"{what} {repo_id!r} downloaded to {path} lacks {', '.join(missing)}. {FETCH_HINT}")
    return path


def fetch_weights(dest: str | os.PathLike = DEFAULT_WEIGHTS_DIR) -> tuple[Path, Path]:
    """Download model and codec into dest/ (resumable: files already complete are kept)."""
    dest = Path(dest)
    out = []
    for repo, sub, missing_files, what in (
        (MODEL_REPO, MODEL_SUBDIR, missing_model_files, "Orpheus model"),
        (SNAC_REPO, SNAC_SUBDIR, missing_snac_files, "SNAC codec"),
    ):
        target = dest / sub
        if target.is_dir() and not missing_files(target):
            log.info("%s already present at %s", what, target)
            out.append(target)
            continue
        log.info("downloading %s %s to %s", what, repo, target)
        out.append(_snapshot(repo, missing_files, what, local_dir=target))
    return out[0], out[1]


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer from {model_dir}: {exc}. {FETCH_HINT}") from None


def load_snac(snac_dir: Path, device: str = "cpu"):
    import torch
    from snac import SNAC

    try:
        model = SNAC.from_config(str(snac_dir / "config.json"))
        state = torch.load(str(snac_dir / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"cannot load SNAC from {snac_dir}: {exc}. {FETCH_HINT}") from None
    return model.eval().to(device)


def load_config(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except ValueError as exc:
        raise CheckpointError(f"{model_dir / 'config.json'} is not valid JSON ({exc}). {FETCH_HINT}") from None
