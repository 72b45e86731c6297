"""``torch_layers``: the encoder, decoder and transformer on PyTorch's own layers.

nn.TransformerEncoderLayer and nn.TransformerDecoderLayer (post-norm, relu, eps 1e-6) run the
notes' weights through ``torch.func.functional_call``, so gradients reach them; the stacks'
front ends and the logits projection are the notes' (``impls.transformer_parts``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

import impls.transformer  # noqa: F401  (registers the encoder, decoder and transformer layers)
from impls.layernorm import LN_EPS
from impls.registry import Unsupported, register_impl
from impls.transformer_parts import (
    AttnWeights,
    DecoderLayerFn,
    EncoderLayerFn,
    FFNWeights,
    decoder_forward,
    encoder_forward,
    transformer_forward,
)


def _torch_masks(mask: Tensor | None, n_head: int) -> tuple[Tensor | None, Tensor | None]:
    """A seed mask ``(N, 1 or len_q, len_k)`` (True = may attend) in PyTorch's convention
    (True = masked): ``(attn_mask (N * n_head, len_q, len_k), key_padding_mask (N, len_k))``."""
    if mask is None:
        return None, None
    if mask.size(1) == 1:
        return None, ~mask.squeeze(1)  # (N, len_k): a pure key-padding mask
    # PyTorch lays the heads out batch-major: row b * n_head + h holds sample b's mask
    return (~mask).repeat_interleave(n_head, dim=0), None  # (N * n_head, len_q, len_k)


def _attn_params(prefix: str, w: AttnWeights) -> dict[str, Tensor]:
    """nn.MultiheadAttention's parameters carrying the seed's weights, with zero biases."""
    d_model = w.fc.size(0)
    zeros = w.fc.new_zeros
    return {f"{prefix}.in_proj_weight": torch.cat([w.w_qs, w.w_ks, w.w_vs]),  # (3 d, d)
            f"{prefix}.in_proj_bias": zeros(3 * d_model),
            f"{prefix}.out_proj.weight": w.fc, f"{prefix}.out_proj.bias": zeros(d_model)}


def _ffn_params(w: FFNWeights, norm: str) -> dict[str, Tensor]:
    return {"linear1.weight": w.w_1, "linear1.bias": w.b_1, "linear2.weight": w.w_2,
            "linear2.bias": w.b_2, f"{norm}.weight": w.ln_w, f"{norm}.bias": w.ln_b}


def _torch_modules(d_model: int, n_head: int, d_inner: int
                   ) -> tuple[nn.TransformerEncoderLayer, nn.TransformerDecoderLayer]:
    """The cached torch layers, built outside any graph (dynamo would trace the constructors).

    ``torch.compiler.disable`` is applied here, at call time, not as a decorator: a decorator
    would import dynamo (about a second) whenever ``impls`` is imported.
    """
    return torch.compiler.disable(_build_torch_modules)(d_model, n_head, d_inner)


@functools.lru_cache(maxsize=32)
def _build_torch_modules(d_model: int, n_head: int, d_inner: int
                         ) -> tuple[nn.TransformerEncoderLayer, nn.TransformerDecoderLayer]:
    """nn.TransformerEncoderLayer and nn.TransformerDecoderLayer on the meta device: no memory,
    no init, only the structure that ``functional_call`` runs on our weights.

    Cached because building them costs about two milliseconds, as much as a small stack's
    forward. ``bias=True`` applies to every linear and LayerNorm: the seed's FFN and LayerNorms
    have biases, its attention projections do not, so those get zero biases (an exact mapping).
    """
    kwargs: dict[str, Any] = dict(
        d_model=d_model, nhead=n_head, dim_feedforward=d_inner, dropout=0.0, activation="relu",
        layer_norm_eps=LN_EPS, batch_first=True, norm_first=False, bias=True, device="meta")
    return (nn.TransformerEncoderLayer(**kwargs).eval(),
            nn.TransformerDecoderLayer(**kwargs).eval())


def torch_encoder_layer(x: Tensor, slf_attn_mask: Tensor | None, slf: AttnWeights,
                        ffn: FFNWeights, *, module: nn.TransformerEncoderLayer,
                        n_head: int) -> Tensor:
    """EncoderLayer as nn.TransformerEncoderLayer (post-norm, relu, eps 1e-6) with the seed's
    weights mapped in; ``functional_call`` runs it on our tensors, so gradients reach them."""
    attn_mask, key_padding_mask = _torch_masks(slf_attn_mask, n_head)
    params = {**_attn_params("self_attn", slf), "norm1.weight": slf.ln_w,
              "norm1.bias": slf.ln_b, **_ffn_params(ffn, "norm2")}
    return functional_call(module, params, (x,), {
        "src_mask": attn_mask, "src_key_padding_mask": key_padding_mask})


def torch_decoder_layer(x: Tensor, enc_output: Tensor, slf_attn_mask: Tensor | None,
                        dec_enc_attn_mask: Tensor | None, slf: AttnWeights, enc: AttnWeights,
                        ffn: FFNWeights, *, module: nn.TransformerDecoderLayer,
                        n_head: int) -> Tensor:
    """DecoderLayer as nn.TransformerDecoderLayer with the seed's weights mapped in."""
    tgt_mask, tgt_key_padding_mask = _torch_masks(slf_attn_mask, n_head)
    memory_mask, memory_key_padding_mask = _torch_masks(dec_enc_attn_mask, n_head)
    params = {**_attn_params("self_attn", slf), "norm1.weight": slf.ln_w,
              "norm1.bias": slf.ln_b, **_attn_params("multihead_attn", enc),
              "norm2.weight": enc.ln_w, "norm2.bias": enc.ln_b, **_ffn_params(ffn, "norm3")}
    return functional_call(module, params, (x, enc_output), {
        "tgt_mask": tgt_mask, "memory_mask": memory_mask,
        "tgt_key_padding_mask": tgt_key_padding_mask,
        "memory_key_padding_mask": memory_key_padding_mask})


