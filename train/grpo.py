"""GRPO pieces as pure functions: group-relative advantages."""
from __future__ import annotations

from typing import Sequence

import torch


def group_advantages(rewards: Sequence[float] | torch.Tensor, group_ids: Sequence | torch.Tensor,
                     eps: float = 1e-6) -> torch.Tensor:
    """(r - mean_g) / (std_g + eps) within each group; std is the unbiased one; a lone member gets 0."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if isinstance(group_ids, torch.Tensor):
        group_ids = group_ids.tolist()
    if len(group_ids) != rewards.numel():
        raise ValueError(f"{len(group_ids)} group ids for {rewards.numel()} rewards")
    members: dict = {}
    for index, gid in enumerate(group_ids):
        members.setdefault(gid, []).append(index)
    advantages = torch.zeros_like(rewards)
    for index in members.values():
        if len(index) < 2:
            continue
        r = rewards[index]
        advantages[index] = (r - r.mean()) / (r.std(unbiased=True) + eps)
    return advantages
