"""BatchNorm2d beyond tests/test_contract.py: the running statistics and the normalisation pinned
by hand, edge shapes and non-contiguous inputs in float64, fused's shift plane and row, half
precision, the notes' bugs and other planted ones, MyBatchNorm2d against nn.BatchNorm2d, the
FLOP estimate against a count of primitive operations, and bn's own sizes and checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import impls.bn as bn_module
from impls import REGISTRY
from impls.bn import MyBatchNorm2d
from impls.registry import FLOAT_DTYPES
from suites.correctness import check
from suites.presets import notes_size, preset_table

LAYER = REGISTRY.layer("bn")
IMPLS = REGISTRY.impls("bn")
IMPL_IDS = [impl.name for impl in IMPLS]
MOMENTUM, EPS = 0.1, 1e-5
# N * H * W = 40: small enough that the biased/unbiased running_var difference (a factor
# 40/39 on 0.1 * var) is far over float32's tolerance.
TINY = {"N": 2, "C": 3, "H": 5, "W": 4}
#: every implementation, and fused again with the shift broadcast from a row, not a plane
VARIANTS = [pytest.param(impl.fn, None, id=impl.name) for impl in IMPLS] + [
    pytest.param(bn_module.batchnorm2d_fused, 0, id="fused-shift_row")]


def _params(training: int, **size: int) -> dict[str, int]:
    return {**TINY, **size, "training": training}


def _inputs(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64):
    inputs = LAYER.make_inputs(_params(1, **dict(zip("NCHW", shape, strict=True))),
                               torch.Generator().manual_seed(seed))
    return {n: t.to(dtype) for n, t in inputs.tensors.items()}


def _run(fn, tensors: dict[str, Tensor], training: bool, grad_seed: int | None = None):
    """Output, gradients (x, weight, bias) and the running stats after one call on copies."""
    t = {n: v.detach().clone() for n, v in tensors.items()}
    leaves = [t[n].requires_grad_() for n in ("x", "weight", "bias")]
    out = fn(t["x"], t["weight"], t["bias"], t["running_mean"], t["running_var"], training,
             MOMENTUM, EPS)
    grads = () if grad_seed is None else torch.autograd.grad(out, leaves, torch.randn(
        out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(grad_seed)))
    return out.detach(), grads, t["running_mean"], t["running_var"]


def bn_reference(x, weight, bias, running_mean, running_var, training, momentum, eps):
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


def _close(a: Tensor, b: Tensor, what: str, tol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


def _check(fn, params, mode="fwd", dtype=torch.float32, seeds=(0, 1, 2)) -> list[str]:
    """What the correctness check finds wrong: ``["state running_var", ...]``, or nothing."""
    with torch.set_grad_enabled(mode != "fwd"):  # as the runner calls it
        verdict, _ = check(fn, LAYER, params, list(seeds), dtype, "cpu", mode)
    return [p.split(":")[0] for p in verdict.problems]


def test_the_documented_implementations_are_registered() -> None:
    assert {"loops", "vectorized", "fused", "builtin"} <= set(IMPL_IDS)
    assert [i.name for i in IMPLS if i.naive] == ["loops"]
    fast = REGISTRY.impl("bn", "fused")  # runs what the contract checks
    assert fast.dtypes == frozenset(FLOAT_DTYPES) and set(LAYER.modes) <= fast.modes
    assert "cpu" in fast.devices and fast.description


# --- PyTorch's semantics, pinned by hand (the notes get them wrong) ----------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_running_stats_move_in_place_with_the_unbiased_variance(impl, dtype: torch.dtype) -> None:
    """Training: running = 0.9 * running + 0.1 * batch, with the unbiased batch variance, in
    x's dtype. Eval: left exactly alone."""
    t = _inputs((2, 3, 5, 4), seed=3, dtype=dtype)
    out, _, mean, var = _run(impl.fn, t, True)
    x = t["x"].double()
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    _close(mean.double(), 0.9 * t["running_mean"].double() + 0.1 * x.mean((0, 2, 3)),
           "running_mean", tol)
    _close(var.double(), 0.9 * t["running_var"].double() + 0.1 * x.var((0, 2, 3), unbiased=True),
           "running_var", tol)
    assert out.dtype == mean.dtype == var.dtype == dtype
    _, _, mean, var = _run(impl.fn, t, False)
    assert torch.equal(mean, t["running_mean"]) and torch.equal(var, t["running_var"])


def test_training_normalises_with_the_biased_batch_variance() -> None:
    t = _inputs((2, 3, 5, 4), seed=4)
    x, w, b = t["x"], t["weight"].view(1, -1, 1, 1), t["bias"].view(1, -1, 1, 1)
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    for impl in IMPLS:
        _close(_run(impl.fn, t, True)[0], (x - mean) / torch.sqrt(var + EPS) * w + b, impl.name)


