"""Multi-head attention: the notes' MultiHeadAttention (post-norm), five ways.

Every implementation takes ``q (N, len_q, d_model)``, ``k`` and ``v (N, len_k, d_model)``, a
boolean ``mask`` (True = may attend) of shape ``(N, len_q, len_k)``, ``(N, 1, len_k)`` or
``(1, len_q, len_k)``, or ``None``; the bias-free projection weights ``w_qs``, ``w_ks``
``(n_head * d_k, d_model)``, ``w_vs (n_head * d_v, d_model)`` and ``fc (d_model, n_head * d_v)``;
the LayerNorm's ``ln_weight`` and ``ln_bias (d_model,)``; and the integers ``n_head, d_k, d_v``.
It returns ``(output (N, len_q, d_model), attn (N, n_head, len_q, len_k))``.

Semantics (jadore801120/attention-is-all-you-need-pytorch): project and split into heads,
scaled dot-product attention with temperature ``d_k ** 0.5`` and the mask broadcast over heads,
concatenate the heads, ``fc``, add the *input* ``q`` (residual), then LayerNorm with eps 1e-6
(post-norm). Dropout off.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.attention import (
    MASK_FILL,
    MaskedAttentionLayer,
    ScaledDotProductAttention,
    attention_matmul,
    make_mask,
    mask_bytes,
    mask_fill_value,
)
from impls.layernorm import LN_EPS
from impls.registry import REGISTRY, CaseInputs, Params, register_impl, register_layer

#: ``fn(q, k, v, mask, temperature) -> output or (output, attn)``: an attention implementation
AttentionFn = Callable[..., Any]


def per_head_sizes(name: str, params: Params, given: Collection[str]) -> Params:
    """``d_k = d_v = d_model / n_head`` (the paper's choice) when a user sets ``d_model`` or
    ``n_head`` but neither ``d_k`` nor ``d_v``; ``ValueError`` if that does not divide."""
    if not {"d_model", "n_head"} & set(given) or {"d_k", "d_v"} & set(given):
        return params
    d_model, n_head = params["d_model"], params["n_head"]
    if n_head < 1 or d_model % n_head:
        raise ValueError(f"{name}: d_model {d_model} is not divisible by n_head {n_head} "
                         "(d_k = d_v = d_model / n_head unless you set d_k and d_v)")
    return {**params, "d_k": d_model // n_head, "d_v": d_model // n_head}


class MultiHeadAttentionLayer(MaskedAttentionLayer):
    name = "mha"
    title = "MultiHeadAttention"
    order = 80
    params = ("N", "len_q", "len_k", "d_model", "n_head", "d_k", "d_v", "mask")
    labels: ClassVar[dict[str, str]] = {"len_q": "q", "len_k": "k", "d_model": "dm",
                                        "n_head": "h", "d_k": "dk", "d_v": "dv"}

    def derived(self, params: Params, given: Collection[str]) -> Params:
        return per_head_sizes(self.name, params, given)
    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        N, len_q, len_k, d_model, n_head, d_k, d_v = (params[p] for p in self.params[:-1])

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        # Weights scaled by 1/sqrt(fan_in): projected q and k are O(1), so scores are O(1).
        tensors = {
            "q": randn(N, len_q, d_model), "k": randn(N, len_k, d_model),
            "v": randn(N, len_k, d_model),
            "w_qs": randn(n_head * d_k, d_model) / d_model ** 0.5,
            "w_ks": randn(n_head * d_k, d_model) / d_model ** 0.5,
            "w_vs": randn(n_head * d_v, d_model) / d_model ** 0.5,
            "fc": randn(d_model, n_head * d_v) / (n_head * d_v) ** 0.5,
            "ln_weight": 1 + 0.1 * randn(d_model), "ln_bias": 0.1 * randn(d_model),
        }
        static: dict[str, object] = {"n_head": n_head, "d_k": d_k, "d_v": d_v}
        mask = make_mask(params["mask"], N, len_q, len_k, generator)
        if mask is None:
            static["mask"] = None
        else:
            tensors["mask"] = mask
        grad = tuple(n for n in tensors if n != "mask")
        return CaseInputs(tensors=tensors, static=static, grad=grad)

    def reference(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, w_qs: Tensor,
                  w_ks: Tensor, w_vs: Tensor, fc: Tensor, ln_weight: Tensor, ln_bias: Tensor,
                  n_head: int, d_k: int, d_v: int) -> tuple[Tensor, Tensor]:
        sz_b, len_q, len_k = q.shape[0], q.shape[1], k.shape[1]
        residual = q
        q = F.linear(q, w_qs).view(sz_b, len_q, n_head, d_k).transpose(1, 2)  # (N, h, len_q, d_k)
        k = F.linear(k, w_ks).view(sz_b, len_k, n_head, d_k).transpose(1, 2)  # (N, h, len_k, d_k)
        v = F.linear(v, w_vs).view(sz_b, len_k, n_head, d_v).transpose(1, 2)  # (N, h, len_k, d_v)
        attn = torch.matmul(q / d_k ** 0.5, k.transpose(2, 3))  # (N, h, len_q, len_k)
        if mask is not None:
            attn = attn.masked_fill(mask.unsqueeze(1) == 0, MASK_FILL)
        attn = F.softmax(attn, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(sz_b, len_q, -1)  # (N, len_q, h*d_v)
        out = F.linear(out, fc) + residual  # (N, len_q, d_model)
        return F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias, eps=LN_EPS), attn

    def flops(self, params: Params, mode: str) -> int:
        # The GEMMs: the q, k, v projections, q k^T, attn v, and fc; counted dense even where the
        # mask is causal. Scaling, masking, softmax, the residual and LayerNorm (elementwise) are
        # left out, as FlopCounterMode does. Backward: every GEMM's two input gradients.
        N, len_q, len_k, d_model, h, d_k, d_v = (params[p] for p in self.params[:-1])
        projections = 2 * N * d_model * h * (len_q * d_k + len_k * d_k + len_k * d_v)
        attention = 2 * N * h * len_q * len_k * (d_k + d_v)
        fc = 2 * N * len_q * h * d_v * d_model
        fwd = projections + attention + fc
        return fwd if mode == "fwd" else 3 * fwd

    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        # The attention weights are an optional output and left out of the minimum traffic.
        N, len_q, len_k, d_model, h, d_k, d_v = (params[p] for p in self.params[:-1])
        inputs = N * (len_q + 2 * len_k) * d_model
        weights = 2 * h * d_k * d_model + 2 * h * d_v * d_model + 2 * d_model
        out = N * len_q * d_model
        elements = inputs + weights + out
        if mode == "fwdbwd":  # read grad_out, inputs, weights; write their gradients
            elements += out + 2 * (inputs + weights)
        return elements * torch.empty((), dtype=dtype).element_size() + mask_bytes(params)

    def calibration_params(self, params: Params) -> dict[str, int]:
        return {**params, "N": 1, "len_q": min(params["len_q"], 4),
                "len_k": min(params["len_k"], 4)}


LAYER = register_layer(MultiHeadAttentionLayer())


@register_impl("mha", "loops")
def mha_loops(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, w_qs: Tensor, w_ks: Tensor,
              w_vs: Tensor, fc: Tensor, ln_weight: Tensor, ln_bias: Tensor, n_head: int,
              d_k: int, d_v: int) -> tuple[Tensor, Tensor]:
    """One head at a time: its slice of each projection, its attention, then concatenate."""
    temperature = d_k ** 0.5
    heads, weights = [], []
    for h in range(n_head):
        q_h = F.linear(q, w_qs[h * d_k:(h + 1) * d_k])  # (N, len_q, d_k)
        k_h = F.linear(k, w_ks[h * d_k:(h + 1) * d_k])  # (N, len_k, d_k)
        v_h = F.linear(v, w_vs[h * d_v:(h + 1) * d_v])  # (N, len_k, d_v)
        scores = torch.matmul(q_h / temperature, k_h.transpose(1, 2))  # (N, len_q, len_k)
        if mask is not None:  # (N or 1, len_q or 1, len_k) broadcasts over the scores
            scores = scores.masked_fill(mask == 0, mask_fill_value(scores.dtype))
        attn = F.softmax(scores, dim=-1)
        heads.append(torch.matmul(attn, v_h))  # (N, len_q, d_v)
        weights.append(attn)
    # head-major concatenation, as the notes' view(sz_b, len_q, n_head * d_v)
    out = F.linear(torch.cat(heads, dim=-1), fc) + q  # (N, len_q, d_model)
    out = F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias, eps=LN_EPS)
    return out, torch.stack(weights, dim=1)  # attn: (N, h, len_q, len_k)


def multi_head_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, w_qs: Tensor,
                         w_ks: Tensor, w_vs: Tensor, fc: Tensor, ln_weight: Tensor,
                         ln_bias: Tensor, n_head: int, d_k: int, d_v: int,
                         attention: AttentionFn = attention_matmul
                         ) -> tuple[Tensor, Tensor | None]:
    """The notes' MultiHeadAttention forward with a chosen scaled dot-product ``attention``.

    One projection per input, view/transpose into heads, ``attention`` over all heads at once,
    heads side by side, ``fc``, the residual ``q`` and LayerNorm. Returns ``(output (N, len_q,
    d_model), attn (N, h, len_q, len_k))``; ``attn`` is None when ``attention`` returns no
    weights. The encoder, decoder and transformer compute every attention sublayer with it.
    """
    sz_b, len_q, len_k, len_v = q.size(0), q.size(1), k.size(1), v.size(1)
    residual = q
    q = F.linear(q, w_qs).view(sz_b, len_q, n_head, d_k)  # (N, len_q, h, d_k)
    k = F.linear(k, w_ks).view(sz_b, len_k, n_head, d_k)  # (N, len_k, h, d_k)
    v = F.linear(v, w_vs).view(sz_b, len_v, n_head, d_v)  # (N, len_k, h, d_v)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (N, h, len, d)
    if mask is not None:
        mask = mask.unsqueeze(1)  # broadcast over heads: (N or 1, 1, len_q or 1, len_k)
    out = attention(q, k, v, mask, d_k ** 0.5)  # (N, h, len_q, d_v), maybe with attn
    q, attn = out if isinstance(out, tuple) else (out, None)
    q = q.transpose(1, 2).contiguous().view(sz_b, len_q, -1)  # (N, len_q, h * d_v)
    q = F.linear(q, fc) + residual  # (N, len_q, d_model)
    q = F.layer_norm(q, q.shape[-1:], ln_weight, ln_bias, eps=LN_EPS)
    return q, attn


@register_impl("mha", "batched",
               notes="float16 with a mask: masked_fill(-1e9) overflows and raises (an error row)")
def mha_batched(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, w_qs: Tensor,
                w_ks: Tensor, w_vs: Tensor, fc: Tensor, ln_weight: Tensor, ln_bias: Tensor,
                n_head: int, d_k: int, d_v: int) -> tuple[Tensor, Tensor | None]:
    """The notes' code: one projection per input, view/transpose into heads, batched attention."""
    return multi_head_attention(q, k, v, mask, w_qs, w_ks, w_vs, fc, ln_weight, ln_bias, n_head,
                                d_k, d_v, attention_matmul)


@register_impl("mha", "einsum")
def mha_einsum(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, w_qs: Tensor, w_ks: Tensor,
               w_vs: Tensor, fc: Tensor, ln_weight: Tensor, ln_bias: Tensor, n_head: int,
               d_k: int, d_v: int) -> tuple[Tensor, Tensor]:
    """Every contraction as einsum; heads come out of the projections with no transpose."""
    d_model = q.shape[-1]
    w_q = w_qs.view(n_head, d_k, d_model)  # (h, d_k, d_model)
    w_k = w_ks.view(n_head, d_k, d_model)  # (h, d_k, d_model)
    w_v = w_vs.view(n_head, d_v, d_model)  # (h, d_v, d_model)
    q_h = torch.einsum("nld,hed->nhle", q, w_q)  # (N, h, len_q, d_k)
    k_h = torch.einsum("nsd,hed->nhse", k, w_k)  # (N, h, len_k, d_k)
    v_h = torch.einsum("nsd,hed->nhse", v, w_v)  # (N, h, len_k, d_v)
    scores = torch.einsum("nhle,nhse->nhls", q_h / d_k ** 0.5, k_h)  # (N, h, len_q, len_k)
    if mask is not None:
        scores = scores.masked_fill(mask.unsqueeze(1) == 0, mask_fill_value(scores.dtype))
    attn = F.softmax(scores, dim=-1)
    heads = torch.einsum("nhls,nhse->nhle", attn, v_h)  # (N, h, len_q, d_v)
    w_o = fc.view(d_model, n_head, d_v)  # (d_model, h, d_v)
    out = torch.einsum("nhle,dhe->nld", heads, w_o) + q  # (N, len_q, d_model)
    return F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias, eps=LN_EPS), attn


