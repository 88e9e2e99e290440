"""Supervised fine-tuning on chat transcripts: packed sequences, loss on assistant tokens only."""
from __future__ import annotations

import time

import torch

from kojudge.model.tokenizer import Tokenizer
from kojudge.train.config import SFTConfig
from kojudge.train.data import IGNORE, PackedBatch, load_sft, pack, sft_batches
from kojudge.train.distributed import all_reduce_sum, init_distributed, training_device
from kojudge.train.loop import TrainingRun, apply_update
from kojudge.train.policy import TokenLogprobs, compute_context
from kojudge.utils import ceil_div


def token_loss_sum(module: TokenLogprobs, batch: PackedBatch) -> torch.Tensor:
    """Sum of -log p over the loss tokens of a packed batch."""
    logp = module(batch.input_ids, batch.positions, batch.cu_seqlens, batch.labels.clamp(min=0))
    return -(logp * (batch.labels != IGNORE).to(logp.device)).sum()


def sft_step(module: TokenLogprobs, optimizer: torch.optim.Optimizer,
             micro_batches: list[PackedBatch], world: int, dtype: str, lr: float,
             max_grad_norm: float) -> dict:
    """One optimizer step over this rank's micro-batches. The loss is the mean over every loss
    token of the step, all ranks together; FSDP averages gradients over ranks, hence the factor
    `world`."""
    tokens = all_reduce_sum(sum(b.num_loss_tokens for b in micro_batches), world)
    module.train()
    loss_sum = 0.0
    for batch in micro_batches:
        with compute_context(dtype, world, module.model.lm_head_weight.device):
            loss = token_loss_sum(module, batch)
        (loss * world / tokens).backward()
        loss_sum += float(loss.detach())
    grad_norm = apply_update(module, optimizer, lr, max_grad_norm)
    return {"loss": all_reduce_sum(loss_sum, world) / tokens, "lr": lr, "grad_norm": grad_norm,
            "tokens": int(tokens)}


@torch.no_grad()
def evaluate(module: TokenLogprobs, examples, batch_size: int, rank: int, world: int) -> float:
    total = count = 0.0
    for start in range(0, len(examples), batch_size):
        part = examples[start: start + batch_size][rank::world]
        if part:
            batch = pack(part)
            total += float(token_loss_sum(module, batch))
            count += batch.num_loss_tokens
    return all_reduce_sum(total, world) / max(1.0, all_reduce_sum(count, world))


def train_sft(cfg: SFTConfig, progress: bool = True) -> list[dict]:
    """Runs (or resumes) SFT; returns the metrics records written by this call."""
    device = training_device(cfg.device)
    rank, world = init_distributed(device)
    if cfg.batch_size < world:
        raise ValueError(f"batch_size {cfg.batch_size} < {world} ranks: every rank needs a "
                         "sequence per micro-batch")
    torch.manual_seed(cfg.seed)
    tokenizer = Tokenizer(cfg.model)
    examples = load_sft(cfg.data, tokenizer, cfg.max_length)
    eval_examples = None
    if cfg.eval_data:
        eval_examples = load_sft(cfg.eval_data, tokenizer, cfg.max_length)
    batches_per_epoch = len(sft_batches(examples, cfg.batch_size, cfg.seed, 0))
    steps_per_epoch = ceil_div(batches_per_epoch, cfg.grad_accum)
    run = TrainingRun(cfg, rank, world, device, cfg.max_steps or steps_per_epoch * cfg.epochs)

    def one_step(step: int) -> dict:
        start = time.perf_counter()
        epoch, index = divmod(step, steps_per_epoch)
        batches = sft_batches(examples, cfg.batch_size, cfg.seed, epoch)
        micro = batches[index * cfg.grad_accum: (index + 1) * cfg.grad_accum]
        packed = [pack(b[rank::world]) for b in micro if b[rank::world]]
        record = sft_step(run.module, run.optimizer, packed, world, cfg.dtype, run.lr(step),
                          cfg.max_grad_norm)
        record["tokens_per_s"] = record["tokens"] / (time.perf_counter() - start)
        done = step + 1
        if eval_examples is not None and (done % cfg.eval_every == 0 or done == run.total):
            run.module.eval()
            with compute_context(cfg.dtype, world, device):
                record["eval_loss"] = evaluate(run.module, eval_examples, cfg.batch_size, rank,
                                               world)
        return record

    return run.run(one_step, "sft", "loss", progress)
