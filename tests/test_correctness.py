"""The correctness check passes the real implementations and flags planted bugs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from impls import REGISTRY
from suites.correctness import TOLERANCES, check, compare, make_trial, tolerance_key

LAYER = REGISTRY.layer("conv")
SEEDS = [0, 1, 2]
# C_in >= 2 and H_out >= 2, so a bias added per in-channel or per row shows.
SMALL = {"N": 2, "C_in": 3, "C_out": 4, "H": 7, "W": 6, "k": 3, "stride": 2, "padding": 1}
TINY = {"N": 1, "C_in": 2, "C_out": 2, "H": 5, "W": 4, "k": 3, "stride": 1, "padding": 1}

def _check(fn, params=SMALL, dtype=torch.float32, mode="fwd", seeds=SEEDS):
    with torch.set_grad_enabled(mode == "fwdbwd"):  # as the runner calls it
        return check(fn, LAYER, params, seeds, dtype, "cpu", mode)


# --- deliberately wrong implementations -------------------------------------------------------


def conv_seed_bias_bug(x: Tensor, weight: Tensor, bias: Tensor, stride: int,
                       padding: int) -> Tensor:
    """The course notes' MyConv2d loops, as printed: the bias add sits inside ``for ic`` and
    ``for i``, after the ``for j`` loop (with stride and padding added)."""
    batch_size, in_channels, H, W = x.shape
    out_channels, _, k, _ = weight.shape
    out_H = (H + 2 * padding - k) // stride + 1
    out_W = (W + 2 * padding - k) // stride + 1
    x = F.pad(x, (padding, padding, padding, padding))
    output = torch.zeros((batch_size, out_channels, out_H, out_W), dtype=x.dtype,
                         device=x.device)
    for b in range(batch_size):
        for oc in range(out_channels):
            for ic in range(in_channels):
                for i in range(out_H):
                    for j in range(out_W):
                        region = x[b, ic, i * stride:i * stride + k, j * stride:j * stride + k]
                        output[b, oc, i, j] += torch.sum(region * weight[oc, ic])
                    output[b, oc] += bias[oc]
    return output


class _ConvWrongWeightGrad(torch.autograd.Function):
    """Exact forward; the weight gradient is 1% too large."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, stride=s, padding=p)
        grad_w = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, stride=s, padding=p)
        return grad_x, grad_w * 1.01, grad_out.sum((0, 2, 3)), None, None


def conv_wrong_weight_grad(x, weight, bias, stride, padding):
    return _ConvWrongWeightGrad.apply(x, weight, bias, stride, padding)


def _modifies(name: str):
    def conv_modifies_input(x, weight, bias, stride, padding):
        out = F.conv2d(x, weight, bias, stride=stride, padding=padding)  # the right answer
        with torch.no_grad():
            {"x": x, "weight": weight, "bias": bias}[name].add_(1.0)
        return out
    return conv_modifies_input


def conv_wrong_shape(x, weight, bias, stride, padding):
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)[:, :, :-1]


def conv_wrong_dtype(x, weight, bias, stride, padding):
    return F.conv2d(x.double(), weight.double(), bias.double(), stride=stride, padding=padding)


def conv_not_a_tensor(x, weight, bias, stride, padding):
    return F.conv2d(x, weight, bias, stride=stride, padding=padding).detach().numpy()


# --- a correct implementation passes (every one is: tests/test_contract.py) ---------------------


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_a_correct_implementation_passes_with_its_figures(mode: str) -> None:
    verdict, trial = _check(REGISTRY.impl("conv", "builtin").fn, mode=mode)
    assert verdict.ok, verdict.problems
    assert verdict.problems == []
    assert verdict.rel_err < TOLERANCES["float32"][0]
    if mode == "fwdbwd":
        assert set(trial.ref_grads) == {"x", "weight", "bias"}
        assert verdict.grad_rel_err < TOLERANCES["float32"][0]
    else:
        assert np.isnan(verdict.grad_rel_err)  # no gradient was compared


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_bfloat16_builtin_passes_with_the_bfloat16_tolerance(mode: str) -> None:
    builtin = REGISTRY.impl("conv", "builtin").fn
    verdict, trial = _check(builtin, dtype=torch.bfloat16, mode=mode)
    assert verdict.ok, verdict.problems
    # bfloat16 keeps 8 mantissa bits: the output's error is far over float32's tolerance, so
    # passing really depends on the per-dtype tolerance row.
    with torch.no_grad():
        out = builtin(**trial.inputs.tensors, **trial.inputs.static)
    assert out.dtype == torch.bfloat16
    strict = compare("output", out, trial.ref_out, "cpu", torch.bfloat16, *TOLERANCES["float32"])
    assert strict.problem
    loose = compare("output", out, trial.ref_out, "cpu", torch.bfloat16, *TOLERANCES["bfloat16"])
    assert not loose.problem


