"""BatchNorm2d: every implementation does what ``F.batch_norm`` does (output, gradients, running
statistics) in train and eval; the notes' bugs are flagged; MyBatchNorm2d is nn.BatchNorm2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from impls import REGISTRY
from impls.bn import MyBatchNorm2d
from suites.correctness import TOLERANCES, check
from suites.presets import notes_size, preset_table

LAYER = REGISTRY.layer("bn")
IMPLS = REGISTRY.impls("bn")
IMPL_IDS = [impl.name for impl in IMPLS]
MOMENTUM, EPS = 0.1, 1e-5
SEEDS = [0, 1, 2]

# (N, C, H, W): H != W, C = 1, N = 1, a 1x1 map with N = 2 (two values per channel).
SHAPES = [(2, 3, 5, 4), (1, 1, 3, 2), (3, 2, 1, 1), (2, 4, 1, 3)]
# N * H * W = 40: small enough that the biased/unbiased running_var difference (a factor
# 40/39 on 0.1 * var) is far over float32's tolerance.
TINY = {"N": 2, "C": 3, "H": 5, "W": 4}


def _params(training: int, **size: int) -> dict[str, int]:
    return {**TINY, **size, "training": training}


def _inputs(shape: tuple[int, ...], seed: int) -> dict[str, Tensor]:
    N, C, H, W = shape
    inputs = LAYER.make_inputs({"N": N, "C": C, "H": H, "W": W, "training": 1},
                               torch.Generator().manual_seed(seed))
    return inputs.tensors


def _run(fn, tensors: dict[str, Tensor], training: bool, grad_out: Tensor | None = None):
    """Output, gradients (x, weight, bias) and the running stats after one call on copies."""
    t = {n: v.detach().clone() for n, v in tensors.items()}
    leaves = [t[n].requires_grad_() for n in ("x", "weight", "bias")]
    out = fn(t["x"], t["weight"], t["bias"], t["running_mean"], t["running_var"], training,
             MOMENTUM, EPS)
    grads = torch.autograd.grad(out, leaves, grad_out) if grad_out is not None else ()
    return out.detach(), grads, t["running_mean"], t["running_var"]


def _close(a: Tensor, b: Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{what}: {m}")


# --- the implementations against F.batch_norm -------------------------------------------------


def test_the_documented_implementations_are_registered() -> None:
    assert {"loops", "vectorized", "builtin"} <= set(IMPL_IDS)
    assert REGISTRY.impl("bn", "loops").naive
    assert not REGISTRY.impl("bn", "vectorized").naive


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}_C{}_H{}_W{}".format(*s))
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_output_gradients_and_running_stats_match_batch_norm(impl, shape, training) -> None:
    tensors = _inputs(shape, seed=1)
    grad_out = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out, grads, mean, var = _run(impl.fn, tensors, training, grad_out)
    want_out, want_grads, want_mean, want_var = _run(bn_reference, tensors, training, grad_out)
    _close(out, want_out, "output")
    for name, g, w in zip(("x", "weight", "bias"), grads, want_grads, strict=True):
        _close(g, w, f"grad {name}")
    _close(mean, want_mean, "running_mean")
    _close(var, want_var, "running_var")
    if not training:  # eval leaves the running statistics alone
        assert torch.equal(mean, tensors["running_mean"])
        assert torch.equal(var, tensors["running_var"])


def bn_reference(x, weight, bias, running_mean, running_var, training, momentum, eps):
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


def test_running_var_is_updated_with_the_unbiased_variance() -> None:
    """Pinned by hand, not by F.batch_norm: PyTorch's semantics, which the notes get wrong."""
    tensors = _inputs((2, 3, 5, 4), seed=3)
    x, rm, rv = tensors["x"], tensors["running_mean"], tensors["running_var"]
    for impl in IMPLS:
        _, _, mean, var = _run(impl.fn, tensors, True)
        _close(mean, 0.9 * rm + 0.1 * x.mean((0, 2, 3)), f"{impl.name} running_mean")
        _close(var, 0.9 * rv + 0.1 * x.var((0, 2, 3), unbiased=True), f"{impl.name} running_var")


