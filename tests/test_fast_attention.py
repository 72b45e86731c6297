"""The fast attention implementations (attention/flash, mha/fused) against the notes' semantics."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from impls import REGISTRY
from impls.attention import ScaledDotProductAttention, make_mask
from impls.attention_flash import FLASH_BLOCK_K, FLASH_BLOCK_Q, FLASH_TILE, attention_flash
from impls.mha import MultiHeadAttention, mha_fused
from suites.correctness import check

ATTENTION = REGISTRY.layer("attention")
MHA = REGISTRY.layer("mha")
SEEDS = [0, 1]
KINDS = {"nomask": 0, "pad": 1, "causal": 2, "padcausal": 3}
#: keys over two whole key blocks and a partial one (the online softmax joins them)
LONG_K = 2 * FLASH_BLOCK_K + 808


def _attention(N: int, n_head: int, len_q: int, len_k: int, d_k: int, d_v: int,
               mask: int) -> dict[str, int]:
    return dict(zip(ATTENTION.params, (N, n_head, len_q, len_k, d_k, d_v, mask), strict=True))


def _mha(N: int, len_q: int, len_k: int, d_model: int, n_head: int, d_k: int, d_v: int,
         mask: int) -> dict[str, int]:
    return dict(zip(MHA.params, (N, len_q, len_k, d_model, n_head, d_k, d_v, mask),
                    strict=True))


def _check(layer, fn, params, dtype=torch.float32, mode="fwd"):
    with torch.set_grad_enabled(mode == "fwdbwd"):  # as the runner calls it
        return check(fn, layer, params, SEEDS, dtype, "cpu", mode)[0]


def _qkv(N=2, n_head=2, len_q=5, len_k=7, d_k=8, d_v=4, seed=0) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, n_head, len_q, d_k, generator=g, dtype=torch.float64),
            torch.randn(N, n_head, len_k, d_k, generator=g, dtype=torch.float64),
            torch.randn(N, n_head, len_k, d_v, generator=g, dtype=torch.float64))


# --- registry ---------------------------------------------------------------------------------


def test_the_fast_implementations_are_registered() -> None:
    flash, fused = REGISTRY.impl("attention", "flash"), REGISTRY.impl("mha", "fused")
    assert "returns no attention weights" in flash.notes
    for impl in (flash, fused):
        assert impl.dtypes == {torch.float32, torch.float64, torch.float16, torch.bfloat16}
        assert {"cpu", "cuda"} <= impl.devices and {"fwd", "fwdbwd"} <= impl.modes
        assert not impl.naive


# --- attention/flash --------------------------------------------------------------------------


def _flash_sizes() -> list:
    """Every mask kind at one tile, several tiles (heads, query blocks; lengths that divide
    nothing) and over several key blocks, in one tile and in several."""
    many = FLASH_TILE // (150 * 2) - 1  # len_k: a tile holds two of the three heads
    shapes = {"tiny": (2, 3, 5, 11, 8, 4), "tiles": (2, 3, 150, many, 8, 4),
              "longk": (1, 2, 9, LONG_K, 8, 8), "longk-tiles": (1, 2, 40, LONG_K, 4, 4)}
    return [pytest.param(_attention(*shape, kind), id=f"{name}-{label}")
            for name, shape in shapes.items() for label, kind in KINDS.items()]


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("params", _flash_sizes())
def test_flash_matches_reference(params: dict[str, int], mode: str) -> None:
    verdict = _check(ATTENTION, attention_flash, params, mode=mode)
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("params", [_attention(1, 2, 7, 6, 4, 8, 2),
                                    _attention(2, 2, 9, 4, 8, 8, 3),  # len_q > len_k, causal
                                    _attention(16, 8, 32, 32, 64, 64, 1)],  # the notes' size
                         ids=ATTENTION.label)
def test_flash_matches_reference_at_odd_and_notes_sizes(params: dict[str, int]) -> None:
    assert _check(ATTENTION, attention_flash, params, mode="fwdbwd").ok


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_flash_handles_every_dtype_with_a_mask(dtype: torch.dtype, mode: str) -> None:
    """float16 included: -1e9 does not fit, so half precision is computed in float32."""
    for params in (_attention(2, 2, 6, 6, 16, 16, 3), _attention(1, 2, 70, 2100, 8, 8, 1)):
        verdict = _check(ATTENTION, attention_flash, params, dtype=dtype, mode=mode)
        assert verdict.ok, (ATTENTION.label(params), verdict.problems)


@pytest.mark.parametrize("len_k", [7, 3 * 256 + 5, LONG_K], ids=["one-tile", "tiles", "longk"])
@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
def test_flash_fully_masked_blocks_and_rows(len_k: int, grad: bool) -> None:
    """Rows that see only a late key, only an early one, or none (the mean of v, as the
    notes' -1e9 fill gives), in one tile, several tiles and several key blocks."""
    len_q = 4 if len_k != 3 * 256 + 5 else 300
    q, k, v = _qkv(N=2, n_head=3, len_q=len_q, len_k=len_k)
    mask = torch.ones(2, 1, len_q, len_k, dtype=torch.bool)
    mask[0, 0, 0, :-1] = False  # only the last key
    mask[0, 0, 1, 1:] = False  # only the first key
    mask[1, 0, 2] = False  # nothing visible
    mask[1, 0, -1] = False  # the last query of the second example too
    expected = ATTENTION.reference(q, k, v, mask, 3.0)[0]
    leaves = [t.clone().requires_grad_(grad) for t in (q, k, v)]
    with torch.set_grad_enabled(grad):
        out = attention_flash(*leaves, mask, 3.0)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1, :, 2], v[1].mean(dim=1), rtol=1e-10, atol=1e-10)
    if grad:
        ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        ATTENTION.reference(*ref_leaves, mask, 3.0)[0].sum().backward()
        out.sum().backward()
        for got, ref in zip(leaves, ref_leaves, strict=True):
            torch.testing.assert_close(got.grad, ref.grad, rtol=1e-9, atol=1e-9)


