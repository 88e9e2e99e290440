"""Process group, FSDP2 sharding and the training module (decoder + fused chosen-token log-probs)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kojudge.attention.varlen import CausalVarlenAttention
from kojudge.kernels import chosen_logprobs
from kojudge.model.decoder import Model

# Packed batches are padded to a multiple of this many tokens. CPU bf16 matmuls run on oneDNN, which
# builds and keeps kernels per input shape: batches of ever-new lengths grew an SFT process by ~25 MB a
# step (10 GB in 400 steps); with few distinct shapes the growth stops.
SHAPE_MULTIPLE = 256


def training_device(device: str) -> torch.device:
    """The configured device as this process's own: a bare 'cuda' is cuda:LOCAL_RANK under torchrun."""
    from kojudge.app.jobs import process_device

    try:
        resolved = torch.device(process_device(device))
    except RuntimeError:  # not a device name at all
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: not a training device (cpu | cuda | cuda:N)")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: torch sees no CUDA device here")
        if resolved.index is not None:  # NCCL and later allocations use the current device
            torch.cuda.set_device(resolved)
    return resolved


def init_distributed(device: torch.device = torch.device("cpu")) -> tuple[int, int]:
    """(rank, world size); starts a process group under torchrun (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def close_distributed() -> None:
    """Wait for every rank, then tear the process group down. A rank that leaves while another still
    writes (rank 0 saving weights) can abort inside gloo's teardown."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t)


class TokenLogprobs(nn.Module):
    """log p(target) of every packed token; the head runs inside forward so FSDP keeps the (tied)
    embedding / LM-head weight gathered while it is used."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cu_seqlens: list[int], targets: torch.Tensor,
                temperature: float = 1.0) -> torch.Tensor:
        device = self.model.lm_head_weight.device  # batches are packed on the CPU
        input_ids, positions, targets = input_ids.to(device), positions.to(device), targets.to(device)
        tokens = input_ids.shape[0]
        pad = -tokens % SHAPE_MULTIPLE
        if pad:  # one more sequence, attending only to itself, whose log-probs nobody reads
            input_ids, targets = F.pad(input_ids, (0, pad)), F.pad(targets, (0, pad))
            positions = torch.cat([positions, torch.arange(pad, device=positions.device)])
            cu_seqlens = [*cu_seqlens, tokens + pad]
        hidden = self.model(input_ids, positions, CausalVarlenAttention(cu_seqlens))
        return chosen_logprobs(hidden, self.model.lm_head_weight, targets, temperature)[0][:tokens]


def shard(module: TokenLogprobs, world: int, dtype: torch.dtype) -> TokenLogprobs:
    """FSDP2: one unit per decoder layer plus the root; parameters in `dtype`, gradients reduced in float32."""
    if world == 1:
        return module
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(module.model.lm_head_weight.device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in module.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    return module