def test_training_normalises_with_the_biased_batch_variance() -> None:
    tensors = _inputs((2, 3, 5, 4), seed=4)
    x, w, b = tensors["x"], tensors["weight"], tensors["bias"]
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + EPS) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    for impl in IMPLS:
        _close(_run(impl.fn, tensors, True)[0], expected, impl.name)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_non_contiguous_input(impl, training: bool) -> None:
    tensors = _inputs((2, 3, 5, 4), seed=5)
    x = tensors["x"]
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, H and W strides swapped
    assert not x_t.is_contiguous()
    got = _run(impl.fn, {**tensors, "x": x_t}, training)
    want = _run(bn_reference, tensors, training)
    for a, b, what in zip(got, want, ("output", "", "running_mean", "running_var"),
                          strict=True):
        if what:
            _close(a, b, what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_output_and_running_stats_keep_the_input_dtype(impl, dtype: torch.dtype) -> None:
    tensors = {n: t.to(dtype) for n, t in _inputs((2, 3, 5, 4), seed=6).items()}
    out, _, mean, var = _run(impl.fn, tensors, True)
    assert out.dtype == mean.dtype == var.dtype == dtype


# --- the correctness check --------------------------------------------------------------------


def _check(fn, params, mode="fwd", dtype=torch.float32, seeds=SEEDS):
    with torch.set_grad_enabled(mode != "fwd"):  # as the runner calls it
        return check(fn, LAYER, params, seeds, dtype, "cpu", mode)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("training", [1, 0], ids=["train", "eval"])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_real_implementations_pass_the_check(impl, training: int, mode: str) -> None:
    verdict, trial = _check(impl.fn, _params(training), mode)
    assert verdict.ok, verdict.problems
    assert set(trial.ref_state) == {"running_mean", "running_var"}
    if mode == "fwdbwd":
        assert set(trial.ref_grads) == {"x", "weight", "bias"}
        assert verdict.grad_rel_err < TOLERANCES["float32"][0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_half_precision_passes_with_its_tolerance(impl, dtype: torch.dtype) -> None:
    verdict, _ = _check(impl.fn, _params(1, N=4, H=6, W=6), "fwdbwd", dtype)
    assert verdict.ok, verdict.problems


def test_the_trial_updates_the_reference_running_stats_in_training_only() -> None:
    builtin = REGISTRY.impl("bn", "builtin").fn
    _, train = _check(builtin, _params(1), seeds=[0])
    _, evaluation = _check(builtin, _params(0), seeds=[0])
    fresh = LAYER.make_inputs(_params(1), torch.Generator().manual_seed(0)).to(torch.float32,
                                                                              "cpu")
    for name in ("running_mean", "running_var"):
        original = fresh.tensors[name].double()
        assert not torch.allclose(train.ref_state[name], original)
        assert torch.equal(evaluation.ref_state[name], original)


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
    """The notes' forward with only the x_hat bug fixed: running_var still takes the biased
    variance."""
    if training:
        mean = x.mean([0, 2, 3])
        var = x.var([0, 2, 3], unbiased=False)
        running_mean.copy_((1 - momentum) * running_mean + momentum * mean.detach())
        running_var.copy_((1 - momentum) * running_var + momentum * var.detach())
    else:
        mean = running_mean
        var = running_var
    x_hat = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + eps)
    return weight[None, :, None, None] * x_hat + bias[None, :, None, None]


def bn_rebinds_running_stats(x, weight, bias, running_mean, running_var, training, momentum, eps):
    """The notes' ``self.running_mean = ...`` turned into a local rebinding: nothing is updated."""
    if training:
        mean, var = x.mean([0, 2, 3]), x.var([0, 2, 3], unbiased=False)
        n = x.numel() // x.shape[1]
        running_mean = (1 - momentum) * running_mean + momentum * mean.detach()
        running_var = (1 - momentum) * running_var + momentum * var.detach() * n / (n - 1)
    else:
        mean, var = running_mean, running_var
    x_hat = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + eps)
    return weight[None, :, None, None] * x_hat + bias[None, :, None, None]


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
def test_notes_as_printed_crash_in_training_and_pass_in_eval(mode: str) -> None:
    """x_hat exists only in the eval branch: training mode raises (the runner records the case
    as ``error``); eval, which never reaches the running-stat update, is right."""
    with pytest.raises(UnboundLocalError, match="x_hat"):
        _check(bn_notes_as_printed, _params(1), mode)
    verdict, _ = _check(bn_notes_as_printed, _params(0), mode)
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_notes_biased_running_var_is_flagged_in_training(mode: str) -> None:
    verdict, _ = _check(bn_notes_biased_running_var, _params(1), mode)
    assert not verdict.ok
    # output, gradients and running_mean are right: running_var is the only problem
    assert [p.split(":")[0] for p in verdict.problems] == ["state running_var"], verdict.problems
    verdict, _ = _check(bn_notes_biased_running_var, _params(0), mode)
    assert verdict.ok, verdict.problems


