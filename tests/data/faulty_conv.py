"""Conv implementations that fail in every way a benchmark run must survive (fault injection).

Load with ``--impl-file tests/data/faulty_conv.py``; each is named for its failure.
"""

import os
import signal
import time

import torch
import torch.nn.functional as F

from impls import register_impl


@register_impl("conv", "raises")
def conv2d_raises(x, weight, bias, stride, padding):
    raise RuntimeError("this kernel is not finished")


@register_impl("conv", "nan")
def conv2d_nan(x, weight, bias, stride, padding):
    out = F.conv2d(x, weight, bias, stride=stride, padding=padding)
    return out * float("nan")


@register_impl("conv", "sleeps")
def conv2d_sleeps(x, weight, bias, stride, padding):
    time.sleep(3600)  # stuck: only the time limit ends it
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


@register_impl("conv", "hog")
def conv2d_hog(x, weight, bias, stride, padding):
    # asks for 4 PiB at once: the allocator refuses at once, nothing is touched (bounded)
    torch.empty(2**50, dtype=torch.float32, device=x.device)
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


@register_impl("conv", "killself")
def conv2d_killself(x, weight, bias, stride, padding):
    os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer or a segfault would
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


@register_impl("conv", "slow")
def conv2d_slow(x, weight, bias, stride, padding):
    time.sleep(0.02)  # correct, but slow enough for a run to be interrupted mid-way
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)
