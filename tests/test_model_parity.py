"""The serving Llama against transformers' LlamaForCausalLM on the same random weights; KV cache sizing."""

import pytest
import torch

from orpheus_local import tokens as fmt
from orpheus_local.model import (
    KVCache,
    LlamaConfig,
    bytes_per_token,
    default_slot_count,
)
from orpheus_local.model.llama import rope_inv_freq
from orpheus_local.model.loader import load_llama
from orpheus_local.weights.demo import build_demo_model, llama_config

ATOL = 1e-4
DECODE_STEPS = 50


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_demo_model(tmp_path_factory.mktemp("tiny-llama"), seed=1, shape="tiny")


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_llama(tiny_model_dir, "cpu", torch.float32)


def random_ids(gen, n, lo=0, hi=fmt.BEGIN_OF_TEXT):
    return torch.randint(lo, hi, (n,), generator=gen).tolist()


def make_prompt(gen, n):
    """Text ids wrapped in the Orpheus prompt layout."""
    return [fmt.START_OF_HUMAN, fmt.BEGIN_OF_TEXT, *random_ids(gen, n), *fmt.PROMPT_SUFFIX]


def hf_logits(hf_model, prompt, continuation):
    """Last-token logits after the prompt, then after each continuation id: [1 + len(continuation), V]."""
    with torch.no_grad():
        out = hf_model(torch.tensor([prompt]), use_cache=True)
        rows, past = [out.logits[0, -1]], out.past_key_values
        for token in continuation:
            out = hf_model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            rows.append(out.logits[0, -1])
            past = out.past_key_values
    return torch.stack(rows)


def prefill_padded(model, cache, prompts, slots, starts=None, kv_len=None):
    lengths = [len(p) for p in prompts]
    tokens = torch.full((len(prompts), max(lengths)), fmt.PAD)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt)
    starts = torch.zeros(len(prompts), dtype=torch.long) if starts is None else torch.tensor(starts)
    return model.prefill(cache, tokens, torch.tensor(slots), starts, torch.tensor(lengths), kv_len)


def test_rope_frequencies_match_transformers():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    for shape in ("tiny", "real"):
        hf_config = llama_config(shape)
        ours = rope_inv_freq(LlamaConfig.from_dict(hf_config.to_dict()))
        torch.testing.assert_close(ours, LlamaRotaryEmbedding(hf_config).inv_freq, rtol=0, atol=0)


def test_config_reads_both_rope_layouts():
    legacy = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": fmt.VOCAB_SIZE, "rope_theta": 500000.0,
              "tie_word_embeddings": True,
              "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    assert LlamaConfig.from_dict(legacy) == LlamaConfig.from_dict(llama_config("tiny").to_dict())


def test_single_slot_prefill_and_decode_match_transformers(model, hf_model):
    gen = torch.Generator().manual_seed(0)
    prompt = make_prompt(gen, 15)
    continuation = random_ids(gen, DECODE_STEPS, fmt.AUDIO_BASE, fmt.AUDIO_LAST + 1)
    expected = hf_logits(hf_model, prompt, continuation)

    cache = KVCache(model.config, slots=3, max_len=96)
    got = [model.logits(prefill_padded(model, cache, [prompt], [1]))[0]]
    for step, token in enumerate(continuation):
        position = torch.tensor([len(prompt) + step])
        hidden = model.decode(cache, torch.tensor([token]), position, torch.tensor([1]))
        got.append(model.logits(hidden)[0])
    torch.testing.assert_close(torch.stack(got), expected, rtol=0, atol=ATOL)


@pytest.fixture(scope="module")
def four_requests(hf_model):
    """Prompts of different lengths, their continuations, and transformers' logits for each."""
    gen = torch.Generator().manual_seed(1)
    prompts = [make_prompt(gen, n) for n in (3, 19, 9, 12)]
    continuations = [random_ids(gen, DECODE_STEPS, fmt.AUDIO_BASE, fmt.AUDIO_LAST + 1) for _ in prompts]
    return prompts, continuations, [hf_logits(hf_model, p, c) for p, c in zip(prompts, continuations)]