def conv_off_by_5e_4(x, weight, bias, stride, padding):
    return F.conv2d(x, weight, bias, stride=stride, padding=padding) * (1 + 5e-4)


def test_a_small_relative_error_fails_float32_but_not_bfloat16() -> None:
    """float32 is held well under 1e-3 relative; bfloat16 only to about 1e-2."""
    verdict, _ = _check(conv_off_by_5e_4, dtype=torch.float32)
    assert not verdict.ok
    verdict, _ = _check(conv_off_by_5e_4, dtype=torch.bfloat16)
    assert verdict.ok, verdict.problems


def test_tolerance_table_follows_the_design() -> None:
    rtol = {name: row[0] for name, row in TOLERANCES.items()}
    assert rtol["float64"] < rtol["float32"] < 1e-3  # float32: well under 1e-3 relative
    assert rtol["float32"] < rtol["tf32"] < rtol["bfloat16"]
    for name in ("bfloat16", "float16"):
        assert 3e-3 <= rtol[name] <= 3e-2  # around 1e-2
    assert all(atol > 0 for _, atol in TOLERANCES.values())


def test_float32_on_cuda_uses_the_tf32_row_only_when_tf32_is_on() -> None:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32, cudnn.allow_tf32 = False, False
        assert tolerance_key(torch.float32, "cuda") == "float32"
        cudnn.allow_tf32 = True
        assert tolerance_key(torch.float32, "cuda") == "tf32"
        assert tolerance_key(torch.float32, "cuda:1") == "tf32"
        matmul.allow_tf32, cudnn.allow_tf32 = True, False
        assert tolerance_key(torch.float32, "cuda") == "tf32"
        assert tolerance_key(torch.float32, "cpu") == "float32"
        assert tolerance_key(torch.bfloat16, "cuda") == "bfloat16"
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


# --- planted bugs are flagged -----------------------------------------------------------------


def test_seed_bias_bug_is_flagged() -> None:
    verdict, _ = _check(conv_seed_bias_bug, TINY)
    assert not verdict.ok
    assert any(p.startswith("output:") for p in verdict.problems), verdict.problems
    assert verdict.rel_err > 0.1


def test_seed_bias_bug_with_one_channel_and_row_is_harmless() -> None:
    """Control: with C_in = 1 and one output row the notes' bias is added exactly once."""
    params = {"N": 1, "C_in": 1, "C_out": 2, "H": 3, "W": 5, "k": 3, "stride": 1, "padding": 0}
    verdict, _ = _check(conv_seed_bias_bug, params)
    assert verdict.ok, verdict.problems


def test_wrong_weight_gradient_passes_forward_and_fails_backward() -> None:
    verdict, _ = _check(conv_wrong_weight_grad, mode="fwd")
    assert verdict.ok, verdict.problems

    verdict, _ = _check(conv_wrong_weight_grad, mode="fwdbwd")
    assert not verdict.ok
    assert len(verdict.problems) == 1
    assert verdict.problems[0].startswith("grad weight"), verdict.problems
    assert verdict.rel_err < TOLERANCES["float32"][0]  # the output itself was right
    assert verdict.grad_rel_err == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("name", ["x", "weight", "bias"])
def test_input_modified_in_place_is_flagged(name: str) -> None:
    verdict, _ = _check(_modifies(name))
    assert not verdict.ok
    assert f"input {name} was modified in place" in verdict.problems
    # the returned output was right: the in-place write is the only problem
    assert all("modified in place" in p for p in verdict.problems), verdict.problems


