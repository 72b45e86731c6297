"""Multi-head attention: every implementation against the notes' post-norm semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from impls import REGISTRY
from impls.attention import make_mask
from impls.mha import LN_EPS, MultiHeadAttention, builtin_masks, mha_batched, mha_builtin
from suites.cases import Case
from suites.config import BenchConfig, TimingConfig
from suites.correctness import check
from suites.presets import notes_size, preset_table
from suites.runner import run_case

LAYER = REGISTRY.layer("mha")
SEEDS = [0, 1, 2]
IMPLS = REGISTRY.impls("mha")
NAMES = LAYER.params
WEIGHTS = ("w_qs", "w_ks", "w_vs", "fc", "ln_weight", "ln_bias")


def _size(N: int, len_q: int, len_k: int, d_model: int, n_head: int, d_k: int, d_v: int,
          mask: int) -> dict[str, int]:
    return dict(zip(NAMES, (N, len_q, len_k, d_model, n_head, d_k, d_v, mask), strict=True))


# builtin-compatible: n_head * d_k == d_model, d_k == d_v; cross-attention len_q != len_k
SIZES = [_size(2, 5, 7, 12, 3, 4, 4, 0), _size(3, 6, 9, 16, 2, 8, 8, 1),
         _size(2, 7, 7, 16, 4, 4, 4, 2), _size(3, 6, 6, 12, 2, 6, 6, 3),
         _size(2, 8, 5, 8, 2, 4, 4, 3)]  # len_q > len_k: causal stays top-left
# the general projections of the repository, which nn.MultiheadAttention cannot express
GENERAL = [_size(2, 5, 6, 10, 3, 4, 6, 1), _size(2, 6, 6, 8, 2, 5, 3, 3)]


def _cases() -> list:
    cases = []
    for impl in IMPLS:
        sizes = SIZES if impl.name == "builtin" else SIZES + GENERAL
        cases += [pytest.param(impl, s, id=f"{impl.name}-{LAYER.label(s)}") for s in sizes]
    return cases


def _check(fn, params, dtype=torch.float32, mode="fwd"):
    with torch.set_grad_enabled(mode == "fwdbwd"):  # as the runner calls it
        return check(fn, LAYER, params, SEEDS, dtype, "cpu", mode)[0]


def _inputs(params: dict[str, int], seed: int = 0) -> dict:
    inputs = LAYER.make_inputs(params, torch.Generator().manual_seed(seed))
    return {**inputs.tensors, **inputs.static}


# --- registry, inputs, masks ------------------------------------------------------------------


def test_the_documented_implementations_are_registered() -> None:
    assert {"loops", "batched", "einsum", "builtin"} <= {i.name for i in IMPLS}
    assert LAYER.output_names == ("output", "attn")


def test_inputs_are_bias_free_weights_of_the_notes_shapes() -> None:
    params = _size(2, 5, 7, 10, 3, 4, 6, 1)
    inputs = LAYER.make_inputs(params, torch.Generator().manual_seed(0))
    t = inputs.tensors
    assert t["q"].shape == (2, 5, 10) and t["k"].shape == t["v"].shape == (2, 7, 10)
    assert t["w_qs"].shape == t["w_ks"].shape == (12, 10)  # (n_head * d_k, d_model)
    assert t["w_vs"].shape == (18, 10)  # (n_head * d_v, d_model)
    assert t["fc"].shape == (10, 18)  # (d_model, n_head * d_v)
    assert t["ln_weight"].shape == t["ln_bias"].shape == (10,)
    assert not any("bias" in n and n != "ln_bias" for n in t)  # projections have no bias
    assert inputs.static == {"n_head": 3, "d_k": 4, "d_v": 6}
    assert set(inputs.grad) == {"q", "k", "v", *WEIGHTS}
    assert all(x.std() > 0 for n, x in t.items() if n != "mask")


@pytest.mark.parametrize(("kind", "shape"), [(1, (4, 1, 9)), (2, (1, 6, 9)), (3, (4, 6, 9))])
def test_mask_shapes(kind: int, shape: tuple[int, ...]) -> None:
    inputs = LAYER.make_inputs(_size(4, 6, 9, 8, 2, 4, 4, kind), torch.Generator())
    mask = inputs.tensors["mask"]
    assert mask.dtype == torch.bool and tuple(mask.shape) == shape


def test_no_mask_is_none_in_static() -> None:
    inputs = LAYER.make_inputs(_size(1, 3, 3, 4, 1, 4, 4, 0), torch.Generator())
    assert inputs.static["mask"] is None and "mask" not in inputs.tensors


def test_labels_are_readable() -> None:
    assert LAYER.label(_size(16, 32, 32, 512, 8, 64, 64, 1)) == \
        "N16_q32_k32_dm512_h8_dk64_dv64_pad"


def test_reference_is_post_norm_with_the_input_as_residual() -> None:
    """LayerNorm(fc(heads) + q), eps 1e-6, with the mask broadcast over heads."""
    params = _size(2, 5, 7, 12, 3, 4, 4, 3)
    x = _inputs(params)
    out, attn = LAYER.reference(**x)
    d_model = 12
    heads = []
    for h in range(3):
        q_h = x["q"] @ x["w_qs"][4 * h:4 * h + 4].T
        k_h = x["k"] @ x["w_ks"][4 * h:4 * h + 4].T
        v_h = x["v"] @ x["w_vs"][4 * h:4 * h + 4].T
        scores = (q_h / 2.0) @ k_h.transpose(1, 2)  # temperature sqrt(4) = 2
        a = torch.softmax(scores.masked_fill(~x["mask"], -1e9), dim=-1)
        torch.testing.assert_close(attn[:, h], a)
        heads.append(a @ v_h)
    pre = torch.cat(heads, -1) @ x["fc"].T + x["q"]
    mean, var = pre.mean(-1, keepdim=True), pre.var(-1, unbiased=False, keepdim=True)
    expected = (pre - mean) / torch.sqrt(var + 1e-6) * x["ln_weight"] + x["ln_bias"]
    torch.testing.assert_close(out, expected)
    assert LN_EPS == 1e-6
    assert out.shape == (2, 5, d_model) and attn.shape == (2, 3, 5, 7)


# --- every implementation against the reference -----------------------------------------------


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize(("impl", "size"), _cases())
def test_impl_matches_reference(impl, size: dict[str, int], mode: str) -> None:
    verdict = _check(impl.fn, size, mode=mode)
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_impl_matches_reference_in_float64(impl) -> None:
    verdict = _check(impl.fn, SIZES[3], dtype=torch.float64, mode="fwdbwd")
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_return_shapes(impl) -> None:
    x = _inputs(SIZES[1])
    with torch.no_grad():
        output, attn = impl.fn(**x)
    assert output.shape == (3, 6, 16) and attn.shape == (3, 2, 6, 9)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 2, 6, dtype=torch.float64))


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_a_mask_shared_by_the_batch_broadcasts(impl) -> None:
    """The decoder's get_subsequent_mask is (1, len, len); nothing may assume (N, ...)."""
    params = _size(3, 6, 6, 12, 2, 6, 6, 3)
    x = _inputs(params)
    x["mask"] = make_mask(2, 1, 6, 6, torch.Generator())  # (1, len_q, len_k)
    expected = LAYER.reference(**x)
    with torch.no_grad():
        out = impl.fn(**x)
    torch.testing.assert_close(out[0], expected[0])
    torch.testing.assert_close(out[1], expected[1])


