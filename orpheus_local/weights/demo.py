"""Random-weight stand-ins in the real checkpoint layout, built deterministically from a seed.

The demo model has the real vocabulary size and special ids, tiny Llama dims and a byte-level
tokenizer that maps text to ids below 128000; the demo codec is SNAC with the real 24 kHz config.
Both are saved exactly as the real checkpoints are, so --demo runs the loader a real checkpoint runs.
Random weights produce noise, not speech.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from orpheus_local import tokens as fmt

SNAC_24KHZ_CONFIG = {
    "sampling_rate": 24000, "encoder_dim": 48, "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024, "decoder_rates": [8, 8, 4, 2], "attn_window_size": None,
    "codebook_size": 4096, "codebook_dim": 8, "vq_strides": [4, 2, 1],
    "noise": True, "depthwise": True,
}

# Llama dims. "tiny" for tests and --demo; "mini" for CPU benchmarks; "real" is Orpheus 3B's shape.
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "mini": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=2),
    "real": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                 num_attention_heads=24, num_key_value_heads=8),
}

SPECIAL_TOKENS = {
    "<|begin_of_text|>": fmt.BEGIN_OF_TEXT,
    "<|eot_id|>": fmt.END_OF_TEXT,
    **{f"<custom_token_{n}>": 128256 + n for n in range(10)},
}


def config_dict(shape: str = "tiny", dtype: str = "float32") -> dict:
    """config.json as the published Orpheus checkpoint writes it (rope_theta + rope_scaling keys)."""
    dims = SHAPES[shape]
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": fmt.VOCAB_SIZE, **dims, "head_dim": dims["hidden_size"] // dims["num_attention_heads"],
        "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
        "bos_token_id": fmt.BEGIN_OF_TEXT, "eos_token_id": fmt.END_OF_SPEECH, "pad_token_id": fmt.PAD,
        "torch_dtype": dtype,
    }


def llama_config(shape: str = "tiny"):
    from transformers import LlamaConfig

    return LlamaConfig(**{k: v for k, v in config_dict(shape).items() if k not in ("architectures", "model_type", "torch_dtype")})


def build_tokenizer():
    """Byte-level BPE (no merges) over ids 0..255, BOS prepended, the special ids where Orpheus has them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update(SPECIAL_TOKENS)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", fmt.BEGIN_OF_TEXT)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<custom_token_7>",
    )


def random_llama_weights(config, seed: int, dtype, device: str = "cpu") -> dict:
    """Hugging Face Llama tensor names -> random tensors (normal, std 0.02; norms at 1)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    h, inter, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads * config.head_dim

    def normal(*shape):
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float32) * 0.02).to(dtype)

    weights = {"model.embed_tokens.weight": normal(config.vocab_size, h),
               "model.norm.weight": torch.ones(h, dtype=dtype, device=device)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        weights.update({
            p + "self_attn.q_proj.weight": normal(config.num_attention_heads * config.head_dim, h),
            p + "self_attn.k_proj.weight": normal(kv, h),
            p + "self_attn.v_proj.weight": normal(kv, h),
            p + "self_attn.o_proj.weight": normal(h, config.num_attention_heads * config.head_dim),
            p + "mlp.gate_proj.weight": normal(inter, h),
            p + "mlp.up_proj.weight": normal(inter, h),
            p + "mlp.down_proj.weight": normal(h, inter),
            p + "input_layernorm.weight": torch.ones(h, dtype=dtype, device=device),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=dtype, device=device),
        })
    return weights


def build_demo_model(dest: Path, seed: int = 0, shape: str = "tiny", dtype: str = "float32", device: str = "cpu") -> Path:
    """Save a random-weight Orpheus-layout checkpoint (config, safetensors, tokenizer) to dest.

    Tensors are drawn directly (no model object), so even the real 3B shape builds in seconds on a GPU.
    """
    import torch
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = llama_config(shape)
    weights = random_llama_weights(config, seed, getattr(torch, dtype), device)
    save_file({k: v.cpu().contiguous() for k, v in weights.items()}, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(config_dict(shape, dtype), indent=2))
    build_tokenizer().save_pretrained(str(dest))
    return dest


def build_demo_snac(dest: Path, seed: int = 0) -> Path:
    import torch
    from snac import SNAC

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = SNAC(**SNAC_24KHZ_CONFIG)
    (dest / "config.json").write_text(json.dumps(SNAC_24KHZ_CONFIG, indent=2))
    torch.save(model.state_dict(), str(dest / "pytorch_model.bin"))
    return dest


def build_demo_checkpoint(root: Path, seed: int = 0, shape: str = "tiny") -> tuple[Path, Path]:
    """root/model and root/snac, built once: an existing complete build is reused."""
    from orpheus_local.weights.checkpoint import missing_model_files, missing_snac_files

    root = Path(root)
    model_dir, snac_dir = root / f"orpheus-{shape}-seed{seed}", root / f"snac-seed{seed}"
    if not model_dir.is_dir() or missing_model_files(model_dir):
        build_demo_model(model_dir, seed, shape)
    if not snac_dir.is_dir() or missing_snac_files(snac_dir):
        build_demo_snac(snac_dir, seed)
    return model_dir, snac_dir


def demo_seed(name: str) -> int:
    """The seed of the demo checkpoint served as name: the same on every start, another for another name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
