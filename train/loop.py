"""Pieces both training stages share: the policy, optimizer and schedule, metrics, checkpoints."""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch

from kojudge.model.config import load_config
from kojudge.model.decoder import Model
from kojudge.train.checkpoint import full_weights, latest_state, load_state, save_hf, save_state
from kojudge.train.distributed import TokenLogprobs, shard
from kojudge.model.weights import load_weights

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_policy(model_dir: str | Path, world: int, dtype: str, device: torch.device = torch.device("cpu")
                 ) -> TokenLogprobs:
    """The decoder in float32 master weights on `device`, sharded with FSDP2 across ranks."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    model = Model(load_config(model_dir))
    load_weights(model, model_dir)
    return shard(TokenLogprobs(model.to(device)), world, DTYPES[dtype])


def compute_context(dtype: str, world: int, device: torch.device = torch.device("cpu")):
    """bf16 autocast for a single process (FSDP's mixed-precision policy covers the sharded case)."""
    if dtype == "bfloat16" and world == 1:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(module: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)


def learning_rate(step: int, lr: float, warmup: int, total: int, min_lr_ratio: float) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at `total` steps. A function of the step
    alone, so a resumed run needs no scheduler state."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def apply_update(module: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float, max_grad_norm: float) -> float:
    """Clip, step at `lr`, clear gradients; returns the gradient norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)


class MetricsLog:
    """One JSON line per record in output/metrics.jsonl (rank 0); resumed runs append."""

    def __init__(self, output: str | Path, rank: int):
        self.path = Path(output) / "metrics.jsonl"
        self.rank = rank

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (written after the checkpoint a resumed run starts from)."""
        if self.rank or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        if self.rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def finish_step(record: dict, records: list[dict], log: MetricsLog, bar, shown: str) -> None:
    """Log a step's record, keep it, and show `shown` on the progress bar."""
    log.write(record)
    records.append(record)
    if bar is not None:
        bar.update(1)
        bar.set_postfix({shown: f"{record[shown]:.4f}"})


def resume(module: TokenLogprobs, optimizer: torch.optim.Optimizer, output: str | Path) -> dict:
    """Load the newest training state under `output`, if any; its metadata, or a fresh start."""
    state_dir = latest_state(output)
    return load_state(module, optimizer, state_dir) if state_dir else {"step": 0}


def checkpoint(module: TokenLogprobs, optimizer: torch.optim.Optimizer, base_model: str, output: str | Path,
               meta: dict, rank: int, final: bool = False) -> None:
    """Training state under output/state-<step>/ and a HF model under output/checkpoint-<step>/ (or final/)."""
    output = Path(output)
    save_state(module, optimizer, output / f"state-{meta['step']}", meta, rank)
    weights = full_weights(module)
    if rank == 0:
        save_hf(weights, module, base_model, output / ("final" if final else f"checkpoint-{meta['step']}"))
