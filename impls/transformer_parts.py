"""The notes' Transformer as pure functions: what the ``encoder``, ``decoder`` and
``transformer`` implementations in ``impls.transformer`` are made of (the repository's
nn.Modules, with a choice of attention implementation, are in ``impls.transformer_modules``).

Semantics of the repository the notes quote (jadore801120/attention-is-all-you-need-pytorch):
post-norm sublayers ``LayerNorm(x + sublayer(x))`` with eps 1e-6; boolean masks, True = may
attend; temperature ``d_k ** 0.5``; a sinusoid table of ``n_position = 200`` rows; the front end
embedding (padding_idx) -> optional ``* sqrt(d_model)`` -> + positions -> dropout -> LayerNorm;
no LayerNorm after either stack. The functions have no dropout (every benchmark and check runs
with it off). Every attention sublayer is ``impls.mha.multi_head_attention``, every
feed-forward sublayer ``impls.ffn.positionwise_feed_forward``.

Weights use ``nn.Linear``'s ``(out_features, in_features)`` layout and are stacked over the
layers, so a stack is a fixed set of tensors whatever ``n_layers`` is: ``slf_w_qs (n_layers,
n_head * d_k, d_model)``, ``ffn_b_1 (n_layers, d_inner)`` and so on (see ``AttnWeights`` and
``FFNWeights``; sublayer prefixes ``slf_``, ``enc_`` and ``ffn_`` follow the repository's
``slf_attn``, ``enc_attn`` and ``pos_ffn``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from impls.ffn import _clear_kinks, positionwise_feed_forward
from impls.layernorm import LN_EPS
from impls.mha import AttentionFn, multi_head_attention

#: rows of the repository's sinusoid table: longer sequences are an error
N_POSITION = 200


class AttnWeights(NamedTuple):
    """One MultiHeadAttention sublayer: bias-free projections and its LayerNorm."""

    w_qs: Tensor  # (n_head * d_k, d_model)
    w_ks: Tensor  # (n_head * d_k, d_model)
    w_vs: Tensor  # (n_head * d_v, d_model)
    fc: Tensor  # (d_model, n_head * d_v)
    ln_w: Tensor  # (d_model,)
    ln_b: Tensor  # (d_model,)


class FFNWeights(NamedTuple):
    """One PositionwiseFeedForward sublayer: two biased linears and its LayerNorm, in the
    order ``impls.ffn.positionwise_feed_forward`` takes them."""

    w_1: Tensor  # (d_inner, d_model)
    b_1: Tensor  # (d_inner,)
    w_2: Tensor  # (d_model, d_inner)
    b_2: Tensor  # (d_model,)
    ln_w: Tensor  # (d_model,)
    ln_b: Tensor  # (d_model,)


def unstack(kind: type[AttnWeights] | type[FFNWeights], weights: Mapping[str, Tensor],
            prefix: str) -> list[Any]:
    """Per-layer views of the stacked tensors ``prefix + field``, each ``(n_layers, ...)``.

    ``unbind`` makes the backward one stack per tensor, where indexing ``w[i]`` would build
    ``n_layers`` zero-padded full-size gradients and add them up.
    """
    columns = [weights[prefix + f].unbind(0) for f in kind._fields]
    return [kind(*row) for row in zip(*columns, strict=True)]


def sinusoid_table(n_position: int, d_hid: int) -> Tensor:
    """The repository's PositionalEncoding table, float64 ``(n_position, d_hid)``.

    Column j holds ``pos / 10000 ** (2 * (j // 2) / d_hid)``: its sine on even columns, its
    cosine on odd ones.
    """
    pos = torch.arange(n_position, dtype=torch.float64).unsqueeze(1)  # (n_position, 1)
    j = torch.arange(d_hid, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / d_hid)
    table = angle.clone()  # (n_position, d_hid)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table


def get_pad_mask(seq: Tensor, pad_idx: int) -> Tensor:
    """``(N, len)`` token ids -> ``(N, 1, len)`` bool, True where the key is a real token."""
    return (seq != pad_idx).unsqueeze(-2)


def get_subsequent_mask(seq: Tensor) -> Tensor:
    """``(N, len)`` -> ``(1, len, len)`` bool, lower triangular *including* the diagonal:
    query i may attend to keys 0..i."""
    len_s = seq.size(1)
    return torch.ones(1, len_s, len_s, dtype=torch.bool, device=seq.device).tril()


def add_positions(x: Tensor, pos_table: Tensor) -> Tensor:
    """``x (N, len, d)`` plus the first ``len`` rows of ``pos_table (n_position, d)``."""
    if x.size(1) > pos_table.size(0):
        raise ValueError(f"sequence length {x.size(1)} exceeds the positional table's "
                         f"n_position = {pos_table.size(0)}")
    return x + pos_table[: x.size(1)]  # (len, d) broadcast over N


def embed(seq: Tensor, emb: Tensor, pos_table: Tensor, ln_w: Tensor, ln_b: Tensor,
          pad_idx: int, scale_emb: bool) -> Tensor:
    """The stacks' front end: ``(N, len)`` ids -> ``(N, len, d_model)``.

    Embedding (the ``pad_idx`` row gets no gradient) -> ``* sqrt(d_model)`` if ``scale_emb`` ->
    + positions -> (dropout, off) -> LayerNorm.
    """
    x = F.embedding(seq, emb, padding_idx=pad_idx)  # (N, len, d_model)
    if scale_emb:
        x = x * emb.size(1) ** 0.5
    x = add_positions(x, pos_table)
    return F.layer_norm(x, (x.size(-1),), ln_w, ln_b, eps=LN_EPS)


def mha_sublayer(q_in: Tensor, kv_in: Tensor, mask: Tensor | None, w: AttnWeights,
                 n_head: int, attention: AttentionFn) -> Tensor:
    """One MultiHeadAttention sublayer (``multi_head_attention``): ``(N, len_q, d_model)``.

    Args:
        q_in: ``(N, len_q, d_model)``, also the residual; kv_in: ``(N, len_k, d_model)``.
        mask: ``(N, 1 or len_q, len_k)`` bool, True = may attend, or None.
    """
    d_k, d_v = w.w_qs.size(0) // n_head, w.w_vs.size(0) // n_head
    return multi_head_attention(q_in, kv_in, kv_in, mask, *w, n_head, d_k, d_v, attention)[0]


def encoder_layer(x: Tensor, slf_attn_mask: Tensor | None, slf: AttnWeights, ffn: FFNWeights,
                  *, n_head: int, attention: AttentionFn) -> Tensor:
    """EncoderLayer: self-attention, then the feed-forward sublayer. ``(N, len, d_model)``."""
    x = mha_sublayer(x, x, slf_attn_mask, slf, n_head, attention)
    return positionwise_feed_forward(x, *ffn)


def decoder_layer(x: Tensor, enc_output: Tensor, slf_attn_mask: Tensor | None,
                  dec_enc_attn_mask: Tensor | None, slf: AttnWeights, enc: AttnWeights,
                  ffn: FFNWeights, *, n_head: int, attention: AttentionFn) -> Tensor:
    """DecoderLayer: masked self-attention, attention over ``enc_output (N, src_len,
    d_model)``, then the feed-forward sublayer. ``(N, trg_len, d_model)``."""
    x = mha_sublayer(x, x, slf_attn_mask, slf, n_head, attention)
    x = mha_sublayer(x, enc_output, dec_enc_attn_mask, enc, n_head, attention)
    return positionwise_feed_forward(x, *ffn)


EncoderLayerFn = Callable[[Tensor, Tensor | None, AttnWeights, FFNWeights], Tensor]
DecoderLayerFn = Callable[[Tensor, Tensor, Tensor | None, Tensor | None, AttnWeights,
                           AttnWeights, FFNWeights], Tensor]


def seed_layers(n_head: int, attention: AttentionFn) -> tuple[EncoderLayerFn, DecoderLayerFn]:
    """The repository's EncoderLayer and DecoderLayer computed with ``attention``."""
    return (partial(encoder_layer, n_head=n_head, attention=attention),
            partial(decoder_layer, n_head=n_head, attention=attention))


def encoder_forward(src_seq: Tensor, src_mask: Tensor | None, emb: Tensor, pos_table: Tensor,
                    weights: Mapping[str, Tensor], prefix: str, pad_idx: int, scale_emb: bool,
                    layer: EncoderLayerFn) -> Tensor:
    """Encoder: front end, then the layer stack; no final LayerNorm.

    Args:
        src_seq: ``(N, src_len)`` ids; src_mask: ``(N, 1, src_len)`` bool (True = may attend).
        weights: ``prefix + "ln_w"``, ``prefix + "ln_b"`` and the stacked ``prefix + "slf_*"``,
            ``prefix + "ffn_*"`` tensors.
    Returns:
        ``enc_output (N, src_len, d_model)``.
    """
    x = embed(src_seq, emb, pos_table, weights[prefix + "ln_w"], weights[prefix + "ln_b"],
              pad_idx, scale_emb)
    stacks = zip(unstack(AttnWeights, weights, prefix + "slf_"),
                 unstack(FFNWeights, weights, prefix + "ffn_"), strict=True)
    for slf, ffn in stacks:
        x = layer(x, src_mask, slf, ffn)
    return x


def decoder_forward(trg_seq: Tensor, trg_mask: Tensor | None, enc_output: Tensor,
                    src_mask: Tensor | None, emb: Tensor, pos_table: Tensor,
                    weights: Mapping[str, Tensor], prefix: str, pad_idx: int, scale_emb: bool,
                    layer: DecoderLayerFn) -> Tensor:
    """Decoder: front end, then the layer stack; no final LayerNorm.

    Args:
        trg_seq: ``(N, trg_len)`` ids; trg_mask: ``(N, trg_len, trg_len)`` bool, padding AND
            subsequent; enc_output: ``(N, src_len, d_model)``; src_mask: ``(N, 1, src_len)``.
        weights: ``prefix + "ln_w"``, ``prefix + "ln_b"`` and the stacked ``prefix + "slf_*"``,
            ``prefix + "enc_*"``, ``prefix + "ffn_*"`` tensors.
    Returns:
        ``dec_output (N, trg_len, d_model)``.
    """
    x = embed(trg_seq, emb, pos_table, weights[prefix + "ln_w"], weights[prefix + "ln_b"],
              pad_idx, scale_emb)
    stacks = zip(unstack(AttnWeights, weights, prefix + "slf_"),
                 unstack(AttnWeights, weights, prefix + "enc_"),
                 unstack(FFNWeights, weights, prefix + "ffn_"), strict=True)
    for slf, enc, ffn in stacks:
        x = layer(x, enc_output, trg_mask, src_mask, slf, enc, ffn)
    return x


def transformer_forward(src_seq: Tensor, trg_seq: Tensor, emb: Tensor, pos_table: Tensor,
                        weights: Mapping[str, Tensor], pad_idx: int, scale_emb_or_prj: str,
                        layers: tuple[EncoderLayerFn, DecoderLayerFn]) -> Tensor:
    """Transformer.forward with both of the repository's weight sharings on (its defaults):
    one ``emb (n_vocab, d_model)`` table embeds the source and the target and projects to
    logits.

    ``scale_emb_or_prj``: ``"prj"`` (the default) scales the logits by ``d_model ** -0.5``,
    ``"emb"`` scales both embeddings by ``d_model ** 0.5``, ``"none"`` neither.

    Returns:
        logits ``(N * trg_len, n_vocab)``.
    """
    src_mask = get_pad_mask(src_seq, pad_idx)  # (N, 1, src_len)
    trg_mask = get_pad_mask(trg_seq, pad_idx) & get_subsequent_mask(trg_seq)  # (N, T, T)
    scale_emb = scale_emb_or_prj == "emb"
    enc_output = encoder_forward(src_seq, src_mask, emb, pos_table, weights, "enc_", pad_idx,
                                 scale_emb, layers[0])
    dec_output = decoder_forward(trg_seq, trg_mask, enc_output, src_mask, emb, pos_table,
                                 weights, "dec_", pad_idx, scale_emb, layers[1])
    seq_logit = F.linear(dec_output, emb)  # (N, trg_len, n_vocab): the shared table projects
    if scale_emb_or_prj == "prj":
        seq_logit = seq_logit * emb.size(1) ** -0.5
    return seq_logit.view(-1, seq_logit.size(2))  # (N * trg_len, n_vocab)


# --- inputs clear of the ReLU's kink -------------------------------------------------------


def _ffn_clear_of_kinks(x: Tensor, ffn: FFNWeights) -> Tensor:
    ffn.b_1.copy_(_clear_kinks(x, ffn.w_1, ffn.b_1))  # a view into the stacked ffn_b_1
    return positionwise_feed_forward(x, *ffn)


def kink_free_layers(n_head: int, attention: AttentionFn) -> tuple[EncoderLayerFn,
                                                                    DecoderLayerFn]:
    """The layers with ``attention``, each nudging its FFN's ``b_1`` (in place) clear of the
    ReLU's kink for the input it sees (``impls.ffn._clear_kinks``, which says why), before
    applying it: how the layers' ``make_inputs`` condition their random weights."""

    def encoder(x: Tensor, mask: Tensor | None, slf: AttnWeights, ffn: FFNWeights) -> Tensor:
        x = mha_sublayer(x, x, mask, slf, n_head, attention)
        return _ffn_clear_of_kinks(x, ffn)

    def decoder(x: Tensor, enc_output: Tensor, slf_mask: Tensor | None,
                enc_mask: Tensor | None, slf: AttnWeights, enc: AttnWeights,
                ffn: FFNWeights) -> Tensor:
        x = mha_sublayer(x, x, slf_mask, slf, n_head, attention)
        x = mha_sublayer(x, enc_output, enc_mask, enc, n_head, attention)
        return _ffn_clear_of_kinks(x, ffn)

    return encoder, decoder
