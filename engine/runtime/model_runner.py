"""Turns a scheduled step into one packed forward pass and returns the last-token logits."""
from __future__ import annotations

import torch

from kojudge.attention.batch import (DecodeWorkspace, KVCache, PagedAttention, PagedBatch, PrefillSpan, SharedPrefix,
                               TritonPagedAttention, WorkspaceStep, as_range)
from kojudge.model.decoder import Model
from kojudge.runtime.sequence import Sequence


def _key_mask(counts: torch.Tensor, length: int) -> torch.Tensor | None:
    """[n, length] bool, False past each row's `counts` keys; None when every row has `length`."""
    if bool((counts == length).all()):
        return None
    return torch.arange(length, device=counts.device)[None, :] < counts[:, None]


class ModelRunner:
    WORKSPACE_HEADROOM = 64  # decode steps a row can grow before the workspace is reallocated

    def __init__(self, model: Model, cache: KVCache, device: torch.device, cascade: bool = True,
                 backend: str = "torch", workspace_bytes: int | None = None):
        self.model, self.cache, self.device, self.cascade = model, cache, device, cascade
        if backend == "flashinfer":
            from kojudge.attention.flashinfer_paged import FlashInferAttention

            self.attention = FlashInferAttention(device)
        else:
            self.attention = TritonPagedAttention if backend == "triton" else PagedAttention
        # GPU kernels read pages directly; the torch path keeps a decode workspace up to the KV pool's
        # size unless told otherwise (0 disables it): without one, every decode step gathers all its
        # blocks again (64 x 1k keys, float32: 390 ms a step instead of 60).
        pool_bytes = cache.k.numel() * cache.k.element_size() * 2
        self.workspace_bytes = 0 if backend != "torch" else pool_bytes if workspace_bytes is None else workspace_bytes
        self.workspace: DecodeWorkspace | None = None
        self.block_size = cache.block_size
        self._offsets = torch.arange(self.block_size, device=device)

    def _slots(self, block_table: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Slots of positions [start, end) of a sequence with this block table."""
        return (block_table[:, None] * self.block_size + self._offsets).flatten()[start:end]

    @staticmethod
    def packing_order(work: list[tuple[Sequence, int]]) -> list[int]:
        """Indices into `work` in the order their tokens are packed: single-token decodes first."""
        return [i for i, (_, n) in enumerate(work) if n == 1] + [i for i, (_, n) in enumerate(work) if n > 1]

    @staticmethod
    def shared_prefixes(tables: list[list[int]], usable: list[int]) -> list[tuple[list[int], int]]:
        """Groups of >= 2 sequences whose block tables start with the same physical blocks:
        (member indices, number of shared blocks), counting only blocks each member has fully computed."""
        by_first: dict[int, list[int]] = {}
        for i, (table, n) in enumerate(zip(tables, usable)):
            if n:
                by_first.setdefault(table[0], []).append(i)
        groups = []
        for members in by_first.values():
            if len(members) < 2:
                continue
            first = tables[members[0]]
            common = min(usable[m] for m in members)
            for m in members[1:]:
                table, k = tables[m], 1
                while k < common and table[k] == first[k]:
                    k += 1
                common = k
            groups.append((members, common))
        return groups

    def _decode_workspace(self, decodes: list[tuple[Sequence, int]], key_start: list[int], key_counts: list[int],
                          own_blocks: list[list[int]]) -> tuple[WorkspaceStep | None, torch.Tensor | None]:
        """Give each of the B decoding sequences a workspace row in [0, B) -> (the step, mask
        [B, 1, 1, length] in row order, or None).

        A sequence that decoded last step after the same shared prefix keeps its row and appends this
        step's key; the others take the free rows and are filled from the pool. Rows of sequences that
        do not decode this step are freed. (None, None) where the workspace would not fit."""
        if not self.workspace_bytes:
            return None, None
        held_before = {} if self.workspace is None else self.workspace.rows
        # Rows stay [0, B): a sequence keeps its row if that is below B, else it moves to a free row
        # and is filled again (one row per departure), so no step attends to rows left empty.
        row_of: dict[int, int] = {}
        appends = []
        for i, ((seq, _), ks, n) in enumerate(zip(decodes, key_start, key_counts)):
            entry = held_before.get(seq.request_id)
            if entry is not None and entry[0] < len(decodes):
                row_of[i] = entry[0]
                if entry[1:] == (ks, n - 1):
                    appends.append(i)
        free_rows = iter(sorted(set(range(len(decodes))) - set(row_of.values())))
        for i in range(len(decodes)):
            if i not in row_of:
                row_of[i] = next(free_rows)
        num_rows, length = len(decodes), max(key_counts)
        ws = self.workspace
        if ws is None or ws.k[0].shape[0] < num_rows or ws.k[0].shape[2] < length:
            ws = self.workspace = self._allocate_workspace(num_rows, length)
            if ws is None:
                return None, None
            appends = []  # new storage: every row is filled
        ws.rows = {seq.request_id: (row_of[i], ks, n)
                   for i, ((seq, _), ks, n) in enumerate(zip(decodes, key_start, key_counts))}
        kv_heads, capacity, device = ws.k[0].shape[1], ws.k[0].shape[2], self.device
        heads = torch.arange(kv_heads, device=device)
        fill_target = fill_source = append_target = append_decodes = None
        fills = sorted(set(range(len(decodes))) - set(appends))
        if fills:
            # Each row's blocks, then its first block again up to the capacity: columns past a row's
            # keys are masked, but must hold finite numbers (0 * inf is nan).
            row_blocks = capacity // self.block_size
            padded = [own_blocks[i] + own_blocks[i][:1] * (row_blocks - len(own_blocks[i])) for i in fills]
            blocks = torch.tensor(padded, device=device).flatten()
            rows = torch.tensor([row_of[i] for i in fills], device=device).repeat_interleave(row_blocks)
            cols = torch.arange(row_blocks, device=device).repeat(len(fills))
            fill_target = ((rows * kv_heads + heads[:, None]) * row_blocks + cols).flatten()
            fill_source = (heads[:, None] * self.cache.num_blocks + blocks).flatten()
        if appends:
            rows = torch.tensor([row_of[i] for i in appends], device=device)
            cols = torch.tensor([key_counts[i] - 1 for i in appends], device=device)
            append_target = ((rows[:, None] * kv_heads + heads) * capacity + cols[:, None]).flatten()
            append_decodes = slice(None) if len(appends) == len(decodes) else torch.tensor(appends, device=device)
        decode_rows = None
        counts = key_counts
        if any(row_of[i] != i for i in range(num_rows)):
            decode_rows = torch.tensor([row_of[i] for i in range(num_rows)], device=device)
            counts = [0] * num_rows
            for i, n in enumerate(key_counts):
                counts[row_of[i]] = n
        mask = _key_mask(torch.tensor(counts, device=device), length)
        step = WorkspaceStep(ws, length, decode_rows, fill_target, fill_source, append_target, append_decodes)
        return step, None if mask is None else mask[:, None, None, :]

    def _allocate_workspace(self, num_rows: int, length: int) -> DecodeWorkspace | None:
        """Storage for at least `num_rows` rows of `length` keys with room to grow (rows doubled,
        WORKSPACE_HEADROOM more columns or half again), else as many columns as the budget allows.
        Uninitialized: pages are faulted in as fills first write them, and a fill writes every column
        of its row."""
        old, self.workspace = self.workspace, None  # let the old storage go first
        bs = self.block_size
        rows, capacity = 2 * num_rows, -(-(length + self.WORKSPACE_HEADROOM) // bs) * bs
        if old is not None:
            old_rows, _, old_capacity, _ = old.k[0].shape
            rows = max(rows, old_rows)
            capacity = max(capacity, old_capacity * 3 // 2 // bs * bs if length > old_capacity else old_capacity)
        layers, kv_heads, _, d = self.cache.k.shape
        column_bytes = 2 * layers * kv_heads * d * self.cache.k.element_size()
        most_columns = self.workspace_bytes // (column_bytes * num_rows) // bs * bs
        for rows, capacity in ((rows, capacity), (num_rows, min(capacity, most_columns))):
            if capacity >= length and rows * capacity * column_bytes <= self.workspace_bytes:
                tensors = [torch.empty((rows, kv_heads, capacity, d), dtype=self.cache.k.dtype, device=self.device)
                           for _ in range(2 * layers)]
                return DecodeWorkspace(tensors[:layers], tensors[layers:])
        return None

    def build(self, work: list[tuple[Sequence, int]]) -> tuple[torch.Tensor, torch.Tensor, PagedBatch]:
        """Pack the step's new tokens (single-token decodes first) and describe their attention."""
        bs, device = self.block_size, self.device
        ordered = [work[i] for i in self.packing_order(work)]
        num_decodes = sum(1 for _, n in work if n == 1)
        ids: list[int] = []
        positions: list[int] = []
        for seq, n in ordered:
            ids.extend(seq.token_ids[seq.num_computed: seq.num_computed + n])
            positions.extend(range(seq.num_computed, seq.num_computed + n))
        key_start = [0] * len(ordered)
        groups = []
        if self.cascade:
            groups = self.shared_prefixes([s.block_table for s, _ in ordered], [s.num_computed // bs for s, _ in ordered])
            for members, common in groups:
                for m in members:
                    key_start[m] = common * bs
        slot_mapping = []
        decode_blocks = decode_mask = None
        workspace, key_counts = None, []
        if num_decodes:
            decodes = ordered[:num_decodes]
            context = [s.num_computed + 1 for s, _ in decodes]
            own = [s.block_table[ks // bs: -(-c // bs)] for (s, _), ks, c in zip(decodes, key_start, context)]
            width = max(map(len, own))
            decode_blocks = torch.tensor([blocks + [0] * (width - len(blocks)) for blocks in own], device=device)
            slot_mapping.append(torch.tensor([s.block_table[(c - 1) // bs] * bs + (c - 1) % bs
                                              for (s, _), c in zip(decodes, context)], device=device))
            key_counts = [c - ks for c, ks in zip(context, key_start)]
            workspace, decode_mask = self._decode_workspace(decodes, key_start[:num_decodes], key_counts, own)
            if workspace is None:
                decode_mask = _key_mask(torch.tensor(key_counts, device=device), width * bs)
                decode_mask = None if decode_mask is None else decode_mask[:, None, :]
        elif self.workspace is not None:
            self.workspace.rows = {}
        spans, token_start = [], num_decodes
        for i in range(num_decodes, len(ordered)):
            seq, n = ordered[i]
            context_len, ks = seq.num_computed + n, key_start[i]
            blocks = torch.tensor(seq.block_table[ks // bs: -(-context_len // bs)], device=device)
            slot_mapping.append(self._slots(blocks, seq.num_computed - ks, context_len - ks))
            spans.append(PrefillSpan(token_start, token_start + n, blocks, ks, context_len))
            token_start += n
        shared = []
        for members, common in groups:
            rows = [torch.tensor([m], device=device) if m < num_decodes else
                    torch.arange(spans[m - num_decodes].start, spans[m - num_decodes].end, device=device)
                    for m in members]
            shared.append(SharedPrefix(torch.tensor(ordered[members[0]][0].block_table[:common], device=device),
                                       as_range(torch.cat(rows))))
        batch = PagedBatch(torch.cat(slot_mapping), num_decodes, decode_blocks, decode_mask, spans, shared, workspace,
                           key_counts)
        return torch.tensor(ids, device=device), torch.tensor(positions, device=device), batch

    @torch.inference_mode()
    def run(self, work: list[tuple[Sequence, int]], sample_rows: list[int]) -> torch.Tensor:
        """Forward the step; float32 logits [len(sample_rows), V] for the listed entries of `work`.

        `sample_rows` index into `work`; each such sequence's last new token is the one sampled.
        """
        input_ids, positions, batch = self.build(work)
        hidden = self.model(input_ids, positions, self.attention(self.cache, batch))
        last_row, end = {}, 0
        for i in self.packing_order(work):
            end += work[i][1]
            last_row[i] = end - 1
        rows = torch.tensor([last_row[i] for i in sample_rows], device=self.device)
        return self.model.logits(hidden[rows]).float()
