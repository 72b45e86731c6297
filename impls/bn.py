"""BatchNorm2d: the course notes' MyBatchNorm2d, in training and eval mode, four ways.

Every implementation takes ``x (N, C, H, W)``, ``weight, bias, running_mean, running_var (C,)``,
``training``, ``momentum`` and ``eps``, and returns ``(N, C, H, W)``. It behaves exactly like
``F.batch_norm``: in training it normalises with the batch statistics (biased variance) and updates
``running_mean`` and ``running_var`` *in place*, the latter with the *unbiased* variance; in eval
it normalises with the running statistics and leaves them alone.

The notes' version has two bugs our implementations must not have (and the correctness check
catches): it computes ``x_hat`` only in eval mode, and it updates ``running_var`` with the biased
variance.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.registry import REGISTRY, CaseInputs, Layer, Params, register_impl, register_layer


class BatchNorm2dLayer(Layer):
    name = "bn"
    title = "BatchNorm2d (MyBatchNorm2d)"
    order = 20
    params = ("N", "C", "H", "W", "training")
    positive: ClassVar[tuple[str, ...] | None] = ("N", "C", "H", "W")
    labels: ClassVar[dict[str, str]] = {"training": "train"}
    #: PyTorch's defaults, and the notes'
    momentum: ClassVar[float] = 0.1
    eps: ClassVar[float] = 1e-5

    def check(self, params: Params) -> None:
        super().check(params)
        if params["training"] not in (0, 1):
            raise ValueError(f"bn: training must be 0 (eval) or 1 (train), "
                             f"got {params['training']}")
        if params["training"] and params["N"] * params["H"] * params["W"] < 2:
            raise ValueError("bn: training needs more than one value per channel "
                             "(N * H * W >= 2) for the unbiased variance")

    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        N, C, H, W = (params[p] for p in ("N", "C", "H", "W"))

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        # Each channel gets its own offset and scale, so normalisation really has work to do
        # (a missing mean subtraction or a wrong variance shows); all values stay O(1).
        shift, scale = randn(C), randn(C).mul(0.5).exp()
        x = randn(N, C, H, W) * scale.view(1, C, 1, 1) + shift.view(1, C, 1, 1)
        return CaseInputs(
            tensors={"x": x, "weight": randn(C), "bias": randn(C),
                     "running_mean": randn(C) * 0.5,
                     "running_var": randn(C).mul(0.5).exp()},  # positive, around 1
            static={"training": bool(params["training"]), "momentum": self.momentum,
                    "eps": self.eps},
            grad=("x", "weight", "bias"),
            state=("running_mean", "running_var"),
        )

    def reference(self, x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                  running_var: Tensor, training: bool, momentum: float, eps: float) -> Tensor:
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)

    def flops(self, params: Params, mode: str) -> int:
        # FlopCounterMode counts nothing for batch_norm (it counts GEMMs and convolutions only),
        # so this is a documented *estimate* of the elementwise work, per element of x:
        #   forward, training: sum for the mean 1, x - mean 1, square 1, sum for the variance 1,
        #     times 1/std 1, weight * x_hat + bias 2                              -> 7
        #   forward, eval: x - running_mean 1, times 1/std 1, affine 2            -> 4
        #   backward: grad_bias = sum(g) 1, grad_weight = sum(g * x_hat) 2, and grad_x:
        #     training: (w/std) * (g - mean(g) - x_hat * mean(g * x_hat))  4 -> 7
        #     eval: g * (w/std)  1                                                 -> 4
        # Per-channel work (1/std, the running-statistics update: O(C)) is left out.
        # tests/test_bn.py checks this against a count of the primitive ops of that program.
        elements = params["N"] * params["C"] * params["H"] * params["W"]
        fwd, bwd = (7, 7) if params["training"] else (4, 4)
        return elements * (fwd if mode == "fwd" else fwd + bwd)

    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        C = params["C"]
        x = params["N"] * C * params["H"] * params["W"]
        # read x, weight, bias, running_mean, running_var; write the output
        elements = x + 4 * C + x
        if params["training"]:  # write running_mean and running_var back
            elements += 2 * C
        if mode == "fwdbwd":  # read grad_out, x, weight; write grad_x, grad_weight, grad_bias
            elements += x + x + C + x + C + C
        return elements * torch.empty((), dtype=dtype).element_size()

    def calibration_params(self, params: Params) -> dict[str, int]:
        # The loops iterate over channels and vectorise within one: keep N, H and W (they set
        # the cost of one iteration), shrink C (the number of iterations).
        return {**params, "C": min(params["C"], 2)}


LAYER = register_layer(BatchNorm2dLayer())


def _opmath(x: Tensor) -> Tensor:
    """float16/bfloat16 statistics are computed in float32, as PyTorch's kernels do."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _update_running(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                    count: int, momentum: float) -> None:
    """PyTorch's update, in place: ``running = (1 - momentum) * running + momentum * batch``,
    with the *unbiased* variance ``var * count / (count - 1)`` (``var`` is the biased one)."""
    unbiased = var.detach() * (count / (count - 1))
    running_mean.copy_((1 - momentum) * running_mean + momentum * mean.detach())
    running_var.copy_((1 - momentum) * running_var + momentum * unbiased)


