"""Conv2d beyond tests/test_contract.py: non-contiguous inputs, MyConv2d, im2col_chunked's
chunked, one-GEMM and thread-count paths at edge geometries and its half-precision sums, and
conv's own size checks. (The notes' bias inside the loops: tests/test_correctness.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import impls.conv as conv_module
from impls import REGISTRY, MyConv2d
from impls.registry import FLOAT_DTYPES
from suites.correctness import check
from suites.presets import notes_size

LAYER = REGISTRY.layer("conv")
IMPLS = REGISTRY.impls("conv")
CHUNKED = conv_module.conv2d_im2col_chunked
#: every implementation, and im2col_chunked again with one image per chunk (its batched path)
VARIANTS = [pytest.param(impl.fn, None, id=impl.name) for impl in IMPLS] + [
    pytest.param(CHUNKED, 1, id="im2col_chunked-one_image_per_chunk")]

# (N, C_in, C_out, H, W, k, stride, padding): the edges of im2col_chunked's paths.
EDGES = [
    (2, 1, 1, 5, 7, 3, 1, 0),  # one in- and one out-channel
    (1, 3, 4, 7, 5, 3, 1, 0),  # N = 1: im2col_chunked's one-GEMM path, non-square
    (3, 2, 5, 9, 6, 3, 2, 1),  # stride 2 and padding, non-square
    (2, 3, 4, 8, 7, 5, 3, 2),  # 5x5, stride 3 that does not divide H + 2p - k
    (1, 3, 4, 8, 6, 3, 3, 0),  # stride 3 that does not divide H - k
    (4, 6, 3, 5, 4, 1, 1, 0),  # 1x1, stride 1: per image, the columns are x itself
    (4, 6, 3, 7, 6, 1, 2, 0),  # 1x1, stride 2
    (2, 3, 2, 4, 3, 1, 1, 2),  # 1x1 with padding 2: a border of bias only
    (2, 2, 3, 5, 6, 5, 1, 0),  # kernel as tall as the input: one output row
]


def _id(size: tuple[int, ...]) -> str:
    return LAYER.label(dict(zip(LAYER.params, size, strict=True)))


def _inputs(size: tuple[int, ...], seed: int, grad: bool = False) -> tuple[Tensor, ...]:
    N, C_in, C_out, H, W, k, _, _ = size
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=grad)
                 for shape in ((N, C_in, H, W), (C_out, C_in, k, k), (C_out,)))


def _close(got: Tensor, want: Tensor, what: str = "output") -> None:
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"{what}: {m}")


def _assert_same(out: Tensor, want: Tensor, leaves: tuple[Tensor, ...], seed: int,
                 want_leaves: tuple[Tensor, ...] | None = None) -> None:
    """Output, and the gradients of x, weight and bias from one upstream gradient."""
    _close(out, want)
    grad_out = torch.randn(out.shape, dtype=out.dtype,
                           generator=torch.Generator().manual_seed(seed))
    got = torch.autograd.grad(out, leaves, grad_out)
    expected = torch.autograd.grad(want, want_leaves or leaves, grad_out)
    for name, a, b in zip(("x", "weight", "bias"), got, expected, strict=True):
        _close(a, b, f"grad {name}")


def _chunking(chunk: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if chunk is not None:
        monkeypatch.setattr(conv_module, "COLS_CHUNK_ELEMENTS", chunk)


def test_the_documented_implementations_are_registered() -> None:
    assert {"loops", "im2col", "einsum", "im2col_chunked", "builtin"} <= {i.name for i in IMPLS}
    assert [i.name for i in IMPLS if i.naive] == ["loops"]
    fast = REGISTRY.impl("conv", "im2col_chunked")  # runs what the contract checks
    assert fast.dtypes == frozenset(FLOAT_DTYPES) and set(LAYER.modes) <= fast.modes
    assert "cpu" in fast.devices and fast.description


@pytest.mark.parametrize("size", EDGES, ids=_id)
@pytest.mark.parametrize("chunk", [None, 1], ids=["whole_batch", "one_image_per_chunk"])
def test_chunked_edge_geometries_match_conv2d(chunk: int | None, size: tuple[int, ...],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _chunking(chunk, monkeypatch)
    x, weight, bias = _inputs(size, seed=1, grad=True)
    out = CHUNKED(x, weight, bias, size[6], size[7])
    # batched, NCHW is written contiguously; these tiny columns otherwise take one folded addmm,
    # whose output is an NCHW view of a (C_out, N, H_out, W_out) buffer (contiguous if N or
    # C_out is 1)
    assert out.is_contiguous() == (chunk is not None or size[0] == 1 or size[2] == 1)
    _assert_same(out, F.conv2d(x, weight, bias, stride=size[6], padding=size[7]),
                 (x, weight, bias), seed=2)


@pytest.mark.parametrize("size", [(2, 3, 4, 6, 5, 3, 2, 1), (2, 3, 2, 6, 5, 1, 1, 0)], ids=_id)
@pytest.mark.parametrize(("fn", "chunk"), VARIANTS)
def test_non_contiguous_input(fn, chunk: int | None, size: tuple[int, ...],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    _chunking(chunk, monkeypatch)
    x, weight, bias = _inputs(size, seed=4)
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, H and W strides swapped
    assert not x_t.is_contiguous()
    with torch.no_grad():
        _close(fn(x_t, weight, bias, size[6], size[7]),
               F.conv2d(x, weight, bias, stride=size[6], padding=size[7]))


@pytest.mark.parametrize("size", [(2, 3, 4, 6, 7, 3, 2, 1), (1, 1, 1, 5, 4, 1, 1, 0)], ids=_id)
@pytest.mark.parametrize("impl", [i.name for i in IMPLS])
def test_myconv2d_is_nn_conv2d(impl: str, size: tuple[int, ...]) -> None:
    _, C_in, C_out, _, _, k, stride, padding = size
    ours = MyConv2d(C_in, C_out, k, stride=stride, padding=padding, impl=impl).double()
    theirs = nn.Conv2d(C_in, C_out, k, stride=stride, padding=padding).double()
    assert list(ours.state_dict()) == ["weight", "bias"]  # the notes' names, and nn.Conv2d's
    assert ours.weight.shape == (C_out, C_in, k, k) and ours.bias.shape == (C_out,)
    assert not ours.bias.any()  # the notes' zero bias, which would hide a bias bug: random here
    x, weight, bias = _inputs(size, seed=6, grad=True)
    with torch.no_grad():
        ours.weight.copy_(weight)
        ours.bias.copy_(bias)
    theirs.load_state_dict(ours.state_dict())
    _assert_same(ours(x), theirs(x), (x, ours.weight, ours.bias), seed=7,
                 want_leaves=(x, theirs.weight, theirs.bias))
    with pytest.raises(KeyError, match="nope"):
        MyConv2d(1, 1, 3, impl="nope")


# --- im2col_chunked: its paths -------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_chunked_whole_batch_path_follows_the_thread_count(threads: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """One chunk, columns above the tiny limit: one folded addmm on one thread (an NCHW view
    of a (C_out, N, ...) buffer), baddbmm over the batch on more (contiguous); same numbers."""
    monkeypatch.setattr(conv_module, "TINY_COLS_ELEMENTS", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, weight, bias = _inputs((3, 2, 4, 8, 7, 3, 1, 1), seed=5, grad=True)
        out = CHUNKED(x, weight, bias, 1, 1)
        assert out.shape == (3, 4, 8, 7) and out.is_contiguous() == (threads > 1)
        _assert_same(out, F.conv2d(x, weight, bias, padding=1), (x, weight, bias), seed=6)
    finally:
        torch.set_num_threads(before)


def test_chunked_ragged_last_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """5 images, 2 per chunk: chunks of 2, 2 and 1 concatenated in order."""
    N, C_in, C_out, H, W, k = 5, 3, 4, 6, 5, 3
    monkeypatch.setattr(conv_module, "COLS_CHUNK_ELEMENTS", 2 * C_in * k * k * (H - 2) * (W - 2))
    x, weight, bias = _inputs((N, C_in, C_out, H, W, k, 1, 0), seed=3)
    with torch.no_grad():
        _close(CHUNKED(x, weight, bias, 1, 0), F.conv2d(x, weight, bias))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("chunk", [None, 1], ids=["whole_batch", "one_image_per_chunk"])
def test_chunked_half_precision(chunk: int | None, dtype: torch.dtype,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    _chunking(chunk, monkeypatch)
    params = dict(zip(LAYER.params, (2, 3, 4, 10, 9, 3, 2, 1), strict=True))
    verdict, _ = check(CHUNKED, LAYER, params, [0, 1], dtype, "cpu", "fwdbwd")
    assert verdict.ok, verdict.problems


def test_bfloat16_gradients_of_a_chunked_5x5_conv_are_summed_in_float32() -> None:
    """25 overlapping windows per input element and 16 chunks sharing the weights: summed in
    bfloat16 the gradients drift past tolerance (plain ``im2col`` does, at this size)."""
    params = dict(zip(LAYER.params, (32, 16, 32, 32, 32, 5, 1, 2), strict=True))
    assert params["N"] > conv_module.COLS_CHUNK_ELEMENTS // (16 * 25 * 32 * 32)  # really chunked
    verdict, _ = check(CHUNKED, LAYER, params, [0, 1], torch.bfloat16, "cpu", "fwdbwd")
    assert verdict.ok, verdict.problems


# --- conv's sizes --------------------------------------------------------------------------------


def _with(**changes: int) -> dict[str, int]:
    return {**notes_size("conv"), **changes}


@pytest.mark.parametrize(("params", "match"), [
    (_with(N=0), "N"), (_with(N=-1), "N"), (_with(C_in=0), "C_in"), (_with(C_out=-4), "C_out"),
    (_with(H=0), "H"), (_with(W=-2), "W"), (_with(k=0), "k"), (_with(stride=0), "stride"),
    (_with(padding=-1), "padding"),
    (_with(k=31, padding=1), "larger than the padded input"),  # 31 > 28 + 2
    (_with(H=40, W=4, k=5), "larger than the padded input"),  # fits H but not W
], ids=["N0", "N-1", "Cin0", "Cout-4", "H0", "W-2", "k0", "stride0", "padding-1",
        "k-over-padded", "k-over-W"])
def test_check_rejects_nonsense(params: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        LAYER.check(params)
    assert "\n" not in str(info.value)  # one line, fit for the CLI


def test_check_accepts_a_kernel_that_just_fits_the_padded_input() -> None:
    params = _with(H=6, W=5, k=7, padding=1)  # 5 + 2 = 7
    LAYER.check(params)
    x, weight, bias = _inputs(tuple(params.values()), seed=8)
    assert F.conv2d(x, weight, bias, padding=1).shape[-1] == 1


def test_calibration_keeps_the_kernel_stride_and_padding() -> None:
    small = LAYER.calibration_params(dict(zip(LAYER.params, (32, 3, 64, 224, 224, 7, 2, 3),
                                                strict=True)))
    assert small == {"N": 1, "C_in": 2, "C_out": 2, "H": 7, "W": 7, "k": 7, "stride": 2,
                     "padding": 3}
    LAYER.check(small)
