"""Turns a scheduled step into one packed forward pass and returns the sampled rows' logits."""
from __future__ import annotations

import functools

import torch

from kojudge.attention.batch import KVCache, PagedBatch, PrefillSpan, SharedPrefix, as_range
from kojudge.attention.torch_paged import PagedAttention
from kojudge.attention.triton_paged import TritonPagedAttention
from kojudge.attention.workspace import DecodeRequest, DecodeWorkspace, key_mask
from kojudge.kernels import pool_attention
from kojudge.model.decoder import Model
from kojudge.runtime.sequence import ScheduledChunk, Sequence
from kojudge.utils import ceil_div


def packing_order(work: list[ScheduledChunk]) -> list[int]:
    """Indices into `work` in the order their tokens are packed: single-token decodes first."""
    decodes = [i for i, (_, n) in enumerate(work) if n == 1]
    return decodes + [i for i, (_, n) in enumerate(work) if n > 1]


def shared_prefixes(tables: list[list[int]], usable: list[int]) -> list[tuple[list[int], int]]:
    """Groups of >= 2 sequences whose block tables start with the same physical blocks: (member
    indices, number of shared blocks), counting only blocks each member has fully computed."""
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
            table = tables[m]
            k = 1
            while k < common and table[k] == first[k]:
                k += 1
            common = k
        groups.append((members, common))
    return groups


