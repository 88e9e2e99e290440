"""The decode workspace: contiguous copies of the decoding sequences' own keys and values, kept
across steps, so that decode attention reads one strided row per sequence instead of gathering every
block again each step (on CPU the gather costs more than the attention itself)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from kojudge.attention.batch import KVCache, lazy_zeros
from kojudge.kernels.cpu_attention import FLASH_CPU, flash_cpu_runs, partial_attention
from kojudge.utils import ceil_div


GROUP_ROWS = 16  # rows per attention call where rows of like key counts are grouped
# Moving a key into another row reads and writes it twice; attending to it reads it once.
MOVE_COST = 4

RowGroup = tuple[int, int, int, bool]  # rows [first, end) attend to columns [0, keys), masked?


@dataclass
class WorkspaceStep:
    """One step's use of the workspace: the B decodes attend to rows [0, B), a call per group."""

    workspace: DecodeWorkspace
    groups: list[RowGroup]
    decode_rows: torch.Tensor | None  # [B] row of each decode; None when decode i sits in row i
    # Workspace blocks, numbered over [rows * kv_heads * capacity / block_size], ...
    fill_target: torch.Tensor | None
    # ... copied from these pool blocks, numbered over [kv_heads * num_blocks].
    fill_source: torch.Tensor | None
    # [A * kv_heads] flat (row, head, column) slots of the continuing decodes' new keys
    append_target: torch.Tensor | None
    append_decodes: torch.Tensor | slice | None  # the A decodes that append their key


@dataclass
class DecodeRequest:
    """What the workspace needs of one decoding sequence."""

    request_id: int
    key_start: int  # first position past its shared prefix
    key_count: int  # its keys past that prefix, this step's included
    blocks: list[int]  # the pool blocks that hold those keys
    steps_left: int  # decode steps it may still take


