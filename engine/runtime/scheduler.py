"""Continuous batching: each step packs running decodes and prefill chunks under a token budget.

Running sequences go first (oldest first). When the block pool runs dry the newest running sequence
is preempted: its blocks are released (full ones stay in the prefix cache) and it is recomputed later.
Waiting sequences join whenever budget, sequence slots and blocks allow, preferring the one whose
prompt has the longest cached prefix.
"""
from __future__ import annotations

from collections import deque
from itertools import islice

from kojudge.runtime.prefix_cache import ROOT, BlockPool
from kojudge.runtime.sequence import Sequence, Status


class Scheduler:
    LOOKAHEAD = 128  # waiting sequences examined for cached prefixes per step
    def __init__(self, pool: BlockPool, max_num_seqs: int, max_num_batched_tokens: int):
        self.pool = pool
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.cached_prompt_tokens = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _blocks_needed(self, seq: Sequence, num_new: int) -> int:
        total = -(-(seq.num_computed + num_new) // self.pool.block_size)
        return max(0, total - len(seq.block_table))

    def _grow(self, seq: Sequence, num_new: int) -> None:
        seq.block_table.extend(self.pool.allocate() for _ in range(self._blocks_needed(seq, num_new)))

    def _preempt(self, seq: Sequence) -> None:
        self.pool.release(seq.block_table)
        seq.block_table, seq.num_computed = [], 0
        seq.num_registered_blocks, seq.prefix_node = 0, ROOT
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _next_block_key(self, seq: Sequence, hits: list[int]) -> tuple | None:
        """Prefix-cache key of the first block this sequence would compute, if that block is full."""
        bs, first = self.pool.block_size, len(hits) * self.pool.block_size
        if first + bs > seq.num_tokens:
            return None
        return (self.pool.node[hits[-1]] if hits else ROOT, tuple(seq.token_ids[first: first + bs]))

    def schedule(self) -> list[tuple[Sequence, int]]:
        """Choose this step's work: (sequence, number of new tokens to compute)."""
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_uncomputed, budget)
            while self._blocks_needed(seq, num_new) > self.pool.num_free:
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                self._grow(seq, num_new)
                scheduled.append((seq, num_new))
                budget -= num_new
                i += 1
        if preempted or not self.waiting:
            return scheduled
        # Admission, cache-aware: a preempted sequence (at the front) first so it cannot starve; then the
        # longest cached prefix first (FIFO among equals); a sequence whose next block is being computed
        # by one admitted this step waits a step and then finds that block in the cache.
        candidates = list(islice(self.waiting, self.LOOKAHEAD))
        if candidates[0].num_tokens > candidates[0].num_prompt_tokens:
            candidates = candidates[:1]
        hits_of = {id(c): self.pool.match_prefix(c.token_ids, c.num_tokens - 1) for c in candidates}
        being_computed: set[tuple] = set()
        while candidates and budget > 0 and len(self.running) < self.max_num_seqs:
            ready = [c for c in candidates
                     if (key := self._next_block_key(c, hits_of[id(c)])) is None or key not in being_computed]
            if not ready:
                break
            seq = max(ready, key=lambda c: len(hits_of[id(c)]))  # first of the longest
            hits = self.pool.match_prefix(seq.token_ids, seq.num_tokens - 1)  # evictions may have changed it
            num_cached = len(hits) * self.pool.block_size
            num_new = min(seq.num_tokens - num_cached, budget)
            hits_in_free_list = sum(1 for b in hits if self.pool.ref_count[b] == 0)
            blocks_after = -(-(num_cached + num_new) // self.pool.block_size) - len(hits)
            if blocks_after + hits_in_free_list > self.pool.num_free:
                break
            candidates.remove(seq)
            self.waiting.remove(seq)
            key = self._next_block_key(seq, hits)
            if key is not None:
                being_computed.add(key)
            self.pool.claim(hits)
            seq.block_table = list(hits)
            seq.num_computed = num_cached
            seq.num_registered_blocks = len(hits)
            seq.prefix_node = self.pool.node[hits[-1]] if hits else ROOT
            cached_prompt = min(num_cached, seq.num_prompt_tokens)
            if seq.cached_tokens is None:
                seq.cached_tokens = cached_prompt
            self.cached_prompt_tokens += cached_prompt
            self._grow(seq, num_new)
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append((seq, num_new))
            budget -= num_new
        return scheduled

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.pool.release(seq.block_table)
        seq.block_table = []
        seq.status = Status.FINISHED
