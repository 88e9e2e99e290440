"""Log-probabilities of chosen tokens for rollout scoring, without a float32 [T, V] tensor.

    logp[t] = log_softmax(hidden[t] @ weight.T / temperature)[targets[t]]

Three implementations with one signature:
- `chosen_logprobs_reference`: the naive formula with autograd (the ground truth in tests);
- the chunked torch path (CPU default): tiles of rows x vocabulary slice with an online log-sum-exp;
  the backward recomputes each tile;
- the Triton path (CUDA): a fused forward that streams over the vocabulary with an online
  log-sum-exp and never stores logits; the backward recomputes one vocabulary slice of logit
  gradients at a time in a kernel and applies it with two matmuls.
Entropy, when asked, is returned for logging and carries no gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

Output = tuple[torch.Tensor, torch.Tensor | None]


def chosen_logprobs_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                              temperature: float = 1.0, return_entropy: bool = False) -> Output:
    logits = (hidden @ weight.T).float() / temperature
    logp_all = logits.log_softmax(dim=-1)
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).detach() if return_entropy else None
    return logp, entropy


# ---- chunked torch
# ---------------------------------------------------------------------------------

class _ChunkedLogprobs(torch.autograd.Function):
    """Tiles of (row chunk x vocabulary slice): the forward keeps a running max / sum per row
    (online log-sum-exp); the backward recomputes each tile's logits, turns them into logit
    gradients and applies them with two matmuls, finishing one vocabulary slice of the weight
    gradient at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_rows, vocab_slice,
                return_entropy):
        T, V = hidden.shape[0], weight.shape[0]
        lse = torch.empty(T, dtype=torch.float32, device=hidden.device)
        picked = torch.empty_like(lse)
        entropy = torch.empty_like(lse) if return_entropy else None
        for r0 in range(0, T, chunk_rows):
            rows = slice(r0, r0 + chunk_rows)
            h = hidden[r0:r0 + chunk_rows]
            n = h.shape[0]
            top = torch.full((n,), float("-inf"), device=hidden.device)
            total = torch.zeros(n, device=hidden.device)
            weighted = torch.zeros(n, device=hidden.device)  # running sum of p * logit (entropy)
            for v0 in range(0, V, vocab_slice):
                logits = (h @ weight[v0: v0 + vocab_slice].T).float().div_(temperature)
                new_top = torch.maximum(top, logits.amax(-1))
                rescale = torch.exp(top - new_top)
                probs = (logits - new_top[:, None]).exp_()
                total = total * rescale + probs.sum(-1)
                if entropy is not None:
                    weighted = weighted * rescale + (probs * logits).sum(-1)
                top = new_top
                local = targets[rows] - v0
                inside = (local >= 0) & (local < logits.shape[1])
                if inside.any():
                    hit = inside.nonzero().squeeze(1)
                    picked[r0 + hit] = logits[hit, local[hit]]
            lse[rows] = top + total.log()
            if entropy is not None:
                entropy[rows] = lse[rows] - weighted / total
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature = temperature
        ctx.chunk_rows = chunk_rows
        ctx.vocab_slice = vocab_slice
        ctx.mark_non_differentiable(*([entropy] if entropy is not None else []))
        return picked - lse, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        T, V = hidden.shape[0], weight.shape[0]
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_weight = torch.empty_like(weight)
        grad_logp = grad_logp.float()
        for v0 in range(0, V, ctx.vocab_slice):
            w = weight[v0: v0 + ctx.vocab_slice]
            grad_w = torch.zeros(w.shape, dtype=torch.float32, device=weight.device)
            for r0 in range(0, T, ctx.chunk_rows):
                rows = slice(r0, r0 + ctx.chunk_rows)
                h = hidden[r0:r0 + ctx.chunk_rows]
                logits = (h @ w.T).float().div_(ctx.temperature)
                # d logp_t / d logits = onehot(target) - softmax, times the upstream gradient.
                grad = (logits - lse[rows, None]).exp_().mul_(-grad_logp[rows, None])
                local = targets[rows] - v0
                inside = ((local >= 0) & (local < w.shape[0])).nonzero().squeeze(1)
                grad[inside, local[inside]] += grad_logp[rows][inside]
                grad.div_(ctx.temperature)
                grad_hidden[rows].addmm_(grad, w.float())
                grad_w.addmm_(grad.T, h.float())
            grad_weight[v0: v0 + ctx.vocab_slice] = grad_w
        return grad_hidden.to(hidden.dtype), grad_weight, None, None, None, None, None


def chosen_logprobs_chunked(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                            temperature: float = 1.0, return_entropy: bool = False,
                            chunk_rows: int = 2048, vocab_slice: int = 2048) -> Output:
    return _ChunkedLogprobs.apply(hidden, weight, targets, temperature, chunk_rows, vocab_slice,
                                  return_entropy)


# ---- Triton
# ----------------------------------------------------------------------------------------

@triton.jit
def logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                PRECISION: tl.constexpr):
    """hidden[rows] @ weight[cols].T accumulated over H in float32: a [BLOCK_T, BLOCK_V] tile."""
    acc = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
    for h0 in range(0, H, BLOCK_H):
        ks = h0 + tl.arange(0, BLOCK_H)
        a = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :],
                    mask=row_ok[:, None] & (ks[None, :] < H), other=0.0)
        b = tl.load(w_ptr + cols[:, None] * stride_w + ks[None, :],
                    mask=col_ok[:, None] & (ks[None, :] < H), other=0.0)
        acc += tl.dot(a, tl.trans(b), input_precision=PRECISION)
    return acc


