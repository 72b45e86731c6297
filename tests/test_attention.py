"""Scaled dot-product attention: every implementation against the notes' semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from impls import REGISTRY, Unsupported
from impls.attention import (
    BLOCK_K,
    MASK_FILL,
    ScaledDotProductAttention,
    attention_blockwise,
    attention_builtin,
    attention_matmul,
    make_mask,
    mask_fill_value,
)
from suites.cases import Case, plan
from suites.config import BenchConfig, TimingConfig
from suites.correctness import check
from suites.presets import notes_size, preset_table
from suites.runner import run_case

LAYER = REGISTRY.layer("attention")
SEEDS = [0, 1, 2]
CPU_IMPLS = [i for i in REGISTRY.impls("attention") if "cpu" in i.devices]
CUDA_ONLY = [i for i in REGISTRY.impls("attention") if i.devices == frozenset({"cuda"})]
NAMES = LAYER.params
MASKS = {"nomask": 0, "pad": 1, "causal": 2, "padcausal": 3}


def _size(N: int, n_head: int, len_q: int, len_k: int, d_k: int, d_v: int,
          mask: int) -> dict[str, int]:
    return dict(zip(NAMES, (N, n_head, len_q, len_k, d_k, d_v, mask), strict=True))


def _sizes(impl) -> list[dict[str, int]]:
    """Odd tiny shapes for every mask kind; len_k over two key blocks for the blockwise one."""
    long_k = 2 * BLOCK_K + 44 if impl.name == "blockwise" else 11
    return [_size(2, 3, 5, long_k, 8, 4, m) if m != 2 else _size(1, 2, 7, 6, 4, 8, m)
            for m in MASKS.values()] + [_size(2, 2, 9, 4, 8, 8, 3)]  # len_q > len_k, causal


def _cases() -> list:
    return [pytest.param(impl, size, id=f"{impl.name}-{LAYER.label(size)}")
            for impl in CPU_IMPLS for size in _sizes(impl)]


def _check(fn, params, dtype=torch.float32, mode="fwd", device="cpu"):
    with torch.set_grad_enabled(mode == "fwdbwd"):  # as the runner calls it
        return check(fn, LAYER, params, SEEDS, dtype, device, mode)[0]


def _qkv(N=2, n_head=2, len_q=5, len_k=7, d_k=8, d_v=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, n_head, len_q, d_k, generator=g, dtype=dtype),
            torch.randn(N, n_head, len_k, d_k, generator=g, dtype=dtype),
            torch.randn(N, n_head, len_k, d_v, generator=g, dtype=dtype))


# --- registry ---------------------------------------------------------------------------------


def test_the_documented_implementations_are_registered() -> None:
    names = {i.name for i in REGISTRY.impls("attention")}
    assert {"loops", "matmul", "einsum", "blockwise", "builtin"} <= names
    assert {"sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn"} <= names
    assert REGISTRY.impl("attention", "loops").naive
    assert {i.name for i in CUDA_ONLY} == {"sdpa_math", "sdpa_flash", "sdpa_efficient",
                                           "sdpa_cudnn"}
    for name in ("sdpa_flash", "sdpa_cudnn"):
        assert REGISTRY.impl("attention", name).dtypes == {torch.float16, torch.bfloat16}
    assert torch.float64 not in REGISTRY.impl("attention", "sdpa_efficient").dtypes


@pytest.mark.parametrize("name", ["blockwise", "builtin", "sdpa_math", "sdpa_flash",
                                  "sdpa_efficient", "sdpa_cudnn"])
def test_impls_without_weights_say_so(name: str) -> None:
    assert "returns no attention weights" in REGISTRY.impl("attention", name).notes


def test_cuda_impls_are_left_out_of_a_cpu_run() -> None:
    config = BenchConfig(layers=("attention",), preset="quick")
    planned = {case.impl for case in plan(config)}
    assert planned == {i.name for i in CPU_IMPLS}


# --- inputs, masks and the reference: the notes' semantics ------------------------------------


def test_inputs_follow_the_notes() -> None:
    params = _size(2, 3, 5, 7, 8, 4, 1)
    inputs = LAYER.make_inputs(params, torch.Generator().manual_seed(0))
    q, k, v, mask = (inputs.tensors[n] for n in ("q", "k", "v", "mask"))
    assert q.shape == (2, 3, 5, 8) and k.shape == (2, 3, 7, 8) and v.shape == (2, 3, 7, 4)
    assert inputs.static["temperature"] == pytest.approx(8 ** 0.5)
    assert mask.dtype == torch.bool
    assert set(inputs.grad) == {"q", "k", "v"}
    assert all(t.std() > 0 for t in (q, k, v))
    assert LAYER.output_names == ("output", "attn")


def test_no_mask_is_none_in_static() -> None:
    inputs = LAYER.make_inputs(_size(1, 1, 3, 3, 2, 2, 0), torch.Generator().manual_seed(0))
    assert inputs.static["mask"] is None
    assert "mask" not in inputs.tensors


@pytest.mark.parametrize(("kind", "shape"), [(1, (4, 1, 1, 9)), (2, (1, 1, 6, 9)),
                                             (3, (4, 1, 6, 9))])
def test_mask_shapes_broadcast_over_heads(kind: int, shape: tuple[int, ...]) -> None:
    inputs = LAYER.make_inputs(_size(4, 3, 6, 9, 2, 2, kind), torch.Generator().manual_seed(1))
    assert tuple(inputs.tensors["mask"].shape) == shape


def test_padding_masks_trailing_keys_of_each_example() -> None:
    mask = make_mask(1, 64, 5, 10, torch.Generator().manual_seed(0))  # (N, 1, len_k)
    assert mask.shape == (64, 1, 10)
    lengths = mask[:, 0].sum(-1)
    for row, length in zip(mask[:, 0], lengths, strict=True):
        assert row[:length].all() and not row[length:].any()  # valid keys first, pads trailing
    assert int(lengths.min()) >= 5 and int(lengths.max()) <= 9  # at least one pad, half valid
    assert len(set(lengths.tolist())) > 1  # lengths differ across the batch


def test_causal_mask_is_lower_triangular_with_the_diagonal() -> None:
    mask = make_mask(2, 3, 4, 4, torch.Generator())
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    assert torch.equal(mask[0], expected)
    # len_q != len_k: aligned top-left, query i sees keys 0..i (as SDPA's is_causal)
    assert torch.equal(make_mask(2, 1, 3, 5, torch.Generator())[0],
                       torch.ones(3, 5, dtype=torch.bool).tril())


def test_padding_and_causal_mask_is_both() -> None:
    g = torch.Generator().manual_seed(3)
    both = make_mask(3, 5, 6, 6, g)
    pad = make_mask(1, 5, 6, 6, torch.Generator().manual_seed(3))
    assert torch.equal(both, pad & torch.ones(6, 6, dtype=torch.bool).tril())


@pytest.mark.parametrize("kind", [1, 2, 3])
@pytest.mark.parametrize(("len_q", "len_k"), [(1, 1), (5, 2), (2, 7), (8, 8)])
def test_no_mask_kind_has_a_fully_masked_row(kind: int, len_q: int, len_k: int) -> None:
    mask = make_mask(kind, 16, len_q, len_k, torch.Generator().manual_seed(0))
    assert torch.broadcast_to(mask, (16, len_q, len_k)).any(-1).all()


def test_labels_are_readable() -> None:
    assert LAYER.label(_size(4, 8, 256, 256, 64, 64, 0)) == "N4_h8_q256_k256_dk64_dv64_nomask"
    assert LAYER.label(_size(4, 8, 256, 256, 64, 64, 1)).endswith("_pad")
    assert LAYER.label(_size(4, 8, 256, 256, 64, 64, 2)).endswith("_causal")
    assert LAYER.label(_size(4, 8, 256, 256, 64, 64, 3)).endswith("_padcausal")


def test_reference_is_the_notes_formula() -> None:
    q, k, v = _qkv()
    mask = make_mask(3, 2, 5, 7, torch.Generator().manual_seed(0)).unsqueeze(1)
    out, attn = LAYER.reference(q, k, v, mask, 8 ** 0.5)
    scores = (q / 8 ** 0.5) @ k.transpose(-1, -2)
    expected = torch.softmax(scores.masked_fill(~mask, -1e9), dim=-1)
    torch.testing.assert_close(attn, expected, rtol=0, atol=0)
    torch.testing.assert_close(out, expected @ v, rtol=0, atol=0)
    assert MASK_FILL == -1e9
    assert torch.all(attn[~mask.expand_as(attn)] == 0)  # masked keys get exactly no weight
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 5, dtype=torch.float64))


def test_reference_averages_every_value_on_a_fully_masked_row() -> None:
    """-1e9, not -inf: a row with no visible key is the uniform average of v."""
    q, k, v = _qkv()
    mask = torch.ones(2, 1, 5, 7, dtype=torch.bool)
    mask[1, 0, 2] = False
    out, attn = LAYER.reference(q, k, v, mask, 8 ** 0.5)
    torch.testing.assert_close(attn[1, :, 2], torch.full((2, 7), 1 / 7, dtype=torch.float64))
    torch.testing.assert_close(out[1, :, 2], v[1].mean(dim=1))


# --- every implementation against the reference -----------------------------------------------


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize(("impl", "size"), _cases())
def test_impl_matches_reference(impl, size: dict[str, int], mode: str) -> None:
    verdict = _check(impl.fn, size, mode=mode)
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("impl", CPU_IMPLS, ids=lambda i: i.name)
def test_impl_matches_reference_in_float64(impl) -> None:
    verdict = _check(impl.fn, _size(2, 2, 6, 9, 4, 4, 3), dtype=torch.float64, mode="fwdbwd")
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("impl", CPU_IMPLS, ids=lambda i: i.name)
def test_return_shapes(impl) -> None:
    q, k, v = _qkv(N=2, n_head=3, len_q=5, len_k=7, d_k=8, d_v=4)
    with torch.no_grad():
        out = impl.fn(q, k, v, None, 8 ** 0.5)
    if "returns no attention weights" in impl.notes:
        assert isinstance(out, Tensor)
        assert out.shape == (2, 3, 5, 4)
    else:
        output, attn = out
        assert output.shape == (2, 3, 5, 4) and attn.shape == (2, 3, 5, 7)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))


@pytest.mark.parametrize("impl", CPU_IMPLS, ids=lambda i: i.name)
def test_a_two_dimensional_mask_broadcasts(impl) -> None:
    """A mask only broadcastable to (N, h, len_q, len_k), e.g. (len_q, len_k), is accepted."""
    q, k, v = _qkv()
    mask = torch.ones(5, 7, dtype=torch.bool).tril()
    expected = LAYER.reference(q, k, v, mask, 2.0)[0]
    with torch.no_grad():
        out = impl.fn(q, k, v, mask, 2.0)
    out = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_blockwise_handles_fully_masked_blocks_and_rows() -> None:
    """Rows whose first blocks are all masked, and a row with no visible key (uniform, as the
    reference), over three key blocks with a partial last one."""
    len_k = 2 * BLOCK_K + 5
    q, k, v = _qkv(len_q=4, len_k=len_k)
    mask = torch.ones(2, 1, 4, len_k, dtype=torch.bool)
    mask[0, 0, 0, :2 * BLOCK_K] = False  # only the last, partial block visible
    mask[0, 0, 1, BLOCK_K:] = False  # only the first block visible
    mask[1, 0, 2] = False  # nothing visible
    mask[1, 0, 3, :] = False
    mask[1, 0, 3, -1] = True  # one key, in the partial block
    expected = LAYER.reference(q, k, v, mask, 3.0)[0]
    torch.testing.assert_close(attention_blockwise(q, k, v, mask, 3.0), expected,
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(expected[1, :, 2], v[1].mean(dim=1))


def test_blockwise_never_forms_the_full_score_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    len_q, len_k = 8, 3 * BLOCK_K
    q, k, v = _qkv(len_q=len_q, len_k=len_k)
    widest = []
    original = torch.matmul

    def spy(a: Tensor, b: Tensor) -> Tensor:
        out = original(a, b)
        widest.append(out.shape[-1])
        return out

    monkeypatch.setattr(torch, "matmul", spy)
    attention_blockwise(q, k, v, None, 2.0)
    assert widest and max(widest) <= BLOCK_K


def test_sdpa_differs_from_the_notes_on_a_fully_masked_row() -> None:
    """Why no preset has a fully masked row: SDPA gives zeros (or NaN), the notes the mean."""
    q, k, v = _qkv()
    mask = torch.ones(2, 1, 5, 7, dtype=torch.bool)
    mask[0, 0, 1] = False
    expected = LAYER.reference(q, k, v, mask, 2.0)[0]
    with torch.no_grad():
        out = attention_builtin(q, k, v, mask, 2.0)
    assert not torch.allclose(out[0, :, 1], expected[0, :, 1], equal_nan=False)
    torch.testing.assert_close(out[:, :, 2:], expected[:, :, 2:])  # other rows agree


# --- float16: the notes' -1e9 does not fit -----------------------------------------------------


def test_fill_value_fits_each_dtype() -> None:
    assert mask_fill_value(torch.float32) == -1e9
    assert mask_fill_value(torch.bfloat16) == -1e9
    assert mask_fill_value(torch.float16) == torch.finfo(torch.float16).min


def test_notes_code_raises_on_a_float16_mask() -> None:
    q, k, v = (t.half() for t in _qkv())
    with pytest.raises(RuntimeError, match="overflow"):
        attention_matmul(q, k, v, torch.ones(5, 7, dtype=torch.bool), 2.0)
    attention_matmul(q, k, v, None, 2.0)  # without a mask it runs


def test_float16_overflow_is_a_recorded_error_not_a_crash() -> None:
    params = _size(2, 2, 4, 6, 8, 8, 1)
    timing = TimingConfig(min_time_s=0.01, warmup_s=0.001, block_s=0.002, min_samples=2)
    config = BenchConfig(layers=("attention",), trials=1, timing=timing)
    case = Case("attention", "matmul", "none", tuple((p, params[p]) for p in NAMES), "cpu",
                "float16", "fwd")
    result = run_case(case, config)
    assert result.status == "error"
    assert "overflow" in result.reason
    unmasked = dict(params, mask=0)
    case = Case("attention", "matmul", "none", tuple((p, unmasked[p]) for p in NAMES), "cpu",
                "float16", "fwd")
    assert run_case(case, config).status == "ok"


@pytest.mark.parametrize("name", ["loops", "einsum", "blockwise", "builtin"])
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_other_impls_handle_float16_masks(name: str, mode: str) -> None:
    impl = REGISTRY.impl("attention", name)
    verdict = _check(impl.fn, _size(2, 2, 6, 6, 16, 16, 3), dtype=torch.float16, mode=mode)
    assert verdict.ok, verdict.problems


# --- planted bugs are flagged -----------------------------------------------------------------


def attention_inverted_mask(q, k, v, mask, temperature):
    attn = torch.matmul(q / temperature, k.transpose(2, 3))
    if mask is not None:
        attn = attn.masked_fill(mask == 1, -1e9)  # True read as "masked", nn.MHA's convention
    attn = F.softmax(attn, dim=-1)
    return torch.matmul(attn, v), attn


def attention_softmax_wrong_axis(q, k, v, mask, temperature):
    attn = torch.matmul(q / temperature, k.transpose(2, 3))
    if mask is not None:
        attn = attn.masked_fill(mask == 0, -1e9)
    attn = F.softmax(attn, dim=-2)  # over the queries
    return torch.matmul(attn, v), attn


def attention_unscaled(q, k, v, mask, temperature):
    attn = torch.matmul(q, k.transpose(2, 3))  # forgot 1 / temperature
    if mask is not None:
        attn = attn.masked_fill(mask == 0, -1e9)
    attn = F.softmax(attn, dim=-1)
    return torch.matmul(attn, v), attn


def attention_wrong_weights(q, k, v, mask, temperature):
    output, attn = attention_matmul(q, k, v, mask, temperature)
    return output, attn.roll(1, dims=-1)  # the output is right; the weights it returns are not


def attention_no_grad_to_k(q, k, v, mask, temperature):
    return attention_matmul(q, k.detach(), v, mask, temperature)


@pytest.mark.parametrize("kind", [1, 2, 3])
def test_inverted_mask_is_flagged(kind: int) -> None:
    verdict = _check(attention_inverted_mask, _size(2, 2, 6, 6, 8, 8, kind))
    assert not verdict.ok
    assert verdict.rel_err > 0.1


def test_softmax_over_the_wrong_axis_is_flagged() -> None:
    verdict = _check(attention_softmax_wrong_axis, _size(2, 2, 6, 6, 8, 8, 0))
    assert not verdict.ok
    assert verdict.rel_err > 0.1


def test_missing_temperature_is_flagged() -> None:
    verdict = _check(attention_unscaled, _size(2, 2, 6, 6, 16, 16, 1))
    assert not verdict.ok
    assert any(p.startswith("output:") for p in verdict.problems)


def test_wrong_attention_weights_are_flagged_even_with_a_right_output() -> None:
    verdict = _check(attention_wrong_weights, _size(2, 2, 6, 6, 8, 8, 2))
    assert not verdict.ok
    assert all(p.startswith("attn:") for p in verdict.problems), verdict.problems
    assert verdict.rel_err < 1e-5  # the output itself was right


def test_a_missing_gradient_passes_forward_and_fails_backward() -> None:
    assert _check(attention_no_grad_to_k, _size(2, 2, 5, 6, 8, 8, 1)).ok
    verdict = _check(attention_no_grad_to_k, _size(2, 2, 5, 6, 8, 8, 1), mode="fwdbwd")
    assert not verdict.ok
    assert any(p.startswith("grad k") for p in verdict.problems), verdict.problems


def test_controls_pass() -> None:
    """The planted bugs' harness: the same code with the bug removed passes."""
    assert _check(attention_matmul, _size(2, 2, 6, 6, 8, 8, 3), mode="fwdbwd").ok


