"""One decoder for Qwen2, Qwen3 and Llama-style checkpoints, over a packed varlen batch.

The model holds weights only. Where keys and values live (a paged KV cache while serving, nothing
while training) is the business of the `attention` callable passed to `forward`, so the same class
serves the engine and the trainer.
"""
from __future__ import annotations

from contextlib import contextmanager
import math
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from kojudge.kernels import onednn, token_ops
from kojudge.model.config import ModelConfig


class Attention(Protocol):
    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor) -> torch.Tensor:
        """q [T, heads, d], k/v [T, kv_heads, d] for the packed new tokens -> output [T, heads,
        d]."""
        ...


class Linear(nn.Linear):
    """nn.Linear on oneDNN where it applies (kojudge.kernels.onednn): on a packed copy of the
    weight once `Model.pack_weights` made one (CPU inference), else on the dense weight
    (training)."""

    packed: torch.Tensor | None = None

    def reset_parameters(self) -> None:
        """No random init: load_weights fills every weight next (and on the meta device the init
        would import torch._dynamo, a second of a first Engine())."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return onednn.linear(x, self.packed, self.bias)
        # Under autocast (bfloat16 training) F.linear casts; the oneDNN op would not.
        if onednn.applies(self.weight) and not torch.is_autocast_enabled(x.device.type):
            return onednn.LinearFunction.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        """No random init, as Linear."""


class RMSNorm(nn.Module):
    CHUNK_ROWS = 256

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if token_ops.applies(x, self.weight):
            return token_ops.rms_norm(x, self.weight, self.eps)
        # Normalized in float32 and rounded to x's dtype before the weight, as the reference
        # implementations do. 16-bit input is cast first: F.rms_norm on it multiplies 16-bit by
        # float32, a mixed-dtype loop 15x slower than the cast and a float32 multiply.
        # The final cast is for autocast, which returns float32.
        if x.dtype == torch.float32:
            return self.weight * F.rms_norm(x, (x.shape[-1],), eps=self.eps).to(x.dtype)
        if x.dim() == 2 and len(x) > self.CHUNK_ROWS and not torch.is_grad_enabled():
            # Its six passes a chunk of rows at a time, each in cache (0.5B shape, 2,048 rows,
            # bfloat16: 2.6 -> 1.9 ms); the rows come out the same.
            out = torch.empty_like(x)
            for start in range(0, len(x), self.CHUNK_ROWS):
                out[start: start + self.CHUNK_ROWS] = self._wide(x[start: start + self.CHUNK_ROWS])
            return out
        return self._wide(x)

    def _wide(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.float()
        variance = wide.square().mean(-1, keepdim=True)
        return self.weight * (wide * torch.rsqrt(variance + self.eps)).to(x.dtype)


class Rotary(nn.Module):
    """Rotary position embedding with a cos/sin table indexed by absolute position."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.inv_freq = config.rope_inv_freq
        self.scaling = config.rope_attention_scaling
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    def _grow(self, length: int) -> None:
        length = max(length, 2 * self.cos.shape[0], 256)
        freqs = torch.outer(torch.arange(length, dtype=torch.float), self.inv_freq)
        for name, fn in (("cos", math.cos), ("sin", math.sin)):
            table = _reproducible(fn, freqs)
            setattr(self, name, (torch.cat([table, table], dim=-1) * self.scaling)
                    .to(getattr(self, name).device))

    def table(self, positions: torch.Tensor,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, 1, head_dim] in `dtype` for the given absolute positions (looked up and
        cast once per forward, as transformers casts them once)."""
        if positions.numel() and int(positions.max()) >= self.cos.shape[0]:
            self._grow(int(positions.max()) + 1)
        return (self.cos[positions].unsqueeze(1).to(dtype),
                self.sin[positions].unsqueeze(1).to(dtype))


def _reproducible(fn: Callable[[float], float], angles: torch.Tensor) -> torch.Tensor:
    """fn (math.cos or math.sin) of float32 angles, in float64 and rounded: torch's vectorized cos
    gave other last bits in about one fresh process in twelve on one machine, which moved a
    judge's outputs between identical runs."""
    values = torch.tensor([fn(a) for a in angles.flatten().tolist()], dtype=torch.float64)
    return values.view(angles.shape).float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if token_ops.applies(x, cos):
        return token_ops.rotary(x, cos, sin)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1).mul_(sin).add_(x * cos)


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.split = [config.q_size, config.kv_size, config.kv_size]
        # q, k and v projections merged into one matmul at load time.
        self.qkv_proj = Linear(config.hidden_size, sum(self.split), bias=config.qkv_bias)
        self.o_proj = Linear(config.q_size, config.hidden_size, bias=config.o_bias)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attention: Attention) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        out = attention(self.layer, q, k, v)
        return self.o_proj(out.reshape(-1, self.num_heads * self.head_dim))