@triton.jit
def logprobs_forward_kernel(h_ptr, w_ptr, t_ptr, logp_ptr, lse_ptr, ent_ptr, T, V, H,
                            stride_h, stride_w, inv_temp,
                            BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                            WITH_ENTROPY: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    target = tl.load(t_ptr + rows, mask=row_ok, other=0)
    m = tl.full([BLOCK_T], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_T], tl.float32)
    e = tl.zeros([BLOCK_T], tl.float32)
    picked = tl.zeros([BLOCK_T], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        acc = logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                          BLOCK_T, BLOCK_V, BLOCK_H, PRECISION)
        logits = tl.where(col_ok[None, :], acc * inv_temp, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        scale = tl.exp(m - m_new)
        p = tl.exp(logits - m_new[:, None])
        s = s * scale + tl.sum(p, axis=1)
        if WITH_ENTROPY:
            e = e * scale + tl.sum(p * tl.where(col_ok[None, :], logits, 0.0), axis=1)
        picked += tl.sum(tl.where(cols[None, :] == target[:, None], logits, 0.0), axis=1)
        m = m_new
    lse = m + tl.log(s)
    tl.store(logp_ptr + rows, picked - lse, mask=row_ok)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    if WITH_ENTROPY:
        tl.store(ent_ptr + rows, lse - e / s, mask=row_ok)


@triton.jit
def logprobs_grad_logits_kernel(h_ptr, w_ptr, t_ptr, lse_ptr, dlogp_ptr, g_ptr, T, V, H, v_start,
                                v_count, stride_h, stride_w, stride_g, inv_temp,
                                BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
                                BLOCK_H: tl.constexpr, PRECISION: tl.constexpr):
    """g[t, j] = dlogp[t] * (1[target_t == v_start + j] - softmax_t[v_start + j]) / temperature."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    local = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    cols = v_start + local
    row_ok = rows < T
    col_ok = (local < v_count) & (cols < V)
    acc = logits_tile(h_ptr, w_ptr, rows, cols, row_ok, col_ok, H, stride_h, stride_w,
                      BLOCK_T, BLOCK_V, BLOCK_H, PRECISION)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    dlogp = tl.load(dlogp_ptr + rows, mask=row_ok, other=0.0)
    target = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    p = tl.exp(acc * inv_temp - lse[:, None])
    onehot = tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
    g = dlogp[:, None] * (onehot - p) * inv_temp
    tl.store(g_ptr + rows[:, None] * stride_g + local[None, :], g,
             mask=row_ok[:, None] & col_ok[None, :])


def _blocks(hidden: torch.Tensor) -> dict:
    # float32 inputs are asked to match the reference closely: no TF32 in the dot products.
    precision = "ieee" if hidden.dtype == torch.float32 else "tf32"
    if hidden.is_cuda:
        return {"BLOCK_T": 64, "BLOCK_V": 64, "BLOCK_H": 64, "PRECISION": precision}
    # The CPU interpreter.
    return {"BLOCK_T": 16, "BLOCK_V": 32, "BLOCK_H": 32, "PRECISION": precision}


class _TritonLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, vocab_slice, return_entropy):
        hidden, weight = hidden.contiguous(), weight.contiguous()
        T, H = hidden.shape
        V = weight.shape[0]
        logp = torch.empty(T, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if return_entropy else None
        blocks = _blocks(hidden)
        logprobs_forward_kernel[(triton.cdiv(T, blocks["BLOCK_T"]),)](
            hidden, weight, targets, logp, lse, entropy if entropy is not None else lse, T, V, H,
            hidden.stride(0), weight.stride(0), 1.0 / temperature, WITH_ENTROPY=return_entropy,
            **blocks)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature = temperature
        ctx.vocab_slice = vocab_slice
        ctx.mark_non_differentiable(*([entropy] if entropy is not None else []))
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        T, H = hidden.shape
        V = weight.shape[0]
        grad_logp = grad_logp.contiguous().float()
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_weight = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
        blocks = _blocks(hidden)
        g = torch.empty(T, min(ctx.vocab_slice, V), dtype=torch.float32, device=hidden.device)
        for v_start in range(0, V, ctx.vocab_slice):
            count = min(ctx.vocab_slice, V - v_start)
            grid = (triton.cdiv(T, blocks["BLOCK_T"]), triton.cdiv(count, blocks["BLOCK_V"]))
            logprobs_grad_logits_kernel[grid](hidden, weight, targets, lse, grad_logp, g, T, V, H,
                                              v_start, count, hidden.stride(0), weight.stride(0),
                                              g.stride(0), 1.0 / ctx.temperature, **blocks)
            part = g[:, :count]
            grad_hidden.addmm_(part, weight[v_start: v_start + count].float())
            grad_weight[v_start: v_start + count] = part.T @ hidden.float()
        return grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype), None, None, None, None


def chosen_logprobs_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                           temperature: float = 1.0, return_entropy: bool = False,
                           vocab_slice: int = 8192) -> Output:
    return _TritonLogprobs.apply(hidden, weight, targets, temperature, vocab_slice, return_entropy)