@register_impl("bn", "loops", naive=True)
def batchnorm2d_loops(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                      running_var: Tensor, training: bool, momentum: float,
                      eps: float) -> Tensor:
    """A Python loop over channels; each channel's statistics and normalisation vectorised."""
    N, C, H, W = x.shape
    count = N * H * W
    outs = []
    for c in range(C):
        xc = _opmath(x[:, c])  # (N, H, W)
        if training:
            mean = xc.mean()
            var = (xc - mean).pow(2).mean()  # biased: what normalises the batch
            with torch.no_grad():
                running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean
                running_var[c] = ((1 - momentum) * running_var[c]
                                  + momentum * var * (count / (count - 1)))
        else:
            mean, var = running_mean[c], running_var[c]
        x_hat = (xc - mean) / torch.sqrt(var + eps)
        outs.append(weight[c] * x_hat + bias[c])
    return torch.stack(outs, dim=1).to(x.dtype)  # C x (N, H, W) -> (N, C, H, W)


@register_impl("bn", "vectorized")
def batchnorm2d_vectorized(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                           running_var: Tensor, training: bool, momentum: float,
                           eps: float) -> Tensor:
    """The notes' broadcasting, fixed: x_hat in both modes, running_var updated unbiased."""
    xf = _opmath(x)
    if training:
        mean = xf.mean((0, 2, 3))  # (C,)
        var = xf.var((0, 2, 3), unbiased=False)  # (C,), biased: what normalises the batch
        _update_running(running_mean, running_var, mean, var, x.numel() // x.shape[1], momentum)
    else:
        mean, var = running_mean, running_var
    # (C,) -> (1, C, 1, 1) broadcasts over batch and space
    x_hat = (xf - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + eps)
    out = weight[None, :, None, None] * x_hat + bias[None, :, None, None]
    return out.to(x.dtype)


#: Above this many elements (128 KiB in float32) the per-channel shift is broadcast from one
#: ``(C, 1, W)`` row instead of a ``(C, H, W)`` plane, so it stays in L1/L2 while x streams past.
SHIFT_PLANE_ELEMENTS = 1 << 15


def _channel_affine(src: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``src * scale + shift`` per channel in one vectorised pass: ``(N, C, H, W)`` out.

    An elementwise kernel is only vectorised when at most one operand is broadcast along the
    innermost dimension, so ``addcmul(shift (C,1,1), src, scale (C,1,1))`` would run scalar code
    (4x slower): the shift is materialised along the innermost dimension(s) instead, a small
    tensor reused for every image.
    """
    _, C, H, W = src.shape
    plane = (C, H, W) if C * H * W <= SHIFT_PLANE_ELEMENTS else (C, 1, W)
    shift = shift.view(C, 1, 1).expand(plane).contiguous()  # (C, H, W) or (C, 1, W)
    return torch.addcmul(shift, src, scale.view(C, 1, 1))  # (N, C, H, W)


@register_impl("bn", "fused")
def batchnorm2d_fused(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                      running_var: Tensor, training: bool, momentum: float,
                      eps: float) -> Tensor:
    """Per-channel scale and shift folded first, then one vectorised addcmul over x.

    Training: two-pass statistics (the mean, then the sum of squares of the centred ``x`` as
    per-image vector norms, which does not cancel catastrophically as ``E[x^2] - mean^2`` does;
    ``torch.var_mean``'s Welford pass alone takes longer on the CPU than the builtin's whole
    forward), the running statistics updated in place by ``lerp_``, and the centred ``x``
    scaled by ``weight / std``.
    Eval: ``x * scale + (bias - running_mean * scale)``.
    """
    xf = _opmath(x)
    N, C, H, W = x.shape
    if training:
        count = N * H * W
        mean = xf.mean((0, 2, 3))  # (C,)
        centred = xf - mean.view(C, 1, 1)  # (N, C, H, W)
        # sum of squares without a squared temporary: one more full-size buffer is one more set
        # of page faults when the allocator hands back fresh pages (~4 ms for 32x64x56x56)
        sum_sq = torch.linalg.vector_norm(centred, 2, (2, 3)).square().sum(0)  # (N, C) -> (C,)
        var = sum_sq / count  # (C,), biased: what normalises the batch
        running_mean.lerp_(mean.detach().to(running_mean.dtype), momentum)
        running_var.lerp_((var.detach() * (count / (count - 1))).to(running_var.dtype),
                          momentum)
        out = _channel_affine(centred, weight * torch.rsqrt(var + eps), bias)
    else:
        scale = weight * torch.rsqrt(running_var + eps)  # (C,)
        shift = torch.addcmul(bias, running_mean, scale, value=-1)  # (C,): bias - mean * scale
        out = _channel_affine(xf, scale, shift)
    # a no-op .to() still costs a microsecond, 2% of the smallest eval size
    return out if out.dtype == x.dtype else out.to(x.dtype)


@register_impl("bn", "builtin")
def batchnorm2d_builtin(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                        running_var: Tensor, training: bool, momentum: float,
                        eps: float) -> Tensor:
    """torch.nn.functional.batch_norm (native CPU kernel; cuDNN or native on CUDA)."""
    return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


class MyBatchNorm2d(nn.Module):
    """The notes' MyBatchNorm2d, behaving exactly like ``nn.BatchNorm2d`` (affine, tracking
    running statistics), computed by a chosen implementation.

    Parameters and buffers carry nn.BatchNorm2d's names (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``), so state dicts load either way; ``gamma`` and
    ``beta`` are the notes' names for ``weight`` and ``bias``.

    Args:
        impl: a registered bn implementation (``loops``, ``vectorized``, ``fused``, ``builtin``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 impl: str = "vectorized") -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self._fn = REGISTRY.impl("bn", impl).fn

    @property
    def gamma(self) -> nn.Parameter:
        return self.weight

    @property
    def beta(self) -> nn.Parameter:
        return self.bias

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"MyBatchNorm2d expects a 4D input (N, C, H, W), got {x.dim()}D")
        if self.training:
            self.num_batches_tracked.add_(1)
        return self._fn(x, self.weight, self.bias, self.running_mean, self.running_var,
                        self.training, self.momentum, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


__all__ = ["LAYER", "MyBatchNorm2d", "batchnorm2d_builtin", "batchnorm2d_fused",
           "batchnorm2d_loops", "batchnorm2d_vectorized"]
