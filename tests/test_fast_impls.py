"""The fast implementations (conv ``im2col_chunked``, linear ``addmm``, bn ``fused``) compute what
the layer's float64 reference does, at the quick and default preset sizes and at the edges of
their fast paths (chunking, 1x1 kernels, the shift row, leading batch dimensions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import impls.bn as bn_module
import impls.conv as conv_module
from impls import REGISTRY
from impls.registry import FLOAT_DTYPES
from suites.correctness import Verdict, check
from suites.presets import preset_sizes

FAST = {"conv": "im2col_chunked", "linear": "addmm", "bn": "fused"}
HALF = [torch.bfloat16, torch.float16]
#: Preset sizes past either limit (forward, float32) are left out: the float64 reference alone
#: would take most of this file's time (they are the linear 1024x2048x2048 GEMM and bn's
#: 32x64x56x56 maps, whose code paths the smaller sizes take too).
MAX_FLOPS, MAX_BYTES = 2e9, 32 * 2**20


def _fn(layer: str) -> Callable[..., Any]:
    return REGISTRY.impl(layer, FAST[layer]).fn


def _check(layer: str, params: dict[str, int], mode: str, dtype: torch.dtype = torch.float32,
           seeds: tuple[int, ...] = (0,)) -> Verdict:
    with torch.set_grad_enabled(mode != "fwd"):  # as the runner calls it
        verdict, _ = check(_fn(layer), REGISTRY.layer(layer), params, list(seeds), dtype, "cpu",
                           mode)
    return verdict


def _preset_cases() -> list:
    cases = {}
    for name in FAST:
        layer = REGISTRY.layer(name)
        for size in preset_sizes(name, "quick") + preset_sizes(name, "default"):
            if (layer.flops(size, "fwd") <= MAX_FLOPS
                    and layer.bytes_moved(size, torch.float32, "fwd") <= MAX_BYTES):
                label = f"{name}-{layer.label(size)}"
                cases[label] = pytest.param(name, size, id=label)
    return list(cases.values())


def _close(got: Tensor, want: Tensor, what: str) -> None:
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"{what}: {m}")


def _grads(out: Tensor, leaves: tuple[Tensor, ...], seed: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=g)
    return torch.autograd.grad(out, leaves, grad_out)


# --- registration -------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", FAST)
def test_registered_for_every_dtype_and_mode_of_the_layer(layer: str) -> None:
    impl = REGISTRY.impl(layer, FAST[layer])
    assert not impl.naive
    assert "cpu" in impl.devices
    assert impl.dtypes == frozenset(FLOAT_DTYPES)
    assert set(REGISTRY.layer(layer).modes) <= impl.modes
    assert impl.description  # the docstring's first line, shown by `list`


# --- every quick and default size, against the float64 reference ------------------------------


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize(("layer", "size"), _preset_cases())
def test_preset_sizes_match_the_reference(layer: str, size: dict[str, int], mode: str) -> None:
    verdict = _check(layer, size, mode)
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("dtype", [torch.float64, *HALF], ids=str)
@pytest.mark.parametrize(("layer", "size"), [
    ("conv", {"N": 2, "C_in": 3, "C_out": 4, "H": 10, "W": 9, "k": 3, "stride": 2, "padding": 1}),
    ("linear", {"N": 64, "in_features": 1352, "out_features": 10}),
    ("bn", {"N": 4, "C": 8, "H": 6, "W": 5, "training": 1}),
    ("bn", {"N": 4, "C": 8, "H": 6, "W": 5, "training": 0}),
], ids=lambda v: v if isinstance(v, str) else "_".join(map(str, v.values())))
def test_other_dtypes_match_the_reference(layer: str, size: dict[str, int],
                                          dtype: torch.dtype) -> None:
    verdict = _check(layer, size, "fwdbwd", dtype, seeds=(0, 1))
    assert verdict.ok, verdict.problems


def test_bfloat16_gradients_of_a_chunked_5x5_conv_are_summed_in_float32() -> None:
    """25 overlapping windows per input element and 16 chunks sharing the weights: summed in
    bfloat16 the gradients drift past tolerance (plain ``im2col`` does, at this size)."""
    size = dict(zip(REGISTRY.layer("conv").params, (32, 16, 32, 32, 32, 5, 1, 2), strict=True))
    assert size["N"] > conv_module.COLS_CHUNK_ELEMENTS // (16 * 25 * 32 * 32)  # really chunked
    verdict = _check("conv", size, "fwdbwd", torch.bfloat16, seeds=(0, 1))
    assert verdict.ok, verdict.problems


# --- conv: the edges of the chunked im2col ----------------------------------------------------

# (N, C_in, C_out, H, W, k, stride, padding)
CONV_SIZES = [
    (1, 3, 4, 7, 5, 3, 1, 0),  # N = 1: the plain-GEMM path, non-square
    (3, 2, 5, 9, 6, 3, 2, 1),  # stride 2 and padding, non-square
    (2, 3, 4, 8, 7, 5, 3, 2),  # stride that does not divide H - k
    (4, 6, 3, 5, 4, 1, 1, 0),  # 1x1, stride 1: per image, the columns are x itself
    (4, 6, 3, 7, 6, 1, 2, 0),  # 1x1, stride 2
    (2, 3, 2, 4, 3, 1, 1, 2),  # 1x1 with padding: a border of bias only
    (2, 2, 3, 5, 6, 5, 1, 0),  # kernel as tall as the input: one output row
]


def _conv_id(size: tuple[int, ...]) -> str:
    return "N{}_Cin{}_Cout{}_H{}_W{}_k{}_s{}_p{}".format(*size)


def _conv_inputs(size: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor, Tensor]:
    N, C_in, C_out, H, W, k, _, _ = size
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, C_in, H, W, generator=g, dtype=torch.float64),
            torch.randn(C_out, C_in, k, k, generator=g, dtype=torch.float64),
            torch.randn(C_out, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("chunk_elements", [conv_module.COLS_CHUNK_ELEMENTS, 1],
                         ids=["whole_batch", "one_image_per_chunk"])
@pytest.mark.parametrize("size", CONV_SIZES, ids=_conv_id)
def test_conv_forward_and_gradients_match_conv2d(size: tuple[int, ...], chunk_elements: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv_module, "COLS_CHUNK_ELEMENTS", chunk_elements)
    stride, padding = size[6], size[7]
    x, weight, bias = (t.requires_grad_() for t in _conv_inputs(size, seed=1))
    out = _fn("conv")(x, weight, bias, stride, padding)
    want = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    _close(out, want, "output")
    for name, got, expected in zip(("x", "weight", "bias"), _grads(out, (x, weight, bias), 2),
                                   _grads(want, (x, weight, bias), 2), strict=True):
        _close(got, expected, f"grad {name}")


@pytest.mark.parametrize("threads", [1, 2])
def test_conv_whole_batch_path_follows_the_thread_count(threads: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One chunk, columns above the tiny limit: one folded addmm on one thread (an NCHW view
    of a (C_out, N, ...) buffer), baddbmm over the batch on more (contiguous); same numbers."""
    monkeypatch.setattr(conv_module, "TINY_COLS_ELEMENTS", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        size = (3, 2, 4, 8, 7, 3, 1, 1)
        x, weight, bias = (t.requires_grad_() for t in _conv_inputs(size, seed=5))
        out = _fn("conv")(x, weight, bias, 1, 1)
        want = F.conv2d(x, weight, bias, padding=1)
        assert out.is_contiguous() == (threads > 1)
        _close(out, want, "output")
        for name, got, expected in zip(("x", "weight", "bias"), _grads(out, (x, weight, bias), 6),
                                       _grads(want, (x, weight, bias), 6), strict=True):
            _close(got, expected, f"grad {name}")
    finally:
        torch.set_num_threads(before)


def test_conv_ragged_last_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """5 images, 2 per chunk: chunks of 2, 2 and 1 concatenated in order."""
    N, C_in, C_out, H, W, k = 5, 3, 4, 6, 5, 3
    monkeypatch.setattr(conv_module, "COLS_CHUNK_ELEMENTS", 2 * C_in * k * k * (H - 2) * (W - 2))
    x, weight, bias = _conv_inputs((N, C_in, C_out, H, W, k, 1, 0), seed=3)
    with torch.no_grad():
        _close(_fn("conv")(x, weight, bias, 1, 0), F.conv2d(x, weight, bias), "output")


@pytest.mark.parametrize("chunk_elements", [conv_module.COLS_CHUNK_ELEMENTS, 1],
                         ids=["whole_batch", "one_image_per_chunk"])
def test_conv_output_is_nchw(chunk_elements: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """(N, C_out, H_out, W_out) either way; the chunked path writes it contiguous."""
    monkeypatch.setattr(conv_module, "COLS_CHUNK_ELEMENTS", chunk_elements)
    x, weight, bias = (t.float() for t in _conv_inputs((3, 2, 4, 8, 8, 3, 1, 1), seed=4))
    with torch.no_grad():
        out = _fn("conv")(x, weight, bias, 1, 1)
    assert out.shape == (3, 4, 8, 8)
    assert out.is_contiguous() == (chunk_elements == 1)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1))


