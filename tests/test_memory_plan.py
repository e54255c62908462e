"""Several checkpoints on one device: the arithmetic that refuses a set that does not fit and
divides the free memory among the rest, with numbers (no GPU), and the weights' size read from
safetensors headers."""

from __future__ import annotations

import logging

import pytest
from safetensors.torch import load_file

from orpheus_local.config import EngineConfig
from orpheus_local.model.memory_plan import GIB, CheckpointNeed, DoesNotFit, plan_slots
from orpheus_local.pipeline.checkpoint_set import _with_slots, checkpoint_need
from orpheus_local.tokens import VOCAB_SIZE
from orpheus_local.weights.checkpoint import CheckpointError
from orpheus_local.weights.demo import SHAPES
from orpheus_local.weights.sizes import parameter_count

BIG = CheckpointNeed("big", weight_bytes=6 * GIB, slot_bytes=GIB, fixed_bytes=2 * GIB)
SMALL = CheckpointNeed("small", weight_bytes=2 * GIB, slot_bytes=GIB // 2, fixed_bytes=2 * GIB)


def test_without_max_slots_the_memory_left_is_shared_equally():
    # 20 GiB free - (6 + 2) - (2 + 2) = 8 GiB left: 4 GiB each, 4 slots of 1 GiB and 8 of 0.5 GiB.
    assert plan_slots([BIG, SMALL], free_bytes=20 * GIB) == {"big": 4, "small": 8}


def test_a_share_never_gives_fewer_than_one_slot_or_more_than_the_most():
    assert plan_slots([BIG, SMALL], free_bytes=13 * GIB + GIB // 2) == {"big": 1, "small": 1}
    assert plan_slots([BIG, SMALL], free_bytes=1000 * GIB, most=16) == {"big": 16, "small": 16}


def test_max_slots_is_given_to_each_checkpoint_when_the_set_fits():
    # (6 + 2 + 3) + (2 + 2 + 1.5) = 16.5 GiB
    assert plan_slots([BIG, SMALL], free_bytes=int(16.5 * GIB), max_slots=3) == {"big": 3, "small": 3}


def test_a_set_that_does_not_fit_is_refused_with_each_ones_need():
    with pytest.raises(DoesNotFit) as refused:
        plan_slots([BIG, SMALL], free_bytes=12 * GIB)
    assert str(refused.value).startswith(
        "the 2 checkpoints need 13.5 GiB together and the device has 12.0 GiB free: "
        "big needs 9.0 GiB (6.0 weights, 1.0 KV cache for 1 slot, 2.0 reserve); "
        "small needs 4.5 GiB (2.0 weights, 0.5 KV cache for 1 slot, 2.0 reserve).")
    assert isinstance(refused.value, CheckpointError)  # reported as a checkpoint that cannot be served


def test_max_slots_that_do_not_fit_are_refused_at_that_count():
    with pytest.raises(DoesNotFit, match=r"big needs 14\.0 GiB \(6\.0 weights, 6\.0 KV cache for 6 slots"):
        plan_slots([BIG, SMALL], free_bytes=20 * GIB, max_slots=6)


def test_the_parameter_count_comes_from_the_headers_alone(demo_dirs):
    model_dir, _ = demo_dirs
    tiny = SHAPES["tiny"]
    h, inter, layers = tiny["hidden_size"], tiny["intermediate_size"], tiny["num_hidden_layers"]
    kv = tiny["num_key_value_heads"] * h // tiny["num_attention_heads"]
    per_layer = 2 * h * h + 2 * kv * h + 3 * inter * h + 2 * h  # q, o; k, v; gate, up, down; two norms
    expected = sum(t.numel() for t in load_file(str(model_dir / "model.safetensors")).values())
    # the layers, the final norm and the embedding (tied to the output)
    assert parameter_count(model_dir) == expected == layers * per_layer + h + VOCAB_SIZE * h


def test_a_checkpoints_need_is_its_weights_a_slot_of_its_cache_and_the_reserve(demo_dirs):
    model_dir, _ = demo_dirs
    config = EngineConfig(model=str(model_dir), device="cuda", dtype="bfloat16")  # only measured, never loaded
    need = checkpoint_need("a", config, model_dir)
    tiny = SHAPES["tiny"]
    per_token = 2 * tiny["num_hidden_layers"] * tiny["num_key_value_heads"] * 16 * 2  # k and v, head_dim 16, 2 bytes
    assert need.weight_bytes == parameter_count(model_dir) * 2
    assert need.slot_bytes == per_token * (config.max_prompt_tokens + config.max_new_tokens)  # no clones: no room
    assert need.fixed_bytes == 2 * GIB


def test_on_cpu_there_is_no_device_limit_to_check(demo_dirs, caplog):
    configs = {"a": EngineConfig(device="cpu"), "b": EngineConfig(device="cpu")}
    with caplog.at_level(logging.INFO, logger="orpheus_local.pipeline.checkpoint_set"):
        assert _with_slots(configs, {name: demo_dirs for name in configs}) == configs
    assert "serving 2 checkpoints on cpu: no device memory limit to check" in caplog.text


def test_on_cuda_the_free_memory_decides_each_checkpoints_slots_or_refuses_the_set(demo_dirs, monkeypatch):
    configs = {"a": EngineConfig(device="cuda", dtype="bfloat16"), "b": EngineConfig(device="cuda", dtype="bfloat16")}
    dirs = {name: demo_dirs for name in configs}
    need = checkpoint_need("a", configs["a"], demo_dirs[0])
    free = 2 * need.bytes_for(0) + 2 * 10 * need.slot_bytes  # ten slots each once the weights and reserves are in
    monkeypatch.setattr("torch.cuda.mem_get_info", lambda device=None: (free, 8 * free))
    planned = _with_slots(configs, dirs)
    assert {name: config.max_slots for name, config in planned.items()} == {"a": 10, "b": 10}
    monkeypatch.setattr("torch.cuda.mem_get_info", lambda device=None: (need.bytes_for(1), 8 * free))
    with pytest.raises(DoesNotFit, match=r"the 2 checkpoints need 4\.\d GiB together .*: a needs 2\.\d GiB .*; b needs"):
        _with_slots(configs, dirs)
