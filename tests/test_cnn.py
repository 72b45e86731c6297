"""MyCNN: every family against torch.nn, the training step, its costs, and planted bugs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from impls import REGISTRY
from impls.cnn import FAMILIES, MyCNN, fc_features
from suites.correctness import check, make_trial
from suites.presets import notes_size, preset_table

LAYER = REGISTRY.layer("cnn")
IMPLS = REGISTRY.impls("cnn")
IMPL_IDS = [impl.name for impl in IMPLS]
NAMES = LAYER.params
SEEDS = [0, 1, 2]
MODES = ("fwd", "fwdbwd", "train")

# (N, C_in, C_out, H, W, training): odd sizes (the pool drops a row), C_in 1 and 2, both
# BatchNorm modes. Small enough for the loops family (at most ~200 conv loop iterations).
TINY = [
    (2, 1, 2, 8, 7, 1),
    (3, 2, 3, 7, 6, 0),
    (1, 1, 2, 6, 9, 1),  # one image: batch statistics over space only
]
SMALL = dict(zip(NAMES, (4, 2, 3, 10, 9, 1), strict=True))


def _params(size: tuple[int, ...]) -> dict[str, int]:
    return dict(zip(NAMES, size, strict=True))


def _size_id(size: tuple[int, ...]) -> str:
    return LAYER.label(_params(size))


def _check(fn, params=SMALL, dtype=torch.float32, mode="fwd", device="cpu", seeds=SEEDS):
    with torch.set_grad_enabled(mode != "fwd"):  # as the runner calls it
        verdict, _ = check(fn, LAYER, params, seeds, dtype, device, mode)
    return verdict


def _inputs(params: dict[str, int], seed: int) -> dict[str, Tensor]:
    return LAYER.make_inputs(params, torch.Generator().manual_seed(seed)).tensors


def _torch_cnn(t: dict[str, Tensor], training: bool) -> nn.Sequential:
    """MyCNN from torch.nn, carrying copies of the case's weights and running statistics."""
    C_out, C_in = t["conv_weight"].shape[:2]
    model = nn.Sequential(nn.Conv2d(C_in, C_out, 3), nn.BatchNorm2d(C_out), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(t["fc_weight"].shape[1], 10)).double()
    with torch.no_grad():
        for (module, name), key in {(0, "weight"): "conv_weight", (0, "bias"): "conv_bias",
                                    (1, "weight"): "bn_weight", (1, "bias"): "bn_bias",
                                    (1, "running_mean"): "running_mean",
                                    (1, "running_var"): "running_var",
                                    (5, "weight"): "fc_weight", (5, "bias"): "fc_bias"}.items():
            getattr(model[module], name).copy_(t[key])
    return model.train(training)


# --- every family against the reference -------------------------------------------------------


def test_the_documented_families_are_registered() -> None:
    assert set(IMPL_IDS) == set(FAMILIES) == {"loops", "im2col", "einsum", "builtin"}
    assert REGISTRY.impl("cnn", "loops").naive
    assert not any(impl.naive for impl in IMPLS if impl.name != "loops")
    assert LAYER.modes == MODES


