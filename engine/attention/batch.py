"""One engine step as attention sees it: the paged KV pool, and where each new token's keys go and
which keys each query reads (its own blocks, a shared prefix, a decode workspace row)."""
from __future__ import annotations

from dataclasses import dataclass, field
import math
import mmap
from typing import TYPE_CHECKING

import torch

from kojudge.kernels.cpu_attention import store_kv
from kojudge.kernels.native import library
from kojudge.utils import ceil_div

if TYPE_CHECKING:
    from kojudge.attention.workspace import WorkspaceStep


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype,
               device: torch.device | str) -> torch.Tensor:
    """torch.zeros, but on CPU an anonymous mapping whose pages the OS zeroes on first touch: a
    pool of gigabytes costs nothing until its blocks are used (torch.zeros writes every page,
    seconds per GiB, at engine construction). Not numpy's calloc: it asks for huge pages, whose
    compaction stalled single first writes by up to 19 ms."""
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if torch.device(device).type != "cpu" or nbytes == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).view(shape)


class KVCache:
    """Keys and values of every layer in one paged pool: slot = block * block_size + offset.

    Laid out [layer, kv_head, slot, d], so that gathering a batch's blocks for one layer
    (`blocks(layer)[:, block_table]`) yields [kv_heads, B, positions, d] for batched matmuls with no
    further copy, each gathered block one contiguous run of memory.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str):
        shape = (num_layers, num_kv_heads, num_blocks * block_size, head_dim)
        self.k = lazy_zeros(shape, dtype, device)
        self.v = lazy_zeros(shape, dtype, device)
        self.block_size = block_size
        self.num_blocks = num_blocks
        on_cpu = library is not None and self.k.device.type == "cpu"
        self._store = library.store_kv if on_cpu else store_kv  # C++ row copies where loaded

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        """Write new keys/values [T, kv_heads, d] of one layer into their slots."""
        self._store(k, v, self.k[layer], self.v[layer], slots)

    def blocks(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's keys and values as [kv_heads, num_blocks, block_size, d] views."""
        kv_heads, _, d = self.k.shape[1:]
        shape = (kv_heads, self.num_blocks, self.block_size, d)
        return self.k[layer].view(shape), self.v[layer].view(shape)

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        element = torch.empty(0, dtype=dtype).element_size()
        return 2 * num_layers * block_size * num_kv_heads * head_dim * element


@dataclass
class PrefillSpan:
    """New tokens [start, end) of one sequence. They attend to keys at positions [key_start, C)
    read from `blocks` (C includes the span), plus, when key_start > 0, a shared prefix."""

    start: int
    end: int
    blocks: torch.Tensor  # blocks holding positions key_start .. C-1
    key_start: int  # a multiple of block_size; > 0 only when a SharedPrefix covers what is before
    context_len: int

    @property
    def past(self) -> int:
        """Positions before the span; 0 when the span is the whole context (plain causal)."""
        return self.context_len - (self.end - self.start)

    def mask(self) -> torch.Tensor:
        """[L, C - key_start] bool: each new token sees the keys up to its own position."""
        device = self.blocks.device
        rows = torch.arange(self.end - self.start, device=device)[:, None] + self.past
        keys = torch.arange(self.key_start, self.context_len, device=device)
        return keys[None, :] <= rows


@dataclass
class SharedPrefix:
    """Blocks that several sequences' contexts begin with, attended once for all their queries
    (cascade attention); each member's own suffix is attended apart, the two merged by LSE."""

    blocks: torch.Tensor
    token_rows: torch.Tensor | slice  # rows of the packed batch whose queries see this prefix


@dataclass
class PagedBatch:
    """Where one step's new tokens go and what they attend to. Decodes come first in the packing."""

    slot_mapping: torch.Tensor  # [T] slot written for each new token
    num_decodes: int
    # [B, nb] blocks of each decoding sequence past its shared prefix (padded)
    decode_blocks: torch.Tensor | None
    # bool, False past a sequence's keys: [B, 1, nb * block_size], or [B, 1, 1, length] with a
    # workspace
    decode_mask: torch.Tensor | None
    prefills: list[PrefillSpan]
    shared: list[SharedPrefix] = field(default_factory=list)
    decode_workspace: WorkspaceStep | None = None  # when set, decodes read it, not the blocks
    decode_key_counts: list[int] = field(default_factory=list)  # past the shared prefix
    decode_in_place: bool = False  # decodes read decode_blocks in the pool (CPU decode kernel)
    spans_in_place: bool = False  # prefill spans read their blocks in the pool (CPU kernel)


@dataclass
class KeyRuns:
    """A step's attention as varlen kernels see it: runs of query rows [q_start[i], q_start[i+1])
    over keys held in `blocks[i]` (kv_lens[i] of them). In `own` runs (causal) query j of a run
    sees its first kv_lens[i] - (rows in the run) + j + 1 keys; `shared` runs see all their keys."""

    q_start: list[int]
    blocks: list[torch.Tensor]
    kv_lens: list[int]

    @classmethod
    def own(cls, batch: PagedBatch, block_size: int) -> KeyRuns:
        """Each decode and each prefill span over its own keys, past any shared prefix."""
        runs = cls([0], [], [])
        for i, count in enumerate(batch.decode_key_counts):
            runs.q_start.append(i + 1)
            runs.blocks.append(batch.decode_blocks[i, : ceil_div(count, block_size)])
            runs.kv_lens.append(count)
        for span in batch.prefills:
            runs.q_start.append(span.end)
            runs.blocks.append(span.blocks)
            runs.kv_lens.append(span.context_len - span.key_start)
        return runs

    @classmethod
    def shared(cls, batch: PagedBatch, block_size: int) -> tuple[KeyRuns, torch.Tensor] | None:
        """Each shared prefix over its blocks, its members' queries gathered prefix after prefix
        -> (runs, the packed rows gathered), or None without shared prefixes. A sequence shares
        one prefix at most, so the rows are distinct."""
        if not batch.shared:
            return None
        device = batch.slot_mapping.device
        rows = [as_index(p.token_rows, device) for p in batch.shared]
        q_start = [0]
        for r in rows:
            q_start.append(q_start[-1] + len(r))
        blocks = [p.blocks for p in batch.shared]
        runs = cls(q_start, blocks, [len(b) * block_size for b in blocks])
        return runs, torch.cat(rows)

    @property
    def max_rows(self) -> int:
        return max(end - start for start, end in zip(self.q_start, self.q_start[1:]))


def as_range(index: torch.Tensor) -> torch.Tensor | slice:
    """Consecutive ids (pool blocks, packed rows) as a slice, so that indexing with them is a
    view, not a gather."""
    n = index.numel()
    if n and int(index[-1] - index[0]) == n - 1 and (n == 1 or bool((index.diff() == 1).all())):
        return slice(int(index[0]), int(index[0]) + n)
    return index


def as_index(rows: torch.Tensor | slice, device: torch.device) -> torch.Tensor:
    """The inverse of as_range: rows as an index tensor."""
    if isinstance(rows, slice):
        return torch.arange(rows.start, rows.stop, device=device)
    return rows