class DecodeWorkspace:
    """A row per decoding sequence, laid out [row, kv_head, column, d], so that sequences join and
    leave without moving the others: a step appends one key to each continuing row and fills from
    the pool only the rows of sequences that start decoding. `plan` places a step's decodes;
    `attend` runs their attention in every layer."""

    HEADROOM = 64  # decode steps a row can grow before the storage is reallocated

    def __init__(self, cache: KVCache, budget_bytes: int, max_rows: int):
        self.cache = cache
        self.budget_bytes = budget_bytes
        self.max_rows = max_rows  # the most sequences that decode at once
        self.k: list[torch.Tensor] = []  # per layer [rows, kv_heads, capacity, d]
        self.v: list[torch.Tensor] = []
        self.rows: dict[int, tuple[int, int, int]] = {}  # request id -> (row, key_start, keys)

    def forget(self) -> None:
        """No sequence decodes this step: every row is free."""
        self.rows = {}

    def plan(self, decodes: list[DecodeRequest]
             ) -> tuple[WorkspaceStep, torch.Tensor | None] | None:
        """Give each of the B decodes a row in [0, B) -> (the step, mask [B, 1, 1, length] in row
        order or None), or None where the workspace would not fit.

        A sequence that decoded last step after the same shared prefix keeps its row and appends
        this step's key; the others take the free rows and are filled from the pool. Rows are
        regrouped by key count where the keys spared over the coming steps outweigh the move."""
        row_of, appends = self._place(decodes)
        counts = [d.key_count for d in decodes]
        by_row = in_rows(counts, row_of)
        groups = row_groups(by_row)
        grouped = grouped_by_length(counts, row_of)
        grouped_by_row = in_rows(counts, grouped)
        grouped_groups = row_groups(grouped_by_row)
        moved = sum(counts[i] for i in appends if grouped[i] != row_of[i])
        spared = columns_read(groups) - columns_read(grouped_groups)
        if spared * statistics.median(d.steps_left for d in decodes) > MOVE_COST * moved:
            appends = [i for i in appends if grouped[i] == row_of[i]]
            row_of, by_row, groups = grouped, grouped_by_row, grouped_groups
        length = max(counts)
        if not self.k or self.k[0].shape[0] < len(decodes) or self.k[0].shape[2] < length:
            if not self.reserve(len(decodes), length):
                return None
        self.rows = {d.request_id: (row_of[i], d.key_start, d.key_count)
                     for i, d in enumerate(decodes)}
        fills = sorted(set(range(len(decodes))) - set(appends))
        fill_target, fill_source = self._fills(decodes, fills, row_of)
        append_target, append_decodes = self._appends(decodes, appends, row_of)
        in_order = all(row_of[i] == i for i in range(len(decodes)))
        step = WorkspaceStep(self, groups, None if in_order else self._tensor(row_of),
                             fill_target, fill_source, append_target, append_decodes)
        mask = key_mask(self._tensor(by_row), length)
        return step, None if mask is None else mask[:, None, None, :]

    def _place(self, decodes: list[DecodeRequest]) -> tuple[list[int], list[int]]:
        """(row of each decode, the decodes that append to the row they held). Rows stay in [0, B):
        a sequence keeps its row if that is below B, else it moves to a free row and is filled
        again (one row per departure), so no step attends to rows left empty."""
        row_of: dict[int, int] = {}
        appends = []
        for i, d in enumerate(decodes):
            held = self.rows.get(d.request_id)
            if held is not None and held[0] < len(decodes):
                row_of[i] = held[0]
                if held[1:] == (d.key_start, d.key_count - 1):
                    appends.append(i)
        free_rows = iter(sorted(set(range(len(decodes))) - set(row_of.values())))
        for i in range(len(decodes)):
            if i not in row_of:
                row_of[i] = next(free_rows)
        return [row_of[i] for i in range(len(decodes))], appends

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, device=self.cache.k.device)

    def _fills(self, decodes: list[DecodeRequest], fills: list[int], row_of: list[int]
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(workspace blocks, pool blocks) copied to fill the rows of `fills` with their blocks;
        the columns past them hold zeros or older keys, finite either way (0 * inf is nan)."""
        if not fills:
            return None, None
        kv_heads, capacity = self.k[0].shape[1], self.k[0].shape[2]
        row_blocks = capacity // self.cache.block_size
        heads = self._tensor(list(range(kv_heads)))
        blocks = self._tensor([b for i in fills for b in decodes[i].blocks])
        rows = self._tensor([row_of[i] for i in fills for _ in decodes[i].blocks])
        cols = self._tensor([c for i in fills for c in range(len(decodes[i].blocks))])
        target = ((rows * kv_heads + heads[:, None]) * row_blocks + cols).flatten()
        source = (heads[:, None] * self.cache.num_blocks + blocks).flatten()
        return target, source

    def _appends(self, decodes: list[DecodeRequest], appends: list[int], row_of: list[int]
                 ) -> tuple[torch.Tensor | None, torch.Tensor | slice | None]:
        """(flat workspace slots, the decodes whose new key goes there)."""
        if not appends:
            return None, None
        kv_heads, capacity = self.k[0].shape[1], self.k[0].shape[2]
        heads = self._tensor(list(range(kv_heads)))
        rows = self._tensor([row_of[i] for i in appends])
        cols = self._tensor([decodes[i].key_count - 1 for i in appends])
        target = ((rows[:, None] * kv_heads + heads) * capacity + cols[:, None]).flatten()
        if len(appends) == len(decodes):
            return target, slice(None)
        return target, self._tensor(appends)

    def reserve(self, num_rows: int, length: int) -> bool:
        """Storage for `length` keys with room to grow (HEADROOM more columns, or half again),
        in as many rows as the budget allows up to `max_rows` (untouched rows cost no memory),
        else in `num_rows` rows with the columns the budget allows. The rows held keep their
        keys, in the same rows, so that they go on appending."""
        bs = self.cache.block_size
        capacity = ceil_div(length + self.HEADROOM, bs) * bs
        if self.k:
            old_capacity = self.k[0].shape[2]
            grown = old_capacity * 3 // 2 // bs * bs if length > old_capacity else old_capacity
            capacity = max(capacity, grown)
        layers, kv_heads, _, d = self.cache.k.shape
        column_bytes = 2 * layers * kv_heads * d * self.cache.k.element_size()
        columns = self.budget_bytes // column_bytes  # summed over rows
        for capacity in (capacity, min(capacity, columns // num_rows // bs * bs)):
            rows = max(num_rows, min(self.max_rows, columns // max(capacity, 1)))
            if capacity >= length and rows * capacity <= columns:
                self._reallocate((rows, kv_heads, capacity, d))
                return True
        self.rows = {}
        return False

    def _reallocate(self, shape: tuple[int, int, int, int]) -> None:
        """Zeroed storage of `shape` per layer (pages fault in as rows are first written), with
        the held rows' keys copied over; a layer at a time, so only one is held twice."""
        rows = min(max((row for row, _, _ in self.rows.values()), default=-1) + 1, shape[0])
        columns = max((keys for _, _, keys in self.rows.values()), default=0)
        dtype, device = self.cache.k.dtype, self.cache.k.device
        for storage in (self.k, self.v):
            for layer in range(self.cache.k.shape[0]):
                new = lazy_zeros(shape, dtype, device)
                if layer < len(storage):
                    new[:rows, :, :columns] = storage[layer][:rows, :, :columns]
                    storage[layer] = new
                else:
                    storage.append(new)

    def attend(self, step: WorkspaceStep, layer: int, q: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The decodes' attention to their own keys: fill the rows of sequences that start
        decoding (this step's key is already in the pool), append this step's key to the others,
        attend -> (out [B, heads, d], LSE [B, heads])."""
        k_rows, v_rows = self.k[layer], self.v[layer]  # [rows, kv_heads, capacity, d]
        rows, kv_heads, d = q.shape[0], k_rows.shape[1], k_rows.shape[3]
        if step.fill_target is not None:
            for rows_of, pool in zip((k_rows, v_rows), self.cache.blocks(layer)):
                pool_blocks = pool.reshape((-1,) + pool.shape[2:])  # [kv_heads * blocks, bs, d]
                fill = pool_blocks[step.fill_source]
                rows_of.view((-1,) + pool_blocks.shape[1:]).index_copy_(0, step.fill_target, fill)
        if step.append_target is not None:
            new_k = k[step.append_decodes].reshape(-1, d)
            new_v = v[step.append_decodes].reshape(-1, d)
            k_rows.view(-1, d).index_copy_(0, step.append_target, new_k)
            v_rows.view(-1, d).index_copy_(0, step.append_target, new_v)
        if step.decode_rows is not None:
            q = torch.empty_like(q).index_copy_(0, step.decode_rows, q)
        # The query heads of a KV head as its query rows.
        q = q.view(rows, kv_heads, q.shape[1] // kv_heads, d)
        parts = [self._attend_rows(q, k_rows, v_rows, group, bias) for group in step.groups]
        out = parts[0][0] if len(parts) == 1 else torch.cat([o for o, _ in parts])
        lse = parts[0][1] if len(parts) == 1 else torch.cat([x for _, x in parts])
        out = out.reshape(rows, -1, d)
        lse = lse.reshape(rows, -1)
        if step.decode_rows is not None:
            out, lse = out[step.decode_rows], lse[step.decode_rows]
        return out, lse

    @staticmethod
    def _attend_rows(q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor,
                     group: RowGroup, bias: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        first, end, keys, masked = group
        q = q[first:end]
        k_rows = k_rows[first:end, :, :keys]
        v_rows = v_rows[first:end, :, :keys]
        bias = bias[first:end, ..., :keys] if masked else None
        if flash_cpu_runs(q):  # reads the strided rows in place, where matmuls would copy them
            return FLASH_CPU(q, k_rows, v_rows, attn_mask=bias)
        return partial_attention(q, k_rows, v_rows, bias)


def in_rows(counts: list[int], row_of: list[int]) -> list[int]:
    """The decodes' key counts listed by the row each sits in."""
    by_row = [0] * len(counts)
    for i, row in enumerate(row_of):
        by_row[row] = counts[i]
    return by_row


def row_groups(by_row: list[int]) -> list[RowGroup]:
    """Attention calls over rows with these key counts: chunks of GROUP_ROWS rows, each to its
    longest row, where that spares a tenth of the keys one call over every row would read."""
    chunks = []
    for first in range(0, len(by_row), GROUP_ROWS):
        counts = by_row[first: first + GROUP_ROWS]
        chunks.append((first, first + len(counts), max(counts), min(counts) < max(counts)))
    longest = max(by_row)
    if len(chunks) > 1 and columns_read(chunks) < 0.9 * len(by_row) * longest:
        return chunks
    return [(0, len(by_row), longest, min(by_row) < longest)]


def columns_read(groups: list[RowGroup]) -> int:
    """Columns these attention calls read, summed over rows."""
    return sum((end - first) * keys for first, end, keys, _ in groups)


def grouped_by_length(counts: list[int], row_of: list[int]) -> list[int]:
    """Rows that put the decodes in chunks of GROUP_ROWS by descending key count. A decode whose
    row already lies in its chunk keeps it; the others take the chunk's free rows."""
    chunk_of = [0] * len(counts)
    for rank, i in enumerate(sorted(range(len(counts)), key=lambda i: -counts[i])):
        chunk_of[i] = rank // GROUP_ROWS
    stays = [row_of[i] // GROUP_ROWS == chunk_of[i] for i in range(len(counts))]
    taken = {row_of[i] for i in range(len(counts)) if stays[i]}
    free = [iter([r for r in range(c * GROUP_ROWS, min((c + 1) * GROUP_ROWS, len(counts)))
                  if r not in taken]) for c in range(max(chunk_of) + 1)]
    return [row_of[i] if stays[i] else next(free[chunk_of[i]]) for i in range(len(counts))]


def key_mask(counts: torch.Tensor, length: int) -> torch.Tensor | None:
    """[n, length] bool, False past each row's `counts` keys; None when every row has `length`."""
    if bool((counts == length).all()):
        return None
    return torch.arange(length, device=counts.device)[None, :] < counts[:, None]
