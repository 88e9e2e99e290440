"""GPU fast paths (Triton), each beside the torch reference it is tested against."""
from __future__ import annotations

import torch

from kojudge.kernels.dispatch import choose_backend
from kojudge.kernels.logprobs import (chosen_logprobs_chunked, chosen_logprobs_reference,
                                      chosen_logprobs_triton)


def chosen_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    temperature: float = 1.0, return_entropy: bool = False,
                    backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(hidden @ weight.T / temperature)[targets] per row, float32, differentiable in
    hidden and weight, without materializing float32 [T, V] logits; optional entropy (no
    gradient)."""
    if backend == "reference":
        return chosen_logprobs_reference(hidden, weight, targets, temperature, return_entropy)
    if choose_backend(hidden.device, backend) == "torch":
        return chosen_logprobs_chunked(hidden, weight, targets, temperature, return_entropy)
    return chosen_logprobs_triton(hidden, weight, targets, temperature, return_entropy)


__all__ = ["choose_backend", "chosen_logprobs", "chosen_logprobs_chunked",
           "chosen_logprobs_reference", "chosen_logprobs_triton"]