def test_flash_accepts_a_two_dimensional_integer_mask_and_strided_inputs() -> None:
    """A (len_q, len_k) 0/1 mask, as ``mask == 0`` reads it, on q, k, v that are transposed
    views (as a multi-head projection hands them over), over tiles of two batch elements."""
    N, n_head, len_q, len_k, d = 3, 2, 50, 900, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(N, n, n_head, d, generator=g, dtype=torch.float64).transpose(1, 2)
               for n in (len_q, len_k, len_k))  # (N, h, len, d), not contiguous
    mask = torch.ones(len_q, len_k, dtype=torch.int64).tril()
    expected = ATTENTION.reference(q, k, v, mask, 2.0)[0]
    with torch.no_grad():
        torch.testing.assert_close(attention_flash(q, k, v, mask, 2.0), expected,
                                   rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attention_flash(q, k, v, mask, 2.0), expected,
                               rtol=1e-10, atol=1e-10)


def _widest_scores(monkeypatch: pytest.MonkeyPatch, *args) -> list[int]:
    """The number of scores each q k^T GEMM of one flash call produced."""
    sizes, original = [], torch.baddbmm

    def spy(*a, **kw) -> Tensor:
        out = original(*a, **kw)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(torch, "baddbmm", spy)
    with torch.no_grad():
        attention_flash(*args)
    return sizes


def test_flash_never_forms_the_full_score_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    N, n_head, len_q, len_k = 1, 4, 512, 1024
    q, k, v = _qkv(N, n_head, len_q, len_k, 8, 8)
    sizes = _widest_scores(monkeypatch, q, k, v, None, 2.0)
    assert max(sizes) <= FLASH_TILE < N * n_head * len_q * len_k
    assert sum(sizes) == N * n_head * len_q * len_k  # every score once


def test_flash_skips_the_keys_a_causal_mask_hides(monkeypatch: pytest.MonkeyPatch) -> None:
    N, n_head, len_q = 2, 8, 4 * FLASH_BLOCK_Q
    q, k, v = _qkv(N, n_head, len_q, len_q, 8, 8)
    mask = make_mask(2, N, len_q, len_q, torch.Generator()).unsqueeze(1)
    sizes = _widest_scores(monkeypatch, q, k, v, mask, 2.0)
    assert sum(sizes) == N * n_head * len_q * len_q * 10 // 16  # 1 + 2 + 3 + 4 key blocks


