"""Find, fetch and load checkpoints: the Orpheus model directory, its tokenizer, and SNAC.

A model directory has the Hugging Face layout: config.json, model.safetensors (or shards listed in
model.safetensors.index.json) and tokenizer files. A SNAC directory has config.json and
pytorch_model.bin. Anything missing or damaged gives one CheckpointError that names it and the fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from orpheus_local.voices import VOICES_FILE, write_voices_file
from orpheus_local.weights.catalog import DEFAULT_RELEASE, RELEASES, find_release
from orpheus_local.weights.integrity import (
    ExpectedFile,
    download_problems,
    safetensors_problem,
)

log = logging.getLogger(__name__)

MODEL_REPO = RELEASES[DEFAULT_RELEASE].repo
SNAC_REPO = "hubertsiuzdak/snac_24khz"
DEFAULT_WEIGHTS_DIR = Path("weights")
MODEL_SUBDIR = RELEASES[DEFAULT_RELEASE].name
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


def weight_files(model_dir: Path) -> list[str]:
    """The safetensors files of a model directory: the shards its index lists, or model.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if not index.is_file():
        return ["model.safetensors"]
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index} is not a valid safetensors index ({exc}). {FETCH_HINT}") from None


def missing_model_files(model_dir: Path) -> list[str]:
    """Names of the files a complete model directory lacks (empty when complete)."""
    missing = [] if (model_dir / "config.json").is_file() else ["config.json"]
    if (model_dir / "model.safetensors.index.json").is_file():
        missing += [f for f in weight_files(model_dir) if not (model_dir / f).is_file()]
    elif not (model_dir / "model.safetensors").is_file():
        missing.append("model.safetensors (or model.safetensors.index.json with its shards)")
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer.json")
    return missing


def damaged_model_files(model_dir: Path) -> dict[str, str]:
    """{file: what is wrong} for weights files whose safetensors header does not match their size.
    Reads headers only: cheap enough for every start."""
    try:
        names = weight_files(model_dir)
    except CheckpointError:
        return {"model.safetensors.index.json": "not a valid safetensors index"}
    problems = {}
    for name in names:
        path = model_dir / name
        if path.is_file() and (problem := safetensors_problem(path)):
            problems[name] = problem
    return problems


def missing_snac_files(snac_dir: Path) -> list[str]:
    return [f for f in ("config.json", "pytorch_model.bin") if not (snac_dir / f).is_file()]


@dataclass(frozen=True)
class CheckpointKind:
    """One of the two checkpoints: where it comes from, where it goes, and how to check a copy."""

    what: str
    repo: str
    subdir: str
    missing: Callable[[Path], list[str]]
    damaged: Callable[[Path], dict[str, str]]


MODEL = CheckpointKind("Orpheus model", MODEL_REPO, MODEL_SUBDIR, missing_model_files, damaged_model_files)
# SNAC's pytorch_model.bin has no cheap check; a damaged one fails in load_snac with a CheckpointError.
SNAC = CheckpointKind("SNAC codec", SNAC_REPO, SNAC_SUBDIR, missing_snac_files, lambda _: {})


def resolve_model_dir(ref: str | os.PathLike) -> Path:
    """A complete local model directory for a path or a hub id (hub ids go through the local cache)."""
    return _resolve(str(ref), MODEL)


def resolve_snac_dir(ref: str | os.PathLike) -> Path:
    return _resolve(str(ref), SNAC)


def _resolve(ref: str, kind: CheckpointKind) -> Path:
    path = Path(ref).expanduser()
    if path.is_dir():
        return _checked(path, kind, f"{kind.what} directory {path}")
    if looks_like_hub_id(ref):
        downloaded = _download(ref, kind.what)
        return _checked(downloaded, kind, f"{kind.what} {ref!r} downloaded to {downloaded}")
    raise CheckpointError(f"{kind.what} not found at {path}. {FETCH_HINT}")


def _checked(path: Path, kind: CheckpointKind, where: str) -> Path:
    """path, once nothing is missing from it and no file in it is damaged; where names it in errors."""
    if missing := kind.missing(path):
        raise CheckpointError(f"{where} is incomplete: missing {', '.join(missing)}. {FETCH_HINT}")
    if damaged := kind.damaged(path):
        listed = "; ".join(f"{path / name} is damaged: {problem}" for name, problem in damaged.items())
        raise CheckpointError(
            f"{listed} (an interrupted download or a corrupted copy). Download it again with "
            f"`{_fetch_command(path, kind)}`, which replaces damaged files."
        )
    return path


