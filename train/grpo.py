"""GRPO with the preference-aware reward (PaTaRM): rollouts from kojudge.Engine, PAR + format
rewards, group-relative advantages, a clipped policy objective with an optional k3 KL term.

The loss pieces are pure functions (as in verl's core_algos); a step of `train_grpo` is rollouts,
advantages, update and metrics, each a function of its own.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from kojudge.judging.parsers import POINTWISE_STOP, parse_pointwise
from kojudge.judging.pointwise import PointwiseJudge
from kojudge.runtime.engine import Engine
from kojudge.runtime.sampling import SamplingParams
from kojudge.train.checkpoint import full_weights
from kojudge.train.config import GRPOConfig
from kojudge.train.data import PreferencePair, load_pairs, pair_batches
from kojudge.train.distributed import all_reduce_sum, init_distributed, training_device
from kojudge.train.loop import TrainingRun
from kojudge.train.policy import TokenLogprobs, build_policy, compute_context
from kojudge.train.rewards import par_rewards


def group_advantages(rewards: Sequence[float] | torch.Tensor, group_ids: Sequence | torch.Tensor,
                     eps: float = 1e-6) -> torch.Tensor:
    """(r - mean_g) / (std_g + eps) within each group; std is the unbiased one; a lone member gets
    0."""
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


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(r A, clip(r, 1 - c, 1 + c) A), r = exp(logp - old_logp); and where
    it clipped."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref - logp,
    clamped."""
    d = (ref_logp - logp).clamp(-clamp, clamp)
    return (torch.exp(d) - d - 1).clamp(max=clamp)


def token_mean(values: torch.Tensor, mask: torch.Tensor, total_tokens: float) -> torch.Tensor:
    """Sum over this rank's masked tokens divided by the tokens of all ranks (token-mean
    aggregation)."""
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
    scores = ([r.score for r in chosen], [r.score for r in rejected])
    r_chosen, r_rejected = par_rewards(*scores, par)
    for rollout, r in zip(chosen + rejected, r_chosen + r_rejected):
        rollout.reward = r + rollout.format_reward


def collect_rollouts(scorer: PointwiseJudge, pairs: list[PreferencePair], n: int, par: str,
                     seed: int) -> list[Rollout]:
    """n judge rollouts of each side of each pair, all in one engine batch, rewards filled in:
    the chosen side's n, then the rejected side's, pair after pair."""
    prompts, groups = [], []
    for pair in pairs:
        for side, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            prompts.append(scorer.pointwise_prompt(pair.prompt, response, pair.domain))
            groups.append((pair.source, pair.id, side))
    seeds = [seed * 100_003 + k * n for k in range(len(prompts))]
    rollouts = []
    for group, outs in zip(groups, scorer.rollouts(prompts, n, seeds)):
        for out in outs:
            parsed = parse_pointwise(out.text)
            rollouts.append(Rollout(out.prompt_token_ids, out.token_ids, parsed.score,
                                    parsed.format_reward, group=group))
    for base in range(0, len(rollouts), 2 * n):
        score_pairs(rollouts[base: base + n], rollouts[base + n: base + 2 * n], par)
    return rollouts


