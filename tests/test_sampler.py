"""Batched constrained sampling: valid ids per frame position, transformers' warpers, seeded draws."""

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from orpheus_local import tokens as fmt
from orpheus_local.model import Sampler
from orpheus_local.model.sampler import COLUMNS, STOP_COLUMN

PARAMS = dict(temperature=1.0, top_p=1.0, repetition_penalty=1.0)


def request_logits(request: int, step: int) -> torch.Tensor:
    """[4097] logits that depend only on the request and the step, never on the batch."""
    gen = torch.Generator().manual_seed(1000 * request + step)
    return torch.randn(COLUMNS, generator=gen) * 2


def run(sampler, slot_of, steps, shuffle=None):
    """Sample `steps` ids for requests {request: slot}, rows in a fresh order each step when shuffled."""
    out = {request: [] for request in slot_of}
    for step in range(steps):
        requests = list(slot_of)
        if shuffle is not None:
            requests = [requests[i] for i in torch.randperm(len(requests), generator=shuffle)]
        slots = torch.tensor([slot_of[r] for r in requests])
        logits = torch.stack([request_logits(r, step) for r in requests])
        ids = sampler.sample(logits, slots, sampler.frame_positions(slots))
        for request, token in zip(requests, ids.tolist()):
            out[request].append(token)
    return out


def test_ids_follow_the_frame_layout():
    sampler = Sampler(8)
    slots = torch.arange(8)
    for slot in range(8):
        sampler.reset(slot, temperature=0.6 + 0.1 * slot, top_p=0.9, repetition_penalty=1.1, seed=slot)
    gen = torch.Generator().manual_seed(0)
    stops = 0
    for step in range(21):
        frame_pos = sampler.frame_positions(slots)
        assert frame_pos.tolist() == [step % 7] * 8
        logits = torch.randn(8, COLUMNS, generator=gen)
        logits[::2, STOP_COLUMN] = 50.0  # a stop that wins whenever it is allowed
        ids = sampler.sample(logits, slots, frame_pos).tolist()
        for row, (token, p) in enumerate(zip(ids, frame_pos.tolist())):
            if token == fmt.END_OF_SPEECH:
                assert p == 0
                stops += 1
            else:
                lo, hi = fmt.position_range(p)
                assert lo <= token < hi
                assert not (row % 2 == 0 and p == 0)
    assert stops == 4 * 3


def test_small_top_p_keeps_only_the_argmax():
    slots = torch.arange(64)
    logits = torch.randn(64, COLUMNS, generator=torch.Generator().manual_seed(1))
    logits[:, 77] = 8.5  # the argmax, with about 40% of the mass
    frame_pos = torch.zeros(64, dtype=torch.long)
    picked = {}
    for top_p in (0.1, 1.0):
        sampler = Sampler(64)
        for slot in range(64):
            sampler.reset(slot, temperature=1.0, top_p=top_p, repetition_penalty=1.0, seed=slot)
        picked[top_p] = sampler.sample(logits, slots, frame_pos)
    assert (picked[0.1] == fmt.AUDIO_BASE + 77).all()
    assert (picked[1.0] != fmt.AUDIO_BASE + 77).sum() > 20


