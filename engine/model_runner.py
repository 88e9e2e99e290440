"""Turns a scheduled step into one packed forward pass and returns the last-token logits."""
from __future__ import annotations

import math

import torch

from kojudge.attention import (DecodeWorkspace, KVCache, PagedAttention, PagedBatch, PrefillSpan, SharedPrefix,
                               TritonPagedAttention)
from kojudge.model import Model
from kojudge.sequence import Sequence


class ModelRunner:
    WORKSPACE_HEADROOM = 64  # decode steps a workspace can grow before it is rebuilt

    def __init__(self, model: Model, cache: KVCache, device: torch.device, cascade: bool = True,
                 backend: str = "torch", workspace_bytes: int | None = None):
        self.model, self.cache, self.device, self.cascade = model, cache, device, cascade
        self.attention = TritonPagedAttention if backend == "triton" else PagedAttention
        # The Triton kernels read pages directly; the torch path keeps a decode workspace up to half
        # the KV pool's size unless told otherwise (0 disables it).
        pool_bytes = cache.k.numel() * cache.k.element_size() * 2
        self.workspace_bytes = 0 if backend == "triton" else (pool_bytes // 2 if workspace_bytes is None
                                                              else workspace_bytes)
        self.workspace: DecodeWorkspace | None = None
        self._workspace_storage: list[torch.Tensor] = []
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
                          own_blocks: list[list[int]]) -> tuple[DecodeWorkspace | None, torch.Tensor | None]:
        """Reuse the workspace when the same sequences decode again one key further (append this step's
        key at `write_cols`); otherwise a fresh one, if it fits the memory budget."""
        if not self.workspace_bytes:
            return None, None
        ws = self.workspace
        request_ids = tuple(s.request_id for s, _ in decodes)
        if (ws is not None and ws.request_ids == request_ids and ws.key_start == tuple(key_start)
                and all(n == held + 1 for n, held in zip(key_counts, ws.lengths))
                and max(key_counts) <= ws.k[0].shape[2]):
            capacity = ws.k[0].shape[2]
            write_cols = torch.tensor([row * capacity + held for row, held in enumerate(ws.lengths)], device=self.device)
            ws.lengths, ws.fresh = key_counts, False
            return ws, write_cols
        self.workspace = None
        bs = self.block_size
        capacity_blocks = -(-(max(key_counts) + self.WORKSPACE_HEADROOM) // bs)
        kv_heads, _, d = self.cache.k.shape[1:]
        shape = (kv_heads, len(decodes), capacity_blocks * bs, d)
        buffers = self._workspace_buffers(shape)
        if buffers is None:
            return None, None
        # Each row's blocks, then its first block again as filler up to the capacity: columns past a
        # row's keys are masked, they only need to hold finite numbers.
        fill = [blocks + blocks[:1] * (capacity_blocks - len(blocks)) for blocks in own_blocks]
        fill_index = torch.tensor(fill, device=self.device).flatten()
        self.workspace = DecodeWorkspace(request_ids, tuple(key_start), key_counts, *buffers, fill_index=fill_index)
        return self.workspace, None

    def _workspace_buffers(self, shape: tuple[int, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """Per-layer K and V views of `shape` over storage kept across workspaces: a fresh workspace
        every step (while prefills join the decodes) would otherwise fault in new pages every step."""
        layers = self.cache.k.shape[0]
        numel = math.prod(shape)
        if 2 * layers * numel * self.cache.k.element_size() > self.workspace_bytes:
            return None
        if not self._workspace_storage or self._workspace_storage[0].numel() < numel:
            self._workspace_storage = []  # free the old storage before allocating
            grown = min(numel * 3 // 2, self.workspace_bytes // (2 * layers * self.cache.k.element_size()))
            # Uninitialized is safe: a fresh workspace's fill writes every element of its views.
            self._workspace_storage = [torch.empty(grown, dtype=self.cache.k.dtype, device=self.device)
                                       for _ in range(2 * layers)]
        views = [storage[:numel].view(shape) for storage in self._workspace_storage]
        return views[:layers], views[layers:]

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
        workspace = write_cols = None
        if num_decodes:
            decodes = ordered[:num_decodes]
            context = [s.num_computed + 1 for s, _ in decodes]
            own = [s.block_table[ks // bs: -(-c // bs)] for (s, _), ks, c in zip(decodes, key_start, context)]
            width = max(map(len, own))
            decode_blocks = torch.tensor([blocks + [0] * (width - len(blocks)) for blocks in own], device=device)
            slot_mapping.append(torch.tensor([s.block_table[(c - 1) // bs] * bs + (c - 1) % bs
                                              for (s, _), c in zip(decodes, context)], device=device))
            key_counts = [c - ks for c, ks in zip(context, key_start)]
            workspace, write_cols = self._decode_workspace(decodes, key_start[:num_decodes], key_counts, own)
            span = max(key_counts) if workspace is not None else width * bs
            keys = torch.tensor(key_counts, device=device)
            if bool((keys != span).any()):
                decode_mask = (torch.arange(span, device=device)[None, :] < keys[:, None])[:, None, :]
        else:
            self.workspace = None
        spans, token_start = [], num_decodes
        for i in range(num_decodes, len(ordered)):
            seq, n = ordered[i]
            context_len, ks = seq.num_computed + n, key_start[i]
            blocks = torch.tensor(seq.block_table[ks // bs: -(-context_len // bs)], device=device)
            slot_mapping.append(self._slots(blocks, seq.num_computed - ks, context_len - ks))
            mask = None
            if seq.num_computed:
                rows = torch.arange(n, device=device)[:, None] + seq.num_computed
                mask = torch.arange(ks, context_len, device=device)[None, :] <= rows
            spans.append(PrefillSpan(token_start, token_start + n, blocks, ks, context_len, mask))
            token_start += n
        shared = []
        for members, common in groups:
            rows = [torch.tensor([m], device=device) if m < num_decodes else
                    torch.arange(spans[m - num_decodes].start, spans[m - num_decodes].end, device=device)
                    for m in members]
            rows = torch.cat(rows)
            if int(rows[-1] - rows[0]) == len(rows) - 1 and bool((rows.diff() == 1).all()):
                rows = slice(int(rows[0]), int(rows[-1]) + 1)  # contiguous: a view, no gather
            shared.append(SharedPrefix(torch.tensor(ordered[members[0]][0].block_table[:common], device=device), rows))
        batch = PagedBatch(torch.cat(slot_mapping), num_decodes, decode_blocks, decode_mask, spans, shared,
                           workspace, write_cols)
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