def test_builtin_refuses_sizes_nn_multiheadattention_cannot_express() -> None:
    x = _inputs(GENERAL[0])
    with pytest.raises(ValueError, match="n_head \\* d_k == d_model"):
        mha_builtin(**x)


@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_builtin_is_nn_multiheadattention_with_the_same_weights(kind: int) -> None:
    """nn.MultiheadAttention(bias=False) loaded with w_qs/w_ks/w_vs/fc, its (inverted) masks,
    then the residual and LayerNorm(eps 1e-6) outside."""
    params = _size(3, 6, 6, 16, 4, 4, 4, kind)
    x = _inputs(params, seed=kind)
    mha = nn.MultiheadAttention(16, 4, bias=False, batch_first=True, dtype=torch.float64).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([x["w_qs"], x["w_ks"], x["w_vs"]]))
        mha.out_proj.weight.copy_(x["fc"])
    assert mha.in_proj_bias is None and mha.out_proj.bias is None
    mask = x["mask"]
    key_padding_mask = attn_mask = None
    if kind == 1:
        key_padding_mask = ~mask[:, 0]  # True = ignore this key
    elif kind == 2:
        attn_mask = ~mask[0]  # True = not allowed
    elif kind == 3:
        attn_mask = (~mask).repeat_interleave(4, dim=0)
    with torch.no_grad():
        out, attn = mha(x["q"], x["k"], x["v"], key_padding_mask=key_padding_mask,
                        attn_mask=attn_mask, average_attn_weights=False)
        expected = F.layer_norm(out + x["q"], (16,), x["ln_weight"], x["ln_bias"], eps=1e-6)
        got, got_attn = mha_builtin(**x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_attn, attn)
    torch.testing.assert_close(got, LAYER.reference(**x)[0])