# (N, C, H, W): one image and one channel, a 1x1 map (two values per channel), one row.
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 1, 3, 2), (3, 2, 1, 1), (2, 4, 1, 3),
                                   (1, 4, 3, 6)], ids=lambda s: "N{}_C{}_H{}_W{}".format(*s))
@pytest.mark.parametrize(("fn", "plane"), VARIANTS)
def test_edge_shapes_match_batch_norm(fn, plane: int | None, shape: tuple[int, ...],
                                      training: bool, transposed: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Output, gradients and running statistics; ``transposed``: x with H and W strides
    swapped (same values, not contiguous)."""
    if plane is not None:
        monkeypatch.setattr(bn_module, "SHIFT_PLANE_ELEMENTS", plane)
    t = _inputs(shape, seed=1)
    if transposed:
        t["x"] = t["x"].transpose(2, 3).contiguous().transpose(2, 3)
        assert not t["x"].is_contiguous() or min(shape[2:]) == 1
    got, want = _run(fn, t, training, grad_seed=2), _run(bn_reference, t, training, grad_seed=2)
    for what, a, b in zip(("output", "grads", "running_mean", "running_var"), got, want,
                          strict=True):
        for i, (a_i, b_i) in enumerate(zip(a, b, strict=True) if what == "grads" else [(a, b)]):
            _close(a_i, b_i, f"{what} {i}")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("fn", "plane"), VARIANTS)
def test_a_constant_channel_has_finite_gradients(fn, plane: int | None, training: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A channel with zero variance (a dead ReLU map) normalises to the bias, as F.batch_norm."""
    if plane is not None:
        monkeypatch.setattr(bn_module, "SHIFT_PLANE_ELEMENTS", plane)
    t = _inputs((2, 3, 4, 4), seed=13)
    t["x"][:, 1] = 0.5
    got, want = _run(fn, t, training, grad_seed=9), _run(bn_reference, t, training, grad_seed=9)
    _close(got[0], want[0], "output")
    for name, a, b in zip(("x", "weight", "bias"), got[1], want[1], strict=True):
        assert torch.isfinite(a).all()
        _close(a, b, f"grad {name}", tol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("training", [1, 0], ids=["train", "eval"])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_half_precision_passes_with_its_tolerance(impl, training: int,
                                                  dtype: torch.dtype) -> None:
    assert _check(impl.fn, _params(training, N=4, H=6, W=6), "fwdbwd", dtype) == []


def test_one_value_per_channel_is_allowed_in_eval_only() -> None:
    one = {"N": 1, "C": 4, "H": 1, "W": 1, "training": 0}
    LAYER.check(one)
    assert _check(REGISTRY.impl("bn", "vectorized").fn, one, "fwdbwd") == []
    with pytest.raises(ValueError, match="more than one value"):
        LAYER.check({**one, "training": 1})


# --- planted bugs: the notes' MyBatchNorm2d and others ----------------------------------------


def bn_notes_as_printed(x, weight, bias, running_mean, running_var, training, momentum, eps):
    """The notes' forward, as printed (gamma/beta -> weight/bias, self.* -> arguments): x_hat is
    computed only in the ``else`` branch, and running_var takes the biased variance."""
    if training:
        mean = x.mean([0, 2, 3])
        var = x.var([0, 2, 3], unbiased=False)
        # momentum-weighted sum of the current and the past means
        running_mean.copy_((1 - momentum) * running_mean + momentum * mean.detach())
        running_var.copy_((1 - momentum) * running_var + momentum * var.detach())
    else:
        mean = running_mean
        var = running_var
        x_hat = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + eps)
    return weight[None, :, None, None] * x_hat + bias[None, :, None, None]


def bn_notes_biased_running_var(x, weight, bias, running_mean, running_var, training, momentum,
                                eps):
    """The notes' forward with only the x_hat bug fixed: running_var takes the biased variance."""
    if not training:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
    with torch.no_grad():
        running_mean.lerp_(x.mean((0, 2, 3)), momentum)
        running_var.lerp_(x.var((0, 2, 3), unbiased=False), momentum)
    return F.batch_norm(x, None, None, weight, bias, True, momentum, eps)


def bn_rebinds_running_stats(x, weight, bias, running_mean, running_var, training, momentum, eps):
    """The notes' ``self.running_mean = ...`` as a local rebinding: the caller's statistics are
    not updated."""
    return F.batch_norm(x, running_mean.clone(), running_var.clone(), weight, bias, training,
                        momentum, eps)


def bn_batch_stats_in_eval(x, weight, bias, running_mean, running_var, training, momentum, eps):
    """Always normalises with the batch statistics (as if ``training`` were ignored)."""
    return F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)


