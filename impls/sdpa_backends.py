"""SDPA restricted to one CUDA backend, and why a backend refuses a case.

Under ``sdpa_kernel(backend)`` SDPA raises "No available kernel" when that backend's checks
refuse the inputs (flash: d_k != d_v or a head dimension over 256; efficient: head dimensions not
a multiple of 8 in half precision, 4 in float32; cuDNN: head dimension limits, a key length of
1, ...), its reasons only on stderr: an ``error`` row for a case the backend simply does not
cover. ``restricted_sdpa`` asks the backend's ``torch.backends.cuda.can_use_*_attention`` first,
on the ``SDPAParams`` SDPA's own kernel selection builds (q, k, v, the mask as given, no
dropout, not causal, no GQA) and under the same restriction, so its answer is the selection's.
It runs checks on sizes and flags only (no kernel, microseconds), on every call; a "no" raises
``Unsupported`` (the case is ``skipped``) with torch's reasons.

Where the reasons come from: ``can_use_*(params, debug=True)`` says why, but torch 2.13 binds
those functions as plain pybind11 lambdas (torch/csrc/Module.cpp), without the handler that
turns C++ warnings into Python ones, so their reasons go to C++'s log on fd 2. SDPA is bound
with it: when the restricted selection fails it re-runs every backend's checks with debug on
and raises each reason as a Python warning, under a "<backend> kernel not used because:"
heading per backend. So a refusal calls SDPA once more under ``warnings.catch_warnings`` and
keeps the reasons under the backend's heading; where that gives none, what
``can_use_*(params, debug=True)`` warns in Python (a build that routes them, or a stand-in in
tests). torch warns some reasons once per process (cuDNN's key length 1): a refusal with none
says so and names the backend's usual limits.
"""

from __future__ import annotations

import re
import warnings
from contextlib import suppress
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from impls.registry import Unsupported


@dataclass(frozen=True)
class Backend:
    """One restricted SDPA backend: its implementation, its check and how torch names it."""

    sdp: SDPBackend
    impl: str  # the attention implementation that runs it, e.g. ``sdpa_flash``
    title: str  # e.g. ``flash``
    check: str  # its ``torch.backends.cuda`` function, looked up per call (tests replace it)
    heading: str  # the warning SDPA's selection puts before this backend's reasons
    limits: str  # its usual limits, for a refusal torch gives no reason for


FLASH = Backend(
    SDPBackend.FLASH_ATTENTION, "sdpa_flash", "flash", "can_use_flash_attention",
    "Flash attention kernel not used because:",
    "float16 or bfloat16, no attn_mask, d_k == d_v <= 256, compute capability 8.0+")
EFFICIENT = Backend(
    SDPBackend.EFFICIENT_ATTENTION, "sdpa_efficient", "efficient", "can_use_efficient_attention",
    "Memory efficient kernel not used because:",
    "d_k and d_v multiples of 8 in half precision (4 in float32), inputs aligned to them")
CUDNN = Backend(
    SDPBackend.CUDNN_ATTENTION, "sdpa_cudnn", "cuDNN", "can_use_cudnn_attention",
    "cuDNN attention kernel not used because:",
    "float16 or bfloat16, d_k and d_v multiples of 8 up to 128 (256 on sm90/sm100 with a "
    "recent cuDNN), len_k > 1, compute capability 8.0+")
#: the end of each backend's heading among SDPA's warnings
HEADING_END = "not used because:"
#: where C++ raised a warning, appended by torch's warning handler
TRIGGERED = re.compile(r"\s*\(Triggered internally at [^)]*\)\s*$")


def restricted_sdpa(backend: Backend, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                    scale: float) -> Tensor:
    """``F.scaled_dot_product_attention`` on ``backend`` alone: ``(N, h, len_q, d_v)``.

    Raises ``Unsupported`` with torch's reasons where the backend refuses the inputs.
    """
    # dynamo cannot trace SDPAParams' construction (a pybind11 class): under torch.compile the
    # question is asked eagerly, between two graphs; eager calls skip that wrapper's cost
    refusal = _refusal_untraced if torch.compiler.is_compiling() else sdpa_refusal
    with sdpa_kernel(backend.sdp):
        if reason := refusal(backend, q, k, v, mask):
            raise Unsupported(reason)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def sdpa_refusal(backend: Backend, q: Tensor, k: Tensor, v: Tensor,
                 mask: Tensor | None) -> str:
    """Why ``backend`` refuses these inputs, or ``""`` where it takes them.

    Call it under ``sdpa_kernel(backend.sdp)``, as the call it vets runs: the checks include
    whether the backend is enabled.
    """
    check = getattr(torch.backends.cuda, backend.check)
    params = torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, False, False)
    if check(params):
        return ""
    reasons = _selection_reasons(backend, q, k, v, mask)
    if not reasons:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check(params, True)
        reasons = _messages(caught)
    return refusal_text(backend, reasons, q.device.type)


def refusal_text(backend: Backend, reasons: list[str], device_type: str) -> str:
    """The ``Unsupported`` message of a refusal: torch's ``reasons``, or why there are none."""
    head = f"{backend.impl}: the {backend.title} backend refuses this case"
    if reasons:
        return f"{head}: {'; '.join(reasons)}"
    if device_type != "cuda":
        return f"{head}: it runs on CUDA, these tensors are on {device_type}"
    return (f"{head} (torch.backends.cuda.{backend.check} is False; torch gave no reason, as "
            f"it gives some once per process only); its usual limits: {backend.limits}")


_refusal_untraced = torch.compiler.disable(sdpa_refusal)


def _selection_reasons(backend: Backend, q: Tensor, k: Tensor, v: Tensor,
                       mask: Tensor | None) -> list[str]:
    """The reasons SDPA's kernel selection warns under ``backend``'s heading when it fails
    (called under the restriction; the selection fails before any kernel or allocation)."""
    # "No available kernel": the refusal its warnings explain
    with warnings.catch_warnings(record=True) as caught, suppress(RuntimeError):
        warnings.simplefilter("always")
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return under_heading(_messages(caught), backend.heading)


def under_heading(messages: list[str], heading: str) -> list[str]:
    """The messages after ``heading`` up to the next backend's heading."""
    kept, inside = [], False
    for message in messages:
        if message.endswith(HEADING_END):
            inside = message == heading
        elif inside:
            kept.append(message)
    return kept


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    """Each distinct warning's text, without torch's "(Triggered internally at ...)"."""
    return list(dict.fromkeys(TRIGGERED.sub("", str(w.message)).strip() for w in caught))


__all__ = ["CUDNN", "EFFICIENT", "FLASH", "Backend", "refusal_text", "restricted_sdpa",
           "sdpa_refusal", "under_heading"]
