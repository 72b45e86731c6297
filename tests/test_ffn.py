"""ffn: what is special about it (tests/test_contract.py checks every implementation): planted
bugs flagged, the kink conditioning of b_1, and the module's choice of implementation."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from impls import REGISTRY, PositionwiseFeedForward
from impls.ffn import KINK_MARGIN, LAYER, positionwise_feed_forward
from impls.layernorm import LN_EPS
from suites.correctness import check

SIZE = {"N": 2, "len": 5, "d_model": 12, "d_inner": 40}


def planted(x, w_1, b_1, w_2, b_2, ln_weight, ln_bias, *, bug: str) -> torch.Tensor:
    """The builtin's arithmetic with one bug."""
    pre = F.linear(x, w_1)  # (N, len, d_inner)
    hidden = F.relu(pre) + b_1 if bug == "relu_before_bias" else F.relu(pre + b_1)
    out = F.linear(hidden, w_2, b_2)  # (N, len, d_model)
    if bug == "norm_before_residual":
        return F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias, eps=LN_EPS) + x
    out = out if bug == "no_residual" else out + x
    eps = 1e-5 if bug == "eps_1e5" else LN_EPS  # (float32 cannot see it; float64 can)
    return F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias, eps=eps)


@pytest.mark.parametrize(("bug", "dtype"), [
    ("no_residual", torch.float32), ("relu_before_bias", torch.float32),
    ("norm_before_residual", torch.float32), ("eps_1e5", torch.float64)])
def test_planted_bug_is_flagged(bug: str, dtype: torch.dtype) -> None:
    verdict, _ = check(partial(planted, bug=bug), LAYER, SIZE, [0, 1], dtype, "cpu", "fwd")
    assert not verdict.ok and verdict.problems[0].startswith("output:"), verdict.problems
    verdict, _ = check(partial(planted, bug=""), LAYER, SIZE, [0, 1], dtype, "cpu", "fwd")
    assert verdict.ok, verdict.problems  # the control: without the bug it passes


def test_no_relu_preactivation_sits_at_the_kink() -> None:
    """Near the kink float32 and float64 may gate differently (a false "incorrect" gradient):
    make_inputs nudges b_1 so no pre-activation is within KINK_MARGIN of zero."""
    made = LAYER.make_inputs({"N": 4, "len": 64, "d_model": 64, "d_inner": 512},
                             torch.Generator().manual_seed(3)).tensors
    g = torch.Generator().manual_seed(3)  # the same draw: x, w_1, then b_1 before the nudge
    x = torch.randn(4, 64, 64, generator=g, dtype=torch.float64)
    torch.randn(512, 64, generator=g, dtype=torch.float64)
    raw_b_1 = 0.1 * torch.randn(512, generator=g, dtype=torch.float64)
    assert torch.equal(x, made["x"])
    h = F.linear(made["x"], made["w_1"])  # (N, len, d_inner), float64
    margin = KINK_MARGIN * float(h.pow(2).mean().sqrt())
    assert ((h + made["b_1"]).abs() >= 0.9 * margin).all()  # found in float32: ~1e-6 off
    assert int(((h + raw_b_1).abs() < margin).sum()) > 0  # the draw alone had kinks
    assert 0 < (made["b_1"] - raw_b_1).abs().max() < 0.01  # a nudge, not a new draw


@pytest.mark.parametrize("impl", [i.name for i in REGISTRY.impls("ffn")])
def test_module_computes_with_the_chosen_implementation(impl: str) -> None:
    module = PositionwiseFeedForward(12, 40, dropout=0.5, impl=impl).eval()
    x = torch.randn(2, 5, 12)
    assert module._fn is REGISTRY.impl("ffn", impl).fn
    # parameters in the repository's order: w_1.weight, w_1.bias, w_2.*, layer_norm.*
    torch.testing.assert_close(module(x), positionwise_feed_forward(x, *module.parameters()))
    torch.manual_seed(0)
    assert not torch.allclose(module.train()(x), module.eval()(x))  # dropout while training
