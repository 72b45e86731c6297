"""Position-wise feed-forward: the notes' PositionwiseFeedForward (post-norm), four ways.

Every implementation takes ``x (N, len, d_model)``, ``w_1 (d_inner, d_model)``, ``b_1
(d_inner,)``, ``w_2 (d_model, d_inner)``, ``b_2 (d_model,)`` and the LayerNorm's ``ln_weight``,
``ln_bias (d_model,)`` (``nn.Linear``'s layout) and returns ``(N, len, d_model)``.

Semantics (jadore801120/attention-is-all-you-need-pytorch): ``LayerNorm(x + w_2(relu(w_1(x) +
b_1)) + b_2)`` with eps 1e-6 (post-norm), dropout off. The implementations differ in the two
GEMMs and the elementwise passes around them; each ends in ``F.layer_norm`` (the LayerNorm's
own implementations are the ``layernorm`` layer's). The encoder and decoder layers compute
their FFN sublayers with ``positionwise_feed_forward`` (``builtin``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.layernorm import LN_EPS
from impls.registry import REGISTRY, CaseInputs, Layer, Params, register_impl, register_layer

#: no ReLU pre-activation of the inputs lies within this fraction of their RMS from the kink
KINK_MARGIN = 1e-4


def _clear_kinks(x: Tensor, w_1: Tensor, b_1: Tensor) -> Tensor:
    """``b_1 (d_inner,)`` nudged up until no token's pre-activation ``x w_1^T + b_1`` lies
    within ``KINK_MARGIN`` (relative to their RMS) of the ReLU's kink at zero.

    Why: a pre-activation within float32 rounding (~1e-6) of zero can take the other side of
    the kink in float32 than in the float64 reference. The forward hardly notices, but that
    unit's gradient switches on or off, which moves the weight gradients by ~1e-3 relative: a
    false "incorrect". Unconditioned, the repository's model on 8 x 32 tokens (3 million
    pre-activations per call) hits one such unit in about one trial in 15.

    The pre-activations are found in float32 (it errs by ~1e-6 where the margin is 1e-4, at
    half the cost of float64); ``b_1`` keeps its dtype.
    """
    h = F.linear(x.float(), w_1.float()).flatten(0, -2)  # (N * len, d_inner), without the bias
    margin = KINK_MARGIN * float(h.pow(2).mean().sqrt())
    b = b_1.clone()
    for _ in range(1000):  # each step clears a unit's near tokens; few ever need a second one
        near = ((h + b.float()).abs() < margin).any(0)  # (d_inner,)
        if not bool(near.any()):
            break
        b = torch.where(near, b + 3 * margin, b)
    return b


class FeedForwardLayer(Layer):
    name = "ffn"
    title = "PositionwiseFeedForward"
    order = 85
    params = ("N", "len", "d_model", "d_inner")
    positive: ClassVar[tuple[str, ...] | None] = None  # every size parameter
    labels: ClassVar[dict[str, str]] = {"len": "L", "d_model": "dm", "d_inner": "di"}

    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        N, length, d_model, d_inner = (params[p] for p in self.params)

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        # As the transformer layers' FFN: weights / sqrt(fan_in), so every output is O(1).
        x, w_1 = randn(N, length, d_model), randn(d_inner, d_model) / math.sqrt(d_model)
        tensors = {"x": x, "w_1": w_1, "b_1": _clear_kinks(x, w_1, 0.1 * randn(d_inner)),
                   "w_2": randn(d_model, d_inner) / math.sqrt(d_inner),
                   "b_2": 0.1 * randn(d_model),
                   "ln_weight": 1 + 0.1 * randn(d_model), "ln_bias": 0.1 * randn(d_model)}
        return CaseInputs(tensors=tensors, grad=tuple(tensors))

    def reference(self, x: Tensor, w_1: Tensor, b_1: Tensor, w_2: Tensor, b_2: Tensor,
                  ln_weight: Tensor, ln_bias: Tensor) -> Tensor:
        out = F.linear(F.relu(F.linear(x, w_1, b_1)), w_2, b_2) + x  # (N, len, d_model)
        return F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias, eps=LN_EPS)

    def flops(self, params: Params, mode: str) -> int:
        # The two GEMMs, as FlopCounterMode counts them (biases, relu, residual and LayerNorm
        # are elementwise and left out). Backward: each GEMM's two input gradients.
        fwd = 2 * 2 * params["N"] * params["len"] * params["d_model"] * params["d_inner"]
        return fwd if mode == "fwd" else 3 * fwd

    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        # The hidden activations (N, len, d_inner) are an intermediate: not minimum traffic.
        N, length, d_model, d_inner = (params[p] for p in self.params)
        x = out = N * length * d_model
        weights = 2 * d_inner * d_model + d_inner + 3 * d_model
        elements = x + weights + out
        if mode == "fwdbwd":  # read grad_out, x and the weights; write their gradients
            elements += out + 2 * (x + weights)
        return elements * torch.empty((), dtype=dtype).element_size()

    def calibration_params(self, params: Params) -> dict[str, int]:
        return {**params, "N": 1, "len": min(params["len"], 4)}


LAYER = register_layer(FeedForwardLayer())


@register_impl("ffn", "matmul")
def ffn_matmul(x: Tensor, w_1: Tensor, b_1: Tensor, w_2: Tensor, b_2: Tensor,
               ln_weight: Tensor, ln_bias: Tensor) -> Tensor:
    """x @ w.T on the transposed weights; each bias, the relu and the residual a pass of its own."""
    hidden = torch.relu(x @ w_1.T + b_1)  # (N, len, d_model) @ (d_model, d_inner)
    out = hidden @ w_2.T + b_2 + x  # (N, len, d_inner) @ (d_inner, d_model)
    return F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias, eps=LN_EPS)


@register_impl("ffn", "einsum")
def ffn_einsum(x: Tensor, w_1: Tensor, b_1: Tensor, w_2: Tensor, b_2: Tensor,
               ln_weight: Tensor, ln_bias: Tensor) -> Tensor:
    """Both contractions as torch.einsum (each dispatched to one GEMM), then the biases."""
    hidden = torch.relu(torch.einsum("nld,id->nli", x, w_1) + b_1)  # (N, len, d_inner)
    out = torch.einsum("nli,di->nld", hidden, w_2) + b_2 + x  # (N, len, d_model)
    return F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias, eps=LN_EPS)


@register_impl("ffn", "fused")
def ffn_fused(x: Tensor, w_1: Tensor, b_1: Tensor, w_2: Tensor, b_2: Tensor,
              ln_weight: Tensor, ln_bias: Tensor) -> Tensor:
    """Two addmm: b_1 is the first's bias term, x + b_2 the second's beta term; relu in place.

    Without autograd the relu runs in place in the first GEMM's output and the second GEMM
    accumulates into ``x + b_2``: no buffer but the hidden one and the output, and no pass
    over either but the GEMMs', the relu and the LayerNorm.
    """
    N, length, d_model = x.shape
    rows = x.reshape(N * length, d_model)  # (N * len, d_model): a view when x is contiguous
    hidden = torch.addmm(b_1, rows, w_1.t())  # (N * len, d_inner)
    out = rows + b_2  # (N * len, d_model): the residual and the second bias, one pass
    # out of place for autograd, and under torch.compile (which plans its own buffers)
    if (torch.is_grad_enabled() and hidden.requires_grad) or torch.compiler.is_compiling():
        out = torch.addmm(out, torch.relu(hidden), w_2.t())
    else:
        out.addmm_(hidden.relu_(), w_2.t())  # (N * len, d_inner) @ (d_inner, d_model)
    return F.layer_norm(out.view(N, length, d_model), (d_model,), ln_weight, ln_bias,
                        eps=LN_EPS)


@register_impl("ffn", "builtin")
def positionwise_feed_forward(x: Tensor, w_1: Tensor, b_1: Tensor, w_2: Tensor, b_2: Tensor,
                              ln_weight: Tensor, ln_bias: Tensor) -> Tensor:
    """F.linear + F.relu + F.linear, the residual, F.layer_norm: the notes' module's forward.

    The encoder and decoder layers call it with an ``FFNWeights`` (same order).
    """
    hidden = F.relu(F.linear(x, w_1, b_1))  # (N, len, d_inner)
    out = F.linear(hidden, w_2, b_2) + x  # (N, len, d_model)
    return F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias, eps=LN_EPS)


class PositionwiseFeedForward(nn.Module):
    """The notes' PositionwiseFeedForward: ``LayerNorm(x + w_2(relu(w_1(x))))``, biased
    linears, eps 1e-6, computed by a chosen ffn implementation.

    The repository's submodule names (``w_1``, ``w_2``, ``layer_norm``, ``dropout``), so its
    state dict loads. While training with ``dropout > 0`` it runs the repository's forward with
    dropout; otherwise the implementation ``impl`` (``matmul``, ``einsum``, ``fused``,
    ``builtin``).
    """

    def __init__(self, d_in: int, d_hid: int, dropout: float = 0.1,
                 impl: str = "builtin") -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_in, d_hid)
        self.w_2 = nn.Linear(d_hid, d_in)
        self.layer_norm = nn.LayerNorm(d_in, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.impl = impl
        self._fn = REGISTRY.impl("ffn", impl).fn

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.dropout.p > 0:
            out = self.dropout(self.w_2(F.relu(self.w_1(x)))) + x  # (N, len, d_in)
            return self.layer_norm(out)
        return self._fn(x, self.w_1.weight, self.w_1.bias, self.w_2.weight, self.w_2.bias,
                        self.layer_norm.weight, self.layer_norm.bias)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}"


__all__ = ["KINK_MARGIN", "LAYER", "PositionwiseFeedForward", "ffn_einsum", "ffn_fused",
           "ffn_matmul", "positionwise_feed_forward"]
