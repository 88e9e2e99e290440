"""One request's state as it moves through the scheduler."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from kojudge.runtime.sampling import SamplingParams
from kojudge.model.tokenizer import Detokenizer


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

    Prefill, chunked prefill, decode and recompute after preemption are all the same move: compute the
    next tokens past `num_computed`; once every token is computed, the last one's logits are sampled.
    """

    def __init__(self, request_id: int, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
                 detokenizer: Detokenizer):
        self.request_id = request_id
        self.prompt = prompt
        self.token_ids = list(prompt_ids)
        self.num_prompt_tokens = len(prompt_ids)
        self.params = params
        self.status = Status.WAITING
        self.num_computed = 0
        self.block_table: list[int] = []
        self.num_registered_blocks = 0  # full blocks already published to the prefix cache
        self.prefix_node = 0  # prefix-cache node of the last registered block (0 = root)
        self.cached_tokens: int | None = None  # set at first admission
        self.logprobs: list[float] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.stop_index: int | None = None  # where a matched stop string starts in self.text
        self.detokenizer = detokenizer
        self.generator = None if params.seed is None else torch.Generator().manual_seed(params.seed)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed
