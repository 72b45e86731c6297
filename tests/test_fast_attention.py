"""blockwise's key blocks, flash's tiles and mha/fused, with masks that hide whole blocks or
rows, on each code path: flash and fused run in place without autograd, out of place with it,
and out of place under torch.compile (``compiling`` sets ``torch.compiler.is_compiling()``
rather than spending seconds in inductor). Small blocks and tiles (monkeypatched) reach every
tiling path at sizes whose float64 reference is instant; a few tests keep the real ones.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import impls.attention as attention_module
import impls.attention_flash as flash
from impls import REGISTRY
from impls.attention import attention_blockwise, make_mask
from impls.attention_flash import (
    FLASH_BLOCK_K,
    FLASH_BLOCK_Q,
    FLASH_TILE,
    FLASH_TILE_GPU,
    attention_flash,
    tile_scores,
)
from impls.mha import mha_fused
from suites.correctness import check

ATTENTION, MHA = REGISTRY.layer("attention"), REGISTRY.layer("mha")
IMPLS = {"blockwise": attention_blockwise, "flash": attention_flash}
#: small blocks: keys per softmax block, scores per tile, queries per tile where the mask
#: varies along them
BLOCK_K, TILE, BLOCK_Q = 32, 256, 8
LONG_K = 2 * BLOCK_K + 13  # two whole key blocks and a partial one
#: two of three heads (or 8 of 10 queries) per tile; two of five batch elements per tile; long
#: keys in one tile and in several
SHAPES = {"heads": (2, 3, 10, 11, 8, 4), "batch": (5, 2, 8, 8, 8, 4),
          "longk": (1, 1, 3, LONG_K, 8, 8), "longk-tiles": (1, 2, 12, LONG_K, 4, 4)}


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention_module, "BLOCK_K", BLOCK_K)
    for name, value in (("FLASH_BLOCK_K", BLOCK_K), ("FLASH_TILE", TILE),
                        ("FLASH_BLOCK_Q", BLOCK_Q)):
        monkeypatch.setattr(flash, name, value)


def _check(layer, fn, values, mode):
    with torch.set_grad_enabled(mode == "fwdbwd"):  # as the runner calls it
        params = dict(zip(layer.params, values, strict=True))
        return check(fn, layer, params, [0, 1], torch.float32, "cpu", mode)[0]


def _qkv(N, n_head, len_q, len_k, d_k=8, d_v=4) -> list[Tensor]:
    """Transposed views (N, h, len, d), as a multi-head projection hands them over."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(N, n, n_head, d, generator=g, dtype=torch.float64).transpose(1, 2)
            for n, d in ((len_q, d_k), (len_k, d_k), (len_k, d_v))]


