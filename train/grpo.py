"""GRPO with the preference-aware reward (PaTaRM): rollouts from kojudge.Engine, PAR + format rewards,
group-relative advantages, a clipped policy objective with an optional k3 KL term.

The loss pieces are pure functions (as in verl's core_algos); `train_grpo` is the loop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from kojudge.judging.parsers import parse_pointwise
from kojudge.train.config import GRPOConfig
from kojudge.train.rewards import par_rewards


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


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip: float = 0.2
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(r A, clip(r, 1 - c, 1 + c) A), r = exp(logp - old_logp); and where it clipped."""
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref - logp, clamped."""
    d = (ref_logp - logp).clamp(-clamp, clamp)
    return (torch.exp(d) - d - 1).clamp(max=clamp)


def token_mean(values: torch.Tensor, mask: torch.Tensor, total_tokens: float) -> torch.Tensor:
    """Sum over this rank's masked tokens divided by the tokens of all ranks (token-mean aggregation)."""
    return (values * mask).sum() / total_tokens


@dataclass
class Rollout:
    prompt_ids: list[int]
    response_ids: list[int]
    score: float | None
    format_reward: float
    reward: float = 0.0
    group: tuple = ()


def score_pairs(chosen: list[Rollout], rejected: list[Rollout], par: str) -> None:
    """Fill in each rollout's reward: PAR over the pair's two sides plus its own format reward."""
    r_chosen, r_rejected = par_rewards([r.score for r in chosen], [r.score for r in rejected], par)
    for rollout, r in zip(chosen + rejected, r_chosen + r_rejected):
        rollout.reward = r + rollout.format_reward