def test_notes_biased_running_var_at_the_notes_size() -> None:
    """At MyCNN's size (N*H*W = 43264 values per channel) the biased update is off by a factor
    ~2e-6 relative: below float32's tolerance, caught in float64."""
    params = notes_size("bn")
    verdict, _ = _check(bn_notes_biased_running_var, params, dtype=torch.float64, seeds=[0])
    assert [p.split(":")[0] for p in verdict.problems] == ["state running_var"], verdict.problems
    builtin = REGISTRY.impl("bn", "builtin").fn
    verdict, _ = _check(builtin, params, dtype=torch.float64, seeds=[0])
    assert verdict.ok, verdict.problems


def test_running_stats_not_updated_in_place_are_flagged() -> None:
    verdict, _ = _check(bn_rebinds_running_stats, _params(1))
    assert sorted(p.split(":")[0] for p in verdict.problems) == [
        "state running_mean", "state running_var"], verdict.problems


def test_batch_statistics_in_eval_are_flagged() -> None:
    verdict, _ = _check(bn_batch_stats_in_eval, _params(1))
    assert verdict.ok, verdict.problems  # right in training
    verdict, _ = _check(bn_batch_stats_in_eval, _params(0))
    problems = {p.split(":")[0] for p in verdict.problems}
    assert {"output", "state running_mean", "state running_var"} <= problems, verdict.problems


def test_constant_statistics_in_backward_are_flagged_in_fwdbwd_only() -> None:
    verdict, _ = _check(bn_constant_statistics_in_backward, _params(1), "fwd")
    assert verdict.ok, verdict.problems
    verdict, _ = _check(bn_constant_statistics_in_backward, _params(1), "fwdbwd")
    assert [p.split(":")[0] for p in verdict.problems] == ["grad x"], verdict.problems
    verdict, _ = _check(bn_constant_statistics_in_backward, _params(0), "fwdbwd")
    assert verdict.ok, verdict.problems  # in eval the statistics are constants


# --- MyBatchNorm2d is nn.BatchNorm2d ----------------------------------------------------------


def _pair(impl: str, C: int, seed: int) -> tuple[MyBatchNorm2d, nn.BatchNorm2d]:
    ours, theirs = MyBatchNorm2d(C, impl=impl).double(), nn.BatchNorm2d(C).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random affine parameters: the default ones/zeros hide affine bugs
        for p in ("weight", "bias"):
            value = torch.randn(C, generator=g, dtype=torch.float64)
            getattr(ours, p).copy_(value)
            getattr(theirs, p).copy_(value)
    return ours, theirs


def _assert_same_state(ours: nn.Module, theirs: nn.Module) -> None:
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        _close(a[name], b[name], name)


