"""The decode workspace: contiguous copies of the decoding sequences' own keys and values, kept
across steps, so that decode attention reads one strided row per sequence instead of gathering every
block again each step (on CPU the gather costs more than the attention itself)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kojudge.attention.batch import KVCache
from kojudge.kernels.cpu_attention import FLASH_CPU, flash_cpu_runs, partial_attention
from kojudge.utils import ceil_div


@dataclass
class WorkspaceStep:
    """One step's use of the workspace: the B decodes attend to rows [0, B), columns [0, length)."""

    workspace: DecodeWorkspace
    length: int
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


class DecodeWorkspace:
    """A row per decoding sequence, laid out [row, kv_head, column, d], so that sequences join and
    leave without moving the others: a step appends one key to each continuing row and fills from
    the pool only the rows of sequences that start decoding. `plan` places a step's decodes;
    `attend` runs their attention in every layer."""

    HEADROOM = 64  # decode steps a row can grow before the storage is reallocated

    def __init__(self, cache: KVCache, budget_bytes: int):
        self.cache = cache
        self.budget_bytes = budget_bytes
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
        this step's key; the others take the free rows and are filled from the pool."""
        row_of, appends = self._place(decodes)
        length = max(d.key_count for d in decodes)
        if not self.k or self.k[0].shape[0] < len(decodes) or self.k[0].shape[2] < length:
            if not self.reserve(len(decodes), length):
                return None
            appends = []  # new storage: every row is filled
        self.rows = {d.request_id: (row_of[i], d.key_start, d.key_count)
                     for i, d in enumerate(decodes)}
        fills = sorted(set(range(len(decodes))) - set(appends))
        fill_target, fill_source = self._fills(decodes, fills, row_of)
        append_target, append_decodes = self._appends(decodes, appends, row_of)
        decode_rows = None
        counts = [d.key_count for d in decodes]
        if any(row_of[i] != i for i in range(len(decodes))):
            decode_rows = self._tensor(row_of)
            counts = [0] * len(decodes)
            for i, d in enumerate(decodes):
                counts[row_of[i]] = d.key_count
        step = WorkspaceStep(self, length, decode_rows, fill_target, fill_source, append_target,
                             append_decodes)
        mask = key_mask(self._tensor(counts), length)
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
        """(workspace blocks, pool blocks) copied to fill the rows of `fills`: each row's blocks,
        then its first block again up to the capacity, since masked columns must still hold
        finite numbers (0 * inf is nan)."""
        if not fills:
            return None, None
        kv_heads, capacity = self.k[0].shape[1], self.k[0].shape[2]
        row_blocks = capacity // self.cache.block_size
        padded = []
        for i in fills:
            blocks = decodes[i].blocks
            padded.append(blocks + blocks[:1] * (row_blocks - len(blocks)))
        heads = self._tensor(list(range(kv_heads)))
        blocks = self._tensor(padded).flatten()
        rows = self._tensor([row_of[i] for i in fills]).repeat_interleave(row_blocks)
        cols = self._tensor(list(range(row_blocks))).repeat(len(fills))
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
        """Storage for at least `num_rows` rows of `length` keys with room to grow (rows doubled,
        HEADROOM more columns or half again), else as many columns as the budget allows.
        Uninitialized: pages fault in as fills first write them, and a fill writes every column."""
        bs = self.cache.block_size
        rows = 2 * num_rows
        capacity = ceil_div(length + self.HEADROOM, bs) * bs
        if self.k:
            old_rows, _, old_capacity, _ = self.k[0].shape
            rows = max(rows, old_rows)
            grown = old_capacity * 3 // 2 // bs * bs if length > old_capacity else old_capacity
            capacity = max(capacity, grown)
        self.k = []
        self.v = []
        self.rows = {}
        layers, kv_heads, _, d = self.cache.k.shape
        column_bytes = 2 * layers * kv_heads * d * self.cache.k.element_size()
        most_columns = self.budget_bytes // (column_bytes * num_rows) // bs * bs
        for rows, capacity in ((rows, capacity), (num_rows, min(capacity, most_columns))):
            if capacity >= length and rows * capacity * column_bytes <= self.budget_bytes:
                shape = (rows, kv_heads, capacity, d)
                dtype, device = self.cache.k.dtype, self.cache.k.device
                self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
                self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
                return True
        return False

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
        keys = k_rows[:rows, :, : step.length]
        values = v_rows[:rows, :, : step.length]
        if flash_cpu_runs(q):  # reads the strided rows in place, where matmuls would copy them
            out, lse = FLASH_CPU(q, keys, values, attn_mask=bias)
        else:
            out, lse = partial_attention(q, keys, values, bias)
        out = out.reshape(rows, -1, d)
        lse = lse.reshape(rows, -1)
        if step.decode_rows is not None:
            out, lse = out[step.decode_rows], lse[step.decode_rows]
        return out, lse


def key_mask(counts: torch.Tensor, length: int) -> torch.Tensor | None:
    """[n, length] bool, False past each row's `counts` keys; None when every row has `length`."""
    if bool((counts == length).all()):
        return None
    return torch.arange(length, device=counts.device)[None, :] < counts[:, None]
