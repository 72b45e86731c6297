"""Your own conv, checked and timed beside the built-in ones.

    python cli.py bench conv --impl-file docs/examples/my_conv.py --impl my_im2col_nhwc

Register a function with the same signature as the built-in implementations; layerbench builds
the inputs, checks the output (and, with --mode fwdbwd, the gradients) against a float64
reference, and times it against F.conv2d.
"""

import torch.nn.functional as F
from torch import Tensor

from impls import register_impl


@register_impl("conv", "my_im2col_nhwc")
def conv2d_my_im2col_nhwc(x: Tensor, weight: Tensor, bias: Tensor, stride: int,
                          padding: int) -> Tensor:
    """im2col with the output channels last: one (N*L, C_in*k*k) @ (C_in*k*k, C_out) GEMM."""
    N, _, H, W = x.shape
    C_out, _, k, _ = weight.shape
    H_out = (H + 2 * padding - k) // stride + 1
    W_out = (W + 2 * padding - k) // stride + 1
    cols = F.unfold(x, k, padding=padding, stride=stride)  # (N, C_in*k*k, L)
    rows = cols.transpose(1, 2).reshape(N * H_out * W_out, -1)  # (N*L, C_in*k*k)
    out = rows @ weight.reshape(C_out, -1).t() + bias  # (N*L, C_out)
    return out.view(N, H_out, W_out, C_out).permute(0, 3, 1, 2)  # (N, C_out, H_out, W_out)