@register_impl("mha", "fused")
def mha_fused(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, w_qs: Tensor, w_ks: Tensor,
              w_vs: Tensor, fc: Tensor, ln_weight: Tensor, ln_bias: Tensor, n_head: int,
              d_k: int, d_v: int) -> tuple[Tensor, Tensor]:
    """The notes' forward with every pass it can spare folded into a GEMM or done in place.

    1 / temperature is the alpha of the q k^T GEMM (no pass over q); the mask is an added
    0 / -1e9 bias (several times faster than masked_fill on the CPU); without
    autograd the softmax runs in place in the weights it returns; the residual is the beta
    term of the fc GEMM (addmm), then F.layer_norm. Half precision computes the attention in
    float32 (-1e9 fits, a sum of exps does not overflow) and rounds the weights once. A row
    that sees no key gets uniform weights, as the notes' -1e9 fill gives.
    """
    N, len_q, d_model = q.shape
    len_k, dtype = k.shape[1], q.dtype
    acc_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    B = N * n_head
    # (N * h, len, d) for the batched GEMMs: a copy where N > 1, a strided view where N == 1
    q_h = F.linear(q, w_qs).view(N, len_q, n_head, d_k).transpose(1, 2)  # (N, h, len_q, d_k)
    q_h = q_h.reshape(B, len_q, d_k).to(acc_dtype)
    k_h = F.linear(k, w_ks).view(N, len_k, n_head, d_k).transpose(1, 2)  # (N, h, len_k, d_k)
    k_h = k_h.reshape(B, len_k, d_k).to(acc_dtype)
    v_h = F.linear(v, w_vs).view(N, len_k, n_head, d_v).transpose(1, 2)  # (N, h, len_k, d_v)
    v_h = v_h.reshape(B, len_k, d_v).to(acc_dtype)
    scores = torch.baddbmm(q_h.new_zeros(()), q_h, k_h.transpose(1, 2), beta=0,
                           alpha=d_k ** -0.5)  # (N * h, len_q, len_k)
    attn = scores.view(N, n_head, len_q, len_k)
    sees = None
    if mask is not None:
        visible = mask if mask.dtype == torch.bool else mask != 0
        visible = visible.reshape((1,) * (3 - visible.dim()) + tuple(visible.shape))
        # (N|1, 1, len_q|1, len_k): -1e9 plus a score has an exp of exactly 0, as -1e9 has
        attn.add_(q_h.new_zeros(visible.shape).masked_fill_(~visible, MASK_FILL).unsqueeze(1))
        sees = visible.any(-1, keepdim=True).unsqueeze(1)  # (N|1, 1, len_q|1, 1)
        sees = None if bool(sees.all()) else sees
    # out of place for autograd, and under torch.compile (which plans its own buffers, and
    # whose inductor fails on this in-place softmax into a view)
    if (torch.is_grad_enabled() and scores.requires_grad) or torch.compiler.is_compiling():
        attn = torch.softmax(attn, -1)
        if sees is not None:  # rows with every key masked: uniform, as the notes' -1e9 fill
            attn = torch.where(sees, attn, 1.0 / len_k)
    else:
        torch.softmax(attn, -1, out=attn)  # in place: the scores become the weights
        if sees is not None:
            attn.masked_fill_(~sees, 1.0 / len_k)
    heads = torch.bmm(attn.view(B, len_q, len_k), v_h).to(dtype)  # (N * h, len_q, d_v)
    # head-major concatenation, as the notes' view(sz_b, len_q, n_head * d_v)
    heads = heads.view(N, n_head, len_q, d_v).transpose(1, 2).reshape(N * len_q, -1)
    out = torch.addmm(q.reshape(N * len_q, d_model), heads, fc.t())  # (N * len_q, d_model)
    out = F.layer_norm(out.view(N, len_q, d_model), (d_model,), ln_weight, ln_bias, eps=LN_EPS)
    return out, attn.to(dtype)  # attn: (N, h, len_q, len_k)