@pytest.mark.parametrize("impl", IMPL_IDS)
def test_mybatchnorm2d_trains_and_evaluates_like_nn_batchnorm2d(impl: str) -> None:
    C = 3
    ours, theirs = _pair(impl, C, seed=7)
    g = torch.Generator().manual_seed(8)
    for step in range(3):  # three training batches: running stats and the batch counter move
        x = torch.randn(4, C, 5, 6, generator=g, dtype=torch.float64) * 2 + step
        x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
        _close(out_ours, out_theirs, f"train output, step {step}")
        grad_out = torch.randn(out_ours.shape, generator=g, dtype=torch.float64)
        out_ours.backward(grad_out)
        out_theirs.backward(grad_out)
        _close(x_ours.grad, x_theirs.grad, "grad x")
        _close(ours.weight.grad, theirs.weight.grad, "grad weight")
        _close(ours.bias.grad, theirs.bias.grad, "grad bias")
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
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))
    assert torch.equal(bn.running_mean, torch.zeros(8))
    assert torch.equal(bn.running_var, torch.ones(8))
    assert bn.num_batches_tracked.dtype == torch.long and int(bn.num_batches_tracked) == 0
    assert bn.gamma is bn.weight and bn.beta is bn.bias  # the notes' names
    assert {n for n, _ in bn.named_parameters()} == {"weight", "bias"}
    assert {n for n, _ in bn.named_buffers()} == {"running_mean", "running_var",
                                                   "num_batches_tracked"}
    reference = nn.BatchNorm2d(8)
    reference.load_state_dict(bn.state_dict())  # state dicts interchange
    bn.load_state_dict(reference.state_dict())


def test_mybatchnorm2d_rejects_bad_input_and_unknown_impl() -> None:
    with pytest.raises(ValueError, match="4D"):
        MyBatchNorm2d(3)(torch.randn(3, 5))
    with pytest.raises(KeyError, match="nope"):
        MyBatchNorm2d(3, impl="nope")


# --- FLOPs (an estimate: FlopCounterMode counts nothing here), bytes, sizes -------------------

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
            tensors = [a for a in (*args, out) if isinstance(a, Tensor)]
            self.flops += max(t.numel() for t in tensors)
        return out


