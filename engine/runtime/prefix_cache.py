"""Paged KV block pool with prefix caching.

Full blocks are published under the key (parent node, the block's token ids): a radix tree over
blocks, compared exactly (no hash collisions). Blocks nobody references stay cached in LRU order and
are evicted only when a fresh block is needed.
"""
from __future__ import annotations

from collections import OrderedDict

ROOT = 0


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.key: list[tuple | None] = [None] * num_blocks
        self.node = [ROOT] * num_blocks  # node id a cached block stands for; children key on it
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))  # LRU first
        self.cache: dict[tuple, int] = {}
        self._next_node = ROOT + 1

    @property
    def num_free(self) -> int:
        return len(self.free)

    def match_prefix(self, token_ids: list[int], max_tokens: int) -> list[int]:
        """Cached blocks covering the longest prefix of `token_ids` within its first `max_tokens`."""
        if not self.enable_prefix_caching:
            return []
        blocks, node, bs = [], ROOT, self.block_size
        for i in range(max_tokens // bs):
            block = self.cache.get((node, tuple(token_ids[i * bs: (i + 1) * bs])))
            if block is None:
                break
            blocks.append(block)
            node = self.node[block]
        return blocks

    def claim(self, blocks: list[int]) -> None:
        for block in blocks:
            if self.ref_count[block] == 0:
                del self.free[block]
            self.ref_count[block] += 1

    def allocate(self) -> int:
        block, _ = self.free.popitem(last=False)
        if self.key[block] is not None:  # evict the least recently used cached block
            del self.cache[self.key[block]]
            self.key[block] = None
        self.ref_count[block] = 1
        return block

    def release(self, blocks: list[int]) -> None:
        # Tail blocks go in first so they are evicted before the prefixes others may share.
        for block in reversed(blocks):
            self.ref_count[block] -= 1
            if self.ref_count[block] == 0:
                self.free[block] = None

    def clear_cache(self) -> None:
        """Forget every cached block (their keys and values are stale once the weights change)."""
        self.cache.clear()
        self.key = [None] * self.num_blocks

    def register(self, block: int, parent: int, token_ids: list[int]) -> int:
        """Publish a full block; returns the node id its successor blocks hang under."""
        key = (parent, tuple(token_ids))
        existing = self.cache.get(key)
        if existing is not None:  # identical content computed twice (siblings prefilled together)
            return self.node[existing]
        self.cache[key] = block
        self.key[block] = key
        self.node[block] = self._next_node
        self._next_node += 1
        return self.node[block]