def builtin_masks(mask: Tensor | None, N: int, n_head: int, len_q: int,
                  len_k: int) -> tuple[Tensor | None, Tensor | None]:
    """Our mask (True = may attend) as nn.MultiheadAttention's (True = may NOT attend).

    Returns ``(key_padding_mask (N, len_k), None)`` for a padding mask ``(N, 1, len_k)``,
    ``(None, attn_mask (len_q, len_k))`` for one shared by the batch ``(1, len_q, len_k)``, and
    ``(None, attn_mask (N * n_head, len_q, len_k))`` for a per-example one.
    """
    if mask is None:
        return None, None
    mask = mask.reshape((1,) * (3 - mask.dim()) + tuple(mask.shape))  # (N or 1, *, len_k)
    blocked = mask == 0
    if blocked.shape[1] == 1:
        return blocked[:, 0].expand(N, len_k), None  # (N, len_k)
    if blocked.shape[0] == 1:
        return None, blocked[0].expand(len_q, len_k)  # (len_q, len_k)
    blocked = blocked.expand(N, len_q, len_k)
    return None, blocked.repeat_interleave(n_head, dim=0)  # (N * h, len_q, len_k), batch-major


@register_impl("mha", "builtin",
               notes="needs n_head * d_k == n_head * d_v == d_model; a fully masked row gives NaN, "
                     "not the notes' uniform average")