def test_one_wrong_element_is_flagged() -> None:
    index = (1, 2, 3, 1)

    def conv_one_wrong(x, weight, bias, stride, padding):
        out = F.conv2d(x, weight, bias, stride=stride, padding=padding)
        out[index] += 0.5
        return out

    verdict, trial = _check(conv_one_wrong)
    assert not verdict.ok
    assert len(verdict.problems) == 1
    problem = verdict.problems[0]
    assert problem.startswith(f"output: 1 of {trial.ref_out.numel()} element(s)"), problem
    assert str(index) in problem
    assert verdict.max_abs_err == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_output_is_flagged(bad: float) -> None:
    def conv_nan(x, weight, bias, stride, padding):
        out = F.conv2d(x, weight, bias, stride=stride, padding=padding)
        out[0, 1, 2, 2] = bad
        return out

    verdict, _ = _check(conv_nan)
    assert not verdict.ok
    assert any("NaN/Inf" in p for p in verdict.problems), verdict.problems


def test_all_nan_output_is_flagged() -> None:
    def conv_all_nan(x, weight, bias, stride, padding):
        return torch.full_like(F.conv2d(x, weight, bias, stride=stride, padding=padding),
                               float("nan"))

    verdict, _ = _check(conv_all_nan)
    assert not verdict.ok


def test_wrong_shape_is_flagged() -> None:
    verdict, trial = _check(conv_wrong_shape)
    assert not verdict.ok
    assert any("shape" in p and str(tuple(trial.ref_out.shape)) in p for p in verdict.problems)


def test_wrong_dtype_is_flagged() -> None:
    verdict, _ = _check(conv_wrong_dtype, dtype=torch.float32)
    assert not verdict.ok
    assert any("dtype" in p and "float64" in p for p in verdict.problems), verdict.problems


def test_non_tensor_output_is_flagged() -> None:
    verdict, _ = _check(conv_not_a_tensor)
    assert not verdict.ok
    assert any("Tensor" in p for p in verdict.problems), verdict.problems


def test_an_impl_wrong_only_on_a_later_trial_is_flagged() -> None:
    """Several trials: a bug that spares the first seed must still be caught."""
    calls = []

    def conv_wrong_after_first_call(x, weight, bias, stride, padding):
        calls.append(1)
        out = F.conv2d(x, weight, bias, stride=stride, padding=padding)
        return out if len(calls) == 1 else out * 1.1

    verdict, _ = _check(conv_wrong_after_first_call, seeds=SEEDS)
    assert len(calls) >= 2
    assert not verdict.ok


# --- error figures ----------------------------------------------------------------------------


def _figures(out: Tensor, ref: Tensor) -> tuple[float, float]:
    diff = out.double() - ref
    return float(diff.abs().max()), float(diff.norm() / ref.norm())


def test_error_figures_of_a_correct_impl_are_small() -> None:
    builtin = REGISTRY.impl("conv", "builtin").fn
    verdict, trial = _check(builtin, seeds=[0])
    with torch.no_grad():
        out = builtin(**trial.inputs.tensors, **trial.inputs.static)
    max_abs, rel = _figures(out, trial.ref_out)
    assert verdict.max_abs_err == pytest.approx(max_abs, rel=1e-6, abs=1e-12)
    assert verdict.rel_err == pytest.approx(rel, rel=1e-6, abs=1e-12)
    assert verdict.max_abs_err < 1e-5
    assert verdict.rel_err < 1e-5


def test_error_figures_of_a_wrong_impl_are_large() -> None:
    verdict, trial = _check(conv_seed_bias_bug, TINY, seeds=[0])
    with torch.no_grad():
        out = conv_seed_bias_bug(**trial.inputs.tensors, **trial.inputs.static)
    max_abs, rel = _figures(out, trial.ref_out)
    assert verdict.max_abs_err == pytest.approx(max_abs, rel=1e-6)
    assert verdict.rel_err == pytest.approx(rel, rel=1e-6)
    assert verdict.max_abs_err > 0.1
    assert verdict.rel_err > 0.1


# --- trials -----------------------------------------------------------------------------------


