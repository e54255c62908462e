"""Several checkpoints on one device: does the set fit, and how many KV slots each gets.

Pure arithmetic on byte counts (the loader measures them: weights from the safetensors headers, a
slot from the model's dims), so the rule is tested with numbers and no GPU. Each checkpoint needs
its weights, its fixed share (the reserve for activations, its codec and CUDA graphs, and the prefix
cache of a checkpoint that clones) and at least one slot. Unless the slots are fixed, the memory
left over is divided equally among the checkpoints: the first loaded must not take it all.
"""

from __future__ import annotations

from dataclasses import dataclass

from orpheus_local.model.kv_cache import MAX_SLOTS
from orpheus_local.weights.checkpoint import CheckpointError

GIB = 1 << 30


class DoesNotFit(CheckpointError):
    """The checkpoints together need more device memory than is free; the message lists each one's need."""


@dataclass(frozen=True)
class CheckpointNeed:
    name: str
    weight_bytes: int
    slot_bytes: int  # one slot's keys and values over its whole length
    fixed_bytes: int  # reserve and prefix cache

    def bytes_for(self, slots: int) -> int:
        return self.weight_bytes + self.fixed_bytes + slots * self.slot_bytes

    def describe(self, slots: int) -> str:
        return (f"{self.name} needs {_gib(self.bytes_for(slots))} GiB ({_gib(self.weight_bytes)} weights, "
                f"{_gib(slots * self.slot_bytes)} KV cache for {slots} slot{'s' if slots != 1 else ''}, "
                f"{_gib(self.fixed_bytes)} reserve)")


def plan_slots(needs: list[CheckpointNeed], free_bytes: int, max_slots: int | None = None,
               most: int = MAX_SLOTS) -> dict[str, int]:
    """Each checkpoint's slot count: max_slots when given, else an equal share of the memory left
    after every checkpoint's weights and fixed share (at least 1, at most `most`). DoesNotFit when
    the set needs more than free_bytes."""
    wanted = max_slots or 1
    needed = sum(need.bytes_for(wanted) for need in needs)
    if needed > free_bytes:
        each = "; ".join(need.describe(wanted) for need in needs)
        raise DoesNotFit(f"the {len(needs)} checkpoints need {_gib(needed)} GiB together and the device has "
                         f"{_gib(free_bytes)} GiB free: {each}. Serve fewer checkpoints, a smaller dtype, or "
                         "lower --max-slots")
    if max_slots is not None:
        return {need.name: max_slots for need in needs}
    share = (free_bytes - sum(need.bytes_for(0) for need in needs)) // len(needs)
    return {need.name: max(1, min(most, share // need.slot_bytes)) for need in needs}


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"