@pytest.mark.parametrize("temperature,top_p", [(0.5, 1.0), (1.5, 1.0), (1.0, 0.7)])
def test_draws_follow_the_warped_distribution(temperature, top_p):
    slots, steps = 200, 20
    logits = torch.full((slots, COLUMNS), -30.0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits[:, :4] = probs.log()
    sampler = Sampler(slots)
    for slot in range(slots):
        sampler.reset(slot, temperature=temperature, top_p=top_p, repetition_penalty=1.0, seed=slot)
    all_slots, frame_pos = torch.arange(slots), torch.zeros(slots, dtype=torch.long)
    ids = torch.cat([sampler.sample(logits, all_slots, frame_pos) for _ in range(steps)])
    counts = torch.bincount(ids - fmt.AUDIO_BASE, minlength=COLUMNS).float()
    freq = counts / counts.sum()

    expected = torch.softmax(probs.log() / temperature, dim=0)
    if top_p < 1.0:  # the two most likely ids hold 0.8 of the mass
        expected = torch.tensor([0.625, 0.375, 0.0, 0.0])
    torch.testing.assert_close(freq[:4], expected, rtol=0, atol=0.03)
    assert counts[4:].sum() == 0


def test_warp_matches_transformers_processors():
    """Penalty over prompt and generated ids, then temperature, then top-p, as transformers does."""
    rows = 4
    settings = [(1.3, 0.9, 1.1), (0.7, 1.0, 1.5), (1.0, 0.5, 1.0), (0.6, 0.95, 2.0)]
    gen = torch.Generator().manual_seed(2)
    sampler = Sampler(6)
    slots = torch.tensor([4, 0, 5, 2])
    history = []
    for slot, (temperature, top_p, penalty) in zip(slots.tolist(), settings):
        # Text ids, start_of_speech, and the audio / stop ids a prompt might carry.
        prompt = torch.randint(0, fmt.BEGIN_OF_TEXT, (20,), generator=gen).tolist()
        prompt += [fmt.START_OF_SPEECH, fmt.END_OF_SPEECH, fmt.AUDIO_BASE + 3, fmt.AUDIO_BASE + 4096 + 9]
        sampler.reset(slot, temperature=temperature, top_p=top_p, repetition_penalty=penalty, seed=slot,
                      prompt_ids=prompt)
        history.append(prompt)
    # Generated ids count too: sample peaked logits so later steps see their own earlier picks.
    for _ in range(9):
        frame_pos = sampler.frame_positions(slots)
        logits = torch.randn(rows, COLUMNS, generator=gen)
        logits[:, :64] += 6.0
        for row, token in enumerate(sampler.sample(logits, slots, frame_pos).tolist()):
            history[row].append(token)

    for frame_pos in (sampler.frame_positions(slots), torch.tensor([0, 3, 0, 6])):
        logits = torch.randn(rows, COLUMNS, generator=gen)
        logits[:, :64] += 4.0
        got = sampler.warp(logits, slots, frame_pos)
        for row, (temperature, top_p, penalty) in enumerate(settings):
            p = int(frame_pos[row])
            lo, hi = fmt.position_range(p)
            full = torch.full((1, fmt.VOCAB_SIZE), float("-inf"))
            full[0, lo:hi] = logits[row, :-1]
            if p == 0:
                full[0, fmt.END_OF_SPEECH] = logits[row, -1]
            ids = torch.tensor([history[row]])
            full = RepetitionPenaltyLogitsProcessor(penalty)(ids, full)
            full = TemperatureLogitsWarper(temperature)(ids, full)
            full = TopPLogitsWarper(top_p)(ids, full)
            want = torch.cat([full[0, lo:hi], full[0, fmt.END_OF_SPEECH : fmt.END_OF_SPEECH + 1]])
            torch.testing.assert_close(got[row], want, rtol=1e-6, atol=0)


def test_same_seed_same_ids_in_any_batch():
    alone = Sampler(1)
    alone.reset(0, seed=1234, **PARAMS)
    expected = run(alone, {7: 0}, steps=30)[7]

    crowded = Sampler(8)
    slot_of = {request: slot for request, slot in zip(range(8), [3, 6, 0, 1, 7, 2, 4, 5])}
    for request, slot in slot_of.items():
        crowded.reset(slot, seed=1234 if request == 7 else request, **PARAMS)
    got = run(crowded, slot_of, steps=30, shuffle=torch.Generator().manual_seed(0))
    assert got[7] == expected


def test_different_seeds_give_different_ids():
    sampler = Sampler(2)
    sampler.reset(0, seed=1, **PARAMS)
    sampler.reset(1, seed=2, **PARAMS)
    # Both slots see the same logits each step: only the seed tells them apart.
    slots = torch.arange(2)
    ids = []
    for step in range(20):
        logits = request_logits(0, step).expand(2, COLUMNS)
        ids.append(sampler.sample(logits, slots, sampler.frame_positions(slots)))
    ids = torch.stack(ids)
    assert (ids[:, 0] != ids[:, 1]).sum() > 15
