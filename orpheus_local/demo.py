"""Random-weight stand-ins in the real checkpoint layout, built deterministically from a seed.

The demo model has the real vocabulary size and special ids, tiny Llama dims and a byte-level
tokenizer that maps text to ids below 128000; the demo codec is SNAC with the real 24 kHz config.
Both are saved exactly as the real checkpoints are, so --demo runs the loader a real checkpoint runs.
Random weights produce noise, not speech.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import format as fmt

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


def llama_config(shape: str = "tiny", max_position_embeddings: int = 131072):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=fmt.VOCAB_SIZE, **SHAPES[shape], head_dim=SHAPES[shape]["hidden_size"] // SHAPES[shape]["num_attention_heads"],
        max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=True, bos_token_id=fmt.BEGIN_OF_TEXT, eos_token_id=fmt.END_OF_SPEECH,
        pad_token_id=fmt.PAD, torch_dtype="float32",
    )


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


def build_demo_model(dest: Path, seed: int = 0, shape: str = "tiny") -> Path:
    """Save a random-weight Orpheus-layout checkpoint (safetensors + tokenizer) to dest."""
    import torch
    from transformers import LlamaForCausalLM

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(shape))
    model.save_pretrained(str(dest), safe_serialization=True)
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
    from .checkpoint import missing_model_files, missing_snac_files

    root = Path(root)
    model_dir, snac_dir = root / f"orpheus-{shape}-seed{seed}", root / f"snac-seed{seed}"
    if not model_dir.is_dir() or missing_model_files(model_dir):
        build_demo_model(model_dir, seed, shape)
    if not snac_dir.is_dir() or missing_snac_files(snac_dir):
        build_demo_snac(snac_dir, seed)
    return model_dir, snac_dir
