"""EngineConfig: how an Engine sizes its KV pool, batches its steps and runs its attention."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kojudge.kernels.dispatch import BACKENDS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EngineConfig:
    """`kv_cache_blocks` sizes the pool directly (tests force preemption with it); otherwise
    `kv_cache_gib` of memory is used, capped at what `max_num_seqs` full-length sequences need; where
    the CPU decode kernel is not built, the torch backend's decode workspace may take up to as
    much again while decoding.
    `pack_weights` runs the linear layers on oneDNN-packed weights (kojudge.kernels.onednn); by
    default on wherever that applies (CPU, float32 or bfloat16). `attention_backend`: torch on
    CPU, triton on CUDA by default; flashinfer when asked for (CUDA, 16-bit)."""

    dtype: str = "float32"
    device: str = "cpu"
    block_size: int = 16
    kv_cache_blocks: int | None = None
    kv_cache_gib: float = 2.0
    max_num_seqs: int = 256
    # Fewer, larger steps: each step streams every weight from memory once.
    max_num_batched_tokens: int = 4096
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enable_cascade: bool = True
    attention_backend: str | None = None
    pack_weights: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"EngineConfig.dtype must be one of {sorted(DTYPES)}, got "
                             f"{self.dtype!r}")
        positive = ("block_size", "max_num_seqs", "max_num_batched_tokens")
        optional_positive = ("kv_cache_blocks", "max_model_len")
        for name in positive + optional_positive:
            value = getattr(self, name)
            checked = value is not None or name in positive
            if checked and not (isinstance(value, int) and value > 0):
                raise ValueError(f"EngineConfig.{name} must be a positive integer, got {value!r}")
        if self.kv_cache_gib <= 0:
            raise ValueError(f"EngineConfig.kv_cache_gib must be > 0, got {self.kv_cache_gib!r}")
        if self.attention_backend not in (None, *BACKENDS):
            raise ValueError(f"EngineConfig.attention_backend must be one of {BACKENDS}, "
                             f"got {self.attention_backend!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]
