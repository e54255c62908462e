"""How many parameters a model directory holds, read from its safetensors headers (no tensor data):
what its weights will take in memory is known before any of them is loaded."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from orpheus_local.weights.checkpoint import FETCH_HINT, CheckpointError, weight_files


def parameter_count(model_dir: Path) -> int:
    """Elements of every tensor in the directory's weights files (the shards its index lists, or
    model.safetensors); CheckpointError for a file whose header cannot be read."""
    total = 0
    for name in weight_files(Path(model_dir)):
        path = Path(model_dir) / name
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            total += sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
        except (OSError, ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
            raise CheckpointError(f"{path}: cannot read its safetensors header ({exc}). {FETCH_HINT}") from None
    return total
