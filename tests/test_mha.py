"""Multi-head attention: the notes' post-norm semantics at sizes tests/test_contract.py does not
reach, nn.MultiheadAttention's masks and limits, float16, planted bugs, per-head sizes, and the
MultiHeadAttention module with its choice of implementation and of attention.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from impls import REGISTRY
from impls.attention import make_mask
from impls.layernorm import LN_EPS
from impls.mha import MultiHeadAttention, builtin_masks, mha_builtin, per_head_sizes
from suites.correctness import check
from suites.presets import notes_size, parse_size, preset_table

LAYER = REGISTRY.layer("mha")
IMPLS = REGISTRY.impls("mha")
GRAD = ("q", "k", "v", "w_qs", "w_ks", "w_vs", "fc", "ln_weight", "ln_bias")
NO_WEIGHTS = "returns no attention weights"


def _size(*values: int) -> dict[str, int]:
    """(N, len_q, len_k, d_model, n_head, d_k, d_v, mask) as a size."""
    return dict(zip(LAYER.params, values, strict=True))


# the repository's general projections (d_k != d_v, n_head * d_k != d_model), which
# nn.MultiheadAttention cannot express and the presets do not have
GENERAL = [_size(2, 5, 6, 10, 3, 4, 6, 1), _size(2, 6, 6, 8, 2, 5, 3, 3)]
LONG_Q = _size(2, 8, 5, 8, 2, 4, 4, 3)  # len_q > len_k: the causal mask stays top-left
SIZES = [_size(2, 5, 7, 12, 3, 4, 4, 0), _size(3, 6, 9, 16, 2, 8, 8, 1),
         _size(2, 7, 7, 16, 4, 4, 4, 2), _size(3, 6, 6, 12, 2, 6, 6, 3)]


def _check(fn, params, dtype=torch.float32, mode="fwd"):
    with torch.set_grad_enabled(mode == "fwdbwd"):  # as the runner calls it
        return check(fn, LAYER, params, [0, 1, 2], dtype, "cpu", mode)[0]


def _inputs(params: dict[str, int], seed: int = 0) -> dict:
    return LAYER.make_inputs(params, torch.Generator().manual_seed(seed)).args


def test_inputs_and_reference_follow_the_notes() -> None:
    """Bias-free projections; LayerNorm(fc(heads) + q), eps 1e-6, the mask over heads."""
    inputs = LAYER.make_inputs(_size(2, 5, 7, 10, 3, 4, 6, 3), torch.Generator().manual_seed(0))
    x = inputs.args
    assert {n: tuple(t.shape) for n, t in inputs.tensors.items()} == {
        "q": (2, 5, 10), "k": (2, 7, 10), "v": (2, 7, 10), "mask": (2, 5, 7), "w_qs": (12, 10),
        "w_ks": (12, 10), "w_vs": (18, 10), "fc": (10, 18), "ln_weight": (10,), "ln_bias": (10,)}
    assert inputs.static == {"n_head": 3, "d_k": 4, "d_v": 6} and set(inputs.grad) == set(GRAD)
    assert x["mask"].dtype == torch.bool
    assert LAYER.make_inputs(_size(1, 3, 3, 4, 1, 4, 4, 0), torch.Generator()).static["mask"] \
        is None
    out, attn = LAYER.reference(**x)
    heads = []
    for h in range(3):
        q_h, k_h = (x[n] @ x[w][4 * h:4 * h + 4].T for n, w in (("q", "w_qs"), ("k", "w_ks")))
        scores = (q_h / 2.0) @ k_h.transpose(1, 2)  # temperature sqrt(4) = 2
        a = torch.softmax(scores.masked_fill(~x["mask"], -1e9), dim=-1)
        torch.testing.assert_close(attn[:, h], a)
        heads.append(a @ (x["v"] @ x["w_vs"][6 * h:6 * h + 6].T))  # head-major
    pre = torch.cat(heads, -1) @ x["fc"].T + x["q"]
    mean, var = pre.mean(-1, keepdim=True), pre.var(-1, unbiased=False, keepdim=True)
    expected = (pre - mean) / torch.sqrt(var + 1e-6) * x["ln_weight"] + x["ln_bias"]
    torch.testing.assert_close(out, expected)
    assert LN_EPS == 1e-6 and out.shape == (2, 5, 10) and attn.shape == (2, 3, 5, 7)


@pytest.mark.parametrize(("impl", "size"), [
    pytest.param(impl, s, id=f"{impl.name}-{LAYER.label(s)}") for impl in IMPLS
    for s in ([LONG_Q] if impl.name == "builtin" else [*GENERAL, LONG_Q])])
def test_impl_matches_reference_at_general_sizes(impl, size: dict[str, int]) -> None:
    for mode in ("fwd", "fwdbwd"):
        verdict = _check(impl.fn, size, mode=mode)
        assert verdict.ok, (mode, verdict.problems)


def test_builtin_takes_what_nn_multiheadattention_expresses_with_its_masks() -> None:
    assert "n_head * d_k == n_head * d_v == d_model" in REGISTRY.impl("mha", "builtin").notes
    for size in GENERAL:
        with pytest.raises(ValueError, match="n_head \\* d_k == d_model"):
            mha_builtin(**_inputs(size))
    for name, sizes in preset_table("mha").items():
        for p in sizes:  # every preset size runs the builtin too
            assert p["n_head"] * p["d_k"] == p["d_model"] == p["n_head"] * p["d_v"], (name, p)
    # our masks (True = may attend) as nn.MultiheadAttention's (True = may not)
    may = torch.tensor([[[True, True, False]]])  # (1, 1, len_k)
    key_padding, attn_mask = builtin_masks(may, 2, 3, 4, 3)
    assert attn_mask is None and key_padding.tolist() == [[False, False, True]] * 2
    full = torch.ones(2, 4, 3, dtype=torch.bool).tril()
    full[1, 3, 0] = False
    key_padding, attn_mask = builtin_masks(full, 2, 3, 4, 3)
    assert key_padding is None and attn_mask.shape == (6, 4, 3)
    assert torch.equal(attn_mask[3:], (~full[1]).expand(3, 4, 3))  # batch-major, head-minor
    assert torch.equal(builtin_masks(full[:1], 2, 3, 4, 3)[1], ~full[0])  # shared by the batch
    assert builtin_masks(None, 2, 3, 4, 3) == (None, None)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_float16_with_a_mask_overflows_only_the_notes_code(impl) -> None:
    """-1e9 does not fit: the notes' code raises (an error row, as its notes say)."""
    assert ("overflows" in impl.notes) == (impl.name == "batched")
    for mode in ("fwd", "fwdbwd"):
        if impl.name == "batched":
            with pytest.raises(RuntimeError, match="overflow"):
                _check(impl.fn, SIZES[3], torch.float16, mode)
            assert _check(impl.fn, {**SIZES[3], "mask": 0}, torch.float16, mode).ok
        else:
            verdict = _check(impl.fn, SIZES[3], torch.float16, mode)
            assert verdict.ok, (mode, verdict.problems)


