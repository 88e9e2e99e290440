"""Training configuration as dataclasses, read from YAML or JSON files."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar


@dataclass
class SFTConfig:
    model: str  # local HF model directory to start from
    data: str  # JSONL: {"messages": [{"role", "content"}, ...]}
    output: str  # checkpoints, metrics.jsonl
    eval_data: str | None = None
    max_length: int = 2048
    batch_size: int = 8  # sequences per micro-batch, all ranks together
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0
    dtype: str = "float32"  # compute dtype; master weights stay float32
    device: str = "cpu"  # cpu | cuda (under torchrun each rank takes its own GPU, cuda:LOCAL_RANK)
    eval_every: int = 50
    save_every: int = 100
    seed: int = 0


@dataclass
class GRPOConfig:
    model: str  # local HF model directory (usually the SFT output's final/)
    data: str  # JSONL: {"id", "prompt", "chosen", "rejected", "source", "domain"}
    output: str
    # A pointwise template file (default: PaTaRM's); see kojudge.PointwiseJudge.
    template: str | None = None
    # The primary rubric per domain, added to / replacing the built-in ones.
    rubrics: dict[str, str] | None = None
    pairs_per_batch: int = 4  # all ranks together; a pair's two sides stay on one rank
    rollouts: int = 4  # judgments per response (n)
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    par: str = "graded"  # graded | constant
    normalize: str = "prompt"  # advantages within each judge prompt's n rollouts, or "pair" (2n)
    clip: float = 0.2
    kl_coef: float = 0.0  # k3 estimator against the starting weights; 0 = no reference model
    ppo_epochs: int = 1
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    max_grad_norm: float = 1.0
    dtype: str = "float32"
    rollout_dtype: str = "float32"
    device: str = "cpu"  # training and rollouts: cpu | cuda (under torchrun, cuda:LOCAL_RANK)
    save_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.normalize not in ("prompt", "pair"):
            raise ValueError(f"normalize must be 'prompt' or 'pair', got {self.normalize!r}")
        if self.rollouts < 2 and self.normalize == "prompt":
            raise ValueError(f"rollouts: {self.rollouts} rollout per judge prompt makes every "
                             "advantage 0 (each group of normalize='prompt' is one rollout); give "
                             "rollouts >= 2, or normalize='pair'")
        if self.rollouts < 1:
            raise ValueError(f"rollouts must be >= 1, got {self.rollouts}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (GRPO samples its rollouts), got "
                             f"{self.temperature}")


Config = TypeVar("Config", SFTConfig, GRPOConfig)


def load_train_config(path: str | Path, cls: type[Config]) -> Config:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text)
    else:
        raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.name not in raw]
    if missing:
        raise ValueError(f"{path}: missing required setting(s) {missing}")
    return cls(**raw)
