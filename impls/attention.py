"""Scaled dot-product attention: the notes' ScaledDotProductAttention, several ways.

Every implementation takes ``q (N, n_head, len_q, d_k)``, ``k (N, n_head, len_k, d_k)``,
``v (N, n_head, len_k, d_v)``, a boolean ``mask`` broadcastable to ``(N, n_head, len_q, len_k)``
(True = may attend) or ``None``, and ``temperature`` (``d_k ** 0.5``). It returns
``(output, attn)`` with ``output (N, n_head, len_q, d_v)`` and ``attn (N, n_head, len_q, len_k)``,
or only ``output`` where the implementation never forms the weights (its registry notes say so).

Semantics (jadore801120/attention-is-all-you-need-pytorch, quoted by the notes):
``attn = softmax(masked_fill((q / temperature) @ k^T, mask == 0, -1e9))``, ``output = attn @ v``,
dropout off. A masked score is -1e9, not -inf: a row whose keys are all masked gets the uniform
average of every value, where ``F.scaled_dot_product_attention`` gives zeros (NaN on some
backends). -1e9 does not fit in float16, so the notes' own code (``matmul``) raises there with a
mask; ``loops`` and ``einsum`` fill with float16's lowest finite value instead (the same
weights), and ``blockwise`` and ``flash`` compute half-precision inputs in float32.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from impls.registry import (
    REGISTRY,
    CaseInputs,
    Layer,
    Params,
    Unsupported,
    register_impl,
    register_layer,
)
from impls.sdpa_backends import CUDNN, EFFICIENT, FLASH, restricted_sdpa

#: the notes' fill value for masked scores
MASK_FILL = -1e9
#: mask kinds of the ``mask`` size parameter: 0 none, 1 key padding, 2 causal, 3 both (the
#: decoder's self-attention)
MASK_KINDS = ("nomask", "pad", "causal", "padcausal")
#: keys per block of the blockwise (online softmax) implementation
BLOCK_K = 128


def mask_fill_value(dtype: torch.dtype) -> float:
    """-1e9, or the dtype's lowest finite value where -1e9 does not fit (float16: -65504)."""
    return max(MASK_FILL, torch.finfo(dtype).min)