def test_flash_module_returns_no_weights() -> None:
    q, k, v = _qkv()
    mask = make_mask(3, 2, 5, 7, torch.Generator().manual_seed(0)).unsqueeze(1)
    module = ScaledDotProductAttention(temperature=8 ** 0.5, impl="flash").eval()
    output, attn = module(q, k, v, mask=mask)
    assert attn is None
    torch.testing.assert_close(output, ATTENTION.reference(q, k, v, mask, 8 ** 0.5)[0],
                               rtol=1e-10, atol=1e-10)


# --- mha/fused --------------------------------------------------------------------------------

# the builtin's shapes, the general projections (d_k != d_v, n_head * d_k != d_model),
# cross-attention (len_q != len_k), len_q > len_k causal, and the notes' size
MHA_SIZES = [_mha(2, 5, 7, 12, 3, 4, 4, 0), _mha(3, 6, 9, 16, 2, 8, 8, 1),
             _mha(2, 7, 7, 16, 4, 4, 4, 2), _mha(3, 6, 6, 12, 2, 6, 6, 3),
             _mha(2, 8, 5, 8, 2, 4, 4, 3), _mha(2, 5, 6, 10, 3, 4, 6, 1),
             _mha(2, 6, 6, 8, 2, 5, 3, 3), _mha(1, 20, 20, 32, 4, 8, 8, 0),
             _mha(16, 32, 32, 512, 8, 64, 64, 1)]


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("params", MHA_SIZES, ids=MHA.label)
def test_fused_matches_reference(params: dict[str, int], mode: str) -> None:
    verdict = _check(MHA, mha_fused, params, mode=mode)
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_fused_handles_float64_and_float16_masks(dtype: torch.dtype, mode: str) -> None:
    verdict = _check(MHA, mha_fused, MHA_SIZES[3], dtype=dtype, mode=mode)
    assert verdict.ok, verdict.problems


def test_fused_in_bfloat16_forward() -> None:
    # (bfloat16 gradients miss the tolerance by a few elements for every mha implementation)
    assert _check(MHA, mha_fused, MHA_SIZES[3], dtype=torch.bfloat16).ok


@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
def test_fused_gives_uniform_weights_to_a_fully_masked_row(grad: bool) -> None:
    params = _mha(2, 5, 6, 12, 3, 4, 4, 3)
    inputs = MHA.make_inputs(params, torch.Generator().manual_seed(0))
    x = {**inputs.tensors, **inputs.static}
    x["mask"] = x["mask"].clone()
    x["mask"][1, 2] = False  # the third query of the second example sees nothing
    expected_out, expected_attn = MHA.reference(**x)
    with torch.set_grad_enabled(grad):
        out, attn = mha_fused(**{n: t.clone().requires_grad_(grad) if n in inputs.grad else t
                                 for n, t in x.items()})
    torch.testing.assert_close(attn, expected_attn, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attn[1, :, 2], torch.full((3, 6), 1 / 6, dtype=torch.float64))
    torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-10)


def test_fused_mask_shared_by_the_batch() -> None:
    """The decoder's get_subsequent_mask is (1, len, len)."""
    inputs = MHA.make_inputs(_mha(3, 6, 6, 12, 2, 6, 6, 3), torch.Generator().manual_seed(0))
    x = {**inputs.tensors, **inputs.static, "mask": make_mask(2, 1, 6, 6, torch.Generator())}
    expected = MHA.reference(**x)
    with torch.no_grad():
        out, attn = mha_fused(**x)
    torch.testing.assert_close(out, expected[0])
    torch.testing.assert_close(attn, expected[1])


def test_fused_module_matches_the_repository_forward() -> None:
    torch.manual_seed(0)
    module = MultiHeadAttention(4, 16, 4, 4, impl="fused").eval()
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 6, 16, generator=g), torch.randn(2, 6, 16, generator=g)
    mask = make_mask(3, 2, 6, 6, g)
    output, attn = module(q, k, k.clone(), mask=mask)
    expected, expected_attn = module._forward_with_dropout(q, k, k.clone(), mask)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(attn, expected_attn)
    output.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
