"""Scaled dot-product attention: the notes' semantics and masks, fully masked rows, float16,
planted bugs, the ScaledDotProductAttention module and the CUDA-only SDPA backends.

What every layer satisfies (reference agreement at the quick sizes, FLOPs, bytes, presets) is
in tests/test_contract.py; blockwise and flash tiling in tests/test_fast_attention.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from impls import REGISTRY, Unsupported
from impls.attention import MASK_FILL, ScaledDotProductAttention, make_mask, mask_fill_value
from suites.correctness import check
from suites.presets import preset_table

LAYER = REGISTRY.layer("attention")
CPU_IMPLS = [i for i in REGISTRY.impls("attention") if "cpu" in i.devices]
SDPA = {"sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn"}
NO_WEIGHTS = "returns no attention weights"


def _size(*values: int) -> dict[str, int]:
    """(N, n_head, len_q, len_k, d_k, d_v, mask) as a size."""
    return dict(zip(LAYER.params, values, strict=True))


def _check(fn, params, dtype=torch.float32, mode="fwd", device="cpu"):
    with torch.set_grad_enabled(mode == "fwdbwd"):  # as the runner calls it
        return check(fn, LAYER, params, [0, 1, 2], dtype, device, mode)[0]


def _qkv(N=2, n_head=2, len_q=5, len_k=7, d_k=8, d_v=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(N, n_head, n, d, generator=g, dtype=dtype)
                 for n, d in ((len_q, d_k), (len_k, d_k), (len_k, d_v)))


def test_registry_says_which_impls_form_no_weights_and_which_need_cuda() -> None:
    impls = {i.name: i for i in REGISTRY.impls("attention")}
    assert {"loops", "matmul", "einsum", "blockwise", "flash", "builtin"} | SDPA <= set(impls)
    assert {n for n, i in impls.items() if NO_WEIGHTS in i.notes} == \
        {"blockwise", "flash", "builtin"} | SDPA
    for name in SDPA:  # a CPU run skips each with a reason
        assert "device cpu" in impls[name].unsupported("cpu", torch.float16, "fwd", "none")
    assert impls["sdpa_flash"].dtypes == impls["sdpa_cudnn"].dtypes == \
        {torch.float16, torch.bfloat16}
    assert torch.float64 not in impls["sdpa_efficient"].dtypes and impls["loops"].naive


def test_mask_kinds_pad_trailing_keys_are_causal_from_the_top_left_or_both() -> None:
    mask = make_mask(1, 64, 5, 10, torch.Generator().manual_seed(0))  # (N, 1, len_k)
    lengths = mask[:, 0].sum(-1)
    assert mask.shape == (64, 1, 10)
    assert torch.equal(mask[:, 0], torch.arange(10) < lengths[:, None])  # pads trailing
    assert int(lengths.min()) >= 5 and int(lengths.max()) <= 9  # at least one pad, half valid
    assert len(set(lengths.tolist())) > 1  # lengths differ across the batch
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    assert torch.equal(make_mask(2, 3, 4, 4, torch.Generator())[0], expected)
    # len_q != len_k: query i sees keys 0..i (as get_subsequent_mask and SDPA's is_causal)
    assert torch.equal(make_mask(2, 1, 3, 5, torch.Generator())[0],
                       torch.ones(3, 5, dtype=torch.bool).tril())
    pad = make_mask(1, 5, 6, 6, torch.Generator().manual_seed(3))
    assert torch.equal(make_mask(3, 5, 6, 6, torch.Generator().manual_seed(3)),
                       pad & torch.ones(6, 6, dtype=torch.bool).tril())
    for kind, (len_q, len_k) in itertools.product((1, 2, 3), ((1, 1), (5, 2), (2, 7), (8, 8))):
        mask = make_mask(kind, 16, len_q, len_k, torch.Generator().manual_seed(0))
        assert torch.broadcast_to(mask, (16, len_q, len_k)).any(-1).all(), "a row sees no key"
    for changes in ({"N": 0}, {"n_head": 0}, {"len_q": -1}, {"d_v": 0}, {"mask": 4},
                    {"mask": -1}):  # an empty size or an unknown kind: a one-line ValueError
        with pytest.raises(ValueError, match=next(iter(changes))):
            LAYER.check({**_size(2, 2, 4, 4, 8, 8, 0), **changes})


def test_inputs_and_reference_follow_the_notes() -> None:
    """attn = softmax(masked_fill((q / sqrt(d_k)) k^T, mask == 0, -1e9)), output = attn v; a
    boolean mask (True = may attend) with a head dimension of 1, to broadcast over heads."""
    inputs = LAYER.make_inputs(_size(2, 3, 5, 7, 8, 4, 3), torch.Generator().manual_seed(0))
    q, k, v, mask = (inputs.tensors[n] for n in ("q", "k", "v", "mask"))
    assert [tuple(t.shape) for t in (q, k, v, mask)] == \
        [(2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4), (2, 1, 5, 7)]
    assert mask.dtype == torch.bool and inputs.static["temperature"] == pytest.approx(8 ** 0.5)
    assert set(inputs.grad) == {"q", "k", "v"} and LAYER.output_names == ("output", "attn")
    out, attn = LAYER.reference(**inputs.args)
    expected = torch.softmax(((q / 8 ** 0.5) @ k.transpose(-1, -2)).masked_fill(~mask, -1e9), -1)
    torch.testing.assert_close(attn, expected, rtol=0, atol=0)
    torch.testing.assert_close(out, expected @ v, rtol=0, atol=0)
    assert torch.all(attn[~mask.expand_as(attn)] == 0)  # masked keys get exactly no weight
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
    for kind, shape in ((1, (4, 1, 1, 9)), (2, (1, 1, 6, 9))):
        assert LAYER.make_inputs(_size(4, 3, 6, 9, 2, 2, kind), torch.Generator()).tensors[
            "mask"].shape == shape
    unmasked = LAYER.make_inputs(_size(1, 1, 3, 3, 2, 2, 0), torch.Generator())
    assert unmasked.static["mask"] is None and "mask" not in unmasked.tensors
    assert {p["mask"] for p in preset_table("attention")["quick"]} == {0, 1, 2, 3}  # contract's


@pytest.mark.parametrize("impl", CPU_IMPLS, ids=lambda i: i.name)
def test_module_runs_the_impl_and_a_fully_masked_row_averages_every_value(impl) -> None:
    """-1e9, not -inf: a row with no visible key is the uniform average of v, except where the
    notes say otherwise (SDPA: zeros or NaN; why no preset has such a row). attn is None where
    the notes say the impl forms no weights. A (len_q, len_k) mask broadcasts."""
    q, k, v = _qkv()
    mask = torch.ones(5, 7, dtype=torch.bool).tril()
    mask[2] = False
    expected, expected_attn = LAYER.reference(q, k, v, mask, 2.0)
    torch.testing.assert_close(expected_attn[:, :, 2],
                               torch.full((2, 2, 7), 1 / 7, dtype=torch.float64))
    torch.testing.assert_close(expected[:, :, 2], v.mean(dim=2))
    output, attn = ScaledDotProductAttention(2.0, impl=impl.name).eval()(q, k, v, mask)
    rows = [0, 1, 3, 4] if "fully masked row" in impl.notes else list(range(5))
    if len(rows) < 5:
        assert not torch.allclose(output[:, :, 2], expected[:, :, 2])
    torch.testing.assert_close(output[:, :, rows], expected[:, :, rows], rtol=1e-10, atol=1e-10)
    if NO_WEIGHTS in impl.notes:
        assert attn is None
    else:
        torch.testing.assert_close(attn, expected_attn, rtol=1e-10, atol=1e-10)


def test_module_defaults_follow_the_notes_and_training_applies_dropout() -> None:
    module = ScaledDotProductAttention(temperature=8.0)
    assert (module.temperature, module.impl, module.dropout.p) == (8.0, "matmul", 0.1)
    assert not list(module.parameters())
    with pytest.raises(KeyError, match="unknown implementation"):
        ScaledDotProductAttention(8.0, impl="nope")
    # dropout needs the weights: while training, the notes' formulation whatever the impl
    q, k, v = _qkv()
    module = ScaledDotProductAttention(temperature=2.0, attn_dropout=0.5, impl="blockwise")
    torch.manual_seed(0)
    _, attn = module.train()(q, k, v)
    assert attn is not None and (attn == 0).any()  # dropped weights
    module.dropout.p = 0.0  # dropout inactive: the chosen impl
    output, attn = module(q, k, v)
    assert attn is None
    torch.testing.assert_close(output, LAYER.reference(q, k, v, None, 2.0)[0])


@pytest.mark.parametrize("impl", CPU_IMPLS, ids=lambda i: i.name)
def test_float16_with_a_mask_overflows_only_the_notes_code(impl) -> None:
    """-1e9 does not fit: the notes' code raises (an error row, as its notes say); the others
    fill float16's lowest value or compute in float32."""
    assert mask_fill_value(torch.float32) == mask_fill_value(torch.bfloat16) == MASK_FILL == -1e9
    assert mask_fill_value(torch.float16) == torch.finfo(torch.float16).min
    assert ("overflows" in impl.notes) == (impl.name == "matmul")
    params = _size(2, 2, 6, 6, 16, 16, 3)
    for mode in ("fwd", "fwdbwd"):
        if impl.name == "matmul":
            with pytest.raises(RuntimeError, match="overflow"):
                _check(impl.fn, params, torch.float16, mode)
            assert _check(impl.fn, {**params, "mask": 0}, torch.float16, mode).ok
        else:
            verdict = _check(impl.fn, params, torch.float16, mode)
            assert verdict.ok, (mode, verdict.problems)


