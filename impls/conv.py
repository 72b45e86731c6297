"""Conv2d: the course notes' MyConv2d, with stride and padding, five ways.

Every implementation takes ``x (N, C_in, H, W)``, ``weight (C_out, C_in, k, k)``, ``bias (C_out,)``
and the integers ``stride`` and ``padding``, and returns ``(N, C_out, H_out, W_out)`` with
``H_out = (H + 2 * padding - k) // stride + 1``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.registry import REGISTRY, CaseInputs, Layer, Params, register_impl, register_layer


def out_size(size: int, k: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - k) // stride + 1


class Conv2dLayer(Layer):
    name = "conv"
    title = "Conv2d (MyConv2d)"
    order = 10
    params = ("N", "C_in", "C_out", "H", "W", "k", "stride", "padding")
    positive: ClassVar[tuple[str, ...] | None] = ("N", "C_in", "C_out", "H", "W", "k", "stride")
    labels: ClassVar[dict[str, str]] = {"C_in": "Cin", "C_out": "Cout", "stride": "s",
                                        "padding": "p"}

    def check(self, params: Params) -> None:
        super().check(params)
        if params["padding"] < 0:
            raise ValueError(f"conv: padding must be >= 0, got {params['padding']}")
        k, pad = params["k"], params["padding"]
        if k > min(params["H"], params["W"]) + 2 * pad:
            raise ValueError(f"conv: kernel k={k} is larger than the padded input "
                             f"{params['H'] + 2 * pad}x{params['W'] + 2 * pad}")

    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        N, C_in, C_out, H, W, k = (params[p] for p in ("N", "C_in", "C_out", "H", "W", "k"))
        fan_in = C_in * k * k

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        # Weights scaled by 1/sqrt(fan_in) keep outputs O(1), so float16 does not overflow.
        return CaseInputs(
            tensors={"x": randn(N, C_in, H, W),
                     "weight": randn(C_out, C_in, k, k) / math.sqrt(fan_in),
                     "bias": randn(C_out)},
            static={"stride": params["stride"], "padding": params["padding"]},
            grad=("x", "weight", "bias"),
        )

    def reference(self, x: Tensor, weight: Tensor, bias: Tensor, stride: int,
                  padding: int) -> Tensor:
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)

    def flops(self, params: Params, mode: str) -> int:
        # Multiply-adds of the GEMM only (the bias add is N*C_out*H_out*W_out, negligible), as
        # torch.utils.flop_counter counts. Backward: grad_x and grad_weight each cost one forward.
        H_out = out_size(params["H"], params["k"], params["stride"], params["padding"])
        W_out = out_size(params["W"], params["k"], params["stride"], params["padding"])
        fwd = 2 * params["N"] * params["C_out"] * H_out * W_out * params["C_in"] * params["k"] ** 2
        return fwd if mode == "fwd" else 3 * fwd

    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        N, C_in, C_out, k = params["N"], params["C_in"], params["C_out"], params["k"]
        H_out = out_size(params["H"], k, params["stride"], params["padding"])
        W_out = out_size(params["W"], k, params["stride"], params["padding"])
        x, w, b = N * C_in * params["H"] * params["W"], C_out * C_in * k * k, C_out
        out = N * C_out * H_out * W_out
        elements = x + w + b + out
        if mode == "fwdbwd":  # read grad_out, x, weight; write grad_x, grad_weight, grad_bias
            elements += out + x + w + x + w + b
        return elements * torch.empty((), dtype=dtype).element_size()

    def calibration_params(self, params: Params) -> dict[str, int]:
        # Keep k, stride and padding (they set the per-iteration cost); shrink everything else.
        k, s, p = params["k"], params["stride"], params["padding"]
        side = max(k - 2 * p, 1) + 3 * s
        return {"N": 1, "C_in": min(params["C_in"], 2), "C_out": min(params["C_out"], 2),
                "H": min(params["H"], side), "W": min(params["W"], side),
                "k": k, "stride": s, "padding": p}


LAYER = register_layer(Conv2dLayer())


@register_impl("conv", "loops", naive=True)
def conv2d_loops(x: Tensor, weight: Tensor, bias: Tensor, stride: int, padding: int) -> Tensor:
    """The notes' five nested Python loops (bias added once per output channel)."""
    N, C_in, H, W = x.shape
    C_out, _, k, _ = weight.shape
    H_out, W_out = out_size(H, k, stride, padding), out_size(W, k, stride, padding)
    xp = F.pad(x, (padding, padding, padding, padding))
    output = torch.zeros(N, C_out, H_out, W_out, dtype=x.dtype, device=x.device)
    for b in range(N):
        for oc in range(C_out):
            for ic in range(C_in):
                for i in range(H_out):
                    for j in range(W_out):
                        region = xp[b, ic, i * stride:i * stride + k, j * stride:j * stride + k]
                        output[b, oc, i, j] += torch.sum(region * weight[oc, ic])
            # the notes add the bias inside the ic and i loops: C_in * H_out times over
            output[b, oc] += bias[oc]
    return output


