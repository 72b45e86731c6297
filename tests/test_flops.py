"""Conv FLOP and byte formulas against independent counts, and size validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from impls import REGISTRY
from suites.presets import preset_table

LAYER = REGISTRY.layer("conv")
NAMES = ("N", "C_in", "C_out", "H", "W", "k", "stride", "padding")

SIZES = [
    dict(zip(NAMES, size, strict=True)) for size in [
        (64, 1, 8, 28, 28, 3, 1, 0),  # the notes' MNIST conv
        (2, 3, 4, 10, 9, 3, 2, 1),
        (1, 1, 1, 5, 7, 5, 3, 2),
        (8, 256, 256, 14, 14, 1, 1, 0),
        (16, 64, 128, 56, 56, 3, 2, 1),
        (32, 3, 64, 224, 224, 7, 2, 3),  # ResNet stem: counted on the meta device, not run
        (3, 5, 7, 11, 13, 4, 3, 2),  # even kernel, stride not dividing the input
    ]
]


def _size_id(params: dict[str, int]) -> str:
    return LAYER.label(params)


def _tensors(params: dict[str, int], dtype: torch.dtype = torch.float32, grad: bool = False):
    p = params

    def make(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device="meta", requires_grad=grad)

    return (make(p["N"], p["C_in"], p["H"], p["W"]), make(p["C_out"], p["C_in"], p["k"], p["k"]),
            make(p["C_out"]))


@pytest.mark.parametrize("params", SIZES, ids=_size_id)
def test_forward_flops_match_flop_counter(params: dict[str, int]) -> None:
    x, weight, bias = _tensors(params)
    with FlopCounterMode(display=False) as counter:
        F.conv2d(x, weight, bias, stride=params["stride"], padding=params["padding"])
    assert LAYER.flops(params, "fwd") == counter.get_total_flops()


@pytest.mark.parametrize("params", SIZES, ids=_size_id)
def test_forward_backward_flops_match_flop_counter(params: dict[str, int]) -> None:
    x, weight, bias = _tensors(params, grad=True)
    with FlopCounterMode(display=False) as counter:
        out = F.conv2d(x, weight, bias, stride=params["stride"], padding=params["padding"])
        out.backward(torch.empty_like(out))
    assert LAYER.flops(params, "fwdbwd") == counter.get_total_flops()


def test_flops_on_real_tensors_agree_with_meta() -> None:
    """The meta-device count is the real one (guards the shortcut used above)."""
    params = SIZES[1]
    x = torch.randn(params["N"], params["C_in"], params["H"], params["W"])
    weight = torch.randn(params["C_out"], params["C_in"], params["k"], params["k"])
    with FlopCounterMode(display=False) as counter:
        F.conv2d(x, weight, torch.randn(params["C_out"]), stride=params["stride"],
                 padding=params["padding"])
    assert LAYER.flops(params, "fwd") == counter.get_total_flops()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("params", SIZES, ids=_size_id)
def test_forward_bytes_are_each_tensor_once(params: dict[str, int], dtype: torch.dtype) -> None:
    x, weight, bias = _tensors(params, dtype)
    out = F.conv2d(x, weight, bias, stride=params["stride"], padding=params["padding"])
    expected = sum(t.numel() * t.element_size() for t in (x, weight, bias, out))
    assert LAYER.bytes_moved(params, dtype, "fwd") == expected


@pytest.mark.parametrize("params", SIZES, ids=_size_id)
def test_forward_backward_bytes_cover_the_gradients(params: dict[str, int]) -> None:
    """fwdbwd moves at least the forward tensors plus grad_out, grad_x, grad_weight, grad_bias."""
    dtype = torch.float32
    x, weight, bias = _tensors(params, dtype)
    out = F.conv2d(x, weight, bias, stride=params["stride"], padding=params["padding"])
    gradients = sum(t.numel() * t.element_size() for t in (out, x, weight, bias))
    fwd = LAYER.bytes_moved(params, dtype, "fwd")
    assert LAYER.bytes_moved(params, dtype, "fwdbwd") >= fwd + gradients


def test_every_preset_size_is_valid() -> None:
    for preset, sizes in preset_table("conv").items():
        for params in sizes:
            LAYER.check(params)  # raises on nonsense
            assert LAYER.flops(params, "fwd") > 0, preset


def _with(**changes: int) -> dict[str, int]:
    return {**SIZES[0], **changes}


@pytest.mark.parametrize(("params", "match"), [
    (_with(N=0), "N"),
    (_with(N=-1), "N"),
    (_with(C_in=0), "C_in"),
    (_with(C_out=-4), "C_out"),
    (_with(H=0), "H"),
    (_with(W=-2), "W"),
    (_with(k=0), "k"),
    (_with(stride=0), "stride"),
    (_with(padding=-1), "padding"),
    (_with(k=31, padding=1), "k"),  # 31 > 28 + 2
    (_with(H=40, W=4, k=5), "k"),  # fits H but not W
    ({p: v for p, v in SIZES[0].items() if p != "k"}, "k"),  # missing
    ({**SIZES[0], "groups": 2}, "groups"),  # unknown
], ids=["N0", "N-1", "Cin0", "Cout-4", "H0", "W-2", "k0", "stride0", "padding-1",
        "k-over-padded", "k-over-W", "missing-k", "unknown-groups"])
def test_check_rejects_nonsense(params: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        LAYER.check(params)
    assert "\n" not in str(info.value)  # one line, fit for the CLI


def test_check_accepts_a_kernel_that_just_fits_the_padded_input() -> None:
    params = _with(H=6, W=5, k=7, padding=1)  # 5 + 2 = 7
    LAYER.check(params)
    x, weight, bias = _tensors(params)
    out = F.conv2d(x, weight, bias, padding=1)
    assert out.shape[-1] == 1
