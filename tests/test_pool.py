"""MaxPool2d: every implementation computes what ``F.max_pool2d(x, k)`` does, forward and
backward; planted bugs are flagged; the comparison estimate matches a count."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from impls import REGISTRY
from suites.correctness import TOLERANCES, check
from suites.presets import notes_size, preset_table

LAYER = REGISTRY.layer("pool")
IMPLS = REGISTRY.impls("pool")
IMPL_IDS = [impl.name for impl in IMPLS]
SEEDS = [0, 1, 2]

# (N, C, H, W, k): k = 2, 3, 4; k not dividing H and/or W (leftover rows/columns dropped);
# one output row; H != W.
SIZES = [
    (2, 3, 6, 8, 2),
    (1, 2, 7, 5, 2),  # odd H and W
    (2, 1, 9, 7, 3),
    (1, 3, 4, 9, 4),  # one output row
    (3, 2, 3, 3, 3),  # one window
]
SMALL = {"N": 2, "C": 3, "H": 7, "W": 6, "k": 2}


def _size_id(size: tuple[int, ...]) -> str:
    return "N{}_C{}_H{}_W{}_k{}".format(*size)


def _x(size: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size[:4], generator=g, dtype=torch.float64).to(dtype)


def test_the_documented_implementations_are_registered() -> None:
    assert {"loops", "unfold", "builtin"} <= set(IMPL_IDS)
    assert REGISTRY.impl("pool", "loops").naive


@pytest.mark.parametrize("size", SIZES, ids=_size_id)
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_forward_and_gradient_match_max_pool2d(impl, size: tuple[int, ...]) -> None:
    k = size[4]
    x = _x(size, seed=1).requires_grad_()
    expected = F.max_pool2d(x, k)
    out = impl.fn(x, k)
    assert out.shape == (size[0], size[1], size[2] // k, size[3] // k)
    assert torch.equal(out, expected)  # a max is exact
    grad_out = torch.randn(out.shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(2))
    (got,) = torch.autograd.grad(out, x, grad_out)
    (want,) = torch.autograd.grad(expected, x, grad_out)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_output_keeps_the_input_dtype(impl, dtype: torch.dtype) -> None:
    x = _x((2, 3, 6, 8), seed=4, dtype=dtype)
    with torch.no_grad():
        out = impl.fn(x, 2)
    assert out.dtype == dtype
    assert torch.equal(out, F.max_pool2d(x, 2))


# --- the correctness check --------------------------------------------------------------------


def _check(fn, params=SMALL, mode="fwd", dtype=torch.float32):
    with torch.set_grad_enabled(mode != "fwd"):
        return check(fn, LAYER, params, SEEDS, dtype, "cpu", mode)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_real_implementations_pass_the_check(impl, mode: str) -> None:
    verdict, trial = _check(impl.fn, mode=mode)
    assert verdict.ok, verdict.problems
    assert verdict.rel_err == 0.0
    if mode == "fwdbwd":
        assert set(trial.ref_grads) == {"x"}
        assert verdict.grad_rel_err < TOLERANCES["float32"][0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_half_precision_passes_including_ties(impl, dtype: torch.dtype) -> None:
    verdict, _ = _check(impl.fn, {"N": 4, "C": 4, "H": 12, "W": 12, "k": 3}, "fwdbwd", dtype)
    assert verdict.ok, verdict.problems


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


def test_wrong_implementations_are_flagged() -> None:
    for fn in (pool_ceil_mode, pool_memory_groups, pool_average):
        verdict, _ = _check(fn)
        assert not verdict.ok, fn.__name__
        assert verdict.problems[0].startswith("output:"), verdict.problems
    verdict, _ = _check(pool_ceil_mode)
    assert "shape" in verdict.problems[0]


def test_wrong_gradient_is_flagged_in_fwdbwd_only() -> None:
    verdict, _ = _check(pool_wrong_argmax_grad)
    assert verdict.ok, verdict.problems
    verdict, _ = _check(pool_wrong_argmax_grad, mode="fwdbwd")
    assert [p.split(":")[0] for p in verdict.problems] == ["grad x"], verdict.problems


def test_split_gradient_on_ties_is_flagged_in_bfloat16() -> None:
    """amax is right in float32 (no ties) but splits the gradient on bfloat16's ties."""
    verdict, _ = _check(pool_amax, mode="fwdbwd")
    assert verdict.ok, verdict.problems
    params = {"N": 8, "C": 8, "H": 16, "W": 16, "k": 4}  # 16 values per window: ties certain
    verdict, _ = _check(pool_amax, params, "fwdbwd", torch.bfloat16)
    assert [p.split(":")[0] for p in verdict.problems] == ["grad x"], verdict.problems


# --- FLOPs (an estimate: FlopCounterMode counts nothing here), bytes, sizes -------------------


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_bytes_are_each_tensor_once(dtype: torch.dtype) -> None:
    params = notes_size("pool")
    x = torch.empty(64, 8, 26, 26, dtype=dtype, device="meta")
    out = F.max_pool2d(x, 2)
    fwd = (x.numel() + out.numel()) * x.element_size()
    assert LAYER.bytes_moved(params, dtype, "fwd") == fwd
    # plus at least grad_out read and grad_x written
    assert LAYER.bytes_moved(params, dtype, "fwdbwd") >= fwd + (out.numel() + x.numel()) * \
        x.element_size()


def test_every_preset_size_is_valid() -> None:
    for preset, sizes in preset_table("pool").items():
        for params in sizes:
            LAYER.check(params)
            assert LAYER.flops(params, "fwd") > 0
        assert notes_size("pool") in sizes, preset
    assert notes_size("pool") == {"N": 64, "C": 8, "H": 26, "W": 26, "k": 2}


def test_calibration_keeps_the_work_per_output_position() -> None:
    params = {"N": 32, "C": 64, "H": 57, "W": 57, "k": 3}
    small = LAYER.calibration_params(params)
    assert small == {"N": 32, "C": 64, "H": 12, "W": 12, "k": 3}
    LAYER.check(small)


@pytest.mark.parametrize(("change", "match"), [
    ({"N": 0}, "N"), ({"C": -1}, "C"), ({"H": 0}, "H"), ({"W": -3}, "W"),
    ({"k": 1}, "k"), ({"k": 0}, "k"),
    ({"k": 27}, "larger"), ({"H": 40, "W": 3, "k": 4}, "larger"),
    ({"stride": 1}, "stride"),
])
def test_check_rejects_nonsense(change: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        LAYER.check({**notes_size("pool"), **change})
    assert "\n" not in str(info.value)


def test_labels_are_short() -> None:
    assert LAYER.label(notes_size("pool")) == "N64_C8_H26_W26_k2"