def mha_builtin(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, w_qs: Tensor,
                w_ks: Tensor, w_vs: Tensor, fc: Tensor, ln_weight: Tensor, ln_bias: Tensor,
                n_head: int, d_k: int, d_v: int) -> tuple[Tensor, Tensor]:
    """nn.MultiheadAttention (bias=False) with the same weights, then residual and LayerNorm.

    Calls ``F.multi_head_attention_forward``, what the module's forward runs, with the weights
    passed in (building a module per call would copy every weight); the per-head weights are
    asked for, as the notes' module returns them.
    """
    N, len_q, d_model = q.shape
    len_k = k.shape[1]
    if n_head * d_k != d_model or d_v != d_k:
        raise ValueError(f"mha builtin: nn.MultiheadAttention needs n_head * d_k == d_model and "
                         f"d_v == d_k (got n_head {n_head}, d_k {d_k}, d_v {d_v}, "
                         f"d_model {d_model})")
    key_padding_mask, attn_mask = builtin_masks(mask, N, n_head, len_q, len_k)
    out, attn = F.multi_head_attention_forward(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),  # (len, N, d_model): seq first
        d_model, n_head, in_proj_weight=None, in_proj_bias=None, bias_k=None, bias_v=None,
        add_zero_attn=False, dropout_p=0.0, out_proj_weight=fc, out_proj_bias=None,
        training=False, key_padding_mask=key_padding_mask, need_weights=True,
        attn_mask=attn_mask, use_separate_proj_weight=True, q_proj_weight=w_qs,
        k_proj_weight=w_ks, v_proj_weight=w_vs, average_attn_weights=False,
    )  # out: (len_q, N, d_model); attn: (N, h, len_q, len_k)
    out = out.transpose(0, 1) + q  # (N, len_q, d_model)
    return F.layer_norm(out, out.shape[-1:], ln_weight, ln_bias, eps=LN_EPS), attn


