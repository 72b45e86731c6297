"""Linear: MyCNN's fully connected layer ``nn.Linear(8 * 13 * 13, 10)``, five ways.

Every implementation takes ``x (N, in_features)``, ``weight (out_features, in_features)`` and
``bias (out_features,)`` and returns ``x @ weight^T + bias``, shape ``(N, out_features)``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from impls.registry import CaseInputs, Layer, Params, register_impl, register_layer


class LinearLayer(Layer):
    name = "linear"
    title = "Linear (MyCNN's fc)"
    order = 40
    params = ("N", "in_features", "out_features")
    positive: ClassVar[tuple[str, ...] | None] = None  # every size parameter
    labels: ClassVar[dict[str, str]] = {"in_features": "in", "out_features": "out"}

    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        N, fan_in, out_features = params["N"], params["in_features"], params["out_features"]

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        # Weights scaled by 1/sqrt(in_features) keep outputs O(1), so float16 does not overflow.
        return CaseInputs(
            tensors={"x": randn(N, fan_in),
                     "weight": randn(out_features, fan_in) / math.sqrt(fan_in),
                     "bias": randn(out_features)},
            grad=("x", "weight", "bias"),
        )

    def reference(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return F.linear(x, weight, bias)

    def flops(self, params: Params, mode: str) -> int:
        # The GEMM's multiply-adds only, as torch.utils.flop_counter counts addmm (the bias add,
        # N * out_features, is left out). Backward: grad_x = grad_out @ weight and
        # grad_weight = grad_out^T @ x each cost one forward; grad_bias (a sum) is not counted.
        fwd = 2 * params["N"] * params["in_features"] * params["out_features"]
        return fwd if mode == "fwd" else 3 * fwd

    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        N, n_in, n_out = params["N"], params["in_features"], params["out_features"]
        x, w, b, out = N * n_in, n_out * n_in, n_out, N * n_out
        elements = x + w + b + out
        if mode == "fwdbwd":  # read grad_out, x, weight; write grad_x, grad_weight, grad_bias
            elements += out + x + w + x + w + b
        return elements * torch.empty((), dtype=dtype).element_size()

    def calibration_params(self, params: Params) -> dict[str, int]:
        # The loops make one dot product of length in_features per (n, o): keep in_features
        # (the cost of one iteration), shrink N and out_features (the number of iterations).
        return {"N": min(params["N"], 2), "in_features": params["in_features"],
                "out_features": min(params["out_features"], 4)}


LAYER = register_layer(LinearLayer())


def _opmath(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@register_impl("linear", "loops", naive=True)
def linear_loops(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Python loops over samples and output features: one dot product per output element."""
    N, out_features = x.shape[0], weight.shape[0]
    # float16/bfloat16 are computed in float32: autograd sums the N * O per-element gradient
    # contributions of weight and x one by one; in bfloat16 that sum loses ~1% of its value.
    xf, wf, bf = (_opmath(t) for t in (x, weight, bias))
    rows = [torch.stack([(xf[n] * wf[o]).sum() + bf[o] for o in range(out_features)])  # (O,)
            for n in range(N)]
    return torch.stack(rows).to(x.dtype)  # N x (O,) -> (N, O)


@register_impl("linear", "einsum")
def linear_einsum(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """torch.einsum contracting in_features (dispatched to one GEMM), then the bias."""
    return torch.einsum("ni,oi->no", x, weight) + bias  # (N, I), (O, I) -> (N, O)


@register_impl("linear", "matmul")
def linear_matmul(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x @ weight.T + bias: a GEMM on the transposed view, then a broadcast add."""
    return x @ weight.T + bias  # (N, I) @ (I, O) -> (N, O)


@register_impl("linear", "addmm")
def linear_addmm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """torch.addmm on the transposed weight view: the bias fused into the GEMM, no extra pass.

    Inputs with leading batch dimensions ``(*, in_features)`` are flattened to one GEMM, as
    ``F.linear`` does.
    """
    if x.dim() == 2:
        return torch.addmm(bias, x, weight.T)  # (N, I) @ (I, O) + (O,) -> (N, O)
    out = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight.T)  # (*, I) -> (B, I) @ (I, O)
    return out.view(*x.shape[:-1], weight.shape[0])  # (B, O) -> (*, O)


@register_impl("linear", "builtin")
def linear_builtin(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """torch.nn.functional.linear (one addmm: the bias fused into the GEMM)."""
    return F.linear(x, weight, bias)


__all__ = ["LAYER", "linear_addmm", "linear_builtin", "linear_einsum", "linear_loops",
           "linear_matmul"]
