"""One request's state as it moves through the scheduler, and what it returns."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import torch

from kojudge.model.tokenizer import Tokenizer
from kojudge.runtime.sampling import SamplingParams
from kojudge.runtime.stopping import Detokenizer, output_text


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class RequestOutput:
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length"
    logprobs: list[float] | None
    cached_tokens: int  # prompt tokens served from the prefix cache


class Sequence:
    """Prompt plus generated tokens; `num_computed` of them have their keys/values in the cache.

    Prefill, chunked prefill, decode and recompute after preemption are all the same move: compute
    the next tokens past `num_computed`; once every token is computed, the last one's logits are
    sampled.
    """

    def __init__(self, request_id: int, prompt: str | None, prompt_ids: list[int],
                 params: SamplingParams, detokenizer: Detokenizer, score_from: int | None = None):
        self.request_id = request_id
        self.prompt = prompt
        self.token_ids = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.params = params
        self.status = Status.WAITING
        self.num_computed = 0
        # The prefix cache's bookkeeping (PrefixCache.admit / publish / release).
        self.block_table: list[int] = []
        self.num_published_blocks = 0
        self.prefix_node = 0  # the node of the last published block
        self.cached_tokens: int | None = None  # set at first admission
        self.logprobs: list[float] = []
        self.text = ""  # decoded so far, kept only while stop strings are watched
        self.finish_reason: str | None = None
        self.stop_index: int | None = None  # where a matched stop string ends the text
        self.detokenizer = detokenizer
        # Scoring (teacher forcing): log p of every token from this position on, nothing sampled.
        self.score_from = score_from
        self.scores: dict[int, float] = {}  # position -> log p(token at position)
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def max_cached_tokens(self) -> int:
        """Tokens that may come from the prefix cache: not the last (its logits are sampled),
        nor, when scoring, any whose logits predict a scored token."""
        return self.num_tokens - 1 if self.score_from is None else self.score_from - 1

    def scored_positions(self, num_new: int) -> range:
        """Positions of the next `num_new` tokens whose logits predict a scored token."""
        if self.score_from is None:
            return range(0)
        start = max(self.num_computed, self.score_from - 1)
        return range(start, min(self.num_computed + num_new, self.num_tokens - 1))


class ScheduledChunk(NamedTuple):
    """One sequence's share of a step: its next `num_new` tokens are computed."""

    seq: Sequence
    num_new: int


def request_output(seq: Sequence, tokenizer: Tokenizer) -> RequestOutput:
    """What a finished request returns."""
    if seq.score_from is not None:
        positions = range(seq.score_from - 1, seq.num_tokens - 1)
        return RequestOutput(
            request_id=seq.request_id, prompt=seq.prompt,
            prompt_token_ids=seq.token_ids[: seq.score_from],
            text=tokenizer.decode(seq.token_ids[seq.score_from:]),
            token_ids=seq.token_ids[seq.score_from:], finish_reason=seq.finish_reason,
            logprobs=[seq.scores[p] for p in positions], cached_tokens=seq.cached_tokens or 0)
    return RequestOutput(
        request_id=seq.request_id, prompt=seq.prompt,
        prompt_token_ids=seq.token_ids[: seq.num_prompt_tokens],
        text=output_text(seq, tokenizer), token_ids=seq.output_ids,
        finish_reason=seq.finish_reason,
        logprobs=list(seq.logprobs) if seq.params.logprobs else None,
        cached_tokens=seq.cached_tokens or 0)