def make_mask(kind: int, N: int, len_q: int, len_k: int,
              generator: torch.Generator) -> Tensor | None:
    """A boolean mask (True = may attend) of the given kind, without a head dimension.

    Returns ``None`` (kind 0), key padding ``(N, 1, len_k)`` (kind 1: each batch element pads
    a random number of trailing keys, at least one and at most half, where len_k > 1), causal
    ``(1, len_q, len_k)`` (kind 2: lower triangular including the diagonal, aligned top-left as
    ``get_subsequent_mask`` and SDPA's ``is_causal``: query i sees keys 0..i), or both
    ``(N, len_q, len_k)`` (kind 3). No row is ever fully masked: key 0 is always visible.
    """
    if kind == 0:
        return None
    masks = []
    if kind in (1, 3):
        low = max(len_k - len_k // 2, 1)
        high = max(len_k - 1, low)  # inclusive
        lengths = torch.randint(low, high + 1, (N,), generator=generator)
        masks.append((torch.arange(len_k) < lengths[:, None]).unsqueeze(1))  # (N, 1, len_k)
    if kind in (2, 3):
        causal = torch.ones(len_q, len_k, dtype=torch.bool).tril()
        masks.append(causal.unsqueeze(0))  # (1, len_q, len_k)
    return masks[0] if len(masks) == 1 else masks[0] & masks[1]  # (N, len_q, len_k)


def mask_label(kind: int) -> str:
    """The case-label suffix of a mask kind, e.g. ``causal``."""
    return MASK_KINDS[kind] if 0 <= kind < len(MASK_KINDS) else f"mask{kind}"


def check_attention_sizes(layer: str, params: Params, names: tuple[str, ...]) -> None:
    """Positive sizes and a known mask kind; ``ValueError`` with one line otherwise."""
    for p in names:
        if params[p] < 1:
            raise ValueError(f"{layer}: {p} must be >= 1, got {params[p]}")
    if params["mask"] not in range(len(MASK_KINDS)):
        raise ValueError(f"{layer}: mask must be 0 (none), 1 (key padding), 2 (causal) or 3 "
                         f"(padding and causal), got {params['mask']}")


def mask_bytes(params: Params) -> int:
    """Bytes of the boolean mask ``make_mask`` builds (one byte per element)."""
    N, len_q, len_k, kind = params["N"], params["len_q"], params["len_k"], params["mask"]
    return (0, N * len_k, len_q * len_k, N * len_q * len_k)[kind]


class MaskedAttentionLayer(Layer):
    """Attention-like layers: sizes as ``params[:-1]``, the mask kind as the last parameter."""

    output_names = ("output", "attn")

    def label(self, params: Params) -> str:
        sizes = "_".join(f"{self.labels.get(p, p)}{params[p]}" for p in self.params[:-1])
        return f"{sizes}_{mask_label(params['mask'])}"

    def check(self, params: Params) -> None:
        super().check(params)
        check_attention_sizes(self.name, params, self.params[:-1])


class AttentionLayer(MaskedAttentionLayer):
    name = "attention"
    title = "ScaledDotProductAttention"
    order = 70
    params = ("N", "n_head", "len_q", "len_k", "d_k", "d_v", "mask")
    labels: ClassVar[dict[str, str]] = {"n_head": "h", "len_q": "q", "len_k": "k", "d_k": "dk",
                                        "d_v": "dv"}
    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        N, n_head, len_q, len_k, d_k, d_v = (params[p] for p in self.params[:-1])

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        tensors = {"q": randn(N, n_head, len_q, d_k), "k": randn(N, n_head, len_k, d_k),
                   "v": randn(N, n_head, len_k, d_v)}
        mask = make_mask(params["mask"], N, len_q, len_k, generator)
        static: dict[str, object] = {"temperature": d_k ** 0.5}
        if mask is None:
            static["mask"] = None
        else:
            tensors["mask"] = mask.unsqueeze(1)  # broadcast over heads: (N or 1, 1, *, len_k)
        return CaseInputs(tensors=tensors, static=static, grad=("q", "k", "v"))

    def reference(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                  temperature: float) -> tuple[Tensor, Tensor]:
        attn = torch.matmul(q / temperature, k.transpose(2, 3))  # (N, h, len_q, len_k)
        if mask is not None:
            attn = attn.masked_fill(mask == 0, MASK_FILL)
        attn = F.softmax(attn, dim=-1)
        return torch.matmul(attn, v), attn  # (N, h, len_q, d_v)

    def flops(self, params: Params, mode: str) -> int:
        # The two GEMMs (q k^T and attn v), counted dense even where the mask is causal; the
        # scaling, masking and softmax (elementwise) are left out, as FlopCounterMode does.
        # Backward: each GEMM's two input gradients cost one forward each.
        N, h, len_q, len_k = params["N"], params["n_head"], params["len_q"], params["len_k"]
        fwd = 2 * N * h * len_q * len_k * (params["d_k"] + params["d_v"])
        return fwd if mode == "fwd" else 3 * fwd

    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        # The attention weights are an optional output (blockwise and SDPA never form them), so
        # the minimum traffic leaves them out.
        N, h, len_q, len_k = params["N"], params["n_head"], params["len_q"], params["len_k"]
        d_k, d_v = params["d_k"], params["d_v"]
        q, k, v = N * h * len_q * d_k, N * h * len_k * d_k, N * h * len_k * d_v
        out = N * h * len_q * d_v
        elements = q + k + v + out
        if mode == "fwdbwd":  # read grad_out, q, k, v; write grad_q, grad_k, grad_v
            elements += out + 2 * (q + k + v)
        return elements * torch.empty((), dtype=dtype).element_size() + mask_bytes(params)

    def calibration_params(self, params: Params) -> dict[str, int]:
        # The loops run one iteration per query, each over every key of every batch element
        # and head: keep all but len_q, so the cost per FLOP is the cost per iteration.
        return {**params, "len_q": min(params["len_q"], 4)}


LAYER = register_layer(AttentionLayer())


def _scores_masked(scores: Tensor, mask: Tensor | None) -> Tensor:
    """The notes' masking with a fill value that fits the scores' dtype."""
    if mask is None:
        return scores
    return scores.masked_fill(mask == 0, mask_fill_value(scores.dtype))


@register_impl("attention", "loops", naive=True)
def attention_loops(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                    temperature: float) -> tuple[Tensor, Tensor]:
    """One query position at a time (all batch elements and heads at once), as a decoder would."""
    N, n_head, len_q, _ = q.shape
    len_k = k.shape[2]
    if mask is not None:
        mask = torch.broadcast_to(mask, (N, n_head, len_q, len_k))  # a view, no copy
    k_t = k.transpose(2, 3)  # (N, h, d_k, len_k)
    outputs, weights = [], []
    for i in range(len_q):
        scores = torch.matmul(q[:, :, i:i + 1] / temperature, k_t)  # (N, h, 1, len_k)
        scores = _scores_masked(scores, None if mask is None else mask[:, :, i:i + 1])
        attn = F.softmax(scores, dim=-1)  # (N, h, 1, len_k)
        outputs.append(torch.matmul(attn, v))  # (N, h, 1, d_v)
        weights.append(attn)
    return torch.cat(outputs, dim=2), torch.cat(weights, dim=2)


@register_impl("attention", "matmul",
               notes="float16 with a mask: masked_fill(-1e9) overflows and raises (an error "
                     "row; compiled, inductor fills -inf and it runs)")
def attention_matmul(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                     temperature: float) -> tuple[Tensor, Tensor]:
    """The notes' code: two batched matmuls, masked_fill(-1e9), softmax over the keys."""
    attn = torch.matmul(q / temperature, k.transpose(2, 3))  # (N, h, len_q, len_k)
    if mask is not None:
        attn = attn.masked_fill(mask == 0, MASK_FILL)
    attn = F.softmax(attn, dim=-1)
    output = torch.matmul(attn, v)  # (N, h, len_q, d_v)
    return output, attn


@register_impl("attention", "einsum")
def attention_einsum(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                     temperature: float) -> tuple[Tensor, Tensor]:
    """Both contractions written as einsum, indices named after the notes' shapes."""
    scores = torch.einsum("nhqd,nhkd->nhqk", q / temperature, k)  # (N, h, len_q, len_k)
    attn = F.softmax(_scores_masked(scores, mask), dim=-1)
    output = torch.einsum("nhqk,nhkd->nhqd", attn, v)  # (N, h, len_q, d_v)
    return output, attn


@register_impl("attention", "blockwise", notes="returns no attention weights")
def attention_blockwise(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                        temperature: float) -> Tensor:
    """Online softmax over blocks of BLOCK_K keys (FlashAttention's idea in plain PyTorch).

    Only a ``(N, h, len_q, BLOCK_K)`` block of scores exists at a time: a running row maximum and
    sum of exponentials rescale the partial output as each block arrives. Half-precision inputs
    are computed in float32 and the output rounded once, as flash kernels keep their softmax
    state in float32. Masked scores are the notes' -1e9, so a fully masked row still averages
    all values uniformly, like the reference.
    """
    N, n_head, len_q, _ = q.shape
    len_k, d_v = k.shape[2], v.shape[-1]
    acc_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    if mask is not None:
        mask = torch.broadcast_to(mask, (N, n_head, len_q, len_k))  # a view, no copy
    q_scaled = q.to(acc_dtype) / temperature
    row_max = q.new_full((N, n_head, len_q, 1), -math.inf, dtype=acc_dtype)
    row_sum = q.new_zeros((N, n_head, len_q, 1), dtype=acc_dtype)  # sum of exp(score - max)
    acc = q.new_zeros((N, n_head, len_q, d_v), dtype=acc_dtype)  # unnormalised output
    for start in range(0, len_k, BLOCK_K):
        end = min(start + BLOCK_K, len_k)
        k_block = k[:, :, start:end].to(acc_dtype)  # (N, h, B, d_k)
        scores = torch.matmul(q_scaled, k_block.transpose(2, 3))  # (N, h, len_q, B)
        if mask is not None:
            scores = scores.masked_fill(mask[..., start:end] == 0, MASK_FILL)
        new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))  # (N, h, len_q, 1)
        p = torch.exp(scores - new_max)  # (N, h, len_q, B)
        rescale = torch.exp(row_max - new_max)  # 0 on the first block (row_max = -inf)
        row_sum = row_sum * rescale + p.sum(dim=-1, keepdim=True)
        v_block = v[:, :, start:end].to(acc_dtype)  # (N, h, B, d_v)
        acc = acc * rescale + torch.matmul(p, v_block)  # (N, h, len_q, d_v)
        row_max = new_max
    return (acc / row_sum).to(q.dtype)  # (N, h, len_q, d_v)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, temperature: float) -> Tensor:
    # q k^T * (1 / temperature) rounds differently from (q / temperature) k^T, within tolerance.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / temperature)


