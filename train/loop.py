"""The skeleton SFT and GRPO share: the policy and its optimizer, the learning-rate schedule,
resuming from the newest training state, one metrics record per step, and checkpoints."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from kojudge.train.checkpoint import full_weights, latest_state, load_state, save_hf, save_state
from kojudge.train.config import GRPOConfig, SFTConfig
from kojudge.train.policy import build_policy


def make_optimizer(module: torch.nn.Module, lr: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)


def learning_rate(step: int, lr: float, warmup: int, total: int, min_lr_ratio: float) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at `total` steps. A function of the
    step alone, so a resumed run needs no scheduler state."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def apply_update(module: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float,
                 max_grad_norm: float) -> float:
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
        keep = [line for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        if self.rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class TrainingRun:
    """One stage's policy, optimizer and bookkeeping. `run(one_step)` calls one_step(step) for
    every step from the resumed one to `total`, each returning that step's metrics."""

    def __init__(self, cfg: SFTConfig | GRPOConfig, rank: int, world: int, device: torch.device,
                 total: int):
        self.cfg = cfg
        self.rank = rank
        self.world = world
        self.total = total
        self.module = build_policy(cfg.model, world, cfg.dtype, device)
        self.optimizer = make_optimizer(self.module, cfg.lr, cfg.weight_decay)
        state_dir = latest_state(cfg.output)
        meta = load_state(self.module, self.optimizer, state_dir) if state_dir else {"step": 0}
        self.step = meta["step"]
        self.log = MetricsLog(cfg.output, rank)
        self.log.truncate_after(self.step)

    def lr(self, step: int) -> float:
        cfg = self.cfg
        return learning_rate(step, cfg.lr, cfg.warmup_steps, self.total, cfg.min_lr_ratio)

    def update(self, step: int) -> float:
        """The optimizer step at `step`'s learning rate; returns the gradient norm."""
        return apply_update(self.module, self.optimizer, self.lr(step), self.cfg.max_grad_norm)

    def run(self, one_step: Callable[[int], dict], name: str, shown: str,
            progress: bool = True) -> list[dict]:
        """Every remaining step; returns the metrics records this call wrote."""
        records = []
        with tqdm(total=self.total, initial=self.step, desc=name, unit="step",
                  disable=not progress or self.rank != 0) as bar:
            while self.step < self.total:
                record = one_step(self.step)
                self.step += 1
                record = {"step": self.step, **record}
                self.log.write(record)
                records.append(record)
                bar.update(1)
                bar.set_postfix({shown: f"{record[shown]:.4f}"})
                if self.step % self.cfg.save_every == 0 or self.step == self.total:
                    self.checkpoint(final=self.step == self.total)
        return records

    def checkpoint(self, final: bool) -> None:
        """The training state under output/state-<step>/ and a HF model under
        output/checkpoint-<step>/ (or final/)."""
        output = Path(self.cfg.output)
        meta = {"step": self.step}
        save_state(self.module, self.optimizer, output / f"state-{self.step}", meta, self.rank)
        weights = full_weights(self.module)
        if self.rank == 0:
            name = "final" if final else f"checkpoint-{self.step}"
            save_hf(weights, self.module, self.cfg.model, output / name)