def test_builtin_masks_invert_the_convention() -> None:
    may = torch.tensor([[[True, True, False]]])  # (1, 1, len_k)
    key_padding, attn_mask = builtin_masks(may, 2, 3, 4, 3)
    assert attn_mask is None
    assert key_padding.tolist() == [[False, False, True]] * 2
    full = torch.ones(2, 4, 3, dtype=torch.bool).tril()
    full[1, 3, 0] = False
    key_padding, attn_mask = builtin_masks(full, 2, 3, 4, 3)
    assert key_padding is None and attn_mask.shape == (6, 4, 3)
    assert torch.equal(attn_mask[3:], (~full[1]).expand(3, 4, 3))  # batch-major, head-minor
    assert builtin_masks(None, 2, 3, 4, 3) == (None, None)


# --- float16 ----------------------------------------------------------------------------------


def test_notes_code_fails_on_a_float16_mask_as_a_recorded_error() -> None:
    params = _size(2, 4, 4, 8, 2, 4, 4, 1)
    timing = TimingConfig(min_time_s=0.01, warmup_s=0.001, block_s=0.002, min_samples=2)
    config = BenchConfig(layers=("mha",), trials=1, timing=timing)
    case = Case("mha", "batched", "none", tuple((p, params[p]) for p in NAMES), "cpu",
                "float16", "fwd")
    result = run_case(case, config)
    assert result.status == "error" and "overflow" in result.reason
    with torch.no_grad():
        mha_batched(**{n: t.half() if isinstance(t, Tensor) and t.is_floating_point() else t
                       for n, t in _inputs(dict(params, mask=0)).items()})  # unmasked: runs


@pytest.mark.parametrize("name", ["loops", "einsum", "builtin"])
def test_other_impls_handle_float16_masks(name: str) -> None:
    verdict = _check(REGISTRY.impl("mha", name).fn, SIZES[3], dtype=torch.float16,
                     mode="fwdbwd")
    assert verdict.ok, verdict.problems


# --- planted bugs are flagged -----------------------------------------------------------------


