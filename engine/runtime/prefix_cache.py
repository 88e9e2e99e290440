"""The paged KV block pool and its prefix cache, one object: match / admit / publish / release.

Full blocks are published under the key (parent node, the block's token ids): a radix tree over
blocks, compared exactly (no hash collisions). Blocks nobody references stay cached in LRU order
and are evicted only when a fresh block is needed.
"""
from __future__ import annotations

from collections import OrderedDict

from kojudge.runtime.sequence import Sequence
from kojudge.utils import ceil_div

ROOT = 0  # the node every sequence's first block hangs under
BlockKey = tuple[int, tuple[int, ...]]


class PrefixCache:
    def __init__(self, num_blocks: int, block_size: int, enabled: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enabled = enabled
        self._ref_count = [0] * num_blocks
        self._key: list[BlockKey | None] = [None] * num_blocks
        self._node = [ROOT] * num_blocks  # the node a cached block stands for
        # Unreferenced blocks, least recently used first.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._cache: dict[BlockKey, int] = {}
        self._next_node = ROOT + 1

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return ceil_div(num_tokens, self.block_size)

    def match(self, token_ids: list[int], max_tokens: int) -> list[int]:
        """Cached blocks covering the longest prefix of `token_ids` within `max_tokens`."""
        if not self.enabled:
            return []
        blocks = []
        node = ROOT
        bs = self.block_size
        for i in range(max_tokens // bs):
            block = self._cache.get((node, tuple(token_ids[i * bs: (i + 1) * bs])))
            if block is None:
                break
            blocks.append(block)
            node = self._node[block]
        return blocks

    def next_block_key(self, token_ids: list[int], hits: list[int]) -> BlockKey | None:
        """The key of the first block a sequence would compute after its cached `hits`, if that
        block is full: two sequences with the same key would compute the same block."""
        first = len(hits) * self.block_size
        if first + self.block_size > len(token_ids):
            return None
        parent = self._node[hits[-1]] if hits else ROOT
        return parent, tuple(token_ids[first: first + self.block_size])

    def can_admit(self, hits: list[int], new_blocks: int) -> bool:
        """Whether claiming `hits` (some may sit in the free list) leaves `new_blocks` to
        allocate."""
        hits_in_free_list = sum(1 for b in hits if self._ref_count[b] == 0)
        return new_blocks + hits_in_free_list <= self.num_free

    def admit(self, seq: Sequence, hits: list[int]) -> None:
        """Start `seq` on its cached blocks: they are claimed and count as computed."""
        for block in hits:
            if self._ref_count[block] == 0:
                del self._free[block]
            self._ref_count[block] += 1
        seq.block_table = list(hits)
        seq.num_computed = len(hits) * self.block_size
        seq.num_published_blocks = len(hits)
        seq.prefix_node = self._node[hits[-1]] if hits else ROOT

    def allocate(self, count: int) -> list[int]:
        """`count` fresh blocks, each evicting the least recently used cached block it held."""
        blocks = []
        for _ in range(count):
            block, _ = self._free.popitem(last=False)
            if self._key[block] is not None:
                del self._cache[self._key[block]]
                self._key[block] = None
            self._ref_count[block] = 1
            blocks.append(block)
        return blocks

    def publish(self, seq: Sequence) -> None:
        """Publish the blocks `seq` has newly filled, so later prompts can start on them."""
        if not self.enabled:
            return
        bs = self.block_size
        full = seq.num_computed // bs
        for b in range(seq.num_published_blocks, full):
            seq.prefix_node = self._publish(seq.block_table[b], seq.prefix_node,
                                            seq.token_ids[b * bs: (b + 1) * bs])
        seq.num_published_blocks = max(seq.num_published_blocks, full)

    def _publish(self, block: int, parent: int, token_ids: list[int]) -> int:
        """-> the node id the block's successors hang under."""
        key = (parent, tuple(token_ids))
        existing = self._cache.get(key)
        if existing is not None:  # the same content computed twice (siblings prefilled together)
            return self._node[existing]
        self._cache[key] = block
        self._key[block] = key
        self._node[block] = self._next_node
        self._next_node += 1
        return self._node[block]

    def release(self, seq: Sequence) -> None:
        """Drop `seq`'s blocks (finished or preempted); the published ones stay cached."""
        # Tail blocks go in first so they are evicted before the prefixes others may share.
        for block in reversed(seq.block_table):
            self._ref_count[block] -= 1
            if self._ref_count[block] == 0:
                self._free[block] = None
        seq.block_table = []
        seq.num_published_blocks = 0
        seq.prefix_node = ROOT

    def clear(self) -> None:
        """Forget every cached block (their keys and values are stale once the weights change)."""
        self._cache.clear()
        self._key = [None] * self.num_blocks