def test_every_family_is_made_of_registered_parts() -> None:
    for family, parts in FAMILIES.items():
        assert set(parts) == {"conv", "bn", "pool", "linear"}, family
        for layer, impl in parts.items():
            REGISTRY.impl(layer, impl)  # raises if missing
    assert all(REGISTRY.impl(layer, "loops").naive for layer in FAMILIES["loops"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", TINY, ids=_size_id)
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_passes_the_correctness_check(impl, size: tuple[int, ...], mode: str) -> None:
    verdict = _check(impl.fn, _params(size), mode=mode)
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("impl", [i for i in IMPLS if not i.naive],
                         ids=[i.name for i in IMPLS if not i.naive])
def test_passes_a_training_step_at_the_notes_size(impl) -> None:
    verdict = _check(impl.fn, notes_size("cnn"), mode="train", seeds=[0])
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_low_precision_training_step(impl, dtype: torch.dtype) -> None:
    """The output, the running statistics and the updated weights, in half precision."""
    verdict = _check(impl.fn, _params(TINY[0]), dtype=dtype, mode="train", seeds=[0])
    assert verdict.ok, verdict.problems


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_passes_the_correctness_check_on_cuda(impl, mode: str) -> None:
    verdict = _check(impl.fn, _params(TINY[0]), mode=mode, device="cuda")
    assert verdict.ok, verdict.problems


# --- the reference and the training step against torch.nn -------------------------------------


@pytest.mark.parametrize("training", [1, 0], ids=["train", "eval"])
def test_the_reference_is_torch_nn(training: int) -> None:
    params = {**SMALL, "training": training}
    t = _inputs(params, seed=3)
    model = _torch_cnn(t, bool(training))
    static = LAYER.make_inputs(params, torch.Generator().manual_seed(3)).static
    out = LAYER.reference(**t, **static)
    torch.testing.assert_close(out, model(t["x"]), rtol=1e-12, atol=1e-12)
    # running statistics: updated in training (unbiased variance), untouched in eval
    torch.testing.assert_close(t["running_mean"], model[1].running_mean)
    torch.testing.assert_close(t["running_var"], model[1].running_var)
    fresh = _inputs(params, seed=3)
    assert torch.equal(t["running_var"], fresh["running_var"]) is not bool(training)


@pytest.mark.parametrize("training", [1, 0], ids=["train", "eval"])
def test_the_reference_training_step_is_an_sgd_step_on_torch_nn(training: int) -> None:
    params = {**SMALL, "training": training}
    trial = make_trial(LAYER, params, seed=4, dtype=torch.float64, device="cpu", mode="train")
    t = {n: v.clone() for n, v in trial.inputs.tensors.items()}
    model = _torch_cnn(t, bool(training))
    optimizer = torch.optim.SGD(model.parameters(), lr=LAYER.lr)
    optimizer.zero_grad()
    F.cross_entropy(model(t["x"]), t["target"]).backward()
    optimizer.step()

    after = {"conv_weight": model[0].weight, "conv_bias": model[0].bias,
             "bn_weight": model[1].weight, "bn_bias": model[1].bias,
             "running_mean": model[1].running_mean, "running_var": model[1].running_var,
             "fc_weight": model[5].weight, "fc_bias": model[5].bias}
    assert set(trial.ref_state) == set(after) - ({"conv_bias"} if training else set())
    for name, want in after.items():
        # with batch statistics the conv bias gradient is zero: SGD leaves it where it was
        got = trial.ref_state.get(name, t[name])
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12,
                                   msg=lambda m, n=name: f"{n}: {m}")
        if name not in ("running_mean", "running_var", "conv_bias"):
            assert not torch.equal(want, t[name]), f"{name} did not move"
    if training:  # the reason the conv bias is not in `grad`
        torch.testing.assert_close(model[0].bias.grad, torch.zeros_like(model[0].bias),
                                   rtol=0, atol=1e-12)


# --- the MyCNN module --------------------------------------------------------------------------


def test_mycnn_has_the_notes_structure() -> None:
    model = MyCNN()
    assert model.conv.weight.shape == (8, 1, 3, 3) and model.conv.bias.shape == (8,)
    assert model.bn.weight.shape == (8,) and model.bn.running_var.shape == (8,)
    assert model.fc.weight.shape == (10, 8 * 13 * 13)  # 28 - 3 + 1 = 26 -> pool -> 13
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert fc_features(notes_size("cnn")) == 8 * 13 * 13


@pytest.mark.parametrize("impl", IMPL_IDS)
def test_mycnn_matches_torch_nn_in_train_and_eval(impl: str) -> None:
    torch.manual_seed(5)
    model = MyCNN(impl, in_channels=2, out_channels=3, image_size=(9, 8)).double()
    with torch.no_grad():  # random bias and affine: the notes' zeros and ones would hide bugs
        for p in (model.conv.bias, model.bn.weight, model.bn.bias):
            p.normal_()
    reference = _torch_cnn({
        "conv_weight": model.conv.weight, "conv_bias": model.conv.bias,
        "bn_weight": model.bn.weight, "bn_bias": model.bn.bias,
        "running_mean": model.bn.running_mean, "running_var": model.bn.running_var,
        "fc_weight": model.fc.weight, "fc_bias": model.fc.bias}, training=True)
    ours = [model.conv.weight, model.conv.bias, model.bn.weight, model.bn.bias,
            model.fc.weight, model.fc.bias]
    theirs = [reference[0].weight, reference[0].bias, reference[1].weight, reference[1].bias,
              reference[5].weight, reference[5].bias]
    opt_ours = torch.optim.SGD(ours, lr=0.05, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs, lr=0.05, momentum=0.9)
    for step in range(2):  # two training steps: forward, loss, backward, update
        x = torch.randn(3, 2, 9, 8, dtype=torch.float64)
        target = torch.randint(0, 10, (3,))
        for m, opt in ((model, opt_ours), (reference, opt_theirs)):
            opt.zero_grad()
            out = m(x)
            F.cross_entropy(out, target).backward()
            opt.step()
        torch.testing.assert_close(model(x).detach(), reference(x).detach(),
                                   msg=lambda m, s=step: f"step {s}: {m}")
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(model.bn.running_var, reference[1].running_var)
    # two steps, each a training forward and the comparison's forward
    assert int(model.bn.num_batches_tracked) == int(reference[1].num_batches_tracked) == 4

    model.eval()
    reference.eval()
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64)
    running = model.bn.running_mean.clone()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    assert torch.equal(model.bn.running_mean, running)  # eval leaves the statistics alone


