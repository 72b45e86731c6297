"""MyCNN beyond tests/test_contract.py: the families' parts, half-precision training steps, the
reference and its SGD step against torch.nn, MyCNN, planted bugs (the notes' running variance
among them), the train mode's bytes, and cnn's own sizes and checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls import REGISTRY
from impls.cnn import FAMILIES, MyCNN, fc_features
from suites.correctness import check, make_trial
from suites.presets import notes_size, preset_table

LAYER = REGISTRY.layer("cnn")
IMPLS = REGISTRY.impls("cnn")
IMPL_IDS = [impl.name for impl in IMPLS]
MODES = ("fwd", "fwdbwd", "train")
SMALL = dict(zip(LAYER.params, (4, 2, 3, 10, 9, 1), strict=True))
#: (module index in _torch_cnn, attribute) of every case tensor but the image and the target
TORCH_NAMES = {"conv_weight": (0, "weight"), "conv_bias": (0, "bias"), "bn_weight": (1, "weight"),
               "bn_bias": (1, "bias"), "running_mean": (1, "running_mean"),
               "running_var": (1, "running_var"), "fc_weight": (5, "weight"),
               "fc_bias": (5, "bias")}


def _check(fn, params=SMALL, dtype=torch.float32, mode="fwd", device="cpu",
           seeds=(0, 1, 2)) -> list[str]:
    """What the correctness check finds wrong: ``["output", "state running_var", ...]``."""
    with torch.set_grad_enabled(mode != "fwd"):  # as the runner calls it
        verdict, _ = check(fn, LAYER, params, list(seeds), dtype, device, mode)
    return [p.split(":")[0] for p in verdict.problems]


def _torch_cnn(t: dict[str, Tensor], training: bool) -> nn.Sequential:
    """MyCNN from torch.nn, carrying copies of the case's weights and running statistics."""
    C_out, C_in = t["conv_weight"].shape[:2]
    model = nn.Sequential(nn.Conv2d(C_in, C_out, 3), nn.BatchNorm2d(C_out), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(t["fc_weight"].shape[1], 10)).double()
    with torch.no_grad():
        for key, (module, name) in TORCH_NAMES.items():
            getattr(model[module], name).copy_(t[key])
    return model.train(training)


