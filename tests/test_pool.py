"""MaxPool2d beyond tests/test_contract.py: an exact forward and gradient (leftover rows and
columns dropped), ties (the gradient to the first maximum, common in bfloat16), non-contiguous
inputs, planted bugs, the FLOP estimate against a count of comparisons, pool's sizes and checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from impls import REGISTRY
from suites.correctness import check
from suites.presets import notes_size

LAYER = REGISTRY.layer("pool")
IMPLS = REGISTRY.impls("pool")
IMPL_IDS = [impl.name for impl in IMPLS]
SEEDS = [0, 1, 2]
SMALL = {"N": 2, "C": 3, "H": 7, "W": 6, "k": 2}

# (N, C, H, W, k): k = 2, 3, 4; k not dividing H and/or W (leftover rows/columns dropped), odd
# H and W, one output row, one window.
SIZES = [(2, 3, 6, 8, 2), (1, 2, 7, 5, 2), (2, 1, 9, 7, 3), (1, 3, 4, 9, 4), (3, 2, 3, 3, 3)]


def _size_id(size: tuple[int, ...]) -> str:
    return "N{}_C{}_H{}_W{}_k{}".format(*size)


def _x(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _check(fn, params=SMALL, mode="fwd", dtype=torch.float32) -> list[str]:
    """What the correctness check finds wrong: ``["output", "grad x"]``, or nothing."""
    with torch.set_grad_enabled(mode != "fwd"):  # as the runner calls it
        verdict, _ = check(fn, LAYER, params, SEEDS, dtype, "cpu", mode)
    return [p.split(":")[0] for p in verdict.problems]


def test_the_documented_implementations_are_registered() -> None:
    assert {"loops", "unfold", "builtin"} <= set(IMPL_IDS)
    assert [i.name for i in IMPLS if i.naive] == ["loops"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("size", SIZES, ids=_size_id)
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_forward_and_gradient_are_exactly_max_pool2d(impl, size: tuple[int, ...],
                                                     dtype: torch.dtype) -> None:
    """A max is exact, in any dtype; so is the gradient, routed as F.max_pool2d routes it (in
    bfloat16 with ties)."""
    k = size[4]
    x = _x(size[:4], seed=1, dtype=dtype).requires_grad_()
    out, expected = impl.fn(x, k), F.max_pool2d(x, k)
    assert out.shape == (size[0], size[1], size[2] // k, size[3] // k) and out.dtype == dtype
    assert torch.equal(out, expected)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    (got,), (want,) = (torch.autograd.grad(o, x, grad_out) for o in (out, expected))
    assert torch.equal(got, want)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_ties_send_the_gradient_to_the_first_maximum_like_max_pool2d(impl) -> None:
    """bfloat16 rounding makes ties common; the gradient must go where F.max_pool2d sends it."""
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0],
                      [3.0, 2.0, 5.0, 5.0]], dtype=torch.float64).view(1, 1, 2, 4)
    x = x.requires_grad_()
    (got,) = torch.autograd.grad(impl.fn(x, 2).sum(), x)
    (want,) = torch.autograd.grad(F.max_pool2d(x, 2).sum(), x)
    assert torch.equal(got, want)
    assert int(got.sum()) == 2  # one element per window


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_non_contiguous_input(impl) -> None:
    x = _x((2, 3, 6, 8), seed=3)
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, H and W strides swapped
    assert not x_t.is_contiguous()
    with torch.no_grad():
        assert torch.equal(impl.fn(x_t, 2), F.max_pool2d(x, 2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_half_precision_passes_including_ties(impl, dtype: torch.dtype) -> None:
    assert _check(impl.fn, {"N": 4, "C": 4, "H": 12, "W": 12, "k": 3}, "fwdbwd", dtype) == []


# --- planted bugs ------------------------------------------------------------------------------


def pool_amax(x: Tensor, k: int) -> Tensor:
    """Right values, but amax splits the gradient evenly between tied maxima."""
    return x.unfold(2, k, k).unfold(3, k, k).amax((-2, -1))  # (N, C, H_out, W_out)


def pool_ceil_mode(x: Tensor, k: int) -> Tensor:
    """Keeps the partial windows at the border (ceil mode): one row/column too many."""
    return F.max_pool2d(x, k, ceil_mode=True)


def pool_memory_groups(x: Tensor, k: int) -> Tensor:
    """Max over k*k consecutive elements in memory instead of k x k windows: right shape."""
    N, C, H, W = x.shape
    H_out, W_out = H // k, W // k
    cropped = x[:, :, :H_out * k, :W_out * k].contiguous()
    groups = cropped.view(N, C, H_out * W_out, k * k)  # (N, C, H_out*W_out, k*k): not windows
    return groups.max(dim=-1).values.view(N, C, H_out, W_out)


def pool_average(x: Tensor, k: int) -> Tensor:
    return F.avg_pool2d(x, k)


def pool_wrong_argmax_grad(x: Tensor, k: int) -> Tensor:
    """Right forward; the gradient goes to the window's minimum."""
    low = -F.max_pool2d(-x, k)
    return low + (F.max_pool2d(x, k) - low).detach()