# --- the notes' module ------------------------------------------------------------------------


def test_module_defaults_follow_the_notes() -> None:
    module = ScaledDotProductAttention(temperature=8.0)
    assert module.temperature == 8.0
    assert module.impl == "matmul"
    assert isinstance(module.dropout, torch.nn.Dropout) and module.dropout.p == 0.1
    assert not list(module.parameters())


@pytest.mark.parametrize("impl", CPU_IMPLS, ids=lambda i: i.name)
def test_module_dispatches_to_the_impl(impl) -> None:
    q, k, v = _qkv()
    mask = make_mask(1, 2, 5, 7, torch.Generator().manual_seed(0)).unsqueeze(1)
    module = ScaledDotProductAttention(temperature=8 ** 0.5, impl=impl.name).eval()
    output, attn = module(q, k, v, mask=mask)
    expected_out, expected_attn = LAYER.reference(q, k, v, mask, 8 ** 0.5)
    torch.testing.assert_close(output, expected_out, rtol=1e-10, atol=1e-10)
    if "returns no attention weights" in impl.notes:
        assert attn is None
    else:
        torch.testing.assert_close(attn, expected_attn, rtol=1e-10, atol=1e-10)


def test_module_training_applies_dropout_to_the_weights() -> None:
    q, k, v = _qkv()
    module = ScaledDotProductAttention(temperature=2.0, attn_dropout=0.5, impl="blockwise")
    torch.manual_seed(0)
    _, attn = module.train()(q, k, v)
    assert attn is not None and (attn == 0).any()  # dropped weights
    module.dropout.p = 0.0  # dropout off: the chosen impl, deterministic
    output, attn = module(q, k, v)
    assert attn is None
    torch.testing.assert_close(output, LAYER.reference(q, k, v, None, 2.0)[0])


