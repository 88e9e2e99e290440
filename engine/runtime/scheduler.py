"""Continuous batching: each step packs running decodes and prefill chunks under a token budget.

Running sequences go first (oldest first). When the block pool runs dry the newest running
sequence is preempted: its blocks are released (full ones stay in the prefix cache) and it is
recomputed later. Waiting sequences join whenever budget, sequence slots and blocks allow,
preferring the one whose prompt has the longest cached prefix.
"""
from __future__ import annotations

from collections import deque
from itertools import islice

from kojudge.runtime.prefix_cache import BlockKey, PrefixCache
from kojudge.runtime.sequence import ScheduledChunk, Sequence, Status


class Scheduler:
    LOOKAHEAD = 128  # waiting sequences examined for cached prefixes per step

    def __init__(self, cache: PrefixCache, max_num_seqs: int, max_num_batched_tokens: int):
        self.cache = cache
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

    def schedule(self) -> list[ScheduledChunk]:
        """Choose this step's work: (sequence, number of new tokens to compute)."""
        scheduled, preempted = self._continue_running()
        budget = self.max_num_batched_tokens - sum(n for _, n in scheduled)
        if not preempted and self.waiting:
            scheduled += self._admit_waiting(budget)
        return scheduled

    def finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.cache.release(seq)
        seq.status = Status.FINISHED

    def _blocks_needed(self, seq: Sequence, num_new: int) -> int:
        return max(0, self.cache.blocks_for(seq.num_computed + num_new) - len(seq.block_table))

    def _grow(self, seq: Sequence, num_new: int) -> ScheduledChunk:
        seq.block_table.extend(self.cache.allocate(self._blocks_needed(seq, num_new)))
        return ScheduledChunk(seq, num_new)

    def _preempt(self, seq: Sequence) -> None:
        self.cache.release(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _continue_running(self) -> tuple[list[ScheduledChunk], bool]:
        """Every running sequence's next chunk, preempting the newest while blocks run out."""
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledChunk] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_uncomputed, budget)
            while self._blocks_needed(seq, num_new) > self.cache.num_free:
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                scheduled.append(self._grow(seq, num_new))
                budget -= num_new
                i += 1
        return scheduled, preempted

    def _admit_waiting(self, budget: int) -> list[ScheduledChunk]:
        """Cache-aware admission: a preempted sequence (at the front) first so it cannot starve;
        then the longest cached prefix first (FIFO among equals). A sequence whose next block is
        being computed by one admitted this step waits a step and then finds it in the cache."""
        candidates = list(islice(self.waiting, self.LOOKAHEAD))
        if candidates[0].num_tokens > candidates[0].num_prompt_tokens:
            candidates = candidates[:1]
        hits_of = {id(c): self.cache.match(c.token_ids, c.max_cached_tokens) for c in candidates}
        being_computed: set[BlockKey] = set()
        admitted: list[ScheduledChunk] = []
        while candidates and budget > 0 and len(self.running) < self.max_num_seqs:
            ready = [c for c in candidates
                     if self.cache.next_block_key(c.token_ids, hits_of[id(c)])
                     not in being_computed]
            if not ready:
                break
            seq = max(ready, key=lambda c: len(hits_of[id(c)]))  # the first of the longest
            hits = self.cache.match(seq.token_ids, seq.max_cached_tokens)  # evictions may change it
            chunk = self._admit(seq, hits, budget)
            if chunk is None:
                break
            candidates.remove(seq)
            key = self.cache.next_block_key(seq.token_ids, hits)
            if key is not None:
                being_computed.add(key)
            admitted.append(chunk)
            budget -= chunk.num_new
        return admitted

    def _admit(self, seq: Sequence, hits: list[int], budget: int) -> ScheduledChunk | None:
        """Start `seq` on its cached blocks `hits`, or None where the free blocks do not suffice."""
        num_cached = len(hits) * self.cache.block_size
        num_new = min(seq.num_tokens - num_cached, budget)
        if not self.cache.can_admit(hits, self.cache.blocks_for(num_cached + num_new) - len(hits)):
            return None
        self.waiting.remove(seq)
        self.cache.admit(seq, hits)
        cached_prompt = min(num_cached, seq.num_prompt_tokens)
        if seq.cached_tokens is None:
            seq.cached_tokens = cached_prompt
        self.cached_prompt_tokens += cached_prompt
        seq.status = Status.RUNNING
        self.running.append(seq)
        return self._grow(seq, num_new)
