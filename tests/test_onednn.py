"""oneDNN linear layers (kojudge.kernels.onednn) against torch's F.linear, forward and backward."""
import pytest
import torch
import torch.nn.functional as F

from kojudge.kernels import onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="torch built without oneDNN: nothing to test")


@pytest.mark.parametrize("rows", [0, 1, 7, 64, 257])  # the packed layout is chosen for 64 rows; any count runs
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_packed_linear_matches_f_linear(rows, dtype, tol):
    g = torch.Generator().manual_seed(rows)
    weight, bias = torch.randn(300, 70, generator=g).to(dtype), torch.randn(300, generator=g).to(dtype)
    x = torch.randn(rows, 70, generator=g).to(dtype)
    out = onednn.linear(x, onednn.pack(weight), bias)
    torch.testing.assert_close(out.float(), F.linear(x.double(), weight.double(), bias.double()).float(),
                               atol=tol * 70 ** 0.5, rtol=tol)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_function_gradients_match_autograd(with_bias):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 41, 70, generator=g, dtype=torch.float64)
    weight = torch.randn(130, 70, generator=g, dtype=torch.float64)
    bias = torch.randn(130, generator=g, dtype=torch.float64) if with_bias else None
    grad = torch.randn(3, 41, 130, generator=g, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (x, weight, bias) if t is not None]
    reference = torch.autograd.grad(F.linear(x, weight, bias), leaves, grad)
    leaves32 = [t.detach().float().requires_grad_() for t in leaves]
    x32, w32 = leaves32[:2]
    out = onednn.LinearFunction.apply(x32, w32, leaves32[2] if with_bias else None)
    torch.testing.assert_close(out.double(), F.linear(x, weight, bias).detach(), atol=1e-4, rtol=1e-5)
    for ours, ref in zip(torch.autograd.grad(out, leaves32, grad.float()), reference):
        torch.testing.assert_close(ours.double(), ref, atol=1e-3, rtol=1e-5)


def test_only_the_gradients_asked_for_are_computed():
    x = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(4, 8)  # frozen
    out = onednn.LinearFunction.apply(x, weight, None)
    out.sum().backward()
    assert x.grad is not None and weight.grad is None
