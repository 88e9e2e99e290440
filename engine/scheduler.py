"""Continuous batching: each step packs running decodes and prefill chunks under a token budget.

Running sequences go first (oldest first). When the block pool runs dry the newest running sequence
is preempted: its blocks are released (full ones stay in the prefix cache) and it is recomputed later.
Waiting sequences join whenever budget, sequence slots and blocks allow, preferring the one whose
prompt has the longest cached prefix.
"""
from __future__ import annotations

from collections import deque

from kojudge.block_manager import BlockPool
from kojudge.sequence import Sequence, Status


class Scheduler:
    LOOKAHEAD = 64  # waiting sequences examined for cached prefixes per admission
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
        seq.num_registered_blocks, seq.prefix_node = 0, 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _pick_waiting(self) -> tuple[Sequence, list[int]]:
        """The next waiting sequence to admit, with its cached prefix blocks.

        A preempted sequence (at the front) goes first so it cannot starve; otherwise the one with the
        longest cached prefix among the first LOOKAHEAD (FIFO among equals), so siblings of a prefilled
        prompt run together while their shared blocks are hot.
        """
        best, best_hits = None, []
        for n, seq in enumerate(self.waiting):
            if n == self.LOOKAHEAD:
                break
            hits = self.pool.match_prefix(seq.token_ids, seq.num_tokens - 1)  # always compute >= 1 token
            if best is None or len(hits) > len(best_hits):
                best, best_hits = seq, hits
            if seq.num_tokens > seq.num_prompt_tokens:  # a preempted sequence
                break
        return best, best_hits

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
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not preempted:
            seq, hits = self._pick_waiting()
            num_cached = len(hits) * self.pool.block_size
            num_new = min(seq.num_tokens - num_cached, budget)
            hits_in_free_list = sum(1 for b in hits if self.pool.ref_count[b] == 0)
            blocks_after = -(-(num_cached + num_new) // self.pool.block_size) - len(hits)
            if blocks_after + hits_in_free_list > self.pool.num_free:
                break
            self.waiting.remove(seq)
            self.pool.claim(hits)
            seq.block_table = list(hits)
            seq.num_computed = num_cached
            seq.num_registered_blocks = len(hits)
            seq.prefix_node = self.pool.node[hits[-1]] if hits else 0
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