def test_planted_bugs_are_flagged() -> None:
    for fn in (pool_ceil_mode, pool_memory_groups, pool_average):
        assert _check(fn)[:1] == ["output"], fn.__name__
    with torch.no_grad():
        verdict, _ = check(pool_ceil_mode, LAYER, SMALL, [0], torch.float32, "cpu", "fwd")
    assert "shape" in verdict.problems[0]
    # the gradient to the window's minimum: seen in fwdbwd only
    assert _check(pool_wrong_argmax_grad) == []
    assert _check(pool_wrong_argmax_grad, mode="fwdbwd") == ["grad x"]
    # amax is right in float32 (no ties) but splits the gradient on bfloat16's ties
    assert _check(pool_amax, mode="fwdbwd") == []
    ties = {"N": 8, "C": 8, "H": 16, "W": 16, "k": 4}  # 16 values per window: ties certain
    assert _check(pool_amax, ties, "fwdbwd", torch.bfloat16) == ["grad x"]


# --- FLOPs: an estimate (FlopCounterMode counts nothing here) ----------------------------------


class _Comparisons(TorchDispatchMode):
    """Counts one comparison per output element of every elementwise maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ == "maximum":
            self.count += out.numel()
        return out


def _sequential_max(x: Tensor, k: int) -> Tensor:
    """Max pooling as a running maximum over the k*k positions of every window."""
    windows = x.unfold(2, k, k).unfold(3, k, k)  # (N, C, H_out, W_out, k, k)
    out = windows[..., 0, 0]
    for i in range(k):
        for j in range(k):
            if (i, j) != (0, 0):
                out = torch.maximum(out, windows[..., i, j])
    return out


@pytest.mark.parametrize("size", [(64, 8, 26, 26, 2), (32, 64, 57, 57, 3), (2, 3, 9, 7, 4)],
                         ids=_size_id)
def test_flops_estimate_matches_a_count_of_comparisons(size: tuple[int, ...]) -> None:
    params = dict(zip(LAYER.params, size, strict=True))
    x_real = _x((2, 3, 9, 7), seed=5)
    assert torch.equal(_sequential_max(x_real, 3), F.max_pool2d(x_real, 3))  # it is max pooling
    counter = _Comparisons()
    with counter:
        _sequential_max(torch.empty(size[:4], device="meta"), size[4])
    assert LAYER.flops(params, "fwd") == counter.count
    assert LAYER.flops(params, "fwdbwd") == counter.count  # the backward is a scatter


# --- pool's sizes --------------------------------------------------------------------------------


def test_sizes() -> None:
    """The notes' size is what MyCNN pools: 8 maps of 26 x 26 from 64 digits. A naive loop's
    calibration keeps N, C and k, the work per output position."""
    assert notes_size("pool") == {"N": 64, "C": 8, "H": 26, "W": 26, "k": 2}
    assert LAYER.label(notes_size("pool")) == "N64_C8_H26_W26_k2"
    small = LAYER.calibration_params({"N": 32, "C": 64, "H": 57, "W": 57, "k": 3})
    assert small == {"N": 32, "C": 64, "H": 12, "W": 12, "k": 3}
    LAYER.check(small)


@pytest.mark.parametrize(("change", "match"), [
    ({"N": 0}, "N"), ({"C": -1}, "C"), ({"H": 0}, "H"), ({"W": -3}, "W"),
    ({"k": 1}, "k"), ({"k": 0}, "k"),
    ({"k": 27}, "larger"), ({"H": 40, "W": 3, "k": 4}, "larger"),
])
def test_check_rejects_nonsense(change: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        LAYER.check({**notes_size("pool"), **change})
    assert "\n" not in str(info.value)
