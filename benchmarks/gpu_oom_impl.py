"""A conv that asks the GPU for far more memory than it has: ``gpu_smoke.sh`` runs it in a
worker (``--isolate``) and expects an ``oom`` row and a run that goes on."""

import torch
from torch import Tensor

from impls import register_impl


@register_impl("conv", "greedy")
def conv2d_greedy(x: Tensor, weight: Tensor, bias: Tensor, stride: int, padding: int) -> Tensor:
    """Allocates 4 TiB on the input's device before doing anything."""
    hoard = torch.empty(1 << 42, dtype=torch.uint8, device=x.device)
    return hoard[:0].float().sum() + torch.nn.functional.conv2d(x, weight, bias, stride, padding)