def _windows(x: Tensor, k: int, stride: int, padding: int) -> Tensor:
    """Sliding k x k windows as a strided view: (N, C_in, H_out, W_out, k, k), no copy."""
    xp = F.pad(x, (padding, padding, padding, padding))
    return xp.unfold(2, k, stride).unfold(3, k, stride)  # (N, C_in, H_out, W_out, k, k)


@register_impl("conv", "im2col")
def conv2d_im2col(x: Tensor, weight: Tensor, bias: Tensor, stride: int, padding: int) -> Tensor:
    """im2col: F.unfold copies every window into a column, then one GEMM with the weights."""
    N, _, H, W = x.shape
    C_out, _, k, _ = weight.shape
    H_out, W_out = out_size(H, k, stride, padding), out_size(W, k, stride, padding)
    cols = F.unfold(x, k, padding=padding, stride=stride)  # (N, C_in*k*k, H_out*W_out)
    out = weight.reshape(C_out, -1) @ cols  # (C_out, C_in*k*k) @ (N, C_in*k*k, L) -> (N, C_out, L)
    out = out + bias.view(1, C_out, 1)  # (N, C_out, L)
    return out.view(N, C_out, H_out, W_out)


@register_impl("conv", "einsum")
def conv2d_einsum(x: Tensor, weight: Tensor, bias: Tensor, stride: int, padding: int) -> Tensor:
    """Strided window view (no im2col copy) contracted with the weights by einsum."""
    win = _windows(x, weight.shape[-1], stride, padding)  # (N, C_in, H_out, W_out, k, k)
    out = torch.einsum("nchwij,ocij->nohw", win, weight)  # (N, C_out, H_out, W_out)
    return out + bias.view(1, -1, 1, 1)


#: Images per chunk are chosen so one chunk's columns hold about this many elements (2 MiB in
#: float32): small enough to stay in cache between the copy and the GEMM that reads them, and far
#: below glibc's 32 MiB mmap threshold, over which every call would page-fault a fresh buffer.
COLS_CHUNK_ELEMENTS = 1 << 19
#: Columns this small go through one ``addmm`` whatever the thread count: per-call overhead
#: dominates there, and ``baddbmm`` costs more of it (2x3x10x9, 3x3 stride 2: 0.5 vs 0.75 x
#: builtin on 2 threads).
TINY_COLS_ELEMENTS = 1 << 15


def _window_cols(x: Tensor, k: int, stride: int, H_out: int, W_out: int, dtype: torch.dtype,
                 batch_first: bool) -> Tensor:
    """im2col of already padded ``x (N, C_in, Hp, Wp)`` by one strided copy, in ``dtype``.

    Returns ``(N, C_in*k*k, L)`` if ``batch_first`` (one GEMM per image), else
    ``(C_in*k*k, N*L)`` (one GEMM for the whole batch). ``x`` may be a float32 copy of a
    half-precision input: the gather and the cast are then one copy.
    """
    N, C_in, _, _ = x.shape
    sN, sC, sH, sW = x.stride()
    # window (i, j) of output pixel (h, w) starts at (h * stride, w * stride): a view, no copy
    if batch_first:
        win = x.as_strided((N, C_in, k, k, H_out, W_out),
                           (sN, sC, sH, sW, sH * stride, sW * stride))  # (N, C_in, k, k, Ho, Wo)
        shape = (N, C_in * k * k, H_out * W_out)
    else:
        win = x.as_strided((C_in, k, k, N, H_out, W_out),
                           (sC, sH, sW, sN, sH * stride, sW * stride))  # (C_in, k, k, N, Ho, Wo)
        shape = (C_in * k * k, N * H_out * W_out)
    if win.dtype != dtype:
        win = win.to(dtype)
    # the one copy (none for a 1x1 kernel, stride 1, batch first); *shape: a tuple argument
    # costs half a microsecond more to parse, a tenth of the smallest conv's budget
    return win.reshape(*shape)