def test_mycnn_rejects_unknown_impl() -> None:
    with pytest.raises(KeyError, match="nope"):
        MyCNN("nope")


# --- deliberately wrong implementations -------------------------------------------------------


def _bn(out, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps):
    return F.batch_norm(out, running_mean, running_var, bn_weight, bn_bias, training, momentum,
                        eps)


def cnn_relu_before_bn(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                       running_var, fc_weight, fc_bias, training, momentum, eps, target=None):
    """conv -> relu -> bn -> pool: the relu in the wrong place."""
    out = torch.relu(F.conv2d(x, conv_weight, conv_bias))
    out = _bn(out, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps)
    return F.linear(F.max_pool2d(out, 2).flatten(1), fc_weight, fc_bias)


def cnn_channels_last_flatten(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                              running_var, fc_weight, fc_bias, training, momentum, eps,
                              target=None):
    """Flattens (N, H_p, W_p, C) instead of the notes' (N, C, H_p, W_p) view."""
    out = F.conv2d(x, conv_weight, conv_bias)
    out = _bn(out, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps)
    out = F.max_pool2d(torch.relu(out), 2)
    return F.linear(out.permute(0, 2, 3, 1).flatten(1), fc_weight, fc_bias)


def cnn_detached_batch_stats(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                             running_var, fc_weight, fc_bias, training, momentum, eps,
                             target=None):
    """Exact forward, but no gradient flows through the batch mean and variance."""
    out = F.conv2d(x, conv_weight, conv_bias)
    with torch.no_grad():  # the running statistics, updated as they should be
        F.batch_norm(out, running_mean, running_var, None, None, training, momentum, eps)
    mean = out.mean((0, 2, 3)).detach()[None, :, None, None]  # (1, C, 1, 1)
    var = out.var((0, 2, 3), unbiased=False).detach()[None, :, None, None]
    out = (out - mean) / torch.sqrt(var + eps) * bn_weight[None, :, None, None]
    out = out + bn_bias[None, :, None, None]
    return F.linear(F.max_pool2d(torch.relu(out), 2).flatten(1), fc_weight, fc_bias)


def cnn_notes_running_var(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                          running_var, fc_weight, fc_bias, training, momentum, eps,
                          target=None):
    """The notes' BatchNorm update: running_var follows the biased variance."""
    out = F.conv2d(x, conv_weight, conv_bias)
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(momentum * out.mean((0, 2, 3)))
        running_var.mul_(1 - momentum).add_(momentum * out.var((0, 2, 3), unbiased=False))
    out = F.batch_norm(out, None, None, bn_weight, bn_bias, True, momentum, eps)
    return F.linear(F.max_pool2d(torch.relu(out), 2).flatten(1), fc_weight, fc_bias)


