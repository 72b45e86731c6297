"""MyCNN: the course notes' small MNIST network, conv -> bn -> relu -> maxpool -> fc.

Every implementation takes ``x (N, C_in, H, W)``, the conv's ``conv_weight (C_out, C_in, 3, 3)``
and ``conv_bias (C_out,)``, the BatchNorm's ``bn_weight, bn_bias, running_mean, running_var
(C_out,)``, the classifier's ``fc_weight (10, C_out * H_p * W_p)`` and ``fc_bias (10,)`` with
``H_p = (H - 2) // 2`` (a 3x3 conv without padding, then 2x2 max pooling; the notes' 28x28 digits
give 8 * 13 * 13), and the BatchNorm's ``training``, ``momentum`` and ``eps``. It returns the
logits ``(N, 10)``. With ``training`` the BatchNorm normalises with the batch statistics and
updates ``running_mean`` and ``running_var`` in place, exactly as ``F.batch_norm``.

Each implementation is one *family* (``FAMILIES``): it is composed of that family's registered
conv, bn, pool and linear implementations (its ``parts``), so the CNN shows what each technique
costs in a whole network. The ``train`` mode is one full training step: forward, cross-entropy
against ``target`` (which only the loss sees), backward, and an SGD update of the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import impls.linear
import impls.pool  # noqa: F401  (with impls.linear: the parts FAMILIES name are registered)
from impls.bn import MyBatchNorm2d
from impls.conv import MyConv2d
from impls.registry import REGISTRY, CaseInputs, Layer, Params, register_impl, register_layer

#: the notes' fixed structure: 3x3 conv without padding, 2x2 max pooling, 10 classes
K, POOL, NUM_CLASSES = 3, 2, 10
MOMENTUM, EPS = 0.1, 1e-5  # nn.BatchNorm2d's defaults, and the notes'

#: family -> the implementation of each part it is made of
FAMILIES: dict[str, dict[str, str]] = {
    "loops": {"conv": "loops", "bn": "loops", "pool": "loops", "linear": "loops"},
    "im2col": {"conv": "im2col", "bn": "vectorized", "pool": "unfold", "linear": "matmul"},
    "einsum": {"conv": "einsum", "bn": "vectorized", "pool": "unfold", "linear": "einsum"},
    "builtin": {"conv": "builtin", "bn": "builtin", "pool": "builtin", "linear": "builtin"},
}


def fc_features(params: Params) -> int:
    """in_features of fc: ``C_out * H_p * W_p`` after the 3x3 conv and the 2x2 pool."""
    return params["C_out"] * ((params["H"] - K + 1) // POOL) * ((params["W"] - K + 1) // POOL)


class CNNLayer(Layer):
    name = "cnn"
    title = "MyCNN (conv -> bn -> relu -> maxpool -> fc)"
    order = 50
    params = ("N", "C_in", "C_out", "H", "W", "training")
    positive: ClassVar[tuple[str, ...] | None] = ("N", "C_in", "C_out", "H", "W")
    labels: ClassVar[dict[str, str]] = {"C_in": "Cin", "C_out": "Cout", "training": "train"}
    modes: ClassVar[tuple[str, ...]] = ("fwd", "fwdbwd", "train")

    def check(self, params: Params) -> None:
        super().check(params)
        if params["training"] not in (0, 1):
            raise ValueError("cnn: training must be 0 (BatchNorm in eval) or 1 (batch "
                             f"statistics), got {params['training']}")
        if min(params["H"], params["W"]) < K + POOL - 1:
            raise ValueError(f"cnn: the image {params['H']}x{params['W']} is too small for a "
                             f"{K}x{K} conv and a {POOL}x{POOL} pool (at least {K + POOL - 1})")

    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        N, C_in, C_out, H, W = (params[p] for p in ("N", "C_in", "C_out", "H", "W"))
        features = fc_features(params)

        def randn(*shape: int, std: float = 1.0) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64) * std

        # Weights scaled by 1/sqrt(fan_in) keep every stage O(1) (float16 does not overflow);
        # BatchNorm's affine and running statistics are random too, never the 1/0 defaults.
        tensors = {
            "x": randn(N, C_in, H, W),
            "conv_weight": randn(C_out, C_in, K, K, std=1 / math.sqrt(C_in * K * K)),
            "conv_bias": randn(C_out),
            "bn_weight": randn(C_out, std=0.5) + 1,
            "bn_bias": randn(C_out, std=0.5),
            "running_mean": randn(C_out, std=0.5),
            "running_var": randn(C_out).mul(0.5).exp(),  # positive, around 1
            "fc_weight": randn(NUM_CLASSES, features, std=1 / math.sqrt(features)),
            "fc_bias": randn(NUM_CLASSES),
            "target": torch.randint(0, NUM_CLASSES, (N,), generator=generator),
        }
        # The weights, not the image. In training the conv bias gets no gradient: BatchNorm
        # subtracts the batch mean, so it is exactly zero, and an RMS-relative comparison of
        # rounding noise against zero would be meaningless.
        grad = ("conv_weight", "conv_bias", "bn_weight", "bn_bias", "fc_weight", "fc_bias")
        if params["training"]:
            grad = tuple(g for g in grad if g != "conv_bias")
        return CaseInputs(tensors=tensors,
                          static={"training": bool(params["training"]), "momentum": MOMENTUM,
                                  "eps": EPS},
                          grad=grad, state=("running_mean", "running_var"),
                          loss_only=("target",))

    def reference(self, x: Tensor, conv_weight: Tensor, conv_bias: Tensor, bn_weight: Tensor,
                  bn_bias: Tensor, running_mean: Tensor, running_var: Tensor, fc_weight: Tensor,
                  fc_bias: Tensor, training: bool, momentum: float, eps: float) -> Tensor:
        out = F.conv2d(x, conv_weight, conv_bias)  # (N, C_out, H-2, W-2)
        out = F.batch_norm(out, running_mean, running_var, bn_weight, bn_bias, training,
                           momentum, eps)
        out = F.max_pool2d(F.relu(out), POOL)  # (N, C_out, H_p, W_p)
        return F.linear(out.flatten(1), fc_weight, fc_bias)  # (N, C_out*H_p*W_p) -> (N, 10)

    def loss(self, output: Tensor, tensors: Mapping[str, Tensor]) -> Tensor:
        return F.cross_entropy(output, tensors["target"])

    def _gemm_flops(self, params: Params) -> tuple[int, int]:
        H_c, W_c = params["H"] - K + 1, params["W"] - K + 1
        conv = 2 * params["N"] * params["C_out"] * H_c * W_c * params["C_in"] * K * K
        return conv, 2 * params["N"] * NUM_CLASSES * fc_features(params)

    def flops(self, params: Params, mode: str) -> int:
        # conv and fc multiply-adds, as torch.utils.flop_counter counts; BatchNorm, relu, the
        # pool, the loss and the SGD update (all elementwise) are left out. Backward: the image
        # gets no gradient, so the conv adds its weight gradient only (one forward's worth);
        # fc adds its input and weight gradients. train counts the same GEMMs as fwdbwd.
        conv, fc = self._gemm_flops(params)
        return conv + fc if mode == "fwd" else 2 * conv + 3 * fc

    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        # Minimum traffic of the whole network: image, weights, logits; intermediate
        # activations are not counted (a fused network would not write them).
        N, C_in, C_out = params["N"], params["C_in"], params["C_out"]
        x = N * C_in * params["H"] * params["W"]
        weights = (C_out * C_in * K * K + C_out + 2 * C_out
                   + NUM_CLASSES * fc_features(params) + NUM_CLASSES)
        out = N * NUM_CLASSES
        elements = x + weights + 2 * C_out + out  # + running_mean, running_var read
        if params["training"]:  # running statistics written back
            elements += 2 * C_out
        if mode == "fwdbwd":  # read grad_out; write the weight gradients
            elements += out + weights
        elif mode == "train":  # write the weight gradients, then read them and update the weights
            elements += 3 * weights
        size = torch.empty((), dtype=dtype).element_size()
        target = N * torch.empty((), dtype=torch.long).element_size() if mode == "train" else 0
        return elements * size + target

    def calibration_params(self, params: Params) -> dict[str, int]:
        # The conv loops dominate the loops family: one iteration per (n, C_out, C_in, i, j).
        # Keep the structure, shrink everything to a 6x6 image (4x4 conv output, 2x2 pooled).
        return {"N": 1, "C_in": min(params["C_in"], 2), "C_out": min(params["C_out"], 2),
                "H": min(params["H"], 6), "W": min(params["W"], 6),
                "training": params["training"]}


LAYER = register_layer(CNNLayer())


def _mycnn(family: str) -> Callable[..., Tensor]:
    """The notes' forward, each part computed by ``family``'s implementation of it (bound now,
    not looked up on every call)."""
    parts = FAMILIES[family]
    conv, bn, pool, linear = (REGISTRY.impl(layer, parts[layer]).fn
                              for layer in ("conv", "bn", "pool", "linear"))

    def forward(x: Tensor, conv_weight: Tensor, conv_bias: Tensor, bn_weight: Tensor,
                bn_bias: Tensor, running_mean: Tensor, running_var: Tensor, fc_weight: Tensor,
                fc_bias: Tensor, training: bool, momentum: float, eps: float) -> Tensor:
        out = conv(x, conv_weight, conv_bias, 1, 0)  # (N, C_out, H-2, W-2)
        out = bn(out, bn_weight, bn_bias, running_mean, running_var, training, momentum, eps)
        out = pool(torch.relu(out), POOL)  # (N, C_out, H_p, W_p)
        return linear(out.flatten(1), fc_weight, fc_bias)  # (N, C_out*H_p*W_p) -> (N, 10)

    return forward


def _register(family: str, doc: str) -> Callable[..., Tensor]:
    fn = _mycnn(family)
    fn.__name__ = fn.__qualname__ = f"cnn_{family}"
    fn.__doc__ = doc
    parts = FAMILIES[family]
    return register_impl("cnn", family, naive=family == "loops",
                         notes=", ".join(f"{layer} {impl}" for layer, impl in parts.items()),
                         parts=tuple(parts.items()))(fn)


cnn_loops = _register(
    "loops", "The naive family: every part a Python loop (the notes' five-loop conv among them).")
cnn_im2col = _register(
    "im2col", "The hand-vectorised family: im2col's GEMM for the conv, tensor ops for the rest.")
cnn_einsum = _register(
    "einsum", "The einsum family: the conv (on strided windows, no copy) and fc as einsums.")
cnn_builtin = _register("builtin", "The built-in family: torch.nn.functional throughout.")


class MyCNN(nn.Module):
    """The notes' MyCNN, each part computed by one implementation family.

    The submodules are the notes' (``conv``: MyConv2d, ``bn``: MyBatchNorm2d, ``pool``, ``fc``:
    nn.Linear holding the classifier's weights); ``train()``/``eval()`` switch the BatchNorm
    between batch and running statistics. The defaults are the notes' network for 28x28 digits.

    Args:
        impl: a family (``loops``, ``im2col``, ``einsum``, ``builtin``).

    Shapes: ``x (N, in_channels, H, W)`` -> logits ``(N, 10)``.
    """

    def __init__(self, impl: str = "builtin", in_channels: int = 1, out_channels: int = 8,
                 image_size: tuple[int, int] = (28, 28)) -> None:
        super().__init__()
        if impl not in FAMILIES:
            raise KeyError(f"unknown implementation {impl!r} of cnn "
                           f"(choose from {', '.join(FAMILIES)})")
        parts = FAMILIES[impl]
        self.impl = impl
        self.conv = MyConv2d(in_channels, out_channels, K, impl=parts["conv"])
        self.bn = MyBatchNorm2d(out_channels, momentum=MOMENTUM, eps=EPS, impl=parts["bn"])
        self.pool = _MaxPool(POOL, impl=parts["pool"])
        size = {"C_out": out_channels, "H": image_size[0], "W": image_size[1]}
        self.fc = nn.Linear(fc_features(size), NUM_CLASSES)  # 8 * 13 * 13 -> 10 for 28x28
        self._linear = REGISTRY.impl("linear", parts["linear"]).fn

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.bn(x)
        x = torch.relu(x)
        x = self.pool(x)
        x = x.flatten(1)  # (N, C_out, H_p, W_p) -> (N, C_out*H_p*W_p), the notes' view
        return self._linear(x, self.fc.weight, self.fc.bias)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}"


class _MaxPool(nn.Module):
    """The notes' nn.MaxPool2d(k), computed by a registered pool implementation."""

    def __init__(self, k: int, impl: str) -> None:
        super().__init__()
        self.k, self.impl = k, impl
        self._fn = REGISTRY.impl("pool", impl).fn

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x, self.k)

    def extra_repr(self) -> str:
        return f"kernel_size={self.k}, impl={self.impl!r}"


__all__ = ["FAMILIES", "LAYER", "MyCNN", "cnn_builtin", "cnn_einsum", "cnn_im2col",
           "cnn_loops", "fc_features"]
