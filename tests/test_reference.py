"""The transformers reference path: constrained sampling, forced length, seeds."""

import pytest
import torch

from orpheus_local import tokens as fmt
from orpheus_local.params import SynthesisParams
from orpheus_local.reference.generator import FrameConstraint, ReferenceGenerator
from orpheus_local.weights.checkpoint import load_tokenizer


@pytest.fixture(scope="module")
def generator(demo_dirs):
    return ReferenceGenerator.load(demo_dirs[0], "cpu", "float32")


@pytest.fixture(scope="module")
def prompt(demo_dirs):
    return fmt.build_prompt(load_tokenizer(demo_dirs[0]), "Hello <laugh> world", "tara")


def assert_valid_audio_stream(ids):
    for k, token in enumerate(ids):
        if token == fmt.END_OF_SPEECH:
            assert k % 7 == 0 and k == len(ids) - 1
            continue
        lo, hi = fmt.position_range(k % 7)
        assert lo <= token < hi, f"id {token} at step {k}"


def test_frame_constraint_masks_everything_else(prompt):
    scores = torch.randn(1, fmt.VOCAB_SIZE)
    for k in range(14):
        ids = torch.zeros(1, len(prompt) + k, dtype=torch.long)
        out = FrameConstraint(len(prompt))(ids, scores.clone())
        allowed = torch.isfinite(out[0]).nonzero().flatten().tolist()
        lo, hi = fmt.position_range(k % 7)
        expected = list(range(lo, hi)) + ([fmt.END_OF_SPEECH] if k % 7 == 0 else [])
        assert sorted(allowed) == sorted(expected)


def test_hot_sampling_stays_inside_the_frame_layout(generator, prompt):
    for seed in range(3):
        params = SynthesisParams(text="x", temperature=1.5, top_p=1.0, max_new_tokens=140, seed=seed)
        ids = generator.generate(prompt, params)
        assert len(ids) % 7 == 0
        assert_valid_audio_stream(ids)


def test_stop_token_ends_generation_only_at_a_frame_boundary(generator, prompt):
    # Make end_of_speech overwhelmingly likely: it may then only appear at step 0 (a frame boundary).
    bias = torch.zeros(fmt.VOCAB_SIZE)
    bias[fmt.END_OF_SPEECH] = 1e4
    head = generator.model.get_output_embeddings()
    saved = head.bias
    head.bias = torch.nn.Parameter(bias)
    try:
        ids = generator.generate(prompt, SynthesisParams(text="x", max_new_tokens=100, seed=1))
    finally:
        head.bias = saved
    assert ids == []  # stopped at the first boundary, nothing else emitted


def test_forced_length_stops_exactly_at_max_new_tokens(generator, prompt):
    params = SynthesisParams(text="x", max_new_tokens=103, seed=5)
    streamed = []

    class Collect:
        def put(self, value):
            streamed.append(value.reshape(-1).tolist())

        def end(self):
            pass

    ids = generator.generate(prompt, params, ignore_eos=True, streamer=Collect())
    generated = [t for chunk in streamed[1:] for t in chunk]
    assert len(generated) == 103
    assert_valid_audio_stream(generated)
    assert ids == generated[:98]  # the incomplete 15th frame is dropped


def test_same_seed_same_ids_different_seed_different_ids(generator, prompt):
    p = SynthesisParams(text="x", max_new_tokens=100, seed=42)
    a = generator.generate(prompt, p, ignore_eos=True)
    b = generator.generate(prompt, p, ignore_eos=True)
    c = generator.generate(prompt, p.replace(seed=43), ignore_eos=True)
    assert a == b and len(a) == 98
    assert a != c

