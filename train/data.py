"""Training data: chat conversations for SFT (packed, loss on assistant tokens) and preference pairs
for GRPO-PAR (kept together through shuffling, batching and sharding)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from kojudge.utils import iter_jsonl

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # next-token targets, IGNORE where no loss


def tokenize_conversation(tokenizer, messages: list[dict[str, str]],
                          where: str = "conversation") -> Example:
    """Chat-template tokens of a conversation; loss on each assistant turn (its content and end
    tokens).

    Assistant spans are found by rendering growing prefixes of the conversation, so this works for
    any template whose rendering of a prefix is a prefix of the rendering of the whole."""
    hf = tokenizer.hf if hasattr(tokenizer, "hf") else tokenizer
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=False,
                                 return_dict=False)
    loss_mask = [False] * len(ids)
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        head = hf.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True,
                                      return_dict=False)
        upto = hf.apply_chat_template(messages[: i + 1], tokenize=True,
                                      add_generation_prompt=False, return_dict=False)
        if ids[: len(upto)] != upto or upto[: len(head)] != head:
            raise ValueError(f"{where}: the chat template does not render prefixes stably; "
                             f"cannot locate turn {i}")
        for t in range(len(head), len(upto)):
            loss_mask[t] = True
    labels = [ids[t + 1] if t + 1 < len(ids) and loss_mask[t + 1] else IGNORE
              for t in range(len(ids))]
    return Example(ids, labels)


def load_sft(path: str | Path, tokenizer, max_length: int) -> list[Example]:
    examples = []
    for line_no, item in iter_jsonl(path):
        messages = item.get("messages")
        where = f"{path}:{line_no}"
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{where}: missing field 'messages' (a non-empty list of "
                             "{role, content})")
        for m in messages:
            fields = (m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None)
            if not all(isinstance(value, str) for value in fields):
                raise ValueError(f"{where}: every message needs string fields 'role' and 'content'")
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"{where}: no assistant message, nothing to learn")
        example = tokenize_conversation(tokenizer, messages, where)
        if len(example.input_ids) > max_length:
            raise ValueError(f"{where}: {len(example.input_ids)} tokens > max_length {max_length}")
        examples.append(example)
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    labels: torch.Tensor  # [T], IGNORE where no loss
    cu_seqlens: list[int]

    @property
    def num_loss_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def pack(examples: list[Example]) -> PackedBatch:
    """Sequences side by side with no padding; attention stays within each (cu_seqlens)."""
    cu = [0]
    for e in examples:
        cu.append(cu[-1] + len(e.input_ids))
    return PackedBatch(
        input_ids=torch.tensor([t for e in examples for t in e.input_ids]),
        positions=torch.cat([torch.arange(len(e.input_ids)) for e in examples]),
        labels=torch.tensor([t for e in examples for t in e.labels]),
        cu_seqlens=cu,
    )


def sft_batches(examples: list[Example], batch_size: int, seed: int,
                epoch: int) -> list[list[Example]]:
    """A deterministic shuffle per (seed, epoch), cut into batches of `batch_size` sequences."""
    order = list(range(len(examples)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    starts = range(0, len(order), batch_size)
    return [[examples[i] for i in order[k: k + batch_size]] for k in starts]


@dataclass
class PreferencePair:
    id: str
    prompt: str
    chosen: str
    rejected: str
    source: str = "default"
    domain: str = "chat"


def load_pairs(path: str | Path) -> list[PreferencePair]:
    pairs = []
    seen = set()
    for line_no, item in iter_jsonl(path):
        where = f"{path}:{line_no}"
        for name in ("prompt", "chosen", "rejected"):
            if not isinstance(item.get(name), str):
                raise ValueError(f"{where}: missing or non-string field '{name}'")
        pair = PreferencePair(str(item.get("id", f"line-{line_no}")), item["prompt"],
                              item["chosen"], item["rejected"], str(item.get("source", "default")),
                              str(item.get("domain", "chat")))
        if (pair.source, pair.id) in seen:
            raise ValueError(f"{where}: duplicate pair id {pair.id!r} in source {pair.source!r}")
        seen.add((pair.source, pair.id))
        pairs.append(pair)
    if not pairs:
        raise ValueError(f"{path}: no preference pairs")
    return pairs


def pair_batches(pairs: list[PreferencePair], pairs_per_batch: int, seed: int, epoch: int,
                 rank: int = 0, world_size: int = 1) -> list[list[PreferencePair]]:
    """Pairs shuffled as units and batched; rank r gets every world_size-th pair of each batch, so a
    pair's chosen and rejected sides always land in the same batch on the same rank."""
    order = list(range(len(pairs)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    starts = range(0, len(order), pairs_per_batch)
    batches = [[pairs[i] for i in order[k: k + pairs_per_batch]] for k in starts]
    return [batch[rank::world_size] for batch in batches]