_SDPA_NOTES = ("returns no attention weights; a fully masked row gives zeros or NaN, not the "
               "notes' uniform average")
#: the restricted backends (impls.sdpa_backends)
_REFUSES = "; a case the backend refuses is skipped, with torch's reasons"


@register_impl("attention", "builtin", notes=_SDPA_NOTES)
def attention_builtin(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                      temperature: float) -> Tensor:
    """F.scaled_dot_product_attention, whichever backend PyTorch picks (True = may attend)."""
    return _sdpa(q, k, v, mask, temperature)


@register_impl("attention", "sdpa_math", devices=("cuda",), notes=_SDPA_NOTES)
def attention_sdpa_math(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                        temperature: float) -> Tensor:
    """SDPA restricted to its math backend (the composite reference kernel)."""
    with sdpa_kernel(SDPBackend.MATH):
        return _sdpa(q, k, v, mask, temperature)


@register_impl("attention", "sdpa_flash", devices=("cuda",),
               dtypes=(torch.float16, torch.bfloat16),
               notes=_SDPA_NOTES + "; takes no mask: masked cases are skipped" + _REFUSES)
def attention_sdpa_flash(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                         temperature: float) -> Tensor:
    """SDPA restricted to FlashAttention-2 (half precision; no arbitrary mask)."""
    if mask is not None:
        raise Unsupported("sdpa_flash: the flash backend takes no attn_mask (only "
                          "is_causal); it runs unmasked cases only")
    return restricted_sdpa(FLASH, q, k, v, None, 1.0 / temperature)