# --- planted bugs are flagged -----------------------------------------------------------------


def _planted(invert=False, softmax_dim=-1, scaled=True, roll_weights=False, detach_k=False):
    """The notes' code with one knob per planted bug."""

    def attention(q, k, v, mask, temperature):
        k = k.detach() if detach_k else k
        attn = torch.matmul(q / temperature if scaled else q, k.transpose(2, 3))  # (N,h,q,k)
        if mask is not None:  # inverted: True read as "masked", nn.MultiheadAttention's way
            attn = attn.masked_fill(mask == (1 if invert else 0), mask_fill_value(attn.dtype))
        attn = F.softmax(attn, dim=softmax_dim)
        return torch.matmul(attn, v), attn.roll(1, -1) if roll_weights else attn  # (N,h,q,d_v)

    return attention


@pytest.mark.parametrize(("knobs", "params"), [
    ({"invert": True}, _size(2, 2, 6, 6, 8, 8, 1)),
    ({"invert": True}, _size(2, 2, 6, 6, 8, 8, 2)),
    ({"invert": True}, _size(2, 2, 6, 6, 8, 8, 3)),
    ({"softmax_dim": -2}, _size(2, 2, 6, 6, 8, 8, 0)),  # over the queries
    ({"scaled": False}, _size(2, 2, 6, 6, 16, 16, 1)),  # forgot 1 / temperature
], ids=["inverted-pad", "inverted-causal", "inverted-padcausal", "softmax-wrong-axis",
        "missing-temperature"])