def torch_layers(n_head: int, weights: Mapping[str, Tensor], prefix: str = ""
                 ) -> tuple[EncoderLayerFn, DecoderLayerFn]:
    """EncoderLayer and DecoderLayer on PyTorch's own Transformer layers, sized from the stacked
    ``prefix + "slf_*"`` and ``prefix + "ffn_*"`` weights.

    Raises ``Unsupported`` (the case is skipped) unless ``n_head * d_k == n_head * d_v ==
    d_model``: PyTorch splits d_model into the heads, the notes size them freely.
    """
    _, qk, d_model = weights[prefix + "slf_w_qs"].shape  # (n_layers, n_head * d_k, d_model)
    v = weights[prefix + "slf_w_vs"].size(1)
    if qk != d_model or v != d_model:
        raise Unsupported(f"torch_layers needs n_head * d_k == n_head * d_v == d_model (PyTorch "
                         f"splits d_model into heads); got n_head * d_k = {qk}, "
                         f"n_head * d_v = {v}, d_model = {d_model}")
    encoder, decoder = _torch_modules(d_model, n_head, weights[prefix + "ffn_w_1"].size(1))
    return (functools.partial(torch_encoder_layer, module=encoder, n_head=n_head),
            functools.partial(torch_decoder_layer, module=decoder, n_head=n_head))


_TORCH_NOTES = ("exact mapping (zero biases on the attention projections); needs n_head * d_k "
                "== n_head * d_v == d_model; fwd may take PyTorch's fused fast path")


@register_impl("encoder", "torch_layers", notes=_TORCH_NOTES)
def encoder_torch_layers(src_seq: Tensor, src_mask: Tensor, emb: Tensor, pos_table: Tensor,
                         pad_idx: int, n_head: int, scale_emb: bool, **weights: Tensor) -> Tensor:
    """nn.TransformerEncoderLayer stack (post-norm, relu, eps 1e-6), key-padding mask."""
    layers = torch_layers(n_head, weights)
    return encoder_forward(src_seq, src_mask, emb, pos_table, weights, "", pad_idx, scale_emb,
                           layers[0])


@register_impl("decoder", "torch_layers", notes=_TORCH_NOTES.split("; fwd")[0])
def decoder_torch_layers(trg_seq: Tensor, trg_mask: Tensor, enc_output: Tensor,
                         src_mask: Tensor, emb: Tensor, pos_table: Tensor, pad_idx: int,
                         n_head: int, scale_emb: bool, **weights: Tensor) -> Tensor:
    """nn.TransformerDecoderLayer stack; trg_mask as a per-head attn_mask."""
    layers = torch_layers(n_head, weights)
    return decoder_forward(trg_seq, trg_mask, enc_output, src_mask, emb, pos_table, weights, "",
                           pad_idx, scale_emb, layers[1])


@register_impl("transformer", "torch_layers", notes=_TORCH_NOTES)
def transformer_torch_layers(src_seq: Tensor, trg_seq: Tensor, emb: Tensor, pos_table: Tensor,
                             pad_idx: int, n_head: int, scale_emb_or_prj: str,
                             **weights: Tensor) -> Tensor:
    """The model on nn.TransformerEncoderLayer / nn.TransformerDecoderLayer (not nn.Transformer,
    whose stacks end in a LayerNorm the notes do not have)."""
    layers = torch_layers(n_head, weights, "enc_")
    return transformer_forward(src_seq, trg_seq, emb, pos_table, weights, pad_idx,
                               scale_emb_or_prj, layers)


__all__ = ["decoder_torch_layers", "encoder_torch_layers", "torch_layers",
           "transformer_torch_layers"]