class MultiHeadAttention(nn.Module):
    """The notes' MultiHeadAttention, computed by a chosen implementation.

    Same submodules and names as the quoted repository (``w_qs``, ``w_ks``, ``w_vs``, ``fc``:
    bias-free Linear; ``attention``; ``dropout``; ``layer_norm`` with eps 1e-6), so its state
    dict loads theirs. ``forward(q, k, v, mask=None)`` returns ``(output, attn)``, ``attn``
    ``None`` for an implementation that returns no weights. While training with ``dropout > 0``
    it runs the repository's forward with both dropouts (an implementation computes with dropout
    off); the chosen implementation runs in eval mode or with ``dropout=0``. Unlike the
    repository, ``dropout`` also sets the attention-weight dropout (theirs stays 0.1), so
    ``dropout=0`` is fully deterministic.

    Args:
        impl: a registered mha implementation (``loops``, ``batched``, ``einsum``, ``fused``,
            ``builtin``).
        attention: the registered attention implementation that ``batched`` (the notes'
            structure, which the encoder and decoder layers use) computes with.
    """

    def __init__(self, n_head: int, d_model: int, d_k: int, d_v: int, dropout: float = 0.1,
                 impl: str = "batched", attention: str = "matmul") -> None:
        super().__init__()
        if impl != "batched" and attention != "matmul":
            raise ValueError(f"attention={attention!r} needs impl='batched' (mha/{impl} "
                             "computes its own attention)")
        self.n_head, self.d_k, self.d_v = n_head, d_k, d_v
        self.w_qs = nn.Linear(d_model, n_head * d_k, bias=False)
        self.w_ks = nn.Linear(d_model, n_head * d_k, bias=False)
        self.w_vs = nn.Linear(d_model, n_head * d_v, bias=False)
        self.fc = nn.Linear(n_head * d_v, d_model, bias=False)
        self.attention = ScaledDotProductAttention(temperature=d_k ** 0.5, attn_dropout=dropout,
                                                   impl=attention)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model, eps=LN_EPS)
        self.impl = impl
        self._fn = (functools.partial(multi_head_attention,
                                      attention=REGISTRY.impl("attention", attention).fn)
                    if impl == "batched" else REGISTRY.impl("mha", impl).fn)

    def forward(self, q: Tensor, k: Tensor, v: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if self.training and self.dropout.p > 0:
            return self._forward_with_dropout(q, k, v, mask)
        out = self._fn(q, k, v, mask, self.w_qs.weight, self.w_ks.weight, self.w_vs.weight,
                       self.fc.weight, self.layer_norm.weight, self.layer_norm.bias,
                       self.n_head, self.d_k, self.d_v)
        return (out[0], out[1]) if isinstance(out, tuple) else (out, None)

    def _forward_with_dropout(self, q: Tensor, k: Tensor, v: Tensor,
                              mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The repository's forward, dropout included."""
        d_k, d_v, n_head = self.d_k, self.d_v, self.n_head
        sz_b, len_q, len_k, len_v = q.size(0), q.size(1), k.size(1), v.size(1)
        residual = q
        q = self.w_qs(q).view(sz_b, len_q, n_head, d_k)  # (N, len_q, h, d_k)
        k = self.w_ks(k).view(sz_b, len_k, n_head, d_k)  # (N, len_k, h, d_k)
        v = self.w_vs(v).view(sz_b, len_v, n_head, d_v)  # (N, len_k, h, d_v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (N, h, len, d)
        if mask is not None:
            mask = mask.unsqueeze(1)  # broadcast over heads
        q, attn = self.attention(q, k, v, mask=mask)  # (N, h, len_q, d_v)
        q = q.transpose(1, 2).contiguous().view(sz_b, len_q, -1)  # (N, len_q, h * d_v)
        q = self.dropout(self.fc(q)) + residual
        return self.layer_norm(q), attn

    def extra_repr(self) -> str:
        return (f"n_head={self.n_head}, d_k={self.d_k}, d_v={self.d_v}, impl={self.impl!r}, "
                f"attention={self.attention.impl!r}")


__all__ = ["LAYER", "MultiHeadAttention", "builtin_masks", "mha_batched", "mha_builtin",
           "mha_einsum", "mha_fused", "mha_loops", "multi_head_attention"]