@pytest.mark.parametrize("bug", [cnn_relu_before_bn, cnn_channels_last_flatten],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("mode", MODES)
def test_planted_forward_bugs_are_flagged(bug, mode: str) -> None:
    verdict = _check(bug, mode=mode)
    assert not verdict.ok
    assert verdict.problems[0].startswith("output")


def test_a_bug_in_the_backward_is_flagged_by_the_training_step() -> None:
    assert _check(cnn_detached_batch_stats, mode="fwd").ok  # forward and statistics exact
    verdict = _check(cnn_detached_batch_stats, mode="train")
    assert not verdict.ok
    assert any(p.startswith("state conv_weight") for p in verdict.problems), verdict.problems
    assert not _check(cnn_detached_batch_stats, mode="fwdbwd").ok


def test_the_notes_running_variance_is_flagged() -> None:
    for mode in MODES:
        verdict = _check(cnn_notes_running_var, mode=mode)
        assert not verdict.ok
        assert any(p.startswith("state running_var") for p in verdict.problems), mode
        assert not any(p.startswith(("output", "state running_mean"))
                       for p in verdict.problems), verdict.problems


# --- costs, sizes, presets --------------------------------------------------------------------

FLOP_SIZES = [(2, 1, 2, 8, 7, 1), (64, 1, 8, 28, 28, 1), (8, 3, 16, 32, 32, 0),
              (4, 3, 5, 11, 14, 1)]


def _meta_inputs(size: tuple[int, ...], grad: tuple[str, ...]) -> dict[str, Tensor]:
    t = _inputs(_params(size), seed=0)
    return {n: v.to("meta").requires_grad_(n in grad) for n, v in t.items()}


@pytest.mark.parametrize("size", FLOP_SIZES, ids=_size_id)
@pytest.mark.parametrize("mode", MODES)
def test_flops_match_flop_counter(size: tuple[int, ...], mode: str) -> None:
    params = _params(size)
    inputs = LAYER.make_inputs(params, torch.Generator().manual_seed(0))
    t = _meta_inputs(size, inputs.grad if mode != "fwd" else ())
    with FlopCounterMode(display=False) as counter:
        out = LAYER.reference(**t, **inputs.static)
        if mode != "fwd":
            root = LAYER.loss(out, t) if mode == "train" else out
            torch.autograd.grad(root, [t[n] for n in inputs.grad],
                                None if mode == "train" else torch.empty_like(out))
    assert LAYER.flops(params, mode) == counter.get_total_flops()


@pytest.mark.parametrize("size", FLOP_SIZES, ids=_size_id)
def test_bytes_count_each_tensor_once(size: tuple[int, ...]) -> None:
    params = _params(size)
    t = _inputs(params, seed=0)
    floats = sum(v.numel() for v in t.values() if v.is_floating_point())
    weights = floats - t["x"].numel() - 2 * params["C_out"]  # not the image or running stats
    stats_written = 2 * params["C_out"] * params["training"]
    logits = params["N"] * 10
    for dtype, width in ((torch.float32, 4), (torch.float16, 2)):
        fwd = (floats + logits + stats_written) * width
        assert LAYER.bytes_moved(params, dtype, "fwd") == fwd
        assert LAYER.bytes_moved(params, dtype, "fwdbwd") == fwd + (logits + weights) * width
        assert LAYER.bytes_moved(params, dtype, "train") == (fwd + 3 * weights * width
                                                             + params["N"] * 8)


@pytest.mark.parametrize(("change", "match"), [
    ({"N": 0}, "N"), ({"C_in": 0}, "C_in"), ({"C_out": -1}, "C_out"), ({"H": 0}, "H"),
    ({"W": 3}, "too small"), ({"training": 2}, "training"),
], ids=["N0", "Cin0", "Cout-1", "H0", "W3", "training2"])
def test_check_rejects_nonsense(change: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        LAYER.check({**SMALL, **change})
    assert "\n" not in str(info.value)


def test_make_inputs_are_seeded_random() -> None:
    a = LAYER.make_inputs(SMALL, torch.Generator().manual_seed(8))
    b = LAYER.make_inputs(SMALL, torch.Generator().manual_seed(8))
    for name, t in a.tensors.items():
        assert torch.equal(t, b.tensors[name])
        if t.is_floating_point():
            assert t.dtype == torch.float64 and t.std() > 0
    target = a.tensors["target"]
    assert target.dtype == torch.long and target.shape == (SMALL["N"],)
    assert int(target.min()) >= 0 and int(target.max()) < 10
    assert "x" not in a.grad and "target" not in a.grad  # the data is not trained
    assert a.state == ("running_mean", "running_var")
    assert bool(a.tensors["running_var"].min() > 0)


def test_presets_are_valid_and_include_the_notes_size() -> None:
    notes = notes_size("cnn")
    assert notes == {"N": 64, "C_in": 1, "C_out": 8, "H": 28, "W": 28, "training": 1}
    for preset, sizes in preset_table("cnn").items():
        assert notes in sizes, preset
        for params in sizes:
            LAYER.check(params)
            LAYER.check(LAYER.calibration_params(params))
            assert LAYER.flops(LAYER.calibration_params(params), "fwd") > 0
    batches = [s["N"] for s in preset_table("cnn")["default"]]
    assert min(batches) == 1 and max(batches) >= 256