def _on_path(path: str, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Select a code path (nograd, autograd, compiling); returns whether to track gradients."""
    if path == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return path == "autograd"


@pytest.mark.parametrize("kind", [0, 1, 2, 3], ids=["nomask", "pad", "causal", "padcausal"])
@pytest.mark.parametrize(("impl", "shape"), [("blockwise", "longk"),
                                             *(("flash", s) for s in SHAPES)])
def test_matches_reference_over_tiles_and_key_blocks(small_blocks: None, impl: str, shape: str,
                                                     kind: int) -> None:
    for mode in ("fwd", "fwdbwd"):
        verdict = _check(ATTENTION, IMPLS[impl], (*SHAPES[shape], kind), mode)
        assert verdict.ok, (mode, verdict.problems)


def test_flash_matches_reference_with_its_own_tiles_and_key_blocks() -> None:
    """Padded keys over two real FLASH_BLOCK_K blocks and a partial one, a tile per head."""
    for mode in ("fwd", "fwdbwd"):
        values = (1, 2, 16, 2 * FLASH_BLOCK_K + 808, 4, 4, 1)
        assert _check(ATTENTION, attention_flash, values, mode).ok, mode


@pytest.mark.parametrize(("impl", "len_q", "len_k", "path"), [
    *(("blockwise", 4, LONG_K, path) for path in ("nograd", "autograd")),
    *(("flash", len_q, len_k, path) for len_q, len_k in ((4, 7), (30, 20), (4, LONG_K))
      for path in ("nograd", "autograd", "compiling"))])
def test_fully_masked_blocks_and_rows(small_blocks: None, monkeypatch: pytest.MonkeyPatch,
                                      impl: str, len_q: int, len_k: int, path: str) -> None:
    """Rows that see only the last key (a partial block), only the first, or none (the mean of
    v, as the notes' -1e9 fill gives), in one tile, several tiles and several key blocks; the
    mask as 0/1 integers, which ``mask == 0`` reads as the booleans."""
    q, k, v = _qkv(2, 3, len_q, len_k)
    mask = torch.ones(2, 1, len_q, len_k, dtype=torch.int64)
    mask[0, 0, 0, :-1] = 0  # only the last key
    mask[0, 0, 1, 1:] = 0  # only the first key
    mask[1, 0, 2] = 0  # nothing visible
    mask[1, 0, -1] = 0  # the last query of the second example too
    ref_leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    expected = ATTENTION.reference(*ref_leaves, mask, 3.0)[0]
    grad = _on_path(path, monkeypatch)
    leaves = [t.detach().requires_grad_(grad) for t in (q, k, v)]
    with torch.set_grad_enabled(grad):
        out = IMPLS[impl](*leaves, mask, 3.0)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1, :, 2], v[1].mean(dim=1), rtol=1e-10, atol=1e-10)
    if grad:
        expected.sum().backward()
        out.sum().backward()
        for got, ref in zip(leaves, ref_leaves, strict=True):
            torch.testing.assert_close(got.grad, ref.grad, rtol=1e-9, atol=1e-9)


def _products(monkeypatch: pytest.MonkeyPatch, op: str, fn, *args) -> list[torch.Size]:
    """The shape of every result of ``torch.<op>`` in one no-grad call of ``fn``."""
    shapes, original = [], getattr(torch, op)

    def spy(*a, **kw) -> Tensor:
        shapes.append((out := original(*a, **kw)).shape)
        return out

    monkeypatch.setattr(torch, op, spy)
    with torch.no_grad():
        fn(*args)
    return shapes


def test_neither_forms_the_full_score_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each score once, in blocks or tiles; flash skips the keys a causal mask hides."""
    q, k, v = _qkv(2, 2, 8, 3 * attention_module.BLOCK_K)
    shapes = _products(monkeypatch, "matmul", attention_blockwise, q, k, v, None, 2.0)
    assert shapes and max(s[-1] for s in shapes) <= attention_module.BLOCK_K
    N, n_head, len_q, len_k = 1, 4, 512, 1024
    sizes = [s.numel() for s in _products(monkeypatch, "baddbmm", attention_flash,
                                          *_qkv(N, n_head, len_q, len_k), None, 2.0)]
    assert max(sizes) <= FLASH_TILE < N * n_head * len_q * len_k
    assert sum(sizes) == N * n_head * len_q * len_k
    N, n_head, len_q = 2, 8, 4 * FLASH_BLOCK_Q
    mask = make_mask(2, N, len_q, len_q, torch.Generator()).unsqueeze(1)
    sizes = [s.numel() for s in _products(monkeypatch, "baddbmm", attention_flash,
                                          *_qkv(N, n_head, len_q, len_q), mask, 2.0)]
    assert sum(sizes) == N * n_head * len_q * len_q * 10 // 16  # 1 + 2 + 3 + 4 key blocks


def test_flash_tiles_are_sized_for_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU's tiles fit its L2; elsewhere (a GPU; here the shape-only meta device) tiles are
    large, so the launches per call stay few: one tile where the CPU takes eight."""
    N, n_head, len_q, len_k = 1, 4, 512, 1024
    on = {name: [s.numel() for s in _products(
        monkeypatch, "baddbmm", attention_flash,
        *(t.to(name) for t in _qkv(N, n_head, len_q, len_k)), None, 2.0)]
        for name in ("cpu", "meta")}
    assert tile_scores(torch.device("cpu")) == FLASH_TILE
    assert tile_scores(torch.device("cuda")) == FLASH_TILE_GPU > FLASH_TILE
    assert on["meta"] == [N * n_head * len_q * len_k]
    assert len(on["cpu"]) == N * n_head * len_q * len_k // FLASH_TILE == 8


@pytest.mark.parametrize("path", ["nograd", "autograd", "compiling"])
def test_fused_gives_uniform_weights_to_a_fully_masked_row(monkeypatch: pytest.MonkeyPatch,
                                                           path: str) -> None:
    """The notes' -1e9 fill: a row that sees no key weighs every key alike; a masked key gets
    exactly no weight (fused adds -1e9, whose exp is 0 as the fill's is)."""
    inputs = MHA.make_inputs(dict(zip(MHA.params, (2, 5, 6, 12, 3, 4, 4, 3), strict=True)),
                             torch.Generator().manual_seed(0))
    x = inputs.args
    x["mask"][1, 2] = False  # the third query of the second example sees nothing
    expected_out, expected_attn = MHA.reference(**x)
    grad = _on_path(path, monkeypatch)
    with torch.set_grad_enabled(grad):
        out, attn = mha_fused(**{n: t.clone().requires_grad_(grad) if n in inputs.grad else t
                                 for n, t in x.items()})
    torch.testing.assert_close(attn, expected_attn, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attn[1, :, 2], torch.full((3, 6), 1 / 6, dtype=torch.float64))
    hidden = x["mask"].any(-1, keepdim=True) & ~x["mask"]  # masked keys of rows that see some
    assert torch.all(attn.transpose(0, 1)[:, hidden] == 0)
    torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-10)