# --- planted bugs are flagged -----------------------------------------------------------------


def _planted(invert=False, softmax_dim=-1, temperature=None, residual=True, eps=1e-6,
             unsqueeze=True, pre_norm=False):
    """The notes' forward with one knob per planted bug."""

    def mha(q, k, v, mask, w_qs, w_ks, w_vs, fc, ln_weight, ln_bias, n_head, d_k, d_v):
        N, len_q, len_k = q.shape[0], q.shape[1], k.shape[1]
        x = F.layer_norm(q, q.shape[-1:], ln_weight, ln_bias, eps=eps) if pre_norm else q
        q_h = F.linear(x, w_qs).view(N, len_q, n_head, d_k).transpose(1, 2)  # (N, h, q, d_k)
        k_h = F.linear(k, w_ks).view(N, len_k, n_head, d_k).transpose(1, 2)  # (N, h, k, d_k)
        v_h = F.linear(v, w_vs).view(N, len_k, n_head, d_v).transpose(1, 2)  # (N, h, k, d_v)
        scores = (q_h / (temperature or d_k ** 0.5)) @ k_h.transpose(2, 3)  # (N, h, q, k)
        if mask is not None:
            mask = mask.unsqueeze(1) if unsqueeze else mask
            scores = scores.masked_fill(mask == (1 if invert else 0), -1e9)
        attn = F.softmax(scores, dim=softmax_dim)
        out = F.linear((attn @ v_h).transpose(1, 2).reshape(N, len_q, -1), fc)  # (N, q, d_m)
        out = out + q if residual else out
        return (out if pre_norm else F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias,
                                                  eps=eps)), attn

    return mha