def test_unknown_impl_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown implementation"):
        ScaledDotProductAttention(8.0, impl="nope")


# --- FLOPs, bytes, sizes, presets -------------------------------------------------------------


FLOP_SIZES = [_size(2, 8, 32, 48, 64, 32, 0), _size(3, 2, 7, 5, 8, 4, 1),
              _size(1, 4, 16, 16, 16, 16, 2), _size(2, 2, 9, 9, 4, 12, 3)]


def _meta(params: dict[str, int], grad: bool = False) -> tuple[Tensor, ...]:
    N, h, len_q, len_k, d_k, d_v = (params[p] for p in NAMES[:-1])
    shapes = [(N, h, len_q, d_k), (N, h, len_k, d_k), (N, h, len_k, d_v)]
    return tuple(torch.empty(s, device="meta", requires_grad=grad) for s in shapes)


@pytest.mark.parametrize("params", FLOP_SIZES, ids=LAYER.label)
def test_flops_match_flop_counter(params: dict[str, int]) -> None:
    q, k, v = _meta(params)
    mask = torch.ones(params["len_q"], params["len_k"], dtype=torch.bool, device="meta")
    with FlopCounterMode(display=False) as counter:
        LAYER.reference(q, k, v, mask, 2.0)
    assert LAYER.flops(params, "fwd") == counter.get_total_flops()
    q, k, v = _meta(params, grad=True)
    with FlopCounterMode(display=False) as counter:
        out = LAYER.reference(q, k, v, mask, 2.0)[0]
        out.backward(torch.empty_like(out))
    assert LAYER.flops(params, "fwdbwd") == counter.get_total_flops()