def collect_rollouts(engine, scorer, pairs, cfg: GRPOConfig, seed: int) -> list[Rollout]:
    """n judge rollouts for each side of each pair, all in one engine batch; rewards filled in."""
    from kojudge.runtime.sampling import SamplingParams

    prompts, groups = [], []
    for p_index, pair in enumerate(pairs):
        for side, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            prompts.append(scorer.pointwise_prompt(pair.prompt, response, pair.domain))
            groups.append((pair.source, pair.id, side))
    params = [SamplingParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                             seed=seed * 100_003 + k * cfg.rollouts + i, stop=["</answer>"],
                             include_stop_str_in_output=True)
              for k in range(len(prompts)) for i in range(cfg.rollouts)]
    outs = engine.generate([p for p in prompts for _ in range(cfg.rollouts)], params)
    rollouts = []
    for k, out in enumerate(outs):
        parsed = parse_pointwise(out.text)
        group = groups[k // cfg.rollouts]
        rollouts.append(Rollout(out.prompt_token_ids, out.token_ids, parsed.score, parsed.format_reward, group=group))
    n = cfg.rollouts
    for p_index in range(len(pairs)):
        base = 2 * n * p_index
        score_pairs(rollouts[base: base + n], rollouts[base + n: base + 2 * n], cfg.par)
    return rollouts


def _pack_rollouts(rollouts: list[Rollout]):
    """Prompt + response of every rollout packed; targets are next tokens; mask marks response tokens."""
    ids, positions, targets, mask, cu = [], [], [], [], [0]
    for r in rollouts:
        seq = r.prompt_ids + r.response_ids
        ids += seq
        positions += range(len(seq))
        targets += seq[1:] + [0]
        mask += [0.0] * (len(r.prompt_ids) - 1) + [1.0] * len(r.response_ids) + [0.0]
        cu.append(len(ids))
    return (torch.tensor(ids), torch.tensor(positions), cu, torch.tensor(targets), torch.tensor(mask))


def train_grpo(cfg: GRPOConfig, progress: bool = True) -> list[dict]:
    """Runs (or resumes) GRPO-PAR; returns the metrics records written by this call."""
    from kojudge.runtime.engine import Engine
    from kojudge.judging.pointwise import PointwiseJudge
    from kojudge.train.loop import (MetricsLog, apply_update, build_policy, checkpoint, compute_context, finish_step,
                                      learning_rate, make_optimizer, resume)
    from kojudge.train.checkpoint import full_weights
    from kojudge.train.data import load_pairs, pair_batches
    from kojudge.train.distributed import all_reduce_sum, init_distributed, training_device

    device = training_device(cfg.device)
    rank, world = init_distributed(device)
    if cfg.normalize not in ("prompt", "pair"):
        raise ValueError(f"normalize must be 'prompt' or 'pair', got {cfg.normalize!r}")
    if cfg.pairs_per_batch < world:
        raise ValueError(f"pairs_per_batch {cfg.pairs_per_batch} < {world} ranks")
    torch.manual_seed(cfg.seed)
    pairs = load_pairs(cfg.data)
    steps_per_epoch = len(pair_batches(pairs, cfg.pairs_per_batch, cfg.seed, 0))
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    module = build_policy(cfg.model, world, cfg.dtype, device)
    # The KL reference is the starting model, frozen (unsharded: judges trained here are small).
    ref_module = build_policy(cfg.model, 1, cfg.dtype, device).eval() if cfg.kl_coef > 0 else None
    optimizer = make_optimizer(module, cfg.lr, cfg.weight_decay)
    step = resume(module, optimizer, cfg.output)["step"]
    log = MetricsLog(cfg.output, rank)
    log.truncate_after(step)
    engine = Engine(cfg.model, dtype=cfg.rollout_dtype, device=str(device))
    scorer = PointwiseJudge(engine, rubrics=cfg.rubrics, template=cfg.template)
    records, bar = [], None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc="grpo", unit="step")
    while step < total:
        start = time.perf_counter()
        epoch, index = divmod(step, steps_per_epoch)
        batch = pair_batches(pairs, cfg.pairs_per_batch, cfg.seed, epoch, rank, world)[index]
        engine.update_weights(full_weights(module))  # rollouts from the current policy, no disk round trip
        rollouts = collect_rollouts(engine, scorer, batch, cfg, seed=cfg.seed + 7919 * step + rank)
        rewards = [r.reward for r in rollouts]
        group_of = [r.group if cfg.normalize == "prompt" else r.group[:2] for r in rollouts]
        advantages = group_advantages(rewards, group_of)
        ids, positions, cu, targets, mask = _pack_rollouts(rollouts)
        token_adv = torch.cat([torch.full((cu[k + 1] - cu[k],), float(a)) for k, a in enumerate(advantages)])
        mask, token_adv = mask.to(device), token_adv.to(device)
        tokens = all_reduce_sum(float(mask.sum()), world)
        with torch.no_grad(), compute_context(cfg.dtype, world, device):
            module.eval()
            old_logp = module(ids, positions, cu, targets)
            ref_logp = ref_module(ids, positions, cu, targets) if ref_module is not None else None
        stats = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
        for _ in range(cfg.ppo_epochs):
            module.train()
            with compute_context(cfg.dtype, world, device):
                logp = module(ids, positions, cu, targets)
                per_token, clipped = clipped_policy_loss(logp, old_logp, token_adv, cfg.clip)
                loss = token_mean(per_token, mask, tokens)
                if ref_logp is not None:
                    kl = token_mean(kl_k3(logp, ref_logp), mask, tokens)
                    loss = loss + cfg.kl_coef * kl
                    stats["kl"] = all_reduce_sum(float(kl.detach()), world) / cfg.ppo_epochs
            (loss * world).backward()
            grad_norm = apply_update(module, optimizer, learning_rate(step, cfg.lr, cfg.warmup_steps, total,
                                                                      cfg.min_lr_ratio), cfg.max_grad_norm)
            stats["loss"] += all_reduce_sum(float(loss.detach()), world) / cfg.ppo_epochs
            stats["clip_fraction"] += all_reduce_sum(float(token_mean(clipped, mask, tokens)), world) / cfg.ppo_epochs
        step += 1
        n_roll = all_reduce_sum(len(rollouts), world)
        valid = [r.score for r in rollouts if r.score is not None]
        chosen_wins = sum(
            1 for k in range(0, len(rollouts), 2 * cfg.rollouts)
            if _mean([r.score for r in rollouts[k: k + cfg.rollouts]]) > _mean([r.score for r in rollouts[k + cfg.rollouts: k + 2 * cfg.rollouts]]))
        record = {"step": step, **stats, "grad_norm": grad_norm,
                  "reward": all_reduce_sum(sum(rewards), world) / n_roll,
                  "par_reward": all_reduce_sum(sum(r.reward - r.format_reward for r in rollouts), world) / n_roll,
                  "format_reward": all_reduce_sum(sum(r.format_reward for r in rollouts), world) / n_roll,
                  "valid_score_rate": all_reduce_sum(len(valid), world) / n_roll,
                  "pair_accuracy": all_reduce_sum(chosen_wins, world) / all_reduce_sum(len(batch), world),
                  "response_tokens": int(tokens), "seconds": time.perf_counter() - start}
        finish_step(record, records, log, bar, "reward")
        if step % cfg.save_every == 0 or step == total:
            checkpoint(module, optimizer, cfg.model, cfg.output, {"step": step}, rank, final=step == total)
    if bar is not None:
        bar.close()
    return records


def _mean(scores: list[float | None]) -> float:
    """Mean of valid scores; -inf when none is valid (so such a side never wins)."""
    valid = [s for s in scores if s is not None]
    return sum(valid) / len(valid) if valid else float("-inf")