def _mha(q, k, v, mask, w_qs, w_ks, w_vs, fc, ln_weight, ln_bias, n_head, d_k, d_v, *,
         invert=False, softmax_dim=-1, temperature=None, residual=True, eps=1e-6,
         unsqueeze=True, pre_norm=False):
    """The notes' forward with one knob per planted bug."""
    N, len_q, len_k = q.shape[0], q.shape[1], k.shape[1]
    x = F.layer_norm(q, q.shape[-1:], ln_weight, ln_bias, eps=eps) if pre_norm else q
    q_h = F.linear(x, w_qs).view(N, len_q, n_head, d_k).transpose(1, 2)
    k_h = F.linear(k, w_ks).view(N, len_k, n_head, d_k).transpose(1, 2)
    v_h = F.linear(v, w_vs).view(N, len_k, n_head, d_v).transpose(1, 2)
    scores = (q_h / (d_k ** 0.5 if temperature is None else temperature)) @ k_h.transpose(2, 3)
    if mask is not None:
        mask = mask.unsqueeze(1) if unsqueeze else mask
        scores = scores.masked_fill((mask == 1) if invert else (mask == 0), -1e9)
    attn = F.softmax(scores, dim=softmax_dim)
    out = F.linear((attn @ v_h).transpose(1, 2).reshape(N, len_q, -1), fc)
    out = out + q if residual else out
    if pre_norm:
        return out, attn
    return F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias, eps=eps), attn


def _planted(**knobs):
    return lambda **kw: _mha(**kw, **knobs)


@pytest.mark.parametrize(("knobs", "params"), [
    ({"invert": True}, SIZES[1]),
    ({"invert": True}, SIZES[2]),
    ({"softmax_dim": -2}, SIZES[3]),
    ({"temperature": 1.0}, SIZES[0]),
    ({"residual": False}, SIZES[0]),
    ({"pre_norm": True}, SIZES[1]),
    # the mask not unsqueezed over heads broadcasts silently wrong when N == n_head
    ({"unsqueeze": False}, _size(2, 5, 5, 8, 2, 4, 4, 3)),
], ids=["inverted-pad-mask", "inverted-causal-mask", "softmax-wrong-axis",
        "missing-temperature", "missing-residual", "pre-norm", "mask-not-over-heads"])
def test_planted_bug_is_flagged(knobs: dict, params: dict[str, int]) -> None:
    verdict = _check(_planted(**knobs), params)
    assert not verdict.ok
    assert any(p.startswith(("output:", "attn:")) for p in verdict.problems), verdict.problems


def test_layer_norm_eps_of_pytorch_default_is_flagged_in_float64() -> None:
    """eps 1e-5 instead of the notes' 1e-6 is a 4e-6 relative change: float64 catches it."""
    params = SIZES[1]
    assert _check(_planted(), params, dtype=torch.float64).ok  # control
    verdict = _check(_planted(eps=1e-5), params, dtype=torch.float64)
    assert not verdict.ok
    assert any(p.startswith("output:") for p in verdict.problems)


def test_missing_residual_breaks_the_gradient_of_q() -> None:
    verdict = _check(_planted(residual=False), SIZES[1], mode="fwdbwd")
    assert not verdict.ok


# --- the notes' module ------------------------------------------------------------------------


def test_module_mirrors_the_repository() -> None:
    module = MultiHeadAttention(n_head=8, d_model=512, d_k=64, d_v=32)
    for name, shape in [("w_qs", (512, 512)), ("w_ks", (512, 512)), ("w_vs", (256, 512)),
                        ("fc", (512, 256))]:
        linear = getattr(module, name)
        assert isinstance(linear, nn.Linear) and linear.bias is None
        assert tuple(linear.weight.shape) == shape
    assert isinstance(module.layer_norm, nn.LayerNorm) and module.layer_norm.eps == 1e-6
    assert module.attention.temperature == pytest.approx(8.0)
    assert module.dropout.p == 0.1
    assert module.impl == "batched"
    assert set(module.state_dict()) == {"w_qs.weight", "w_ks.weight", "w_vs.weight",
                                        "fc.weight", "layer_norm.weight", "layer_norm.bias"}


def _module_inputs(kind: int = 3):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 6, 16, generator=g), torch.randn(2, 6, 16, generator=g)
    return q, k, k.clone(), make_mask(kind, 2, 6, 6, g)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda i: i.name)