# The gate and up weights packed apart for oneDNN, and their biases (SwiGLU.pack).
PackedGateUp = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]


class SwiGLU(nn.Module):
    packed: PackedGateUp | None = None

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.intermediate = config.intermediate_size
        # gate and up projections merged into one matmul at load time.
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size,
                                   bias=config.mlp_bias)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)

    def pack(self, weight: torch.Tensor) -> None:
        """Gate and up (`weight`, gate_up_proj's) apart on oneDNN, so that SiLU and the product
        run in the GEMMs' epilogues: one pass over the activations instead of three (0.5B shape,
        2,048 tokens, bfloat16: 41 ms -> 30 ms a layer). The biases stay views of their
        parameter."""
        gate, up = weight.split(self.intermediate)
        bias = self.gate_up_proj.bias
        biases = (None, None) if bias is None else bias.split(self.intermediate)
        self.packed = (onednn.pack(gate), onednn.pack(up), *biases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            gate_weight, up_weight, gate_bias, up_bias = self.packed
            gate = onednn.linear(x, gate_weight, gate_bias, "swish")
            return self.down_proj(onednn.linear_times(x, up_weight, up_bias, gate))
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate).mul_(up))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SelfAttention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attention: Attention) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, attention)
        return x + self.mlp(self.post_attention_layernorm(x))


class Model(nn.Module):
    """Decoder-only transformer: embed -> N x (attention + SwiGLU) -> norm -> LM head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary = Rotary(config)
        # See Linear; the LM head may be the embedding.
        self.lm_head_packed: torch.Tensor | None = None

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attention: Attention) -> torch.Tensor:
        """input_ids, positions: [T] packed tokens of many sequences -> final hidden states [T,
        hidden]."""
        x = self.embed_tokens(input_ids)
        rope = self.rotary.table(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, rope, attention)
        return self.norm(x)

    @torch.no_grad()
    def pack_weight(self, name: str, weight: torch.Tensor) -> bool:
        """For inference on oneDNN (`onednn.can_pack` says where it applies): pack `weight` as
        the parameter `name` where that is a linear layer's weight, and release the dense
        parameter, so that the model holds each weight once (and a first Engine() touches half
        the memory). The tied LM head is packed from the embedding, which stays. True when the
        dense parameter was released; call again for each changed weight."""
        if name == "embed_tokens.weight" and self.lm_head is None:
            self.lm_head_packed = onednn.pack(weight)
        path = name.removesuffix(".weight")
        linear = self.get_submodule(path) if path != name else None
        if not isinstance(linear, Linear):
            return False
        expected = (linear.out_features, linear.in_features)
        if tuple(weight.shape) != expected:
            raise ValueError(f"{name}: shape {tuple(weight.shape)}, the model has {expected}")
        owner = self.get_submodule(path.rpartition(".")[0]) if "." in path else self
        if isinstance(owner, SwiGLU) and linear is owner.gate_up_proj:
            owner.pack(weight)
        elif linear is self.lm_head:
            self.lm_head_packed = onednn.pack(weight)
        else:
            linear.packed = onednn.pack(weight)
        linear.weight = nn.Parameter(weight.new_empty(0), requires_grad=False)
        return True

    def pack_weights(self) -> None:
        """pack_weight for every weight the model holds dense."""
        for name, weight in list(self.named_parameters()):
            self.pack_weight(name, weight)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head_packed is not None:
            return onednn.linear(hidden, self.lm_head_packed, None)
        return F.linear(hidden, self.lm_head_weight)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def empty_model(config: ModelConfig, dtype: torch.dtype, device: torch.device) -> Model:
    """The model's parameters allocated in `dtype` on `device`, uninitialized, for load_weights.
    Built in place: through the meta device, to_empty would import torch.fx's shape machinery
    (0.4 s of a first Engine())."""
    with torch.device(device), _default_dtype(dtype):
        return Model(config)