@pytest.mark.parametrize("chunk_elements", [conv_module.COLS_CHUNK_ELEMENTS, 1],
                         ids=["whole_batch", "one_image_per_chunk"])
@pytest.mark.parametrize("size", [(2, 3, 4, 6, 5, 3, 2, 1), (2, 3, 2, 6, 5, 1, 1, 0)],
                         ids=_conv_id)
def test_conv_non_contiguous_input(size: tuple[int, ...], chunk_elements: int,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv_module, "COLS_CHUNK_ELEMENTS", chunk_elements)
    x, weight, bias = _conv_inputs(size, seed=5)
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, H and W strides swapped
    assert not x_t.is_contiguous()
    with torch.no_grad():
        out = _fn("conv")(x_t, weight, bias, size[6], size[7])
    _close(out, F.conv2d(x, weight, bias, stride=size[6], padding=size[7]), "output")


# --- linear: shapes F.linear accepts ------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (7,), (4, 1, 2, 7)], ids=str)
def test_linear_leading_dimensions_match_f_linear(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    out = _fn("linear")(x, weight, bias)
    want = F.linear(x, weight, bias)
    assert out.shape == (*shape[:-1], 3)
    _close(out, want, "output")
    for name, got, expected in zip(("x", "weight", "bias"), _grads(out, (x, weight, bias), 7),
                                   _grads(want, (x, weight, bias), 7), strict=True):
        _close(got, expected, f"grad {name}")


def test_linear_non_contiguous_input() -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64).T  # (5, 16), column-major
    weight = torch.randn(4, 16, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        _close(_fn("linear")(x, weight, bias), F.linear(x, weight, bias), "output")


# --- bn: running statistics, the shift row, degenerate channels -------------------------------

MOMENTUM, EPS = 0.1, 1e-5


def _bn_inputs(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64):
    N, C, H, W = shape
    inputs = REGISTRY.layer("bn").make_inputs({"N": N, "C": C, "H": H, "W": W, "training": 1},
                                             torch.Generator().manual_seed(seed))
    return {n: t.to(dtype) for n, t in inputs.tensors.items()}


def _bn_run(fn, t: dict[str, Tensor], training: bool):
    """Output, gradients (x, weight, bias), running_mean and running_var after one call."""
    t = {n: v.detach().clone() for n, v in t.items()}
    leaves = tuple(t[n].requires_grad_() for n in ("x", "weight", "bias"))
    out = fn(t["x"], t["weight"], t["bias"], t["running_mean"], t["running_var"], training,
             MOMENTUM, EPS)
    return out, _grads(out, leaves, 9), t["running_mean"], t["running_var"]


def _bn_reference(x, weight, bias, running_mean, running_var, training, momentum, eps):
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_bn_training_updates_the_running_stats_in_place(dtype: torch.dtype) -> None:
    """running = 0.9 * running + 0.1 * batch, with the unbiased batch variance, in x's dtype."""
    t = _bn_inputs((2, 3, 5, 4), seed=10, dtype=dtype)
    _, _, mean, var = _bn_run(_fn("bn"), t, training=True)
    x = t["x"].double()
    want_mean = 0.9 * t["running_mean"].double() + 0.1 * x.mean((0, 2, 3))
    want_var = 0.9 * t["running_var"].double() + 0.1 * x.var((0, 2, 3), unbiased=True)
    assert mean.dtype == var.dtype == dtype
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(mean.double(), want_mean, rtol=tol, atol=tol)
    torch.testing.assert_close(var.double(), want_var, rtol=tol, atol=tol)


def test_bn_eval_leaves_the_running_stats_alone() -> None:
    t = _bn_inputs((2, 3, 5, 4), seed=11)
    _, _, mean, var = _bn_run(_fn("bn"), t, training=False)
    assert torch.equal(mean, t["running_mean"])
    assert torch.equal(var, t["running_var"])


@pytest.mark.parametrize("plane_elements", [bn_module.SHIFT_PLANE_ELEMENTS, 0],
                         ids=["shift_plane", "shift_row"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (3, 2, 1, 1), (1, 4, 3, 6)],
                         ids=lambda s: "N{}_C{}_H{}_W{}".format(*s))
def test_bn_matches_batch_norm(shape: tuple[int, ...], training: bool, plane_elements: int,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bn_module, "SHIFT_PLANE_ELEMENTS", plane_elements)
    t = _bn_inputs(shape, seed=12)
    got, want = _bn_run(_fn("bn"), t, training), _bn_run(_bn_reference, t, training)
    for what, a, b in zip(("output", "grads", "running_mean", "running_var"), got, want,
                          strict=True):
        for i, (a_i, b_i) in enumerate(zip(a, b, strict=True) if what == "grads" else [(a, b)]):
            _close(a_i, b_i, f"{what} {i}")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_constant_channel_has_finite_gradients(training: bool) -> None:
    """A channel with zero variance (a dead ReLU map) normalises to the bias, as F.batch_norm."""
    t = _bn_inputs((2, 3, 4, 4), seed=13)
    t["x"][:, 1] = 0.5
    got, want = _bn_run(_fn("bn"), t, training), _bn_run(_bn_reference, t, training)
    _close(got[0], want[0], "output")
    for i, (a, b) in enumerate(zip(got[1], want[1], strict=True)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7, msg=lambda m, i=i: f"grad {i}: {m}")


def test_bn_non_contiguous_input() -> None:
    t = _bn_inputs((2, 3, 5, 4), seed=14)
    x_t = t["x"].transpose(2, 3).contiguous().transpose(2, 3)
    assert not x_t.is_contiguous()
    for training in (True, False):
        got = _bn_run(_fn("bn"), {**t, "x": x_t}, training)
        want = _bn_run(_bn_reference, t, training)
        _close(got[0], want[0], "output")
        _close(got[3], want[3], "running_var")