def test_sdpa_counts_the_same_flops() -> None:
    params = FLOP_SIZES[0]
    q, k, v = (torch.randn(t.shape) for t in _meta(params))
    with FlopCounterMode(display=False) as counter:
        attention_builtin(q, k, v, None, 2.0)
    assert LAYER.flops(params, "fwd") == counter.get_total_flops()


@pytest.mark.parametrize("params", FLOP_SIZES, ids=LAYER.label)
def test_bytes_are_each_tensor_once(params: dict[str, int]) -> None:
    inputs = LAYER.make_inputs(params, torch.Generator().manual_seed(0)).to(torch.float32, "cpu")
    out = LAYER.reference(**inputs.tensors, **inputs.static)[0]
    expected = sum(t.numel() * t.element_size() for t in (*inputs.tensors.values(), out))
    assert LAYER.bytes_moved(params, torch.float32, "fwd") == expected
    grads = sum(inputs.tensors[n].numel() * 4 for n in inputs.grad) + out.numel() * 4
    assert LAYER.bytes_moved(params, torch.float32, "fwdbwd") >= expected + grads


@pytest.mark.parametrize(("changes", "match"), [
    ({"N": 0}, "N"), ({"n_head": 0}, "n_head"), ({"len_q": -1}, "len_q"), ({"d_v": 0}, "d_v"),
    ({"mask": 4}, "mask"), ({"mask": -1}, "mask")])
