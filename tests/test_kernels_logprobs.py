"""Chosen-token log-probs: chunked torch and Triton (interpreter on CPU) against the naive formula."""
import pytest
import torch

from kojudge.kernels import chosen_logprobs
from kojudge.kernels.dispatch import choose_backend

SHAPES = [(37, 48, 203), (16, 32, 64), (5, 70, 1000)]  # odd rows, odd vocab, H not a block multiple


def inputs(T, H, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, H, generator=g, requires_grad=True)
    weight = (torch.randn(V, H, generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, V, (T,), generator=g)
    upstream = torch.randn(T, generator=g)
    return hidden, weight, targets, upstream


def run(backend, hidden, weight, targets, upstream, temperature):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    logp, entropy = chosen_logprobs(h, w, targets, temperature, return_entropy=True, backend=backend)
    (logp * upstream).sum().backward()
    return logp.detach(), entropy, h.grad, w.grad


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_gradients_match_the_reference(backend, shape, temperature):
    args = inputs(*shape)
    expected = run("reference", *args, temperature)
    got = run(backend, *args, temperature)
    for name, e, g in zip(["logp", "entropy", "grad hidden", "grad weight"], expected, got):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4, msg=name)


def test_chunk_boundaries_do_not_matter():
    from kojudge.kernels.logprobs import chosen_logprobs_chunked

    hidden, weight, targets, _ = inputs(50, 16, 40)
    whole = chosen_logprobs_chunked(hidden.detach(), weight.detach(), targets, chunk_rows=1000)[0]
    for rows in (1, 7, 49):
        torch.testing.assert_close(chosen_logprobs_chunked(hidden.detach(), weight.detach(), targets,
                                                           chunk_rows=rows)[0], whole)


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("KOJUDGE_BACKEND", raising=False)
    assert choose_backend("cpu") == "torch"
    monkeypatch.setenv("KOJUDGE_BACKEND", "triton")
    assert choose_backend("cpu") == "triton"
    assert choose_backend("cpu", "triton") == "triton"
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("cpu", "cuda-magic")
