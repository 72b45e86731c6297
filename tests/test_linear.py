"""Linear: every implementation computes what ``F.linear`` does, forward and backward; planted
bugs are flagged; FLOPs match FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from impls import REGISTRY
from suites.correctness import TOLERANCES, check
from suites.presets import notes_size, preset_table

LAYER = REGISTRY.layer("linear")
IMPLS = REGISTRY.impls("linear")
IMPL_IDS = [impl.name for impl in IMPLS]
SEEDS = [0, 1, 2]

# (N, in_features, out_features): N = 1, one input or output feature, non-square.
SIZES = [(3, 7, 5), (1, 4, 6), (2, 1, 3), (4, 9, 1), (5, 16, 16)]
SMALL = {"N": 4, "in_features": 12, "out_features": 6}


def _size_id(size: tuple[int, ...]) -> str:
    return "N{}_in{}_out{}".format(*size)


def _inputs(size: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor, Tensor]:
    inputs = LAYER.make_inputs(dict(zip(LAYER.params, size, strict=True)),
                               torch.Generator().manual_seed(seed))
    return inputs.tensors["x"], inputs.tensors["weight"], inputs.tensors["bias"]


def test_the_documented_implementations_are_registered() -> None:
    assert {"loops", "einsum", "matmul", "builtin"} <= set(IMPL_IDS)
    assert REGISTRY.impl("linear", "loops").naive


@pytest.mark.parametrize("size", SIZES, ids=_size_id)
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_forward_and_gradients_match_linear(impl, size: tuple[int, ...]) -> None:
    x, weight, bias = (t.requires_grad_() for t in _inputs(size, seed=1))
    expected = F.linear(x, weight, bias)
    out = impl.fn(x, weight, bias)
    assert out.shape == (size[0], size[2])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(out.shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(out, (x, weight, bias), grad_out)
    want = torch.autograd.grad(expected, (x, weight, bias), grad_out)
    for name, g, w in zip(("x", "weight", "bias"), got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_weight_is_out_by_in_and_the_bias_is_added_once(impl) -> None:
    """Pinned by hand: out[n, o] = sum_i x[n, i] * weight[o, i] + bias[o]."""
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    bias = torch.tensor([10.0, 20.0], dtype=torch.float64)
    with torch.no_grad():
        assert impl.fn(x, weight, bias).tolist() == [[11.0, 25.0]]


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_non_contiguous_input(impl) -> None:
    """MyCNN hands the fc a flattened view; a transposed one must work too."""
    x, weight, bias = _inputs((5, 16, 16), seed=3)
    x_t = x.T.contiguous().T  # same values, column-major
    assert not x_t.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(impl.fn(x_t, weight, bias), F.linear(x, weight, bias),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_output_keeps_the_input_dtype(impl, dtype: torch.dtype) -> None:
    x, weight, bias = (t.to(dtype) for t in _inputs((3, 7, 5), seed=4))
    with torch.no_grad():
        assert impl.fn(x, weight, bias).dtype == dtype


# --- the correctness check --------------------------------------------------------------------


def _check(fn, params=SMALL, mode="fwd", dtype=torch.float32):
    with torch.set_grad_enabled(mode != "fwd"):
        return check(fn, LAYER, params, SEEDS, dtype, "cpu", mode)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_real_implementations_pass_the_check(impl, mode: str) -> None:
    verdict, trial = _check(impl.fn, mode=mode)
    assert verdict.ok, verdict.problems
    assert verdict.rel_err < TOLERANCES["float32"][0]
    if mode == "fwdbwd":
        assert set(trial.ref_grads) == {"x", "weight", "bias"}
        assert verdict.grad_rel_err < TOLERANCES["float32"][0]


HALF_ACCUMULATION = {"N": 128, "in_features": 256, "out_features": 2}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_half_precision_passes_with_its_tolerance(impl, dtype: torch.dtype) -> None:
    """The loops' weight gradient sums N = 128 contributions per element (in float32)."""
    params = HALF_ACCUMULATION
    verdict, _ = _check(impl.fn, params, "fwdbwd", dtype)
    assert verdict.ok, verdict.problems