def test_planted_bug_is_flagged(knobs: dict, params: dict[str, int]) -> None:
    assert _check(_planted(), params).ok  # control: the same code without the bug
    verdict = _check(_planted(**knobs), params)
    assert not verdict.ok and verdict.rel_err > 0.1
    assert any(p.startswith("output:") for p in verdict.problems), verdict.problems


def test_wrong_weights_or_a_missing_gradient_are_flagged_with_a_right_output() -> None:
    verdict = _check(_planted(roll_weights=True), _size(2, 2, 6, 6, 8, 8, 2))
    assert not verdict.ok and verdict.rel_err < 1e-5  # the output itself was right
    assert all(p.startswith("attn:") for p in verdict.problems), verdict.problems
    params = _size(2, 2, 5, 6, 8, 8, 1)
    assert _check(_planted(), params, mode="fwdbwd").ok  # control
    assert _check(_planted(detach_k=True), params).ok
    verdict = _check(_planted(detach_k=True), params, mode="fwdbwd")
    assert not verdict.ok
    assert any(p.startswith("grad k") for p in verdict.problems), verdict.problems


def test_sdpa_counts_the_flops_of_the_formula() -> None:
    q, k, v = _qkv(2, 8, 32, 48, 64, 32, dtype=torch.float32)
    with FlopCounterMode(display=False) as counter:
        REGISTRY.impl("attention", "builtin").fn(q, k, v, None, 2.0)
    assert LAYER.flops(_size(2, 8, 32, 48, 64, 32, 0), "fwd") == counter.get_total_flops()