@pytest.mark.parametrize("in_place", [False, True], ids=["gathered-slots", "slots-in-place"])
def test_slots_of_different_lengths_decode_together(model, four_requests, in_place):
    prompts, continuations, expected = four_requests
    slots = [0, 1, 2, 3] if in_place else [5, 0, 3, 6]
    cache = KVCache(model.config, slots=8, max_len=128)
    hidden = prefill_padded(model, cache, prompts, slots, kv_len=32)
    got = [model.logits(hidden)]
    positions = torch.tensor([len(p) for p in prompts])
    for step in range(DECODE_STEPS):
        tokens = torch.tensor([c[step] for c in continuations])
        # kv_len a bucket above every position, as a runner would pass it.
        kv_len = 64 * (int(positions.max()) // 64 + 1)
        hidden = model.decode(cache, tokens, positions, None if in_place else torch.tensor(slots), kv_len)
        got.append(model.logits(hidden))
        positions = positions + 1
    got = torch.stack(got, dim=1)  # [slots, steps, V]
    for row, want in enumerate(expected):
        torch.testing.assert_close(got[row], want, rtol=0, atol=ATOL)


def test_prefill_in_chunks_continues_a_slot(model, hf_model):
    gen = torch.Generator().manual_seed(2)
    prompts = [make_prompt(gen, 20), make_prompt(gen, 11)]
    expected = torch.stack([hf_logits(hf_model, p, [])[0] for p in prompts])

    cache = KVCache(model.config, slots=2, max_len=64)
    split = [10, 4]
    prefill_padded(model, cache, [p[:k] for p, k in zip(prompts, split)], [1, 0])
    hidden = prefill_padded(model, cache, [p[k:] for p, k in zip(prompts, split)], [1, 0], starts=split)
    torch.testing.assert_close(model.logits(hidden), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("rows", [3, 9], ids=["gathered-weights", "all-blocks"])
def test_audio_logits_are_the_full_vocabulary_columns(model, rows):
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(rows, model.config.hidden_size, generator=gen)
    frame_pos = torch.randint(0, fmt.FRAME_TOKENS, (rows,), generator=gen)
    full = model.logits(hidden)
    got = model.audio_logits(hidden, frame_pos)
    assert got.shape == (rows, fmt.CODEBOOK_SIZE + 1)
    for row, p in enumerate(frame_pos.tolist()):
        lo, hi = fmt.position_range(p)
        torch.testing.assert_close(got[row, :-1], full[row, lo:hi], rtol=0, atol=1e-5)
        torch.testing.assert_close(got[row, -1], full[row, fmt.END_OF_SPEECH], rtol=0, atol=1e-5)


def test_kv_cache_is_sized_from_slots_and_request_length():
    config = LlamaConfig.from_dict(llama_config("tiny").to_dict())
    cache = KVCache(config, slots=5, max_len=512 + 2000)
    assert cache.k.shape == (2, 5, 2, 2512, 16) and cache.v.shape == cache.k.shape
    assert (cache.slots, cache.max_len) == (5, 2512)
    assert cache.nbytes == 5 * 2512 * bytes_per_token(config, torch.float32)


def test_real_shape_bytes_per_token_and_slot_count(monkeypatch):
    config = LlamaConfig.from_dict(llama_config("real").to_dict())
    assert bytes_per_token(config, torch.bfloat16) == 114_688  # orpheus-format.md section 5
    assert default_slot_count(config, 2512, "cpu", torch.bfloat16) == 8

    per_slot = 114_688 * 2512
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * per_slot + (2 << 30), 80 << 30))
    assert default_slot_count(config, 2512, "cuda", torch.bfloat16) == 10
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 30, 80 << 30))
    assert default_slot_count(config, 2512, "cuda", torch.bfloat16) == 1