def _fetch_command(path: Path, kind: CheckpointKind) -> str:
    """The fetch-weights command that writes to path, when path has fetch-weights' layout."""
    if kind.what == MODEL.what and path.name in RELEASES:
        model = "" if path.name == DEFAULT_RELEASE else f" --model {path.name}"
        return f"orpheus-local fetch-weights --dest {path.parent}{model}"
    dest = path.parent if path.name == kind.subdir else DEFAULT_WEIGHTS_DIR
    return f"orpheus-local fetch-weights --dest {dest}"


@contextmanager
def _hub_errors(what: str, repo_id: str):
    """Any failure to talk to the hub as one CheckpointError saying why and what to do."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        yield
    except LocalEntryNotFoundError:
        raise CheckpointError(f"cannot download {what} {repo_id!r}: the hub is unreachable and it is not cached. {FETCH_HINT}") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        reason = "access denied (gated model: accept the licence and set HF_TOKEN)" if status in (401, 403) else f"hub error {status}"
        raise CheckpointError(f"cannot download {what} {repo_id!r}: {reason}. {FETCH_HINT}") from None
    except Exception as exc:  # network errors come from whichever HTTP client huggingface_hub uses
        raise CheckpointError(f"cannot download {what} {repo_id!r}: {exc}. {FETCH_HINT}") from None


def _download(repo_id: str, what: str, local_dir: Path | None = None, revision: str | None = None) -> Path:
    from huggingface_hub import snapshot_download

    with _hub_errors(what, repo_id):
        return Path(snapshot_download(repo_id, revision=revision, local_dir=local_dir, token=os.environ.get("HF_TOKEN")))


def _hub_files(repo_id: str, what: str) -> tuple[list[ExpectedFile], str]:
    """The files of the repository's current commit with their sizes and LFS sha256, and that commit."""
    from huggingface_hub import HfApi

    with _hub_errors(what, repo_id):
        info = HfApi().model_info(repo_id, files_metadata=True, token=os.environ.get("HF_TOKEN"))
    files = [ExpectedFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or ()]
    return files, info.sha


def fetch_weights(dest: str | os.PathLike = DEFAULT_WEIGHTS_DIR, model: str = DEFAULT_RELEASE) -> tuple[Path, Path]:
    """Download a model (a release's name from catalog.py, by default the English fine-tune) into
    dest/<name>/ and the codec into dest/snac_24khz/, and check every file against the hub's sizes
    and sha256. A release with voices of its own gets them written to voices.json beside its config
    (one already there is kept), so that serving it offers them without flags.

    Resumable: files already complete are kept. A directory already complete and undamaged is left
    as it is without asking the hub; damaged files are deleted and downloaded anew."""
    release = find_release(model)
    if release is None:
        raise CheckpointError(f"unknown model {model!r}; fetch-weights knows {', '.join(RELEASES)}. Any other "
                              "checkpoint is served from its directory or hub id: orpheus-local serve --weights ...")
    dest = Path(dest)
    kind = replace(MODEL, repo=release.repo, subdir=release.name)
    model_dir = _fetch(kind, dest / kind.subdir)
    if release.voices is not None and not (model_dir / VOICES_FILE).is_file():
        path = write_voices_file(model_dir, release.voices)
        log.info("wrote %s's voices (%s) to %s", release.name, str(release.voices) or "none", path)
    return model_dir, _fetch(SNAC, dest / SNAC.subdir)


def _fetch(kind: CheckpointKind, target: Path) -> Path:
    # damaged() first: it reports an unreadable index as damaged, where missing() raises on it
    if target.is_dir() and not kind.damaged(target) and not kind.missing(target):
        log.info("%s already present at %s", kind.what, target)
        return target
    expected, revision = _hub_files(kind.repo, kind.what)
    # Twice at most: a file that fails its check is deleted (the hub client would keep it as it
    # is) and downloaded once more.
    for _ in range(2):
        _delete(target, kind.damaged(target))
        log.info("downloading %s %s to %s", kind.what, kind.repo, target)
        _download(kind.repo, kind.what, local_dir=target, revision=revision)
        log.info("checking %s against the hub's sizes and sha256", target)
        problems = download_problems(target, expected)
        if not problems:
            return _checked(target, kind, f"{kind.what} {kind.repo!r} downloaded to {target}")
        _delete(target, problems)
    listed = "; ".join(f"{target / name}: {problem}" for name, problem in problems.items())
    raise CheckpointError(
        f"{kind.what} {kind.repo!r} did not download intact twice in a row ({listed}); these files were deleted. "
        "Check the disk and the network, then run `orpheus-local fetch-weights` again."
    )


def _delete(directory: Path, problems: dict[str, str]) -> None:
    for name, problem in problems.items():
        log.warning("deleting %s: %s", directory / name, problem)
        (directory / name).unlink()


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
