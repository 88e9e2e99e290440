"""The policy being trained: the decoder plus the fused chosen-token log-probs, in float32 master
weights, sharded with FSDP2 across ranks."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kojudge.attention.varlen import CausalVarlenAttention
from kojudge.kernels import chosen_logprobs
from kojudge.model.config import load_config
from kojudge.model.decoder import Model
from kojudge.model.weights import load_weights
from kojudge.train.distributed import shard

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Packed batches are padded to a multiple of this many tokens: CPU bf16 matmuls run on oneDNN,
# which keeps kernels per input shape, and batches of ever-new lengths grew a process without end.
SHAPE_MULTIPLE = 256


class TokenLogprobs(nn.Module):
    """log p(target) of every packed token; the head runs inside forward so FSDP keeps the (tied)
    embedding / LM-head weight gathered while it is used."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cu_seqlens: list[int],
                targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        device = self.model.lm_head_weight.device  # batches are packed on the CPU
        input_ids = input_ids.to(device)
        positions = positions.to(device)
        targets = targets.to(device)
        tokens = input_ids.shape[0]
        pad = -tokens % SHAPE_MULTIPLE
        if pad:  # one more sequence, attending only to itself, whose log-probs nobody reads
            input_ids, targets = F.pad(input_ids, (0, pad)), F.pad(targets, (0, pad))
            positions = torch.cat([positions, torch.arange(pad, device=positions.device)])
            cu_seqlens = [*cu_seqlens, tokens + pad]
        hidden = self.model(input_ids, positions, CausalVarlenAttention(cu_seqlens))
        weight = self.model.lm_head_weight
        return chosen_logprobs(hidden, weight, targets, temperature)[0][:tokens]


def build_policy(model_dir: str | Path, world: int, dtype: str,
                 device: torch.device = torch.device("cpu")) -> TokenLogprobs:
    """The decoder in float32 master weights on `device`, sharded with FSDP2 across ranks."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    model = Model(load_config(model_dir))
    load_weights(model, model_dir)
    return shard(TokenLogprobs(model.to(device)), world, DTYPES[dtype])


def compute_context(dtype: str, world: int, device: torch.device = torch.device("cpu")):
    """bf16 autocast for a single process (FSDP's mixed-precision policy covers the sharded
    case)."""
    if dtype == "bfloat16" and world == 1:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
