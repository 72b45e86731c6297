"""Every registered conv implementation computes what ``F.conv2d`` does, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from impls import REGISTRY, MyConv2d

IMPLS = REGISTRY.impls("conv")
IMPL_IDS = [impl.name for impl in IMPLS]

# (N, C_in, C_out, H, W, k, stride, padding): stride 1/2/3, padding 0/1/2, H != W, C_in 1/3,
# C_out 1/4, k 1/3/5. Small enough for the Python loops (a few hundred inner iterations each).
TINY = [
    (2, 1, 1, 5, 7, 3, 1, 0),
    (1, 3, 4, 6, 5, 3, 2, 1),
    (2, 3, 1, 7, 9, 5, 3, 2),
    (1, 1, 4, 3, 2, 1, 1, 2),  # 1x1 kernel, output made entirely of padding at the border
    (2, 3, 4, 5, 4, 3, 1, 1),
    (1, 1, 1, 5, 6, 5, 1, 0),  # kernel as tall as the input: one output row
    (1, 3, 4, 8, 6, 3, 3, 0),  # stride 3 that does not divide H - k
    (1, 3, 1, 4, 7, 1, 2, 0),  # 1x1, stride 2
]
# Larger sizes for the vectorised implementations only.
LARGER = [
    (4, 3, 4, 17, 13, 5, 2, 2),
    (3, 1, 4, 20, 11, 3, 3, 1),
    (2, 3, 4, 12, 16, 1, 1, 0),
]


def _size_id(size: tuple[int, ...]) -> str:
    return "N{}_Cin{}_Cout{}_H{}_W{}_k{}_s{}_p{}".format(*size)


def _cases() -> list:
    cases = []
    for impl in IMPLS:
        sizes = TINY if impl.naive else TINY + LARGER
        cases += [pytest.param(impl, size, id=f"{impl.name}-{_size_id(size)}") for size in sizes]
    return cases


def _inputs(size: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor, Tensor]:
    N, C_in, C_out, H, W, k, _, _ = size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C_in, H, W, generator=g, dtype=torch.float64)
    weight = torch.randn(C_out, C_in, k, k, generator=g, dtype=torch.float64)
    bias = torch.randn(C_out, generator=g, dtype=torch.float64)
    return x, weight, bias


def test_the_documented_implementations_are_registered() -> None:
    assert {"loops", "im2col", "einsum", "builtin"} <= set(IMPL_IDS)
    assert REGISTRY.impl("conv", "loops").naive


@pytest.mark.parametrize(("impl", "size"), _cases())
def test_forward_matches_conv2d(impl, size: tuple[int, ...]) -> None:
    stride, padding = size[6], size[7]
    x, weight, bias = _inputs(size, seed=1)
    expected = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    with torch.no_grad():
        out = impl.fn(x, weight, bias, stride, padding)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("impl", "size"), _cases())
def test_gradients_match_conv2d(impl, size: tuple[int, ...]) -> None:
    stride, padding = size[6], size[7]
    x, weight, bias = (t.requires_grad_() for t in _inputs(size, seed=2))
    expected_out = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    grad_out = torch.randn(expected_out.shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(3))
    expected = torch.autograd.grad(expected_out, (x, weight, bias), grad_out)

    out = impl.fn(x, weight, bias, stride, padding)
    got = torch.autograd.grad(out, (x, weight, bias), grad_out)
    for name, g, e in zip(("x", "weight", "bias"), got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_non_contiguous_input(impl) -> None:
    """A transposed view (as another layer may hand over) gives the same answer."""
    x, weight, bias = _inputs((2, 3, 4, 6, 5, 3, 2, 1), seed=4)
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, H and W strides swapped
    assert not x_t.is_contiguous()
    with torch.no_grad():
        out = impl.fn(x_t, weight, bias, 2, 1)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, stride=2, padding=1),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_float32_output_stays_float32(impl) -> None:
    x, weight, bias = (t.float() for t in _inputs((1, 3, 4, 6, 5, 3, 1, 1), seed=5))
    with torch.no_grad():
        out = impl.fn(x, weight, bias, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1))


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
@pytest.mark.parametrize("size", [(2, 3, 4, 6, 7, 3, 2, 1), (1, 1, 1, 5, 4, 1, 1, 0)],
                         ids=_size_id)
def test_myconv2d_module(impl, size: tuple[int, ...]) -> None:
    N, C_in, C_out, H, W, k, stride, padding = size
    module = MyConv2d(C_in, C_out, k, stride=stride, padding=padding, impl=impl.name).double()
    assert module.weight.shape == (C_out, C_in, k, k)
    assert module.bias.shape == (C_out,)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():  # random bias too: the notes' zero bias would hide a bias bug
        module.weight.copy_(torch.randn(module.weight.shape, generator=g, dtype=torch.float64))
        module.bias.copy_(torch.randn(C_out, generator=g, dtype=torch.float64))
    x = torch.randn(N, C_in, H, W, generator=g, dtype=torch.float64, requires_grad=True)

    out = module(x)
    expected = F.conv2d(x, module.weight, module.bias, stride=stride, padding=padding)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)

    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, (x, module.weight, module.bias), grad_out)
    want = torch.autograd.grad(expected, (x, module.weight, module.bias), grad_out)
    for g_got, g_want in zip(got, want, strict=True):
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-10)


def test_myconv2d_rejects_unknown_impl() -> None:
    with pytest.raises(KeyError, match="nope"):
        MyConv2d(1, 1, 3, impl="nope")