def test_trials_with_different_seeds_differ_and_one_seed_repeats() -> None:
    a = make_trial(LAYER, SMALL, 0, torch.float32, "cpu", "fwdbwd")
    b = make_trial(LAYER, SMALL, 1, torch.float32, "cpu", "fwdbwd")
    again = make_trial(LAYER, SMALL, 0, torch.float32, "cpu", "fwdbwd")
    for name in ("x", "weight", "bias"):
        assert not torch.equal(a.inputs.tensors[name], b.inputs.tensors[name])
        assert torch.equal(a.inputs.tensors[name], again.inputs.tensors[name])
        t = a.inputs.tensors[name]
        assert t.dtype == torch.float32
        assert t.std() > 0  # random, never zeros or constants
    assert not torch.equal(a.grad_out, b.grad_out)
    assert torch.equal(a.grad_out, again.grad_out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_reference_sees_exactly_the_rounded_inputs(dtype: torch.dtype) -> None:
    fwd = make_trial(LAYER, SMALL, 3, dtype, "cpu", "fwd")
    x, weight, bias = (fwd.inputs.tensors[n] for n in ("x", "weight", "bias"))
    assert x.dtype == weight.dtype == bias.dtype == dtype
    s, p = SMALL["stride"], SMALL["padding"]
    expected = F.conv2d(x.double(), weight.double(), bias.double(), stride=s, padding=p)
    assert fwd.ref_out.dtype == torch.float64
    assert torch.equal(fwd.ref_out, expected)

    bwd = make_trial(LAYER, SMALL, 3, dtype, "cpu", "fwdbwd")
    leaves = [bwd.inputs.tensors[n].double().requires_grad_() for n in ("x", "weight", "bias")]
    out = F.conv2d(*leaves, stride=s, padding=p)
    assert bwd.grad_out.dtype == dtype
    grads = torch.autograd.grad(out, leaves, bwd.grad_out.double())
    assert torch.equal(bwd.ref_out, out.detach())
    for name, grad in zip(("x", "weight", "bias"), grads, strict=True):
        assert torch.equal(bwd.ref_grads[name], grad), name


def test_check_does_not_disturb_the_trial_inputs() -> None:
    """The trial check returns is reused for timing: its inputs must be the seeded ones."""
    builtin = REGISTRY.impl("conv", "builtin").fn
    _, trial = _check(builtin, mode="fwdbwd")
    fresh = make_trial(LAYER, SMALL, SEEDS[0], torch.float32, "cpu", "fwdbwd")
    for name, tensor in fresh.inputs.tensors.items():
        assert torch.equal(trial.inputs.tensors[name], tensor)


def test_a_repeated_trial_reuses_its_reference_but_not_its_inputs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Every implementation of a size is checked with the same seeds: the float64 side is made
    # once. An implementation that scribbles over its inputs must not reach the next one.
    from suites import correctness

    monkeypatch.setattr(correctness, "_REFERENCES", correctness.OrderedDict())
    bn = REGISTRY.layer("bn")
    params = {"N": 2, "C": 3, "H": 4, "W": 5, "training": 1}
    made = []
    original = type(bn).make_inputs
    monkeypatch.setattr(type(bn), "make_inputs",
                        lambda self, *a: made.append(a) or original(self, *a))
    first = make_trial(bn, params, 7, torch.float32, "cpu", "fwdbwd")
    pristine = {n: t.clone() for n, t in first.inputs.tensors.items()}
    for t in first.inputs.tensors.values():
        t.add_(1.0)  # what a careless implementation (or bn's state update) does
    second = make_trial(bn, params, 7, torch.float32, "cpu", "fwdbwd")
    assert len(made) == 1
    for name, t in second.inputs.tensors.items():
        assert t.data_ptr() != first.inputs.tensors[name].data_ptr()
        torch.testing.assert_close(t, pristine[name], rtol=0, atol=0)
    assert second.ref_out is first.ref_out
    torch.testing.assert_close(second.grad_out, first.grad_out, rtol=0, atol=0)
    make_trial(bn, params, 8, torch.float32, "cpu", "fwdbwd")  # another seed: new inputs
    make_trial(bn, params, 7, torch.bfloat16, "cpu", "fwdbwd")  # another rounding: too
    assert len(made) == 3
    fn = REGISTRY.impl("bn", "builtin").fn
    with torch.enable_grad():  # the reused reference still judges a real implementation
        verdict, _ = check(fn, bn, params, [7, 7], torch.float32, "cpu", "fwdbwd")
    assert verdict.ok, verdict.problems


def test_the_reference_cache_keeps_within_its_byte_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from suites import correctness

    monkeypatch.setattr(correctness, "_REFERENCES", correctness.OrderedDict())
    one = correctness._reference(LAYER, SMALL, 0, torch.float32, "fwd").nbytes
    monkeypatch.setattr(correctness, "REFERENCE_CACHE_BYTES", 2 * one)
    for seed in range(1, 5):
        make_trial(LAYER, SMALL, seed, torch.float32, "cpu", "fwd")
    assert [k[2] for k in correctness._REFERENCES] == [3, 4]  # the newest two