def test_every_family_is_made_of_its_registered_parts() -> None:
    assert set(IMPL_IDS) == set(FAMILIES) == {"loops", "im2col", "einsum", "builtin"}
    assert [i.name for i in IMPLS if i.naive] == ["loops"]
    for impl in IMPLS:
        assert dict(impl.parts) == FAMILIES[impl.name]
        assert set(FAMILIES[impl.name]) == {"conv", "bn", "pool", "linear"}
    assert all(REGISTRY.impl(layer, "loops").naive for layer in FAMILIES["loops"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_half_precision_training_step(impl, dtype: torch.dtype) -> None:
    """The output, the running statistics and the updated weights, in half precision."""
    assert _check(impl.fn, preset_table("cnn")["quick"][0], dtype, "train", seeds=[0]) == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_passes_the_correctness_check_on_cuda(impl, mode: str) -> None:
    assert _check(impl.fn, preset_table("cnn")["quick"][0], mode=mode, device="cuda") == []


@pytest.mark.parametrize("training", [1, 0], ids=["train", "eval"])
def test_the_reference_and_its_training_step_are_torch_nn(training: int) -> None:
    """The reference's output, running statistics and weights after one SGD step of the
    cross-entropy are those of nn.Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d -> Linear."""
    params = {**SMALL, "training": training}
    trial = make_trial(LAYER, params, seed=4, dtype=torch.float64, device="cpu", mode="train")
    t = {n: v.clone() for n, v in trial.inputs.tensors.items()}
    model = _torch_cnn(t, bool(training))
    out = model(t["x"])
    torch.testing.assert_close(trial.ref_out, out.detach(), rtol=1e-12, atol=1e-12)
    F.cross_entropy(out, t["target"]).backward()
    torch.optim.SGD(model.parameters(), lr=LAYER.lr).step()
    # with batch statistics the conv bias gradient is zero (BatchNorm subtracts the batch
    # mean): SGD leaves it where it was, and the case gives it no gradient to compare
    assert set(trial.ref_state) == set(TORCH_NAMES) - ({"conv_bias"} if training else set())
    if training:
        torch.testing.assert_close(model[0].bias.grad, torch.zeros(3, dtype=torch.float64),
                                   rtol=0, atol=1e-12)
    for name, (module, attribute) in TORCH_NAMES.items():
        want = getattr(model[module], attribute).detach()
        torch.testing.assert_close(trial.ref_state.get(name, t[name]), want, rtol=1e-12,
                                   atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
        if name != "conv_bias" or not training:  # the weights move; the running statistics
            moves = training or not name.startswith("running")  # in training only
            assert torch.equal(want, t[name]) is not moves, name


# --- MyCNN ---------------------------------------------------------------------------------------


def test_mycnn_has_the_notes_structure_and_names() -> None:
    model = MyCNN()
    assert model.conv.weight.shape == (8, 1, 3, 3) and model.bn.running_var.shape == (8,)
    assert model.fc.weight.shape == (10, 8 * 13 * 13)  # 28 - 3 + 1 = 26 -> pool -> 13
    assert fc_features(notes_size("cnn")) == 8 * 13 * 13
    assert list(model.state_dict()) == [
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
        "bn.num_batches_tracked", "fc.weight", "fc.bias"]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(KeyError, match="nope"):
        MyCNN("nope")


@pytest.mark.parametrize("impl", IMPL_IDS)
def test_mycnn_trains_and_evaluates_like_torch_nn(impl: str) -> None:
    torch.manual_seed(5)
    model = MyCNN(impl, in_channels=2, out_channels=3, image_size=(9, 8)).double()
    with torch.no_grad():  # random bias and affine: the notes' zeros and ones would hide bugs
        for p in (model.conv.bias, model.bn.weight, model.bn.bias):
            p.normal_()
    state = model.state_dict()  # the case's names -> MyCNN's: conv_weight -> conv.weight
    reference = _torch_cnn({key: state[f"bn.{key}" if key.startswith("running") else
                                       key.replace("_", ".", 1)] for key in TORCH_NAMES},
                           training=True)
    ours, theirs = list(model.parameters()), list(reference.parameters())
    optimizers = [torch.optim.SGD(p, lr=0.05, momentum=0.9) for p in (ours, theirs)]
    for step in range(2):  # two training steps: forward, loss, backward, update
        x = torch.randn(3, 2, 9, 8, dtype=torch.float64)
        target = torch.randint(0, 10, (3,))
        for m, opt in zip((model, reference), optimizers, strict=True):
            opt.zero_grad()
            F.cross_entropy(m(x), target).backward()
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


# --- planted bugs ------------------------------------------------------------------------------


def _bn(out, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps):
    return F.batch_norm(out, running_mean, running_var, bn_weight, bn_bias, training, momentum,
                        eps)


def cnn_relu_before_bn(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                       running_var, fc_weight, fc_bias, training, momentum, eps):
    """conv -> relu -> bn -> pool: the relu in the wrong place."""
    out = torch.relu(F.conv2d(x, conv_weight, conv_bias))
    out = _bn(out, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps)
    return F.linear(F.max_pool2d(out, 2).flatten(1), fc_weight, fc_bias)


def cnn_channels_last_flatten(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                              running_var, fc_weight, fc_bias, training, momentum, eps):
    """Flattens (N, H_p, W_p, C) instead of the notes' (N, C, H_p, W_p) view."""
    out = F.conv2d(x, conv_weight, conv_bias)
    out = _bn(out, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps)
    out = F.max_pool2d(torch.relu(out), 2)
    return F.linear(out.permute(0, 2, 3, 1).flatten(1), fc_weight, fc_bias)


def cnn_detached_batch_stats(x, conv_weight, conv_bias, bn_weight, bn_bias, running_mean,
                             running_var, fc_weight, fc_bias, training, momentum, eps):
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
                          running_var, fc_weight, fc_bias, training, momentum, eps):
    """The notes' BatchNorm update: running_var follows the biased variance."""
    out = F.conv2d(x, conv_weight, conv_bias)
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(momentum * out.mean((0, 2, 3)))
        running_var.mul_(1 - momentum).add_(momentum * out.var((0, 2, 3), unbiased=False))
    out = F.batch_norm(out, None, None, bn_weight, bn_bias, True, momentum, eps)
    return F.linear(F.max_pool2d(torch.relu(out), 2).flatten(1), fc_weight, fc_bias)


@pytest.mark.parametrize("mode", MODES)
def test_planted_bugs_are_flagged(mode: str) -> None:
    for bug in (cnn_relu_before_bn, cnn_channels_last_flatten):
        assert _check(bug, mode=mode)[:1] == ["output"], bug.__name__
    # the notes' running variance: wrong in that state only
    problems = _check(cnn_notes_running_var, mode=mode)
    assert "state running_var" in problems, problems
    assert not {"output", "state running_mean"} & set(problems), problems
    # a backward bug: the forward and statistics exact; the gradients, or the weights after a
    # training step, wrong
    problems = _check(cnn_detached_batch_stats, mode=mode)
    assert (problems == []) == (mode == "fwd"), problems
    assert mode != "train" or "state conv_weight" in problems, problems


# --- the train mode's bytes, cnn's sizes -------------------------------------------------------


@pytest.mark.parametrize("params", preset_table("cnn")["quick"], ids=LAYER.label)
def test_bytes_of_every_mode(params: dict[str, int]) -> None:
    t = LAYER.make_inputs(params, torch.Generator()).tensors
    floats = sum(v.numel() for v in t.values() if v.is_floating_point())
    weights = floats - t["x"].numel() - 2 * params["C_out"]  # not the image or running stats
    stats_written = 2 * params["C_out"] * params["training"]
    logits = params["N"] * 10
    for dtype, width in ((torch.float32, 4), (torch.float16, 2)):
        fwd = (floats + logits + stats_written) * width
        assert LAYER.bytes_moved(params, dtype, "fwd") == fwd
        assert LAYER.bytes_moved(params, dtype, "fwdbwd") == fwd + (logits + weights) * width
        # the weight gradients written, read back and the weights updated; the targets read
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


def test_inputs_and_sizes() -> None:
    a = LAYER.make_inputs(SMALL, torch.Generator().manual_seed(8))
    target = a.tensors["target"]
    assert a.loss_only == ("target",) and a.state == ("running_mean", "running_var")
    assert target.dtype == torch.long and target.shape == (SMALL["N"],)
    assert int(target.min()) >= 0 and int(target.max()) < 10
    # the data is not trained; with batch statistics the conv bias gradient is exactly zero
    assert "x" not in a.grad and "conv_bias" not in a.grad
    assert "conv_bias" in LAYER.make_inputs({**SMALL, "training": 0}, torch.Generator()).grad
    assert bool(a.tensors["running_var"].min() > 0)
    assert notes_size("cnn") == {"N": 64, "C_in": 1, "C_out": 8, "H": 28, "W": 28, "training": 1}
    batches = [s["N"] for s in preset_table("cnn")["default"]]
    assert min(batches) == 1 and max(batches) >= 256
    assert LAYER.calibration_params(notes_size("cnn")) == {
        "N": 1, "C_in": 1, "C_out": 2, "H": 6, "W": 6, "training": 1}