def _textbook_forward(x: Tensor, w: Tensor, b: Tensor, mean: Tensor, var: Tensor,
                      training: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Batch norm forward, one primitive op at a time: (output, x_hat, inv_std)."""
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
    return x_hat * w.view(1, C, 1, 1) + b.view(1, C, 1, 1), x_hat, inv_std


def _textbook_backward(grad_out: Tensor, x_hat: Tensor, inv_std: Tensor, w: Tensor,
                       training: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Its analytical backward, one primitive op at a time: (grad_x, grad_w, grad_b)."""
    C = grad_out.shape[1]
    count = grad_out.numel() // C
    grad_b = grad_out.sum((0, 2, 3))
    grad_w = (grad_out * x_hat).sum((0, 2, 3))
    scale = (w * inv_std).view(1, C, 1, 1)
    if training:
        centred = grad_out - (grad_b / count).view(1, C, 1, 1)
        grad_x = (centred - x_hat * (grad_w / count).view(1, C, 1, 1)) * scale
    else:
        grad_x = grad_out * scale
    return grad_x, grad_w, grad_b


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_textbook_program_is_batch_norm(training: bool) -> None:
    """The program whose ops the FLOP test counts computes what F.batch_norm does."""
    t = _inputs((3, 2, 4, 5), seed=9)
    grad_out = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    out, x_hat, inv_std = _textbook_forward(t["x"], t["weight"], t["bias"], t["running_mean"],
                                            t["running_var"], training)
    grad_x, grad_w, grad_b = _textbook_backward(grad_out, x_hat, inv_std, t["weight"], training)
    want_out, want_grads, _, _ = _run(bn_reference, t, training, grad_out)
    for got, want in zip((out, grad_x, grad_w, grad_b), (want_out, *want_grads), strict=True):
        _close(got, want, "textbook")


@pytest.mark.parametrize("training", [1, 0], ids=["train", "eval"])
@pytest.mark.parametrize("size", [(64, 8, 26, 26), (8, 64, 56, 56), (4, 512, 7, 7)],
                         ids=lambda s: "N{}_C{}_H{}_W{}".format(*s))
def test_flops_estimate_matches_a_count_of_the_textbook_program(size, training: int) -> None:
    N, C, H, W = size
    params = {"N": N, "C": C, "H": H, "W": W, "training": training}

    def meta(*shape: int) -> Tensor:
        return torch.empty(*shape, dtype=torch.float32, device="meta")

    x, w = meta(N, C, H, W), meta(C)
    counter = _ElementOps()
    with counter:
        out, x_hat, inv_std = _textbook_forward(x, w, meta(C), meta(C), meta(C), bool(training))
        forward = counter.flops
        _textbook_backward(torch.empty_like(out), x_hat, inv_std, w, bool(training))
    # the formula leaves out the O(C) per-channel work; with >= 196 values per channel that is
    # under 1% of the total
    assert LAYER.flops(params, "fwd") == pytest.approx(forward, rel=0.01)
    assert LAYER.flops(params, "fwdbwd") == pytest.approx(counter.flops, rel=0.01)
    assert LAYER.flops(params, "fwd") <= forward  # only the O(C) part is missing
    assert out.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("training", [1, 0], ids=["train", "eval"])
def test_bytes_are_each_tensor_once(training: int, dtype: torch.dtype) -> None:
    params = {**notes_size("bn"), "training": training}
    t = {n: v.to(dtype) for n, v in LAYER.make_inputs(params, torch.Generator()).tensors.items()}
    size = sum(v.numel() * v.element_size() for v in t.values())
    out = t["x"]  # the output has x's shape and dtype
    written = 2 * t["running_mean"].numel() * t["running_mean"].element_size() if training else 0
    fwd = size + out.numel() * out.element_size() + written
    assert LAYER.bytes_moved(params, dtype, "fwd") == fwd
    gradients = sum(t[n].numel() * t[n].element_size() for n in ("x", "weight", "bias"))
    grad_out = out.numel() * out.element_size()
    assert LAYER.bytes_moved(params, dtype, "fwdbwd") >= fwd + grad_out + gradients


def test_every_preset_size_is_valid_and_has_train_and_eval() -> None:
    table = preset_table("bn")
    for preset, sizes in table.items():
        for params in sizes:
            LAYER.check(params)
            assert LAYER.flops(params, "fwd") > 0
        assert {p["training"] for p in sizes} == {0, 1}, preset
        assert notes_size("bn") in sizes, preset
    assert notes_size("bn") == {"N": 64, "C": 8, "H": 26, "W": 26, "training": 1}


def test_calibration_keeps_the_work_per_channel() -> None:
    params = {"N": 32, "C": 64, "H": 56, "W": 56, "training": 1}
    small = LAYER.calibration_params(params)
    assert small == {**params, "C": 2}
    LAYER.check(small)


@pytest.mark.parametrize(("change", "match"), [
    ({"N": 0}, "N"), ({"C": -1}, "C"), ({"H": 0}, "H"), ({"W": 0}, "W"),
    ({"training": 2}, "training"),
    ({"N": 1, "H": 1, "W": 1}, "more than one value"),
    ({"groups": 2}, "groups"),
])
def test_check_rejects_nonsense(change: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        LAYER.check({**notes_size("bn"), **change})
    assert "\n" not in str(info.value)


def test_check_allows_one_value_per_channel_in_eval() -> None:
    LAYER.check({"N": 1, "C": 4, "H": 1, "W": 1, "training": 0})
    verdict, _ = _check(REGISTRY.impl("bn", "vectorized").fn,
                        {"N": 1, "C": 4, "H": 1, "W": 1, "training": 0}, "fwdbwd")
    assert verdict.ok, verdict.problems


def test_labels_are_short() -> None:
    assert LAYER.label(notes_size("bn")) == "N64_C8_H26_W26_train1"