@dataclass
class PackedRollouts:
    """Prompt + response of every rollout packed; targets are the next tokens; `mask` marks the
    response tokens; `advantages` is each token's rollout advantage."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    cu_seqlens: list[int]
    targets: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    temperature: float  # the rollouts' sampling temperature

    def logprobs(self, module: TokenLogprobs) -> torch.Tensor:
        """log p of every target under the distribution the rollouts were sampled from."""
        return module(self.input_ids, self.positions, self.cu_seqlens, self.targets,
                      self.temperature)


def pack_rollouts(rollouts: list[Rollout], advantages: torch.Tensor, device: torch.device,
                  temperature: float = 1.0) -> PackedRollouts:
    ids = []
    positions = []
    targets = []
    mask = []
    token_adv = []
    cu = [0]
    for r, advantage in zip(rollouts, advantages.tolist()):
        seq = r.prompt_ids + r.response_ids
        ids += seq
        positions += range(len(seq))
        targets += seq[1:] + [0]
        mask += [0.0] * (len(r.prompt_ids) - 1) + [1.0] * len(r.response_ids) + [0.0]
        token_adv += [advantage] * len(seq)
        cu.append(len(ids))
    return PackedRollouts(torch.tensor(ids), torch.tensor(positions), cu, torch.tensor(targets),
                          torch.tensor(mask, device=device),
                          torch.tensor(token_adv, device=device), temperature)


def rollout_advantages(rollouts: list[Rollout], normalize: str) -> torch.Tensor:
    """Group-relative advantages within each judge prompt's n rollouts, or each pair's 2n."""
    groups = [r.group if normalize == "prompt" else r.group[:2] for r in rollouts]
    if len(set(groups)) == len(groups):
        raise ValueError("every advantage group has one member, so every advantage is 0: "
                         "give rollouts >= 2 (or normalize='pair')")
    return group_advantages([r.reward for r in rollouts], groups)


def policy_update(run: TrainingRun, ref_module: TokenLogprobs | None, batch: PackedRollouts,
                  step: int) -> dict:
    """cfg.ppo_epochs clipped updates on one batch of rollouts -> loss, kl, clip_fraction,
    grad_norm (averaged over the epochs)."""
    cfg, world, module = run.cfg, run.world, run.module
    device = batch.mask.device
    tokens = all_reduce_sum(float(batch.mask.sum()), world)
    with torch.no_grad(), compute_context(cfg.dtype, world, device):
        module.eval()
        old_logp = batch.logprobs(module)
        ref_logp = batch.logprobs(ref_module) if ref_module is not None else None
    stats = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
    for _ in range(cfg.ppo_epochs):
        module.train()
        with compute_context(cfg.dtype, world, device):
            logp = batch.logprobs(module)
            per_token, clipped = clipped_policy_loss(logp, old_logp, batch.advantages, cfg.clip)
            loss = token_mean(per_token, batch.mask, tokens)
            if ref_logp is not None:
                kl = token_mean(kl_k3(logp, ref_logp), batch.mask, tokens)
                loss = loss + cfg.kl_coef * kl
                stats["kl"] = all_reduce_sum(float(kl.detach()), world) / cfg.ppo_epochs
        (loss * world).backward()
        stats["grad_norm"] = run.update(step)
        stats["loss"] += all_reduce_sum(float(loss.detach()), world) / cfg.ppo_epochs
        clip_fraction = float(token_mean(clipped, batch.mask, tokens))
        stats["clip_fraction"] += all_reduce_sum(clip_fraction, world) / cfg.ppo_epochs
    stats["response_tokens"] = int(tokens)
    return stats


def rollout_metrics(rollouts: list[Rollout], n: int, num_pairs: int, world: int) -> dict:
    """Mean rewards over every rank's rollouts, the valid-score rate, and pair accuracy: the
    share of pairs whose chosen side's mean score beats the rejected side's."""
    count = all_reduce_sum(len(rollouts), world)

    def mean(values: list[float]) -> float:
        return all_reduce_sum(sum(values), world) / count

    chosen_wins = sum(1 for k in range(0, len(rollouts), 2 * n)
                      if _mean_score(rollouts[k: k + n]) > _mean_score(rollouts[k + n: k + 2 * n]))
    return {"reward": mean([r.reward for r in rollouts]),
            "par_reward": mean([r.reward - r.format_reward for r in rollouts]),
            "format_reward": mean([r.format_reward for r in rollouts]),
            "valid_score_rate": mean([float(r.score is not None) for r in rollouts]),
            "pair_accuracy": all_reduce_sum(chosen_wins, world) / all_reduce_sum(num_pairs, world)}


def _mean_score(rollouts: list[Rollout]) -> float:
    """Mean of the valid scores; -inf when none is valid (so such a side never wins)."""
    valid = [r.score for r in rollouts if r.score is not None]
    return sum(valid) / len(valid) if valid else float("-inf")


def rollout_scorer(cfg: GRPOConfig, device: torch.device) -> PointwiseJudge:
    """The pointwise judge the rollouts come from: an engine on the starting weights, sampling
    as the config says."""
    engine = Engine(cfg.model, dtype=cfg.rollout_dtype, device=str(device))
    params = SamplingParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, stop=[POINTWISE_STOP],
                            include_stop_str_in_output=True)
    return PointwiseJudge(engine, rubrics=cfg.rubrics, params=params, template=cfg.template)


def train_grpo(cfg: GRPOConfig, progress: bool = True) -> list[dict]:
    """Runs (or resumes) GRPO-PAR; returns the metrics records written by this call."""
    device = training_device(cfg.device)
    rank, world = init_distributed(device)
    if cfg.pairs_per_batch < world:
        raise ValueError(f"pairs_per_batch {cfg.pairs_per_batch} < {world} ranks")
    torch.manual_seed(cfg.seed)
    pairs = load_pairs(cfg.data)
    steps_per_epoch = len(pair_batches(pairs, cfg.pairs_per_batch, cfg.seed, 0))
    run = TrainingRun(cfg, rank, world, device, cfg.max_steps or steps_per_epoch * cfg.epochs)
    # The KL reference is the starting model, frozen (unsharded: judges trained here are small).
    ref_module = None
    if cfg.kl_coef > 0:
        ref_module = build_policy(cfg.model, 1, cfg.dtype, device).eval()
    scorer = rollout_scorer(cfg, device)

    def one_step(step: int) -> dict:
        start = time.perf_counter()
        epoch, index = divmod(step, steps_per_epoch)
        batch = pair_batches(pairs, cfg.pairs_per_batch, cfg.seed, epoch, rank, world)[index]
        # Rollouts from the current policy, with no round trip through the disk.
        scorer.engine.update_weights(full_weights(run.module))
        seed = cfg.seed + 7919 * step + rank
        rollouts = collect_rollouts(scorer, batch, cfg.rollouts, cfg.par, seed)
        advantages = rollout_advantages(rollouts, cfg.normalize)
        packed = pack_rollouts(rollouts, advantages, device, cfg.temperature)
        stats = policy_update(run, ref_module, packed, step)
        metrics = rollout_metrics(rollouts, cfg.rollouts, len(batch), world)
        return {**stats, **metrics, "seconds": time.perf_counter() - start}

    return run.run(one_step, "grpo", "reward", progress)
