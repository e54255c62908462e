"""EngineConfig: the one source of defaults for device, dtype, capacity and paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orpheus_local.weights.checkpoint import (
    DEFAULT_WEIGHTS_DIR,
    MODEL_SUBDIR,
    SNAC_SUBDIR,
)

# A reference turn: its transcript and up to 30 s of audio ids (2464), with room for a long transcript.
REFERENCE_TOKENS = 3072


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    return "bfloat16" if device.startswith("cuda") else "float32"


@dataclass
class EngineConfig:
    # "./" marks the defaults as local paths: "weights/x" alone would also read as a hub id.
    model: str = f"./{DEFAULT_WEIGHTS_DIR / MODEL_SUBDIR}"  # directory or hub id
    snac: str = f"./{DEFAULT_WEIGHTS_DIR / SNAC_SUBDIR}"
    # The checkpoint's voice names, the first the default; None: its voices.json, else the English
    # fine-tune's (voices.py).
    voices: tuple[str, ...] | None = None
    demo: bool = False  # build and use random weights of the real layout
    demo_seed: int = 0  # the demo's weights: checkpoints served side by side get different ones
    demo_dir: Path = Path.home() / ".cache" / "orpheus-local" / "demo"
    device: str | None = None  # None: cuda when present, else cpu
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu
    backend: str = "engine"  # "engine" (batched) or "reference" (transformers generate)
    max_slots: int | None = None  # concurrent sequences in the KV cache; None: derived from memory
    max_prompt_tokens: int = 512
    # Room for a cloned voice's reference turn before a prompt's max_prompt_tokens; 0: no cloned
    # voices. The Synthesizer sets REFERENCE_TOKENS for a checkpoint that clones.
    max_reference_tokens: int = 0
    # Reference turns whose keys and values are kept between requests (LRU), in tokens.
    prefix_cache_tokens: int = 4 * REFERENCE_TOKENS
    max_new_tokens: int = 2000
    max_queue: int = 256  # requests waiting for a slot before new ones get 429
    cuda_graphs: bool = True
    # Benchmarks of the host side only: no model and no codec, each engine step sleeps this long
    # (engine/simulated.py, audio/simulated.py); the tokenizer comes from the demo checkpoint.
    simulated_step_ms: float | None = None

    def resolved_device(self) -> str:
        return self.device or default_device()

    def resolved_dtype(self) -> str:
        return self.dtype or default_dtype(self.resolved_device())
