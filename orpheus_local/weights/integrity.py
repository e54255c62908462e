"""Whether weight files are whole: a cheap look at safetensors headers (at every start) and a full
comparison with the hub's sizes and sha256 (after a download).

An interrupted download or a broken copy leaves a file that loads into a deep library error, or
worse into wrong weights; these checks name the file instead.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

# safetensors itself refuses headers above 100 MB; a larger length means the first bytes are garbage.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, or None when its header and size agree.

    Layout: an 8-byte little-endian header length, the JSON header, then the tensor data; every
    tensor's data_offsets [begin, end] count from the start of the data, and the last end is its size.
    Only the header is read, so this costs the same for 40 MB as for 15 GB.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return f"{size} bytes, too short to hold a safetensors header"
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _MAX_HEADER_BYTES:
            return "its first bytes are not a safetensors header length"
        if 8 + header_len > size:
            return f"truncated inside its header ({size} bytes, the header alone needs {8 + header_len})"
        try:
            header = json.loads(f.read(header_len))
            data_end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                           default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "its header is not valid safetensors JSON"
    expected = 8 + header_len + data_end
    if size < expected:
        return f"truncated: {size} bytes of the {expected} its header describes"
    if size > expected:
        return f"{size} bytes, more than the {expected} its header describes"
    return None


def sha256_of(path: Path, block: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExpectedFile:
    """A file as the hub publishes it: its size, and its sha256 when it is stored with Git LFS."""

    name: str
    size: int | None
    sha256: str | None = None


def download_problems(directory: Path, expected: list[ExpectedFile]) -> dict[str, str]:
    """{file name: what is wrong} for the expected files present in directory that differ from the
    hub's metadata. Sizes are compared first, so a short file is reported without hashing it."""
    problems = {}
    for file in expected:
        path = directory / file.name
        if not path.is_file():
            continue  # not downloaded (filtered out, or reported as missing by the layout check)
        size = path.stat().st_size
        if file.size is not None and size != file.size:
            problems[file.name] = f"{size} bytes, the hub says {file.size}"
        elif file.sha256 is not None and sha256_of(path) != file.sha256:
            problems[file.name] = "its sha256 differs from the hub's"
    return problems