@pytest.mark.parametrize(("knobs", "params"), [
    ({"invert": True}, SIZES[1]), ({"invert": True}, SIZES[2]),
    ({"softmax_dim": -2}, SIZES[3]), ({"temperature": 1.0}, SIZES[0]),
    ({"residual": False}, SIZES[0]), ({"pre_norm": True}, SIZES[1]),
    # the mask not unsqueezed over heads broadcasts silently wrong when N == n_head
    ({"unsqueeze": False}, _size(2, 5, 5, 8, 2, 4, 4, 3)),
], ids=["inverted-pad-mask", "inverted-causal-mask", "softmax-wrong-axis",
        "missing-temperature", "missing-residual", "pre-norm", "mask-not-over-heads"])
def test_planted_bug_is_flagged(knobs: dict, params: dict[str, int]) -> None:
    assert _check(_planted(), params).ok  # control: the same code without the bug
    verdict = _check(_planted(**knobs), params)
    assert not verdict.ok
    assert any(p.startswith(("output:", "attn:")) for p in verdict.problems), verdict.problems


def test_pytorchs_layer_norm_eps_or_a_missing_residual_gradient_is_flagged() -> None:
    """eps 1e-5 instead of the notes' 1e-6 is a 4e-6 relative change: float64 catches it."""
    assert _check(_planted(), SIZES[1], torch.float64).ok  # control
    verdict = _check(_planted(eps=1e-5), SIZES[1], torch.float64)
    assert not verdict.ok and any(p.startswith("output:") for p in verdict.problems)
    assert not _check(_planted(residual=False), SIZES[1], mode="fwdbwd").ok


def test_flops_and_bytes_count_d_k_and_d_v_apart() -> None:
    """The contract's sizes all have d_k == d_v == d_model / n_head."""
    params = _size(3, 7, 5, 10, 3, 4, 6, 1)
    x = _inputs(params)
    with FlopCounterMode(display=False) as counter:
        LAYER.reference(**x)
    assert LAYER.flops(params, "fwd") == counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        out = LAYER.reference(**{**x, **{n: x[n].requires_grad_() for n in GRAD}})[0]
        out.backward(torch.ones_like(out))
    assert LAYER.flops(params, "fwdbwd") == counter.get_total_flops()
    elements = sum(x[n].numel() for n in GRAD) + out.numel()
    assert LAYER.bytes_moved(params, torch.float32, "fwd") == 4 * elements + x["mask"].numel()


