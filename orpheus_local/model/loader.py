"""Loading a LlamaModel from a Hugging Face checkpoint: config.json and model.safetensors (or its
shards), q/k/v and gate/up fused, on the device and in the dtype it will run in."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from orpheus_local import tokens as fmt
from orpheus_local.model.llama import LlamaConfig, LlamaModel, rope_inv_freq
from orpheus_local.weights.checkpoint import CheckpointError, load_config

log = logging.getLogger(__name__)


def load_llama(model_dir: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | str = torch.bfloat16) -> LlamaModel:
    """The model of a checkpoint directory in the Hugging Face layout, ready for inference."""
    model_dir = Path(model_dir)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    config = LlamaConfig.from_dict(load_config(model_dir))
    if config.vocab_size <= fmt.AUDIO_LAST:
        raise CheckpointError(f"{model_dir}: vocabulary of {config.vocab_size} has no Orpheus audio ids")
    tensors = _Tensors(model_dir)
    if config.tie_word_embeddings and HEAD in tensors:
        # A head stored beside a "tied" config is what the weights were trained with (transformers
        # 5 loads it too); tying would silently replace it by the embedding table.
        log.info("%s: config.json says tie_word_embeddings, but %s stores %s: using the stored head",
                 model_dir, tensors.file(HEAD).name, HEAD)
        config = dataclasses.replace(config, tie_word_embeddings=False)
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = LlamaModel(config)
    model.load_state_dict(_load_state(tensors, config, device, dtype), assign=True)
    model.inv_freq = rope_inv_freq(config).to(device)
    return model.requires_grad_(False).eval()


HEAD = "lm_head.weight"


def _load_state(tensors: "_Tensors", config: LlamaConfig, device, dtype: torch.dtype) -> dict[str, Tensor]:
    """The model's state dict from Hugging Face tensor names, q/k/v and gate/up fused."""

    def load(*names: str) -> Tensor:
        parts = [tensors.read(name).to(device=device, dtype=dtype) for name in names]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    state = {"embed_tokens.weight": load("model.embed_tokens.weight"),
             "norm.weight": load("model.norm.weight")}
    if not config.tie_word_embeddings:
        head = load(HEAD)
        expected = (config.vocab_size, config.hidden_size)
        if tuple(head.shape) != expected:
            raise CheckpointError(f"{tensors.file(HEAD)}: {HEAD} has shape {list(head.shape)}, "
                                  f"expected {list(expected)} (vocab_size, hidden_size in config.json)")
        state["lm_head.weight"] = head
    for i in range(config.num_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        attn, mlp = src + "self_attn.", src + "mlp."
        state[dst + "input_layernorm.weight"] = load(src + "input_layernorm.weight")
        state[dst + "self_attn.qkv_proj.weight"] = load(*(attn + f"{p}_proj.weight" for p in "qkv"))
        state[dst + "self_attn.o_proj.weight"] = load(attn + "o_proj.weight")
        state[dst + "post_attention_layernorm.weight"] = load(src + "post_attention_layernorm.weight")
        state[dst + "mlp.gate_up_proj.weight"] = load(mlp + "gate_proj.weight", mlp + "up_proj.weight")
        state[dst + "mlp.down_proj.weight"] = load(mlp + "down_proj.weight")
    return state


class _Tensors:
    """A checkpoint's tensors by name, over model.safetensors or the shards its index lists."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            self._where = json.loads(index.read_text())["weight_map"]
        else:
            with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
                self._where = dict.fromkeys(f.keys(), "model.safetensors")
        self._files = {f: safe_open(str(model_dir / f), framework="pt", device="cpu")
                       for f in set(self._where.values())}

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def file(self, name: str) -> Path:
        return self.model_dir / self._where[name]

    def read(self, name: str) -> Tensor:
        """The tensor as stored, on the CPU."""
        if name not in self._where:
            raise CheckpointError(f"{self.model_dir}: checkpoint has no tensor {name!r}")
        return self._files[self._where[name]].get_tensor(name)