def test_module_dispatches_to_the_impl(impl) -> None:
    torch.manual_seed(0)
    module = MultiHeadAttention(4, 16, 4, 4, impl=impl.name).eval()
    q, k, v, mask = _module_inputs()
    output, attn = module(q, k, v, mask=mask)
    # the repository's own forward (eval: dropout is the identity)
    expected, expected_attn = module._forward_with_dropout(q, k, v, mask)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(attn, expected_attn)
    output.sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def test_module_training_uses_dropout() -> None:
    torch.manual_seed(0)
    module = MultiHeadAttention(4, 16, 4, 4, dropout=0.5).train()
    q, k, v, mask = _module_inputs()
    first, _ = module(q, k, v, mask)
    second, _ = module(q, k, v, mask)
    assert not torch.allclose(first, second)
    module.eval()
    torch.testing.assert_close(module(q, k, v, mask)[0], module(q, k, v, mask)[0])


# --- FLOPs, bytes, sizes, presets -------------------------------------------------------------


FLOP_SIZES = [_size(2, 32, 48, 64, 4, 16, 16, 0), _size(3, 7, 5, 10, 3, 4, 6, 1),
              _size(1, 9, 9, 12, 2, 5, 3, 3)]


@pytest.mark.parametrize("params", FLOP_SIZES, ids=LAYER.label)
def test_flops_match_flop_counter(params: dict[str, int]) -> None:
    x = _inputs(params)
    with FlopCounterMode(display=False) as counter:
        LAYER.reference(**x)
    assert LAYER.flops(params, "fwd") == counter.get_total_flops()
    leaves = {n: t.requires_grad_() if n in ("q", "k", "v", *WEIGHTS) else t
              for n, t in x.items()}
    with FlopCounterMode(display=False) as counter:
        out = LAYER.reference(**leaves)[0]
        out.backward(torch.ones_like(out))
    assert LAYER.flops(params, "fwdbwd") == counter.get_total_flops()


@pytest.mark.parametrize("params", FLOP_SIZES, ids=LAYER.label)
def test_bytes_are_each_tensor_once(params: dict[str, int]) -> None:
    inputs = LAYER.make_inputs(params, torch.Generator().manual_seed(0)).to(torch.float32, "cpu")
    out = LAYER.reference(**inputs.tensors, **inputs.static)[0]
    expected = sum(t.numel() * t.element_size() for t in (*inputs.tensors.values(), out))
    assert LAYER.bytes_moved(params, torch.float32, "fwd") == expected
    grads = sum(inputs.tensors[n].numel() * 4 for n in inputs.grad) + out.numel() * 4
    assert LAYER.bytes_moved(params, torch.float32, "fwdbwd") >= expected + grads


@pytest.mark.parametrize(("changes", "match"), [
    ({"N": 0}, "N"), ({"d_model": 0}, "d_model"), ({"n_head": -1}, "n_head"),
    ({"len_k": 0}, "len_k"), ({"mask": 5}, "mask")])
def test_check_rejects_nonsense(changes: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LAYER.check({**SIZES[0], **changes})


def test_presets() -> None:
    table = preset_table("mha")
    notes = notes_size("mha")
    assert {p: notes[p] for p in ("d_model", "n_head", "d_k", "d_v")} == \
        {"d_model": 512, "n_head": 8, "d_k": 64, "d_v": 64}
    for name, sizes in table.items():
        assert notes in sizes, name
        for params in sizes:
            LAYER.check(params)
            # every preset runs the builtin too
            assert params["n_head"] * params["d_k"] == params["d_model"] == \
                params["n_head"] * params["d_v"], (name, params)
    lengths = {p["len_q"] for p in table["default"]}
    assert min(lengths) <= 32 and max(lengths) >= 1024
    assert {p["mask"] for p in table["default"]} >= {0, 1, 2}
    assert {p["mask"] for p in table["quick"]} == {0, 1, 2, 3}
