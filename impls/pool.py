"""MaxPool2d: MyCNN's ``nn.MaxPool2d(2)``, with any kernel size, three ways.

Every implementation takes ``x (N, C, H, W)`` and the kernel size ``k`` (stride = k, no padding,
floor mode, as ``nn.MaxPool2d(k)``) and returns ``(N, C, H // k, W // k)``: the maximum of each
non-overlapping k x k window. Rows and columns left over when k does not divide H or W are dropped.

On a tie within a window the gradient goes to the first maximum in row-major order, as
``F.max_pool2d`` does (ties are rare with random float32 inputs but common in bfloat16).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from impls.registry import CaseInputs, Layer, Params, register_impl, register_layer


class MaxPool2dLayer(Layer):
    name = "pool"
    title = "MaxPool2d (MyCNN's pool)"
    order = 30
    params = ("N", "C", "H", "W", "k")
    positive: ClassVar[tuple[str, ...] | None] = ("N", "C", "H", "W")
    labels: ClassVar[dict[str, str]] = {}

    def check(self, params: Params) -> None:
        super().check(params)
        if params["k"] < 2:
            raise ValueError(f"pool: k must be >= 2, got {params['k']} "
                             "(k = 1 is the identity: there is nothing to compare)")
        if params["k"] > min(params["H"], params["W"]):
            raise ValueError(f"pool: kernel k={params['k']} is larger than the input "
                             f"{params['H']}x{params['W']}")

    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        shape = tuple(params[p] for p in ("N", "C", "H", "W"))
        # Random normal: ties within a window (where the gradient's destination would be a
        # convention) are essentially impossible in float32.
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        return CaseInputs(tensors={"x": x}, static={"k": params["k"]}, grad=("x",))

    def reference(self, x: Tensor, k: int) -> Tensor:
        return F.max_pool2d(x, k)

    def flops(self, params: Params, mode: str) -> int:
        # FlopCounterMode counts nothing for max_pool2d; this is a documented estimate: a window
        # of k*k values needs k*k - 1 comparisons. The backward routes each output gradient to
        # its window's maximum, a scatter with no arithmetic (windows do not overlap when
        # stride = k), so fwdbwd counts the forward's comparisons only.
        # tests/test_pool.py checks this against a count of a sequential-maximum program.
        k = params["k"]
        outputs = params["N"] * params["C"] * (params["H"] // k) * (params["W"] // k)
        return (k * k - 1) * outputs

    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        k = params["k"]
        x = params["N"] * params["C"] * params["H"] * params["W"]
        out = params["N"] * params["C"] * (params["H"] // k) * (params["W"] // k)
        elements = x + out
        if mode == "fwdbwd":  # read grad_out and x (to find each maximum again); write grad_x
            elements += out + x + x
        return elements * torch.empty((), dtype=dtype).element_size()

    def calibration_params(self, params: Params) -> dict[str, int]:
        # The loops iterate over output positions and vectorise over N and C: keep N, C and k
        # (they set the cost of one iteration), shrink the output grid to at most 4 x 4.
        k = params["k"]
        return {**params, "H": min(params["H"], 4 * k), "W": min(params["W"], 4 * k)}


LAYER = register_layer(MaxPool2dLayer())


@register_impl("pool", "loops", naive=True)
def max_pool2d_loops(x: Tensor, k: int) -> Tensor:
    """Python loops over output rows and columns; each window's max over all N and C at once."""
    N, C, H, W = x.shape
    rows = []
    for i in range(H // k):
        row = []
        for j in range(W // k):
            window = x[:, :, i * k:(i + 1) * k, j * k:(j + 1) * k]  # (N, C, k, k)
            flat = window.reshape(N, C, k * k)  # (N, C, k*k), row-major within the window
            # argmax + gather, not amax: on a tie the gradient goes to one element, the first.
            # Not max(dim) either: on CPU it opens a parallel region even for a few elements,
            # and waking the second thread costs more than this whole iteration.
            first = flat.argmax(dim=-1, keepdim=True)  # (N, C, 1)
            row.append(flat.gather(-1, first).squeeze(-1))  # (N, C)
        rows.append(torch.stack(row, dim=-1))  # W_out x (N, C) -> (N, C, W_out)
    return torch.stack(rows, dim=-2)  # H_out x (N, C, W_out) -> (N, C, H_out, W_out)


@register_impl("pool", "unfold")
def max_pool2d_unfold(x: Tensor, k: int) -> Tensor:
    """Tensor.unfold views the k x k windows (no copy), flattened for one max over each."""
    N, C, H, W = x.shape
    H_out, W_out = H // k, W // k
    windows = x.unfold(2, k, k).unfold(3, k, k)  # (N, C, H_out, W_out, k, k), a strided view
    # row-major within the window, so max's first-index tie rule matches F.max_pool2d's
    flat = windows.reshape(N, C, H_out, W_out, k * k)  # (N, C, H_out, W_out, k*k)
    return flat.max(dim=-1).values


@register_impl("pool", "builtin")
def max_pool2d_builtin(x: Tensor, k: int) -> Tensor:
    """torch.nn.functional.max_pool2d (native CPU kernel; cuDNN or native on CUDA)."""
    return F.max_pool2d(x, k)


__all__ = ["LAYER", "max_pool2d_builtin", "max_pool2d_loops", "max_pool2d_unfold"]