@register_impl("attention", "sdpa_efficient", devices=("cuda",),
               dtypes=(torch.float32, torch.float16, torch.bfloat16),
               notes=_SDPA_NOTES + _REFUSES)
def attention_sdpa_efficient(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                             temperature: float) -> Tensor:
    """SDPA restricted to the memory-efficient (xFormers) backend."""
    return restricted_sdpa(EFFICIENT, q, k, v, mask, 1.0 / temperature)


@register_impl("attention", "sdpa_cudnn", devices=("cuda",),
               dtypes=(torch.float16, torch.bfloat16), notes=_SDPA_NOTES + _REFUSES)
def attention_sdpa_cudnn(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                         temperature: float) -> Tensor:
    """SDPA restricted to the cuDNN backend (recent GPUs and cuDNN versions only)."""
    return restricted_sdpa(CUDNN, q, k, v, mask, 1.0 / temperature)


class ScaledDotProductAttention(nn.Module):
    """The notes' ScaledDotProductAttention, computed by a chosen implementation.

    ``forward(q, k, v, mask=None)`` returns ``(output, attn)``; ``attn`` is ``None`` for an
    implementation that never forms the weights (``blockwise``, ``builtin``, ``sdpa_*``).
    Dropout on the weights needs them between the softmax and the product with ``v``, so while
    training with ``attn_dropout > 0`` the module runs the notes' own formulation with dropout;
    the chosen implementation runs whenever dropout is inactive (eval mode, or p = 0).

    Args:
        temperature: the scores are ``(q / temperature) @ k^T``; the notes use ``d_k ** 0.5``.
        impl: a registered attention implementation (default: the notes' ``matmul``).
    """

    def __init__(self, temperature: float, attn_dropout: float = 0.1,
                 impl: str = "matmul") -> None:
        super().__init__()
        self.temperature = temperature
        self.dropout = nn.Dropout(attn_dropout)
        self.impl = impl
        self._fn = REGISTRY.impl("attention", impl).fn

    def forward(self, q: Tensor, k: Tensor, v: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if self.training and self.dropout.p > 0:
            attn = torch.matmul(q / self.temperature, k.transpose(2, 3))  # (N, h, len_q, len_k)
            if mask is not None:
                attn = attn.masked_fill(mask == 0, mask_fill_value(attn.dtype))
            attn = self.dropout(F.softmax(attn, dim=-1))
            return torch.matmul(attn, v), attn  # (N, h, len_q, d_v)
        out = self._fn(q, k, v, mask, self.temperature)
        return (out[0], out[1]) if isinstance(out, tuple) else (out, None)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, impl={self.impl!r}"


__all__ = ["LAYER", "MASK_FILL", "ScaledDotProductAttention", "attention_blockwise",
           "attention_builtin", "attention_einsum", "attention_loops",
           "attention_matmul", "attention_sdpa_cudnn", "attention_sdpa_efficient",
           "attention_sdpa_flash", "attention_sdpa_math", "make_mask", "mask_fill_value"]
