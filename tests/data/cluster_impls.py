"""Conv implementations that test the Dask executor from the inside (``tests/test_cluster.py``).

- ``whoami`` says which machine ran it: it is skipped with ``ran on <LAYERBENCH_MACHINE>``.
- ``die_once`` kills the Dask worker running it (its case's worker process's parent) the first
  time any worker runs it (a marker file in ``$LAYERBENCH_TEST_MARKER`` remembers), then computes
  the convolution like the builtin.
- ``die_always`` kills the Dask worker running it, every time.
"""

import os
import signal
import time
from pathlib import Path

import torch
from torch import Tensor

from impls import register_impl
from impls.registry import Unsupported


@register_impl("conv", "whoami")
def conv2d_whoami(x: Tensor, weight: Tensor, bias: Tensor, stride: int, padding: int) -> Tensor:
    """Skipped, with the machine it ran on as the reason."""
    raise Unsupported(f"ran on {os.environ.get('LAYERBENCH_MACHINE', '?')}")


def _kill_dask_worker() -> None:
    time.sleep(0.5)  # mid-case: the worker has said which case it runs
    os.kill(os.getppid(), signal.SIGKILL)
    os._exit(1)  # and this worker process with it


@register_impl("conv", "die_once")
def conv2d_die_once(x: Tensor, weight: Tensor, bias: Tensor, stride: int, padding: int) -> Tensor:
    """Kills its Dask worker the first time, then is F.conv2d."""
    marker = Path(os.environ["LAYERBENCH_TEST_MARKER"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        _kill_dask_worker()
    return torch.nn.functional.conv2d(x, weight, bias, stride, padding)


@register_impl("conv", "die_always")
def conv2d_die_always(x: Tensor, weight: Tensor, bias: Tensor, stride: int,
                      padding: int) -> Tensor:
    """Kills its Dask worker, every time."""
    _kill_dask_worker()
    return x
