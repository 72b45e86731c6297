"""LayerNorm: the post-norm LayerNorm of the notes' MultiHeadAttention and
PositionwiseFeedForward (eps 1e-6), four ways.

Every implementation takes ``x (N, len, d_model)`` (any leading shape works), ``weight, bias
(d_model,)`` and ``eps``, and returns ``(N, len, d_model)``: each token row normalised over
``d_model`` with its mean and *biased* variance, then scaled by ``weight`` and shifted by ``bias``,
exactly as ``F.layer_norm(x, (d_model,), weight, bias, eps)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from impls.registry import CaseInputs, Layer, Params, register_impl, register_layer

#: the notes' LayerNorm epsilon (PyTorch's default is 1e-5)
LN_EPS = 1e-6


class LayerNormLayer(Layer):
    name = "layernorm"
    title = "LayerNorm (post-norm of MultiHeadAttention and PositionwiseFeedForward)"
    order = 82
    params = ("N", "len", "d_model")
    positive: ClassVar[tuple[str, ...] | None] = ("N", "len")
    labels: ClassVar[dict[str, str]] = {"len": "L", "d_model": "dm"}

    def check(self, params: Params) -> None:
        super().check(params)
        if params["d_model"] < 3:
            raise ValueError(f"layernorm: d_model must be >= 3, got {params['d_model']} (with "
                             "1 or 2 features a normalised row is 0 or +-1 whatever x is)")

    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        N, L, D = params["N"], params["len"], params["d_model"]

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        # Each token row gets its own offset and scale, so normalisation really has work to do
        # (a missing mean subtraction or a wrong variance shows); all values stay O(1).
        shift, scale = randn(N, L, 1), randn(N, L, 1).mul(0.5).exp()
        return CaseInputs(
            tensors={"x": randn(N, L, D) * scale + shift,
                     "weight": 1 + 0.1 * randn(D),  # near 1, as a trained LayerNorm's
                     "bias": 0.1 * randn(D)},
            static={"eps": LN_EPS},
            grad=("x", "weight", "bias"),
        )

    def reference(self, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps=eps)

    def flops(self, params: Params, mode: str) -> int:
        # FlopCounterMode counts nothing for layer_norm (it counts GEMMs and convolutions only),
        # so this is a documented *estimate* of the elementwise work, per element of x:
        #   forward: sum for the mean 1, x - mean 1, square 1, sum for the variance 1,
        #     times rstd 1, weight * x_hat + bias 2                                    -> 7
        #   backward: grad_bias = sum(g) 1, grad_weight = sum(g * x_hat) 2, gw = g * weight 1,
        #     sum(gw) 1, sum(gw * x_hat) 2, grad_x = (gw - mean(gw) - x_hat * mean(gw * x_hat))
        #     * rstd 4                                                                  -> 11
        # Per-row work (the divisions by d_model, rstd: O(N * len)) is left out.
        # tests/test_layernorm.py checks this against a count of the primitive ops of that program.
        elements = params["N"] * params["len"] * params["d_model"]
        return elements * (7 if mode == "fwd" else 7 + 11)

    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        D = params["d_model"]
        x = params["N"] * params["len"] * D
        elements = x + 2 * D + x  # read x, weight, bias; write the output
        if mode == "fwdbwd":  # read grad_out, x, weight; write grad_x, grad_weight, grad_bias
            elements += x + x + D + x + D + D
        return elements * torch.empty((), dtype=dtype).element_size()

    def calibration_params(self, params: Params) -> dict[str, int]:
        # The loops iterate over token rows and vectorise within one: keep d_model (the cost of
        # one iteration), shrink N and len (the number of iterations).
        return {"N": 1, "len": min(params["len"], 4), "d_model": params["d_model"]}


LAYER = register_layer(LayerNormLayer())


def _opmath(t: Tensor) -> Tensor:
    """float16/bfloat16 are computed in float32, as PyTorch's kernels do."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@register_impl("layernorm", "loops", naive=True)
