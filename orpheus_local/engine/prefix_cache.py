"""PrefixCache: the keys and values of prompt prefixes that many requests share (a cloned voice's
reference turn, thousands of ids), so that each request prefills only what follows its prefix.

Keyed by the prefix's ids themselves: two prompts share an entry only when their prefixes are the
same ids, so an entry can never answer for another prefix. Bounded by the tokens it holds; the
least recently used entries go first. Owned by the thread that steps the engine.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor


class PrefixCache:
    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], tuple[Tensor, Tensor]] = OrderedDict()
        self.tokens = 0
        self.hits = 0
        self.misses = 0

    def get(self, prefix: tuple[int, ...]) -> tuple[Tensor, Tensor] | None:
        """(k, v), each [layers, kv_heads, len(prefix), head_dim], or None (counted as a miss)."""
        entry = self._entries.get(prefix)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(prefix)
        self.hits += 1
        return entry

    def put(self, prefix: tuple[int, ...], k: Tensor, v: Tensor) -> None:
        """Keep (k, v) for prefix, evicting the least recently used; one longer than the whole
        budget is not kept."""
        if len(prefix) > self.max_tokens or prefix in self._entries:
            return
        while self.tokens + len(prefix) > self.max_tokens:
            evicted, _ = self._entries.popitem(last=False)
            self.tokens -= len(evicted)
        self._entries[prefix] = (k, v)
        self.tokens += len(prefix)

    def __len__(self) -> int:
        return len(self._entries)