def bn_constant_statistics_in_backward(x, weight, bias, running_mean, running_var, training,
                                       momentum, eps):
    """Exact forward and running stats, but backward treats the batch mean and variance as
    constants (detached), so grad x misses their terms."""
    if not training:
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
    F.batch_norm(x.detach(), running_mean, running_var, None, None, True, momentum, eps)
    mean = x.detach().mean((0, 2, 3), keepdim=True)
    var = x.detach().var((0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_the_notes_bugs_are_flagged(mode: str) -> None:
    """As printed, x_hat exists only in the eval branch: training raises (the runner records an
    ``error`` row); eval is right. With x_hat fixed, the biased running_var is all that is
    wrong, and only in training."""
    with pytest.raises(UnboundLocalError, match="x_hat"):
        _check(bn_notes_as_printed, _params(1), mode)
    assert _check(bn_notes_as_printed, _params(0), mode) == []
    assert _check(bn_notes_biased_running_var, _params(1), mode) == ["state running_var"]
    assert _check(bn_notes_biased_running_var, _params(0), mode) == []


def test_the_notes_biased_running_var_at_the_notes_size() -> None:
    """At MyCNN's size (N*H*W = 43264 values per channel) the biased update is off by a factor
    ~2e-6 relative: below float32's tolerance, caught in float64."""
    params = notes_size("bn")
    assert _check(bn_notes_biased_running_var, params, dtype=torch.float64, seeds=[0]) == [
        "state running_var"]
    assert _check(REGISTRY.impl("bn", "builtin").fn, params, dtype=torch.float64, seeds=[0]) == []


def test_other_planted_bugs_are_flagged() -> None:
    assert sorted(_check(bn_rebinds_running_stats, _params(1))) == [
        "state running_mean", "state running_var"]
    assert _check(bn_batch_stats_in_eval, _params(1)) == []  # right in training
    assert {"output", "state running_mean", "state running_var"} <= set(
        _check(bn_batch_stats_in_eval, _params(0)))
    # the statistics treated as constants: right forward, wrong grad x, and right in eval
    assert _check(bn_constant_statistics_in_backward, _params(1), "fwd") == []
    assert _check(bn_constant_statistics_in_backward, _params(1), "fwdbwd") == ["grad x"]
    assert _check(bn_constant_statistics_in_backward, _params(0), "fwdbwd") == []


# --- MyBatchNorm2d is nn.BatchNorm2d ----------------------------------------------------------


def _assert_same_state(ours: nn.Module, theirs: nn.Module) -> None:
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        _close(a[name], b[name], name)


@pytest.mark.parametrize("impl", IMPL_IDS)
def test_mybatchnorm2d_trains_and_evaluates_like_nn_batchnorm2d(impl: str) -> None:
    C, g = 3, torch.Generator().manual_seed(7)
    ours, theirs = MyBatchNorm2d(C, impl=impl).double(), nn.BatchNorm2d(C).double()
    with torch.no_grad():  # random affine parameters: the default ones/zeros hide affine bugs
        ours.weight.normal_(generator=g)
        ours.bias.normal_(generator=g)
    theirs.load_state_dict(ours.state_dict())  # state dicts interchange
    for step in range(3):  # three training batches: running stats and the batch counter move
        x = torch.randn(4, C, 5, 6, generator=g, dtype=torch.float64) * 2 + step
        x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
        _close(out_ours, out_theirs, f"train output, step {step}")
        grad_out = torch.randn(out_ours.shape, generator=g, dtype=torch.float64)
        out_ours.backward(grad_out)
        out_theirs.backward(grad_out)
        for name, a, b in (("x", x_ours, x_theirs), ("weight", ours.weight, theirs.weight),
                           ("bias", ours.bias, theirs.bias)):
            _close(a.grad, b.grad, f"grad {name}")
    _assert_same_state(ours, theirs)
    assert int(ours.num_batches_tracked) == 3

    ours.eval()
    theirs.eval()
    x = torch.randn(2, C, 3, 4, generator=g, dtype=torch.float64)
    _close(ours(x), theirs(x), "eval output")
    _assert_same_state(ours, theirs)  # eval moves neither the stats nor the counter
    assert int(ours.num_batches_tracked) == 3


def test_mybatchnorm2d_defaults_and_names() -> None:
    bn = MyBatchNorm2d(8)
    assert (bn.eps, bn.momentum) == (1e-5, 0.1)
    _assert_same_state(bn, nn.BatchNorm2d(8))  # names, dtypes, ones, zeros, a zero counter
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert bn.gamma is bn.weight and bn.beta is bn.bias  # the notes' names
    bn.load_state_dict(nn.BatchNorm2d(8).state_dict())
    with pytest.raises(ValueError, match="4D"):
        MyBatchNorm2d(3)(torch.randn(3, 5))
    with pytest.raises(KeyError, match="nope"):
        MyBatchNorm2d(3, impl="nope")


# --- FLOPs: an estimate (FlopCounterMode counts nothing here) ---------------------------------

_COUNTED = {"add", "sub", "mul", "div", "sum", "sqrt", "rsqrt", "reciprocal", "neg"}


class _ElementOps(TorchDispatchMode):
    """Counts arithmetic: an elementwise op costs one FLOP per output element, a sum one per
    input element."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in _COUNTED:
            self.flops += max(a.numel() for a in (*args, out) if isinstance(a, Tensor))
        return out


def _textbook(x: Tensor, w: Tensor, b: Tensor, mean: Tensor, var: Tensor, training: bool,
              grad_out: Tensor | None) -> tuple[Tensor, ...]:
    """Batch norm's forward and its analytical backward, one primitive op at a time:
    (output, grad_x, grad_w, grad_b)."""
    C = x.shape[1]
    count = x.numel() // C
    if training:
        mean = x.sum((0, 2, 3)) / count
        xc = x - mean.view(1, C, 1, 1)
        var = (xc * xc).sum((0, 2, 3)) / count
    else:
        xc = x - mean.view(1, C, 1, 1)
    inv_std = 1 / torch.sqrt(var + EPS)  # (C,): per channel
    x_hat = xc * inv_std.view(1, C, 1, 1)
    out = x_hat * w.view(1, C, 1, 1) + b.view(1, C, 1, 1)
    if grad_out is None:
        return (out,)
    grad_b = grad_out.sum((0, 2, 3))
    grad_w = (grad_out * x_hat).sum((0, 2, 3))
    scale = (w * inv_std).view(1, C, 1, 1)
    if training:
        centred = grad_out - (grad_b / count).view(1, C, 1, 1)
        grad_x = (centred - x_hat * (grad_w / count).view(1, C, 1, 1)) * scale
    else:
        grad_x = grad_out * scale
    return out, grad_x, grad_w, grad_b


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_the_textbook_program_is_batch_norm(training: bool) -> None:
    """The program whose operations the FLOP test counts computes what F.batch_norm does."""
    t = _inputs((3, 2, 4, 5), seed=9)
    out, *grads = _textbook(t["x"], t["weight"], t["bias"], t["running_mean"], t["running_var"],
                            training, torch.randn(3, 2, 4, 5, dtype=torch.float64,
                                                  generator=torch.Generator().manual_seed(2)))
    want_out, want_grads, _, _ = _run(bn_reference, t, training, grad_seed=2)
    for got, want in zip((out, *grads), (want_out, *want_grads), strict=True):
        _close(got, want, "textbook")


@pytest.mark.parametrize("training", [1, 0], ids=["train", "eval"])
@pytest.mark.parametrize("size", [(64, 8, 26, 26), (8, 64, 56, 56), (4, 512, 7, 7)],
                         ids=lambda s: "N{}_C{}_H{}_W{}".format(*s))
def test_flops_estimate_matches_a_count_of_the_textbook_program(size, training: int) -> None:
    N, C, H, W = size
    params = {"N": N, "C": C, "H": H, "W": W, "training": training}
    x, w = torch.empty(size, device="meta"), torch.empty(C, device="meta")
    counter = _ElementOps()
    with counter:
        _textbook(x, w, w, w, w, bool(training), None)
        forward = counter.flops
        _textbook(x, w, w, w, w, bool(training), torch.empty_like(x))
    total = counter.flops - forward  # the second call: forward and backward
    # the formula leaves out the O(C) per-channel work; with >= 196 values per channel that is
    # under 1% of the total
    assert LAYER.flops(params, "fwd") == pytest.approx(forward, rel=0.01)
    assert LAYER.flops(params, "fwdbwd") == pytest.approx(total, rel=0.01)
    assert LAYER.flops(params, "fwd") <= forward  # only the O(C) part is missing


# --- bn's sizes ----------------------------------------------------------------------------------


def test_sizes() -> None:
    for preset, sizes in preset_table("bn").items():
        assert {p["training"] for p in sizes} == {0, 1}, preset
    assert notes_size("bn") == {"N": 64, "C": 8, "H": 26, "W": 26, "training": 1}
    assert LAYER.label(notes_size("bn")) == "N64_C8_H26_W26_train1"
    params = {"N": 32, "C": 64, "H": 56, "W": 56, "training": 1}
    assert LAYER.calibration_params(params) == {**params, "C": 2}  # the work per channel kept


@pytest.mark.parametrize(("change", "match"), [
    ({"N": 0}, "N"), ({"C": -1}, "C"), ({"H": 0}, "H"), ({"W": 0}, "W"),
    ({"training": 2}, "training"), ({"N": 1, "H": 1, "W": 1}, "more than one value"),
])
def test_check_rejects_nonsense(change: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        LAYER.check({**notes_size("bn"), **change})
    assert "\n" not in str(info.value)