def layer_norm_loops(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """A Python loop over the N * len token rows; each row normalised vectorised over d_model."""
    d_model = x.shape[-1]
    rows = _opmath(x).reshape(-1, d_model)  # (N, len, d_model) -> (N * len, d_model)
    # cast once outside the loop: autograd then sums the rows' weight gradients in float32
    w, b = _opmath(weight), _opmath(bias)
    outs = []
    for row in rows:  # (d_model,)
        mean = row.mean()
        var = (row - mean).pow(2).mean()  # biased: what LayerNorm normalises with
        outs.append((row - mean) / torch.sqrt(var + eps) * w + b)
    return torch.stack(outs).view(x.shape).to(x.dtype)  # (N * len, d_model) -> (N, len, d_model)


@register_impl("layernorm", "vectorized")
def layer_norm_vectorized(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """The notes' broadcasting (as their BatchNorm): mean and biased variance over d_model."""
    xf = _opmath(x)
    mean = xf.mean(-1, keepdim=True)  # (N, len, 1)
    # torch.var over one dimension is a scalar Welford reduction on the CPU (pytorch#83800): at
    # the notes' size it alone takes ~15x the builtin's whole forward
    var = xf.var(-1, unbiased=False, keepdim=True)  # (N, len, 1)
    x_hat = (xf - mean) / torch.sqrt(var + eps)  # (N, len, d_model)
    return (weight * x_hat + bias).to(x.dtype)  # (d_model,) broadcasts over N and len


def _normalise(x: Tensor, weight: Tensor, bias: Tensor,
               eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The fused forward: ``(output, mean, rstd)``, output ``(*, d_model)`` in float32 for
    half-precision ``x``, mean and rstd ``(*, 1)``."""
    xf = _opmath(x).contiguous()
    d_model = xf.shape[-1]
    mean = xf.mean(-1, keepdim=True)  # (*, 1)
    # the forward's one full-size buffer: a float32 copy of half-precision x is ours to overwrite
    out = xf - mean if xf is x else xf.sub_(mean)  # (*, d_model), centred
    # two-pass variance: the centred rows' squared vector norms (no squared temporary, and no
    # cancellation as in E[x^2] - mean^2); torch.var's scalar Welford pass is ~40x slower
    rstd = torch.linalg.vector_norm(out, 2, -1, keepdim=True).square_().div_(d_model)
    rstd = rstd.add_(eps).rsqrt_()  # (*, 1)
    # weight and bias vary along the innermost dimension, so this addcmul stays vectorised (a CPU
    # elementwise kernel is only where at most one operand is broadcast along that dimension)
    out = torch.addcmul(bias.to(out.dtype), out.mul_(rstd), weight.to(out.dtype), out=out)
    return out, mean, rstd


class _FusedLayerNorm(torch.autograd.Function):
    """The fused forward, and a hand-written backward: four GEMVs and one full-size buffer."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        out, mean, rstd = _normalise(x, weight, bias, eps)
        # save x (not x_hat): one full-size buffer less in the forward; fresh pages cost more
        # than the backward's extra pass at 32 MiB (above malloc's mmap threshold)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.bias_dtype = bias.dtype
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        xf, w, g = _opmath(x).contiguous(), _opmath(weight), _opmath(grad_out).contiguous()
        d_model = xf.shape[-1]
        rows = g.numel() // d_model
        g2, r = g.view(rows, d_model), rstd.view(rows)  # (*, d_model) -> (T, d_model); (T,)
        buf = torch.sub(xf, mean).mul_(g)  # (*, d_model): g * (x - mean), then grad_x
        buf2 = buf.view(rows, d_model)  # (T, d_model)
        grad_w = buf2.T @ r  # (d_model, T) @ (T,) -> (d_model,): sum over rows of g * x_hat
        grad_b = g2.T @ g2.new_ones(rows)  # (d_model, T) @ (T,) -> (d_model,)
        ds = (buf2 @ w).view_as(rstd)  # (T, d_model) @ (d_model,) -> (*, 1): sum g w (x - mean)
        db = (g2 @ w).view_as(rstd)  # (T, d_model) @ (d_model,) -> (*, 1): sum g w
        # grad_x = rstd * (g w - mean(g w) - x_hat mean(g w x_hat)) = rstd * (g w + a x + c),
        # per row a = -rstd^2 ds / d_model, c = -db / d_model - a mean (the form of PyTorch's CPU
        # kernel, ds from the centred x): two addcmuls, each with one operand broadcast along
        # d_model, so both vectorised (rstd * g * w in one op would need the outer product)
        a = ds.mul_(rstd.square()).div_(-d_model)
        c = torch.addcmul(db.div_(-d_model), a, mean, value=-1)
        grad_x = torch.addcmul(c, g, w, out=buf).addcmul_(xf, a).mul_(rstd)
        return grad_x.to(x.dtype), grad_w.to(weight.dtype), grad_b.to(ctx.bias_dtype), None


@register_impl("layernorm", "fused")
def layer_norm_fused(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Two-pass statistics, normalisation and affine in one buffer; a hand-written GEMV backward."""
    # without a gradient to compute, skip the autograd.Function (its context and saved tensors)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or bias.requires_grad):
        return _FusedLayerNorm.apply(x, weight, bias, eps)
    out = _normalise(x, weight, bias, eps)[0]  # half precision: float32, rounded once here
    # a no-op .to() still costs a microsecond
    return out if out.dtype == x.dtype else out.to(x.dtype)


@register_impl("layernorm", "builtin")
def layer_norm_builtin(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """torch.nn.functional.layer_norm (one fused native kernel forward, one backward)."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps=eps)


__all__ = ["LAYER", "LN_EPS", "layer_norm_builtin", "layer_norm_fused",
           "layer_norm_loops", "layer_norm_vectorized"]