class ModelRunner:
    def __init__(self, model: Model, cache: KVCache, device: torch.device, cascade: bool = True,
                 backend: str = "torch", workspace_bytes: int | None = None,
                 max_num_seqs: int = 256):
        self.model = model
        self.cache = cache
        self.device = device
        self.cascade = cascade
        self.block_size = cache.block_size
        self.attention = self._attention_backend(backend)
        # GPU kernels and the CPU decode kernel read pages in place; elsewhere the torch path
        # keeps a decode workspace up to the KV pool's size unless told otherwise (0: none, and
        # every decode step gathers its blocks).
        pool_bytes = 2 * cache.k.numel() * cache.k.element_size()
        self.decode_in_place = (backend == "torch" and workspace_bytes is None
                                and pool_attention.supports(cache.k, self.block_size))
        if backend != "torch" or self.decode_in_place:
            workspace_bytes = 0
        self.workspace = DecodeWorkspace(
            cache, pool_bytes if workspace_bytes is None else workspace_bytes, max_num_seqs)
        self._offsets = torch.arange(self.block_size, device=device)

    @functools.cached_property
    def spans_in_place(self) -> bool:
        """Whether prefill spans run on the CPU prefill kernel, where it measured faster than
        torch's flash kernel; measured at the first step that has one, not at construction."""
        return (self.attention is PagedAttention
                and pool_attention.supports(self.cache.k, self.block_size)
                and pool_attention.prefill_is_faster(self.cache.k.dtype))

    def _attention_backend(self, backend: str):
        if backend == "flashinfer":
            # flashinfer is an optional extra: imported only when asked for.
            from kojudge.attention.flashinfer_paged import FlashInferAttention

            return FlashInferAttention(self.device)
        return TritonPagedAttention if backend == "triton" else PagedAttention

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, device=self.device)

    def _slots(self, block_table: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Slots of positions [start, end) of a sequence with this block table."""
        return (block_table[:, None] * self.block_size + self._offsets).flatten()[start:end]

    def build(self, work: list[ScheduledChunk]) -> tuple[torch.Tensor, torch.Tensor, PagedBatch]:
        """Pack the step's new tokens (single-token decodes first) and describe their attention."""
        ordered = [work[i] for i in packing_order(work)]
        ids: list[int] = []
        positions: list[int] = []
        for seq, n in ordered:
            ids.extend(seq.token_ids[seq.num_computed: seq.num_computed + n])
            positions.extend(range(seq.num_computed, seq.num_computed + n))
        key_start = [0] * len(ordered)
        groups = []
        if self.cascade:
            groups = shared_prefixes([s.block_table for s, _ in ordered],
                                     [s.num_computed // self.block_size for s, _ in ordered])
            for members, common in groups:
                for m in members:
                    key_start[m] = common * self.block_size
        num_decodes = sum(1 for _, n in work if n == 1)
        slots: list[torch.Tensor] = []
        decodes = self._decodes(ordered[:num_decodes], key_start[:num_decodes], slots)
        spans = self._prefill_spans(ordered[num_decodes:], key_start[num_decodes:], num_decodes,
                                    slots)
        shared = self._shared(ordered, groups, num_decodes, spans)
        batch = PagedBatch(torch.cat(slots), num_decodes, prefills=spans, shared=shared,
                           spans_in_place=bool(spans) and self.spans_in_place, **decodes)
        return self._tensor(ids), self._tensor(positions), batch

    def _decodes(self, decodes: list[ScheduledChunk], key_start: list[int],
                 slots: list[torch.Tensor]) -> dict:
        """PagedBatch's decode fields: the decodes' own keys past any shared prefix, in the
        workspace or else as padded block tables. Their slots go to `slots`."""
        if not decodes:
            self.workspace.forget()
            return dict(decode_blocks=None, decode_mask=None)
        bs = self.block_size
        context = [s.num_computed + 1 for s, _ in decodes]
        own = [s.block_table[ks // bs: ceil_div(c, bs)]
               for (s, _), ks, c in zip(decodes, key_start, context)]
        width = max(map(len, own))
        padded = [blocks + [0] * (width - len(blocks)) for blocks in own]
        last = [s.block_table[(c - 1) // bs] * bs + (c - 1) % bs
                for (s, _), c in zip(decodes, context)]
        slots.append(self._tensor(last))
        counts = [c - ks for c, ks in zip(context, key_start)]
        fields = dict(decode_blocks=self._tensor(padded), decode_key_counts=counts)
        if self.decode_in_place:
            return dict(fields, decode_mask=None, decode_in_place=True)
        requests = [DecodeRequest(s.request_id, ks, n, blocks,
                                  s.params.max_tokens - len(s.output_ids))
                    for (s, _), ks, n, blocks in zip(decodes, key_start, counts, own)]
        planned = self.workspace.plan(requests) if self.workspace.budget_bytes else None
        if planned is not None:
            return dict(fields, decode_workspace=planned[0], decode_mask=planned[1])
        mask = key_mask(self._tensor(counts), width * bs)
        return dict(fields, decode_mask=None if mask is None else mask[:, None, :])

    def _prefill_spans(self, prefills: list[ScheduledChunk], key_start: list[int],
                       token_start: int, slots: list[torch.Tensor]) -> list[PrefillSpan]:
        spans = []
        for (seq, n), ks in zip(prefills, key_start):
            context_len = seq.num_computed + n
            table = seq.block_table[ks // self.block_size: ceil_div(context_len, self.block_size)]
            blocks = self._tensor(table)
            slots.append(self._slots(blocks, seq.num_computed - ks, context_len - ks))
            spans.append(PrefillSpan(token_start, token_start + n, blocks, ks, context_len))
            token_start += n
        return spans

    def _shared(self, ordered: list[ScheduledChunk], groups: list[tuple[list[int], int]],
                num_decodes: int, spans: list[PrefillSpan]) -> list[SharedPrefix]:
        shared = []
        for members, common in groups:
            rows = []
            for m in members:
                if m < num_decodes:
                    rows.append(self._tensor([m]))
                else:
                    span = spans[m - num_decodes]
                    rows.append(torch.arange(span.start, span.end, device=self.device))
            first, _ = ordered[members[0]]
            blocks = self._tensor(first.block_table[:common])
            shared.append(SharedPrefix(blocks, as_range(torch.cat(rows))))
        return shared

    @torch.inference_mode()
    def run(self, work: list[ScheduledChunk], wanted: list[tuple[Sequence, int]]) -> torch.Tensor:
        """Forward the step (every chunk's keys and values go to the pool) -> the final hidden
        states [len(wanted), hidden] at the (sequence, position) pairs of `wanted`, each position
        one of its sequence's new tokens this step."""
        input_ids, positions, batch = self.build(work)
        hidden = self.model(input_ids, positions, self.attention(self.cache, batch))
        first_row = {}
        row = 0
        for i in packing_order(work):
            seq, num_new = work[i]
            first_row[id(seq)] = row - seq.num_computed  # packed row of position 0
            row += num_new
        rows = [first_row[id(seq)] + position for seq, position in wanted]
        return hidden[torch.tensor(rows, dtype=torch.long, device=self.device)]
