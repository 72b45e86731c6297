"""Linear beyond tests/test_contract.py: the weight layout and the bias pinned by hand,
non-contiguous inputs, addmm's leading dimensions, half-precision sums over a batch, planted
bugs, and linear's own sizes and checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from impls import REGISTRY
from impls.cnn import fc_features
from impls.registry import FLOAT_DTYPES
from suites.correctness import check
from suites.presets import notes_size

LAYER = REGISTRY.layer("linear")
IMPLS = REGISTRY.impls("linear")
IMPL_IDS = [impl.name for impl in IMPLS]
SEEDS = [0, 1, 2]
SMALL = {"N": 4, "in_features": 12, "out_features": 6}
#: the loops' weight gradient sums N = 128 contributions per element
HALF_ACCUMULATION = {"N": 128, "in_features": 256, "out_features": 2}


def _inputs(size: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor, Tensor]:
    inputs = LAYER.make_inputs(dict(zip(LAYER.params, size, strict=True)),
                               torch.Generator().manual_seed(seed))
    return inputs.tensors["x"], inputs.tensors["weight"], inputs.tensors["bias"]


def _close(got: Tensor, want: Tensor, what: str) -> None:
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=lambda m: f"{what}: {m}")


def _check(fn, params=SMALL, mode="fwd", dtype=torch.float32) -> list[str]:
    """What the correctness check finds wrong: ``["output", "grad x", ...]``, or nothing."""
    with torch.set_grad_enabled(mode != "fwd"):  # as the runner calls it
        verdict, _ = check(fn, LAYER, params, SEEDS, dtype, "cpu", mode)
    return [p.split(":")[0] for p in verdict.problems]


def test_the_documented_implementations_are_registered() -> None:
    assert {"loops", "einsum", "matmul", "addmm", "builtin"} <= set(IMPL_IDS)
    assert [i.name for i in IMPLS if i.naive] == ["loops"]
    fast = REGISTRY.impl("linear", "addmm")  # runs what the contract checks
    assert fast.dtypes == frozenset(FLOAT_DTYPES) and set(LAYER.modes) <= fast.modes
    assert "cpu" in fast.devices and fast.description


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_weight_is_out_by_in_and_the_bias_is_added_once(impl) -> None:
    """Pinned by hand: out[n, o] = sum_i x[n, i] * weight[o, i] + bias[o]."""
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    bias = torch.tensor([10.0, 20.0], dtype=torch.float64)
    with torch.no_grad():
        assert impl.fn(x, weight, bias).tolist() == [[11.0, 25.0]]


def _assert_same(fn, x: Tensor, weight: Tensor, bias: Tensor) -> None:
    """Output and the gradients of x, weight and bias against F.linear, in float64."""
    leaves = tuple(t.detach().requires_grad_() for t in (x, weight, bias))
    out, want = fn(*leaves), F.linear(*leaves)
    assert out.shape == want.shape
    _close(out, want, "output")
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(2))
    got, expected = (torch.autograd.grad(o, leaves, grad_out) for o in (out, want))
    for name, a, b in zip(("x", "weight", "bias"), got, expected, strict=True):
        _close(a, b, f"grad {name}")


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_non_contiguous_input(impl) -> None:
    """MyCNN hands the fc a flattened view; a transposed one must work too."""
    x, weight, bias = _inputs((5, 16, 16), seed=3)
    x_t = x.T.contiguous().T  # same values, column-major
    assert not x_t.is_contiguous()
    _assert_same(impl.fn, x_t, weight, bias)


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7), (7,), (4, 1, 2, 7)], ids=str)
def test_addmm_takes_the_leading_dimensions_f_linear_takes(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(6)
    x, weight, bias = (torch.randn(*s, generator=g, dtype=torch.float64)
                       for s in (shape, (3, 7), (3,)))
    _assert_same(REGISTRY.impl("linear", "addmm").fn, x, weight, bias)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("impl", "params"), [
    *(pytest.param(impl.name, HALF_ACCUMULATION, id=f"{impl.name}-N128_in256_out2")
      for impl in IMPLS),
    pytest.param("addmm", notes_size("linear"), id="addmm-notes")])
def test_half_precision_passes_with_its_tolerance(impl: str, params: dict[str, int],
                                                  dtype: torch.dtype) -> None:
    assert _check(REGISTRY.impl("linear", impl).fn, params, "fwdbwd", dtype) == []


# --- planted bugs ------------------------------------------------------------------------------


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


def test_planted_bugs_are_flagged() -> None:
    square = {"N": 6, "in_features": 6, "out_features": 6}
    for fn in (linear_no_transpose, linear_bias_per_sample, linear_bias_twice):
        assert _check(fn, square)[:1] == ["output"], fn.__name__
    # where the real loops pass in bfloat16; in float32 the upcast makes no difference
    accumulate = linear_loops_bfloat16_accumulation
    assert _check(accumulate, HALF_ACCUMULATION, "fwdbwd") == []
    problems = _check(accumulate, HALF_ACCUMULATION, "fwdbwd", torch.bfloat16)
    assert problems and all(p.startswith("grad") for p in problems), problems


# --- linear's sizes ------------------------------------------------------------------------------


def test_sizes() -> None:
    """The notes' size is MyCNN's fc: 8 channels of 13 x 13 after the pool, 10 digits, a batch of
    64. A naive loop's calibration keeps in_features, the length of one dot product."""
    notes = notes_size("linear")
    assert notes == {"N": 64, "in_features": 8 * 13 * 13, "out_features": 10}
    assert notes["in_features"] == fc_features(notes_size("cnn"))
    assert LAYER.label(notes) == "N64_in1352_out10"
    small = LAYER.calibration_params({"N": 512, "in_features": 1024, "out_features": 1024})
    assert small == {"N": 2, "in_features": 1024, "out_features": 4}
    LAYER.check(small)


@pytest.mark.parametrize(("change", "match"), [
    ({"N": 0}, "N"), ({"in_features": 0}, "in_features"), ({"out_features": -1}, "out_features"),
])
def test_check_rejects_nonsense(change: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        LAYER.check({**notes_size("linear"), **change})
    assert "\n" not in str(info.value)
