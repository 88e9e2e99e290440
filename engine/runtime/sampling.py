"""Sampling parameters and the batched sampler (greedy, temperature, top-k, top-p, per-request
seeds)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k
    seed: int | None = None  # same seed -> same tokens, whatever else shares the batch
    stop: list[str] | str | None = None
    stop_token_ids: list[int] = field(default_factory=list)  # besides the model's EOS
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: bool = False  # log-probs of the chosen tokens
    # "raw": under the unmodified model distribution; "temperature": under logits / temperature,
    # the distribution sampled from before top-k / top-p (what a policy-gradient ratio needs).
    logprobs_mode: str = "raw"

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0, got {self.top_k}")
        if self.logprobs_mode not in ("raw", "temperature"):
            raise ValueError("SamplingParams.logprobs_mode must be 'raw' or 'temperature', got "
                             f"{self.logprobs_mode!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _truncate(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask logits outside each row's top-k / nucleus with -inf (one sort for both)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)
    drop = (top_k[:, None] > 0) & (ranks[None, :] >= top_k[:, None])
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop = mass_before >= top_p[:, None]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample(logits: torch.Tensor, params: list[SamplingParams],
           generators: list[torch.Generator | None],
           shared_generator: torch.Generator) -> torch.Tensor:
    """logits [B, V] in the model's dtype -> token ids [B]; rows that draw do so in float32.

    Random rows draw with the exponential race (argmax p / E, E ~ Exp(1)), which picks token i with
    probability p_i. A seeded row takes its noise from its own generator, so its tokens do not
    depend on the other rows of the batch.
    """
    # max's indices are argmax's (the first maximum), 3-5x faster on CPU; the float32 cast of
    # a 16-bit vocabulary's logits would cost more than the maximum and select the same token.
    greedy_tokens = logits.max(dim=-1).indices
    random_rows = [i for i, p in enumerate(params) if not p.greedy]
    if not random_rows:
        return greedy_tokens
    rows = torch.tensor(random_rows, device=logits.device)
    sub = logits[rows].float() / torch.tensor([params[i].temperature for i in random_rows],
                                      device=logits.device)[:, None]
    top_k = torch.tensor([params[i].top_k for i in random_rows], device=logits.device)
    top_p = torch.tensor([params[i].top_p for i in random_rows], device=logits.device,
                         dtype=sub.dtype)
    if bool((top_k > 0).any()) or bool((top_p < 1).any()):
        sub = _truncate(sub, top_k, top_p)
    probs = sub.softmax(dim=-1)
    noise = torch.empty_like(probs)
    unseeded = [j for j, i in enumerate(random_rows) if generators[i] is None]
    if unseeded:
        shared = torch.empty(len(unseeded), probs.shape[1]).exponential_(generator=shared_generator)
        noise[unseeded] = shared.to(probs.device)
    for j, i in enumerate(random_rows):
        if generators[i] is not None:
            row = torch.empty(probs.shape[1]).exponential_(generator=generators[i])
            noise[j] = row.to(probs.device)
    tokens = greedy_tokens.clone()
    tokens[rows] = (probs / noise).max(dim=-1).indices
    return tokens


def chosen_logprobs(logits: torch.Tensor, tokens: torch.Tensor, params: list[SamplingParams]
                    ) -> list[float | None]:
    """log p(token) for the rows whose params ask for it (see SamplingParams.logprobs_mode),
    else None."""
    rows = [i for i, p in enumerate(params) if p.logprobs]
    result: list[float | None] = [None] * len(params)
    if rows:
        index = torch.tensor(rows, device=logits.device)
        scale = [params[i].temperature if params[i].logprobs_mode == "temperature"
                 and params[i].temperature > 0 else 1.0 for i in rows]
        scaled = logits[index].float() / torch.tensor(scale, device=logits.device)[:, None]
        values = scaled.log_softmax(-1).gather(1, tokens[index][:, None]).squeeze(1)
        for i, value in zip(rows, values.tolist()):
            result[i] = value
    return result
