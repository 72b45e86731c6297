"""What a failed case means: ``oom``, ``error``, or an ``error`` that lost the CUDA context.

An out-of-memory failure rarely arrives as a bare ``torch.OutOfMemoryError``: inductor and triton
wrap it (``BackendCompilerFailed``, ``InductorError``: the original in ``inner_exception``), code
re-raises it chained (``__cause__``, ``__context__``), and cuBLAS, cuDNN and the host allocator
report it only in words. :func:`classify` walks the whole chain and reads each message.

Not memory: triton's ``OutOfResources`` ("out of resource: shared memory ...") and CUDA's "too
many resources requested for launch" say that one kernel's launch configuration asks for more
shared memory or registers per block than the device has. That does not depend on what else
holds memory, and a smaller input rarely cures it: it is the implementation's (or compiler's)
failure on this device, an ``error``.

A *sticky* CUDA error (an illegal memory access, a device-side assert, a launch failure ...)
leaves the process's CUDA context unusable: every later CUDA call in it fails with the same
error. :func:`context_lost` recognises one (``torch.AcceleratorError``'s ``error_code``, or the
CUDA runtime's words where it came as a plain ``RuntimeError``, e.g. from triton);
``suites.isolation`` then replaces the worker, or stops running CUDA cases in this process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch

#: cudaError_t codes after which the context is unusable (CUDA runtime API, same in HIP):
#: ECC uncorrectable, illegal address, launch timeout, context destroyed, assert, hardware
#: stack error, illegal instruction, misaligned address, invalid address space, invalid PC,
#: launch failure
STICKY_CUDA_CODES = frozenset({214, 700, 702, 709, 710, 714, 715, 716, 717, 718, 719})
STICKY_CUDA_MESSAGE = re.compile(
    "an illegal memory access was encountered|device-side assert triggered|"
    "unspecified launch failure|an illegal instruction was encountered|misaligned address|"
    "invalid program counter|hardware stack error|uncorrectable ECC error encountered|"
    "the launch timed out and was terminated|context is destroyed", re.IGNORECASE)
#: out of memory in words: the CUDA/HIP/MPS allocators and runtime ("CUDA out of memory",
#: "CUDA error: out of memory"), the CUDA libraries' allocation statuses (CUBLAS_STATUS_ALLOC_
#: FAILED, CUDNN_STATUS_ALLOC_FAILED, cuDNN 9's CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_
#: FAILED, CUFFT_ALLOC_FAILED ...) and the host (torch's DefaultCPUAllocator "can't allocate
#: memory", ENOMEM's "Cannot allocate memory", C++'s std::bad_alloc)
OOM_MESSAGE = re.compile(r"out of memory|\bCU[A-Z]+_[A-Z_]*ALLOC[A-Z_]*FAILED\b|"
                         r"can(?:no|')t allocate memory|std::bad_alloc", re.IGNORECASE)
CHAIN_LIMIT = 32  # exceptions looked at per failure: chains are short; cycles are cut anyway
REASON_CHARS = 500
NOTE_CHARS = 320  # an exception in a note (a failed profile): its type and message's start


def classify(exc: BaseException) -> tuple[str, str]:
    """The ``(status, reason)`` of a case that raised ``exc``: ``oom`` when any exception in
    its chain ran out of memory, else ``error`` (its reason saying so when the CUDA context is
    lost)."""
    if lost := context_lost(exc):
        return "error", lost
    found = [e for e in chain(exc) if isinstance(e, (torch.OutOfMemoryError, MemoryError))]
    found = found or [e for e in chain(exc) if OOM_MESSAGE.search(_text(e))]
    if not found:
        return "error", describe(exc)
    inside = f" (inside {type(exc).__name__})" if found[0] is not exc else ""
    return "oom", describe(found[0], REASON_CHARS - len(inside)) + inside


def context_lost(exc: BaseException) -> str | None:
    """Why the CUDA context of this process is lost, when ``exc`` (or any exception in its
    chain) is a sticky CUDA error; else None."""
    for found in chain(exc):
        code = getattr(found, "error_code", None)
        if (isinstance(found, torch.AcceleratorError) and code in STICKY_CUDA_CODES) or (
                isinstance(found, RuntimeError) and STICKY_CUDA_MESSAGE.search(_text(found))):
            return ("CUDA context lost (a sticky CUDA error: every later CUDA call in this "
                    f"process fails): {describe(found, 400)}")
    return None


def exit_reason(exc: SystemExit) -> str:
    """The reason of a case whose implementation called ``sys.exit``."""
    return (f"SystemExit: the implementation called sys.exit({exc.code!r}); a case cannot end "
            "the run (raise an exception to fail it)")


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it, nearest first: ``inner_exception`` (dynamo's and
    inductor's wrappers), ``__cause__``, ``__context__`` and an exception group's members."""
    todo, seen = [exc], set()
    while todo and len(seen) < CHAIN_LIMIT:
        found = todo.pop(0)
        if id(found) in seen:
            continue
        seen.add(id(found))
        yield found
        members = getattr(found, "exceptions", ())
        behind = [getattr(found, "inner_exception", None), found.__cause__, found.__context__,
                  *(members if isinstance(members, tuple) else ())]
        todo += [e for e in behind if isinstance(e, BaseException)]


def describe(exc: BaseException, limit: int = REASON_CHARS) -> str:
    """``Type: message`` on one line, at most ``limit`` characters."""
    return f"{type(exc).__name__}: {' '.join(_text(exc).split())}"[:limit]


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a user's exception whose __str__ fails must not end the run
        return f"<{type(exc).__name__} whose message cannot be read>"