# --- CUDA: each SDPA backend (skipped without a GPU) ------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("impl", REGISTRY.impls("attention"), ids=lambda i: i.name)
def test_impl_matches_reference_on_cuda(impl) -> None:
    """Every impl, dtype, mode and mask kind on the GPU: right, or a documented failure. The
    notes' float16 -1e9 raises (matmul's error row); a restricted backend's refusal is
    ``Unsupported`` (a skipped row) whose reason names the impl, never a RuntimeError."""
    dtypes = [d for d in (torch.float32, torch.float16, torch.bfloat16) if d in impl.dtypes
              and (d != torch.bfloat16 or torch.cuda.is_bf16_supported(including_emulation=False))]
    sm80 = torch.cuda.get_device_capability() >= (8, 0)
    for kind, dtype, mode in itertools.product((0, 1, 2, 3), dtypes, ("fwd", "fwdbwd")):
        params = (_size(1, 2, 6, 9, 16, 16, kind) if impl.naive
                  else _size(2, 4, 40, 72 if kind != 2 else 40, 64, 64, kind))
        if impl.name == "sdpa_flash" and kind:  # takes no mask: a skipped case, with a reason
            with pytest.raises(Unsupported, match="attn_mask"):
                _check(impl.fn, params, dtype, mode, device="cuda")
            continue
        if impl.name == "matmul" and kind and dtype == torch.float16:  # as its notes say
            with pytest.raises(RuntimeError, match="overflow"):
                _check(impl.fn, params, dtype, mode, device="cuda")
            continue
        try:
            verdict = _check(impl.fn, params, dtype, mode, device="cuda")
        except Unsupported as exc:  # refused by the backend's own checks: skipped, with why
            assert impl.name == "sdpa_cudnn" or not sm80, (kind, dtype, mode, exc)
            assert str(exc).startswith(f"{impl.name}: the "), exc
            continue
        assert verdict.ok, (kind, dtype, mode, verdict.problems)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize(("impl", "sizes", "dtype", "why"), [
    ("sdpa_flash", (2, 2, 16, 16, 64, 32), torch.float16, "same last dimension"),
    ("sdpa_flash", (2, 2, 16, 16, 288, 288), torch.float16, "less than or equal to 256"),
    ("sdpa_efficient", (2, 2, 16, 16, 12, 12), torch.float16, "divisible by 8"),
    ("sdpa_cudnn", (2, 2, 16, 1, 64, 64), torch.float16, ""),  # len_k 1 (warned once)
], ids=["flash-dk-ne-dv", "flash-d288", "efficient-d12", "cudnn-len_k1"])
def test_a_case_the_backend_refuses_is_unsupported_with_torchs_reason(
        impl: str, sizes: tuple[int, ...], dtype: torch.dtype, why: str) -> None:
    """The "No available kernel" errors of issue 17: skipped rows that say why."""
    with pytest.raises(Unsupported) as refused:
        _check(REGISTRY.impl("attention", impl).fn, _size(*sizes, 0), dtype, "fwd",
               device="cuda")
    assert str(refused.value).startswith(f"{impl}: the "), refused.value
    assert why in str(refused.value), refused.value
    assert "No available kernel" not in str(refused.value)