def linear_no_transpose(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """weight read as (in_features, out_features): square sizes run, with the wrong answer."""
    return x @ weight.reshape(weight.shape[1], weight.shape[0]) + bias


def linear_bias_per_sample(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The bias indexed by the sample instead of the output feature (N == out_features)."""
    return x @ weight.T + bias[:, None]


def linear_bias_twice(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return F.linear(x, weight, bias) + bias


def linear_loops_bfloat16_accumulation(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The loops without the float32 upcast: in bfloat16 autograd sums the weight gradient's N
    per-sample contributions one rounding at a time."""
    rows = [torch.stack([(x[n] * weight[o]).sum() + bias[o] for o in range(weight.shape[0])])
            for n in range(x.shape[0])]
    return torch.stack(rows)  # N x (out_features,) -> (N, out_features)


def test_wrong_implementations_are_flagged() -> None:
    square = {"N": 6, "in_features": 6, "out_features": 6}
    for fn in (linear_no_transpose, linear_bias_per_sample, linear_bias_twice):
        verdict, _ = _check(fn, square)
        assert not verdict.ok, fn.__name__
        assert verdict.problems[0].startswith("output:"), verdict.problems


def test_bfloat16_gradient_accumulation_is_flagged() -> None:
    params = HALF_ACCUMULATION  # where the real loops pass in bfloat16
    verdict, _ = _check(linear_loops_bfloat16_accumulation, params, "fwdbwd")
    assert verdict.ok, verdict.problems  # float32: fine
    verdict, _ = _check(linear_loops_bfloat16_accumulation, params, "fwdbwd", torch.bfloat16)
    assert not verdict.ok
    assert all(p.startswith("grad") for p in verdict.problems), verdict.problems


# --- FLOPs, bytes, sizes ----------------------------------------------------------------------

FLOP_SIZES = [(64, 1352, 10), (3, 7, 5), (1, 1, 1), (1024, 2048, 2048), (4096, 512, 2048)]


def _meta(size: tuple[int, ...], grad: bool = False, dtype: torch.dtype = torch.float32):
    N, n_in, n_out = size
    return tuple(torch.empty(*shape, dtype=dtype, device="meta", requires_grad=grad)
                 for shape in ((N, n_in), (n_out, n_in), (n_out,)))


@pytest.mark.parametrize("size", FLOP_SIZES, ids=_size_id)
def test_flops_match_flop_counter(size: tuple[int, ...]) -> None:
    params = dict(zip(LAYER.params, size, strict=True))
    x, weight, bias = _meta(size)
    with FlopCounterMode(display=False) as counter:
        F.linear(x, weight, bias)
    assert LAYER.flops(params, "fwd") == counter.get_total_flops()

    x, weight, bias = _meta(size, grad=True)
    with FlopCounterMode(display=False) as counter:
        out = F.linear(x, weight, bias)
        out.backward(torch.empty_like(out))
    assert LAYER.flops(params, "fwdbwd") == counter.get_total_flops()


def test_flops_on_real_tensors_agree_with_meta() -> None:
    x, weight, bias = _inputs((3, 7, 5), seed=5)
    with FlopCounterMode(display=False) as counter:
        F.linear(x, weight, bias)
    assert LAYER.flops({"N": 3, "in_features": 7, "out_features": 5}, "fwd") == \
        counter.get_total_flops()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("size", FLOP_SIZES, ids=_size_id)
def test_bytes_are_each_tensor_once(size: tuple[int, ...], dtype: torch.dtype) -> None:
    params = dict(zip(LAYER.params, size, strict=True))
    x, weight, bias = _meta(size, dtype=dtype)
    out = F.linear(x, weight, bias)
    tensors = (x, weight, bias, out)
    fwd = sum(t.numel() * t.element_size() for t in tensors)
    assert LAYER.bytes_moved(params, dtype, "fwd") == fwd
    # plus at least grad_out, grad_x, grad_weight, grad_bias
    assert LAYER.bytes_moved(params, dtype, "fwdbwd") >= 2 * fwd


def test_every_preset_size_is_valid() -> None:
    for preset, sizes in preset_table("linear").items():
        for params in sizes:
            LAYER.check(params)
            assert LAYER.flops(params, "fwd") > 0
        assert notes_size("linear") in sizes, preset
    # MyCNN's fc: 8 channels of 13 x 13 after the pool, 10 digits
    assert notes_size("linear") == {"N": 64, "in_features": 8 * 13 * 13, "out_features": 10}


def test_calibration_keeps_the_dot_product_length() -> None:
    small = LAYER.calibration_params({"N": 512, "in_features": 1024, "out_features": 1024})
    assert small == {"N": 2, "in_features": 1024, "out_features": 4}
    LAYER.check(small)


@pytest.mark.parametrize(("change", "match"), [
    ({"N": 0}, "N"), ({"in_features": 0}, "in_features"), ({"out_features": -1}, "out_features"),
    ({"bias": 0}, "bias"),
])
def test_check_rejects_nonsense(change: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        LAYER.check({**notes_size("linear"), **change})
    assert "\n" not in str(info.value)


def test_labels_are_short() -> None:
    assert LAYER.label(notes_size("linear")) == "N64_in1352_out10"
