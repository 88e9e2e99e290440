"""Turns a scheduled step into one packed forward pass and returns the last-token logits."""
from __future__ import annotations

import torch

from kojudge.attention import KVCache, PagedAttention, PagedBatch, PrefillSpan
from kojudge.model import Model
from kojudge.sequence import Sequence


class ModelRunner:
    def __init__(self, model: Model, cache: KVCache, device: torch.device):
        self.model, self.cache, self.device = model, cache, device
        self.block_size = cache.block_size
        self._offsets = torch.arange(self.block_size, device=device)

    def _slots(self, block_table: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Slots of positions [start, end) of a sequence with this block table."""
        return (block_table[:, None] * self.block_size + self._offsets).flatten()[start:end]

    def build(self, work: list[tuple[Sequence, int]]) -> tuple[torch.Tensor, torch.Tensor, PagedBatch]:
        """Pack the step's new tokens (single-token decodes first) and describe their attention."""
        decodes = [(s, n) for s, n in work if n == 1]
        prefills = [(s, n) for s, n in work if n > 1]
        ids: list[int] = []
        positions: list[int] = []
        for seq, n in decodes + prefills:
            ids.extend(seq.token_ids[seq.num_computed: seq.num_computed + n])
            positions.extend(range(seq.num_computed, seq.num_computed + n))
        tables = [torch.tensor(s.block_table, device=self.device) for s, _ in decodes + prefills]
        slot_mapping = []
        decode_blocks = decode_mask = None
        if decodes:
            context = torch.tensor([s.num_computed + 1 for s, _ in decodes], device=self.device)
            width = -(-int(context.max()) // self.block_size)
            decode_blocks = torch.zeros(len(decodes), width, dtype=torch.long, device=self.device)
            for row, table in enumerate(tables[: len(decodes)]):
                table = table[:width]
                decode_blocks[row, : len(table)] = table
            last = context - 1
            slot_mapping.append(decode_blocks.gather(1, (last // self.block_size)[:, None]).squeeze(1)
                                * self.block_size + last % self.block_size)
            if bool((context != width * self.block_size).any()):
                valid = torch.arange(width * self.block_size, device=self.device)[None, :] < context[:, None]
                decode_mask = valid[:, None, :]
        spans = []
        start = len(decodes)
        for (seq, n), table in zip(prefills, tables[len(decodes):]):
            context_len = seq.num_computed + n
            blocks = table[: -(-context_len // self.block_size)]
            slot_mapping.append(self._slots(blocks, seq.num_computed, context_len))
            mask = None
            if seq.num_computed:
                rows = torch.arange(n, device=self.device)[:, None] + seq.num_computed
                mask = torch.arange(context_len, device=self.device)[None, :] <= rows
            spans.append(PrefillSpan(start, start + n, blocks, context_len, mask))
            start += n
        batch = PagedBatch(torch.cat(slot_mapping), len(decodes), decode_blocks, decode_mask, spans)
        return (torch.tensor(ids, device=self.device), torch.tensor(positions, device=self.device), batch)

    @torch.inference_mode()
    def run(self, work: list[tuple[Sequence, int]], sample_rows: list[int]) -> torch.Tensor:
        """Forward the step; float32 logits [len(sample_rows), V] for the listed entries of `work`.

        `sample_rows` index into `work`; each such sequence's last new token is the one sampled.
        """
        input_ids, positions, batch = self.build(work)
        hidden = self.model(input_ids, positions, PagedAttention(self.cache, batch))
        # Packed order is decodes first; map each work entry to the row of its last new token.
        order = [i for i, (_, n) in enumerate(work) if n == 1] + [i for i, (_, n) in enumerate(work) if n > 1]
        last_row, end = {}, 0
        for i in order:
            end += work[i][1]
            last_row[i] = end - 1
        rows = torch.tensor([last_row[i] for i in sample_rows], device=self.device)
        return self.model.logits(hidden[rows]).float()