def test_check_rejects_nonsense(changes: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LAYER.check({**_size(2, 2, 4, 4, 8, 8, 0), **changes})


def test_calibration_keeps_the_structure_of_a_loop_iteration() -> None:
    params = _size(4, 8, 1024, 1024, 64, 64, 2)
    small = LAYER.calibration_params(params)
    LAYER.check(small)
    assert small == {**params, "len_q": 4}
    assert LAYER.flops(params, "fwd") / LAYER.flops(small, "fwd") == 1024 / 4


def test_presets() -> None:
    table = preset_table("attention")
    notes = notes_size("attention")
    assert (notes["n_head"], notes["d_k"], notes["d_v"]) == (8, 64, 64)
    for name, sizes in table.items():
        assert notes in sizes, name
        for params in sizes:
            LAYER.check(params)
    default = table["default"]
    lengths = {p["len_q"] for p in default}
    assert min(lengths) <= 32 and max(lengths) >= 1024
    assert {p["mask"] for p in default} >= {0, 1, 2}
    assert all(p["n_head"] == 8 and p["d_k"] == 64 for p in default)
    assert {p["mask"] for p in table["quick"]} == {0, 1, 2, 3}


# --- CUDA: each SDPA backend ------------------------------------------------------------------


def _cuda_dtypes(impl) -> list[torch.dtype]:
    return [d for d in (torch.float32, torch.float16, torch.bfloat16) if d in impl.dtypes]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("kind", [0, 1, 2, 3])
@pytest.mark.parametrize("impl", REGISTRY.impls("attention"), ids=lambda i: i.name)
def test_impl_matches_reference_on_cuda(impl, kind: int, mode: str) -> None:
    params = _size(2, 4, 40, 72 if kind != 2 else 40, 64, 64, kind)
    if impl.naive:
        params = _size(1, 2, 6, 9, 16, 16, kind)
    if impl.name == "sdpa_flash" and kind:
        pytest.skip("the flash backend takes no mask (checked below)")
    for dtype in _cuda_dtypes(impl):
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            continue
        if impl.name == "sdpa_cudnn" and torch.cuda.get_device_capability() < (8, 0):
            pytest.skip("cuDNN attention needs compute capability 8.0+")
        verdict = _check(impl.fn, params, dtype=dtype, mode=mode, device="cuda")
        assert verdict.ok, (dtype, verdict.problems)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flash_refuses_a_mask_with_a_reason() -> None:
    q, k, v = (t.half().cuda() for t in _qkv(d_k=64, d_v=64))
    with pytest.raises(Unsupported, match="attn_mask"):
        REGISTRY.impl("attention", "sdpa_flash").fn(q, k, v, torch.ones(5, 7, dtype=torch.bool,
                                                                       device="cuda"), 8.0)