@register_impl("conv", "im2col_chunked")
def conv2d_im2col_chunked(x: Tensor, weight: Tensor, bias: Tensor, stride: int,
                          padding: int) -> Tensor:
    """im2col in cache-sized chunks of images: one strided copy, one GEMM with the bias fused.

    Unlike ``im2col`` (F.unfold over the whole batch, then a matmul and a separate bias add),
    the columns are gathered from a strided window view, about ``COLS_CHUNK_ELEMENTS`` per
    thread at a time, and the bias rides in the GEMM. Batched, images go through ``baddbmm``,
    which splits its batch between threads and writes each image's ``(C_out, L)`` output in
    contiguous NCHW order. One ``addmm`` with the batch folded into its N dimension instead
    when the batch fits in one chunk and one thread runs, or the columns are tiny (fewest
    calls: such sizes are dispatch-bound); the output is then an NCHW view of a
    ``(C_out, N, H_out, W_out)`` buffer, not contiguous when N > 1. (On 2 threads MKL's split
    of that one skinny GEMM left a core idle: 64 MNIST digits 0.94 x builtin, 0.55 batched.)
    """
    N, C_in, H, W = x.shape
    C_out, _, k, _ = weight.shape
    H_out, W_out = out_size(H, k, stride, padding), out_size(W, k, stride, padding)
    L, K = H_out * W_out, C_in * k * k
    dtype = x.dtype
    half = dtype in (torch.float16, torch.bfloat16)
    if half:
        # The window view's backward sums up to k*k overlapping column gradients into each
        # input element; in bfloat16 that sum drifts past tolerance (F.unfold's too), so the
        # windows are taken from a float32 copy and the sum runs in float32.
        x = x.float()
    pad = (padding, padding, padding, padding)
    w2 = weight.reshape(C_out, K)  # (C_out, C_in*k*k)
    b2 = bias.unsqueeze(1)  # (C_out, 1): broadcast over the output pixels
    threads = torch.get_num_threads()
    if N * K * L <= COLS_CHUNK_ELEMENTS and (N == 1 or threads == 1
                                            or N * K * L <= TINY_COLS_ELEMENTS):
        cols = _window_cols(F.pad(x, pad) if padding else x, k, stride, H_out, W_out, dtype,
                            batch_first=False)  # (C_in*k*k, N*L)
        out = torch.addmm(b2, w2, cols)  # (C_out, K) @ (K, N*L) -> (C_out, N*L)
        if N == 1:
            return out.view(1, C_out, H_out, W_out)
        return out.view(C_out, N, H_out, W_out).transpose(0, 1)  # (N, C_out, H_out, W_out)
    chunk = max(1, COLS_CHUNK_ELEMENTS // (K * L))
    # whole images for every thread: baddbmm splits its batch between threads, and a GEMM this
    # small gains little from being split itself (5x5, 16->32 channels: 1.43 -> 1.12 x builtin
    # on 2 threads with 2 images per chunk instead of 1)
    chunk = -(-chunk // threads) * threads
    if half:
        # autograd sums the chunks' weight and bias gradients: in float32 too (.to() below
        # casts back for the GEMM; in float32 and float64 it returns the tensor itself)
        w2, b2 = w2.float(), b2.float()
    outs = []
    for xc in x.split(chunk):  # (n, C_in, H, W): padded here, while it is in cache
        cols = _window_cols(F.pad(xc, pad) if padding else xc, k, stride, H_out, W_out, dtype,
                            batch_first=True)  # (n, C_in*k*k, L)
        outs.append(torch.baddbmm(b2.to(dtype), w2.to(dtype).expand(len(xc), C_out, K),
                                  cols))  # (n, C_out, K) @ (n, K, L) -> (n, C_out, L)
    out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (N, C_out, L)
    return out.view(N, C_out, H_out, W_out)


@register_impl("conv", "builtin", libraries=("cudnn_conv",))
def conv2d_builtin(x: Tensor, weight: Tensor, bias: Tensor, stride: int, padding: int) -> Tensor:
    """torch.nn.functional.conv2d (oneDNN on CPU, cuDNN on CUDA)."""
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


class MyConv2d(nn.Module):
    """The notes' MyConv2d with stride and padding, computed by a chosen implementation.

    Args:
        impl: a registered conv implementation (``loops``, ``im2col``, ``einsum``,
            ``im2col_chunked``, ``builtin``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, impl: str = "im2col") -> None:
        super().__init__()
        # Same initialisation as the notes: small random weights, zero bias.
        self.weight = nn.Parameter(
            torch.randn(out_channels, in_channels, kernel_size, kernel_size) * 0.01)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.stride, self.padding = stride, padding
        self._fn = REGISTRY.impl("conv", impl).fn

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        c_out, c_in, k, _ = self.weight.shape
        return f"{c_in}, {c_out}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


__all__ = ["LAYER", "MyConv2d", "conv2d_builtin", "conv2d_einsum", "conv2d_im2col",
           "conv2d_im2col_chunked", "conv2d_loops"]
