"""Several checkpoints served side by side: each its own Synthesizer (tokenizer, engine thread and
codec worker), loaded once the set is known to fit the device's memory.

On CUDA the set is measured before any weights are loaded (model/memory_plan.py): the weights from
their safetensors headers, a slot from the model's dims, against the free memory. Unless --max-slots
fixes the slots, each checkpoint gets an equal share of what is left. Elsewhere memory is the
host's, with no device limit to check: every engine takes its fixed CPU slot count.
"""

from __future__ import annotations

import dataclasses
import logging

from orpheus_local.config import EngineConfig
from orpheus_local.model.kv_cache import CUDA_RESERVE_BYTES
from orpheus_local.model.memory_plan import CheckpointNeed, plan_slots
from orpheus_local.pipeline.synthesizer import (
    Synthesizer,
    checkpoint_dirs,
    served_voices,
    with_reference_room,
)
from orpheus_local.weights.checkpoint import load_config
from orpheus_local.weights.sizes import parameter_count

log = logging.getLogger(__name__)


def load_checkpoints(configs: dict[str, EngineConfig]) -> dict[str, Synthesizer]:
    """name -> its started Synthesizer, in the order given. DoesNotFit (a CheckpointError) when the
    set does not fit the device; what was loaded before a failure is closed again."""
    dirs = {name: checkpoint_dirs(config) for name, config in configs.items()}
    configs = _with_slots(configs, dirs)
    loaded: dict[str, Synthesizer] = {}
    try:
        for name, config in configs.items():
            loaded[name] = Synthesizer.load_from(config, *dirs[name])
            log.info("checkpoint %s loaded", name)
    except BaseException:
        for synth in loaded.values():
            synth.close()
        raise
    return loaded


def _with_slots(configs: dict[str, EngineConfig], dirs: dict) -> dict[str, EngineConfig]:
    """configs with each one's slot count from the memory plan on CUDA; unchanged elsewhere."""
    device = next(iter(configs.values())).resolved_device()
    if not device.startswith("cuda"):
        log.info("serving %d checkpoints on %s: no device memory limit to check", len(configs), device)
        return configs
    import torch

    needs = [checkpoint_need(name, config, dirs[name][0]) for name, config in configs.items()]
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    slots = plan_slots(needs, free, next(iter(configs.values())).max_slots)
    for need in needs:
        log.info("%s: %s", device, need.describe(slots[need.name]))
    return {name: dataclasses.replace(config, max_slots=slots[name]) for name, config in configs.items()}


def checkpoint_need(name: str, config: EngineConfig, model_dir) -> CheckpointNeed:
    """What serving the checkpoint in model_dir takes on the device, as the engine will allocate it."""
    import torch

    from orpheus_local.model.kv_cache import bytes_per_token
    from orpheus_local.model.llama import LlamaConfig

    dtype = getattr(torch, config.resolved_dtype())
    config = with_reference_room(config, served_voices(config, model_dir))
    per_token = bytes_per_token(LlamaConfig.from_dict(load_config(model_dir)), dtype)
    max_len = config.max_reference_tokens + config.max_prompt_tokens + config.max_new_tokens
    prefix_tokens = config.prefix_cache_tokens if config.max_reference_tokens else 0  # as the runner keeps it
    return CheckpointNeed(name, parameter_count(model_dir) * dtype.itemsize, per_token * max_len,
                          CUDA_RESERVE_BYTES + prefix_tokens * per_token)