def test_per_head_sizes_follow_d_model_and_n_head() -> None:
    """d_k = d_v = d_model / n_head where a user sets d_model or n_head but neither d_k nor
    d_v (``--size``); d_model must divide."""
    notes = notes_size("mha")
    heads = ("d_model", "n_head", "d_k", "d_v")
    assert [notes[p] for p in heads] == [512, 8, 64, 64]
    for text, expected in (("d_model=256", [256, 8, 32, 32]), ("n_head=4", [512, 4, 128, 128]),
                           ("d_model=256,d_k=16", [256, 8, 16, 64])):  # d_k given: kept
        assert [parse_size(text, notes, LAYER)[p] for p in heads] == expected, text
    assert per_head_sizes("mha", notes, {"N", "len_q"}) == notes
    with pytest.raises(ValueError, match="d_model 512 is not divisible by n_head 3"):
        per_head_sizes("mha", {**notes, "n_head": 3}, {"n_head"})


# --- the notes' module ------------------------------------------------------------------------


def test_module_mirrors_the_repository() -> None:
    module = MultiHeadAttention(n_head=8, d_model=512, d_k=64, d_v=32)
    assert {n: tuple(p.shape) for n, p in module.state_dict().items()} == {
        "w_qs.weight": (512, 512), "w_ks.weight": (512, 512), "w_vs.weight": (256, 512),
        "fc.weight": (512, 256), "layer_norm.weight": (512,), "layer_norm.bias": (512,)}
    assert all(isinstance(getattr(module, n), nn.Linear) for n in ("w_qs", "w_ks", "w_vs", "fc"))
    assert isinstance(module.layer_norm, nn.LayerNorm) and module.layer_norm.eps == 1e-6
    assert module.attention.temperature == pytest.approx(8.0) and module.dropout.p == 0.1
    assert (module.impl, module.attention.impl) == ("batched", "matmul")


def _run(module: MultiHeadAttention) -> tuple[tuple, tuple, tuple]:
    """The module's (output, attn), the reference's with its weights, and its inputs: a batch of
    two under the decoder's causal mask, shared by the batch (nothing may assume (N, ...))."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 6, 16, generator=g), torch.randn(2, 6, 16, generator=g)
    x = (q, k, k.clone(), make_mask(2, 1, 6, 6, g))  # (1, len_q, len_k)
    weights = [getattr(module, n).weight for n in ("w_qs", "w_ks", "w_vs", "fc", "layer_norm")]
    return module(*x), LAYER.reference(*x, *weights, module.layer_norm.bias, module.n_head,
                                       module.d_k, module.d_v), x


def test_module_attention_is_a_choice_of_batched_and_training_runs_the_dropouts() -> None:
    for impl in ("loops", "einsum", "fused", "builtin"):  # each computes its own attention
        with pytest.raises(ValueError, match=f"needs impl='batched' \\(mha/{impl}"):
            MultiHeadAttention(4, 16, 4, 4, impl=impl, attention="flash")
    torch.manual_seed(0)
    module = MultiHeadAttention(4, 16, 4, 4, dropout=0.5, attention="blockwise").train()
    (first, attn), _, x = _run(module)
    assert not torch.allclose(first, module(*x)[0])
    assert attn is not None  # the repository's forward, whatever the attention
    module.eval()
    torch.testing.assert_close(module(*x)[0], module(*x)[0])


@pytest.mark.parametrize(("impl", "attention"), [
    *((i.name, "matmul") for i in IMPLS),
    *(("batched", a.name) for a in REGISTRY.impls("attention")
      if "cpu" in a.devices and a.name != "matmul")])
def test_module_computes_with_the_chosen_impl_and_attention(impl: str, attention: str) -> None:
    torch.manual_seed(0)
    module = MultiHeadAttention(4, 16, 4, 4, impl=impl, attention=attention).eval()
    assert f"impl={impl!r}, attention={attention!r}" in repr(module)
    (output, attn), (expected, expected_attn), x = _run(module)
    torch.testing.assert_close(output, expected)
    # the repository's own forward, which training with dropout runs (eval: no dropout)
    torch.testing.assert_close(module._forward_with_dropout(*x)[0], expected)
    if NO_WEIGHTS in REGISTRY.impl("attention", attention).notes:
        assert attn is None
    else:
        torch.testing.assert_close(attn, expected_attn)
    output.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
