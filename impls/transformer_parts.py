"""The notes' Transformer, as pure functions (what the ``encoder``, ``decoder`` and
``transformer`` implementations in ``impls.transformer`` are made of) and as the repository's
nn.Modules with a choice of attention implementation (importable from ``impls.transformer``).

Semantics of the repository the notes quote (jadore801120/attention-is-all-you-need-pytorch):
post-norm sublayers ``LayerNorm(x + sublayer(x))`` with eps 1e-6; boolean masks, True = may
attend; temperature ``d_k ** 0.5``; a sinusoid table of ``n_position = 200`` rows; the front end
embedding (padding_idx) -> optional ``* sqrt(d_model)`` -> + positions -> dropout -> LayerNorm;
no LayerNorm after either stack. The functions have no dropout (every benchmark and check runs
with it off); the modules keep the repository's.

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
from torch import Tensor, nn

from impls.attention import ScaledDotProductAttention

#: rows of the repository's sinusoid table: longer sequences are an error
N_POSITION = 200
#: every LayerNorm of the repository (nn.LayerNorm's default is 1e-5)
LN_EPS = 1e-6
#: the repository's fill value for masked scores
MASK_FILL = -1e9

#: ``fn(q, k, v, mask, temperature) -> output or (output, attn)``: a registered attention impl
AttentionFn = Callable[..., Any]


class AttnWeights(NamedTuple):
    """One MultiHeadAttention sublayer: bias-free projections and its LayerNorm."""

    w_qs: Tensor  # (n_head * d_k, d_model)
    w_ks: Tensor  # (n_head * d_k, d_model)
    w_vs: Tensor  # (n_head * d_v, d_model)
    fc: Tensor  # (d_model, n_head * d_v)
    ln_w: Tensor  # (d_model,)
    ln_b: Tensor  # (d_model,)


class FFNWeights(NamedTuple):
    """One PositionwiseFeedForward sublayer: two biased linears and its LayerNorm."""

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


def attention_output(result: Tensor | tuple[Tensor, ...]) -> Tensor:
    """The output of an attention implementation that may also return its weights."""
    return result[0] if isinstance(result, tuple) else result


def reference_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                        temperature: float) -> Tensor:
    """The repository's ScaledDotProductAttention (dropout off), for the layers' references."""
    attn = torch.matmul(q / temperature, k.transpose(2, 3))  # (N, h, len_q, len_k)
    if mask is not None:
        attn = attn.masked_fill(mask == 0, MASK_FILL)
    return torch.matmul(F.softmax(attn, dim=-1), v)  # (N, h, len_q, d_v)


def multi_head_attention(q_in: Tensor, k_in: Tensor, v_in: Tensor, mask: Tensor | None,
                         w: AttnWeights, n_head: int, attention: AttentionFn) -> Tensor:
    """The repository's MultiHeadAttention with a chosen attention: ``(N, len_q, d_model)``.

    Args:
        q_in: ``(N, len_q, d_model)``, also the residual; k_in, v_in: ``(N, len_k, d_model)``.
        mask: ``(N, 1 or len_q, len_k)`` bool, True = may attend, or None.
    """
    N, len_q, d_model = q_in.shape
    len_k = k_in.size(1)
    d_k, d_v = w.w_qs.size(0) // n_head, w.w_vs.size(0) // n_head
    q = F.linear(q_in, w.w_qs).view(N, len_q, n_head, d_k).transpose(1, 2)  # (N, h, len_q, d_k)
    k = F.linear(k_in, w.w_ks).view(N, len_k, n_head, d_k).transpose(1, 2)  # (N, h, len_k, d_k)
    v = F.linear(v_in, w.w_vs).view(N, len_k, n_head, d_v).transpose(1, 2)  # (N, h, len_k, d_v)
    if mask is not None:
        mask = mask.unsqueeze(1)  # (N, 1, 1 or len_q, len_k): the same mask for every head
    out = attention_output(attention(q, k, v, mask, d_k ** 0.5))  # (N, h, len_q, d_v)
    out = out.transpose(1, 2).contiguous().view(N, len_q, n_head * d_v)  # heads side by side
    return F.layer_norm(F.linear(out, w.fc) + q_in, (d_model,), w.ln_w, w.ln_b, eps=LN_EPS)


def positionwise_feed_forward(x: Tensor, w: FFNWeights) -> Tensor:
    """``LayerNorm(x + w_2(relu(w_1(x))))`` on ``x (N, len, d_model)``."""
    hidden = F.relu(F.linear(x, w.w_1, w.b_1))  # (N, len, d_inner)
    return F.layer_norm(F.linear(hidden, w.w_2, w.b_2) + x, (x.size(-1),), w.ln_w, w.ln_b,
                        eps=LN_EPS)


def encoder_layer(x: Tensor, slf_attn_mask: Tensor | None, slf: AttnWeights, ffn: FFNWeights,
                  *, n_head: int, attention: AttentionFn) -> Tensor:
    """EncoderLayer: self-attention, then the feed-forward sublayer. ``(N, len, d_model)``."""
    x = multi_head_attention(x, x, x, slf_attn_mask, slf, n_head, attention)
    return positionwise_feed_forward(x, ffn)


def decoder_layer(x: Tensor, enc_output: Tensor, slf_attn_mask: Tensor | None,
                  dec_enc_attn_mask: Tensor | None, slf: AttnWeights, enc: AttnWeights,
                  ffn: FFNWeights, *, n_head: int, attention: AttentionFn) -> Tensor:
    """DecoderLayer: masked self-attention, attention over ``enc_output (N, src_len,
    d_model)``, then the feed-forward sublayer. ``(N, trg_len, d_model)``."""
    x = multi_head_attention(x, x, x, slf_attn_mask, slf, n_head, attention)
    x = multi_head_attention(x, enc_output, enc_output, dec_enc_attn_mask, enc, n_head,
                             attention)
    return positionwise_feed_forward(x, ffn)


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


#: no ReLU pre-activation of the inputs lies within this fraction of their RMS from the kink
KINK_MARGIN = 1e-4


def _clear_kinks(x: Tensor, w_1: Tensor, b_1: Tensor) -> Tensor:
    """``b_1 (d_inner,)`` nudged up until no token's pre-activation ``x w_1^T + b_1`` lies
    within ``KINK_MARGIN`` (relative to their RMS) of the ReLU's kink at zero.

    Why: a pre-activation within float32 rounding (~1e-6) of zero can take the other side of
    the kink in float32 than in the float64 reference. The forward hardly notices, but that
    unit's gradient switches on or off, which moves the weight gradients by ~1e-3 relative: a
    false "incorrect". Unconditioned, the repository's model on 8 x 32 tokens (3 million
    pre-activations per call) hits one such unit in about one trial in 15.
    """
    h = F.linear(x, w_1).flatten(0, -2)  # (N * len, d_inner), without the bias
    margin = KINK_MARGIN * float(h.pow(2).mean().sqrt())
    b = b_1.clone()
    for _ in range(1000):  # each step clears a unit's near tokens; few ever need a second one
        near = ((h + b).abs() < margin).any(0)  # (d_inner,)
        if not bool(near.any()):
            break
        b = torch.where(near, b + 3 * margin, b)
    return b


def _ffn_clear_of_kinks(x: Tensor, ffn: FFNWeights) -> Tensor:
    ffn.b_1.copy_(_clear_kinks(x, ffn.w_1, ffn.b_1))  # a view into the stacked ffn_b_1
    return positionwise_feed_forward(x, ffn)


def kink_free_layers(n_head: int) -> tuple[EncoderLayerFn, DecoderLayerFn]:
    """The reference layers, each nudging its FFN's ``b_1`` (in place) clear of the ReLU's kink
    for the input it sees, before applying it: how the layers' ``make_inputs`` condition their
    random weights."""

    def encoder(x: Tensor, mask: Tensor | None, slf: AttnWeights, ffn: FFNWeights) -> Tensor:
        x = multi_head_attention(x, x, x, mask, slf, n_head, reference_attention)
        return _ffn_clear_of_kinks(x, ffn)

    def decoder(x: Tensor, enc_output: Tensor, slf_mask: Tensor | None,
                enc_mask: Tensor | None, slf: AttnWeights, enc: AttnWeights,
                ffn: FFNWeights) -> Tensor:
        x = multi_head_attention(x, x, x, slf_mask, slf, n_head, reference_attention)
        x = multi_head_attention(x, enc_output, enc_output, enc_mask, enc, n_head,
                                 reference_attention)
        return _ffn_clear_of_kinks(x, ffn)

    return encoder, decoder


# --- the repository's nn.Modules, with a choice of attention implementation -----------------


class PositionalEncoding(nn.Module):
    """Adds the sinusoid table (a buffer ``pos_table (1, n_position, d_hid)``) to ``x``.

    A sequence longer than ``n_position`` raises ``ValueError``.
    """

    def __init__(self, d_hid: int, n_position: int = N_POSITION) -> None:
        super().__init__()
        self.register_buffer("pos_table", sinusoid_table(n_position, d_hid).float().unsqueeze(0))

    def forward(self, x: Tensor) -> Tensor:
        return add_positions(x, self.pos_table[0].detach())  # (N, len, d_hid)


class MultiHeadSublayer(nn.Module):
    """The repository's MultiHeadAttention: ``LayerNorm(fc(heads) + q)``, eps 1e-6, with a
    chosen *attention* implementation (``impls.mha`` instead chooses whole-MHA
    implementations). ``forward(q, k, v, mask=None) -> (output, attn or None)``."""

    def __init__(self, n_head: int, d_model: int, d_k: int, d_v: int, dropout: float = 0.1,
                 impl: str = "matmul") -> None:
        super().__init__()
        self.n_head, self.d_k, self.d_v = n_head, d_k, d_v
        self.w_qs = nn.Linear(d_model, n_head * d_k, bias=False)
        self.w_ks = nn.Linear(d_model, n_head * d_k, bias=False)
        self.w_vs = nn.Linear(d_model, n_head * d_v, bias=False)
        self.fc = nn.Linear(n_head * d_v, d_model, bias=False)
        self.attention = ScaledDotProductAttention(temperature=d_k ** 0.5, attn_dropout=dropout,
                                                   impl=impl)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model, eps=LN_EPS)

    def forward(self, q: Tensor, k: Tensor, v: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        d_k, d_v, n_head = self.d_k, self.d_v, self.n_head
        sz_b, len_q, len_k = q.size(0), q.size(1), k.size(1)
        residual = q
        q = self.w_qs(q).view(sz_b, len_q, n_head, d_k).transpose(1, 2)  # (N, h, len_q, d_k)
        k = self.w_ks(k).view(sz_b, len_k, n_head, d_k).transpose(1, 2)  # (N, h, len_k, d_k)
        v = self.w_vs(v).view(sz_b, len_k, n_head, d_v).transpose(1, 2)  # (N, h, len_k, d_v)
        if mask is not None:
            mask = mask.unsqueeze(1)  # (N, 1, 1 or len_q, len_k): broadcast over heads
        out, attn = self.attention(q, k, v, mask=mask)  # (N, h, len_q, d_v)
        out = out.transpose(1, 2).contiguous().view(sz_b, len_q, -1)  # (N, len_q, h * d_v)
        out = self.dropout(self.fc(out)) + residual
        return self.layer_norm(out), attn


class PositionwiseFeedForward(nn.Module):
    """``LayerNorm(x + w_2(relu(w_1(x))))``, biased linears, eps 1e-6."""

    def __init__(self, d_in: int, d_hid: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_in, d_hid)
        self.w_2 = nn.Linear(d_hid, d_in)
        self.layer_norm = nn.LayerNorm(d_in, eps=LN_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out = self.dropout(self.w_2(F.relu(self.w_1(x)))) + x  # (N, len, d_in)
        return self.layer_norm(out)


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward; ``forward -> (enc_output, enc_slf_attn)``."""

    def __init__(self, d_model: int, d_inner: int, n_head: int, d_k: int, d_v: int,
                 dropout: float = 0.1, impl: str = "matmul") -> None:
        super().__init__()
        self.slf_attn = MultiHeadSublayer(n_head, d_model, d_k, d_v, dropout, impl)
        self.pos_ffn = PositionwiseFeedForward(d_model, d_inner, dropout)

    def forward(self, enc_input: Tensor,
                slf_attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        enc_output, enc_slf_attn = self.slf_attn(enc_input, enc_input, enc_input,
                                                 mask=slf_attn_mask)
        return self.pos_ffn(enc_output), enc_slf_attn


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention, feed-forward;
    ``forward -> (dec_output, dec_slf_attn, dec_enc_attn)``."""

    def __init__(self, d_model: int, d_inner: int, n_head: int, d_k: int, d_v: int,
                 dropout: float = 0.1, impl: str = "matmul") -> None:
        super().__init__()
        self.slf_attn = MultiHeadSublayer(n_head, d_model, d_k, d_v, dropout, impl)
        self.enc_attn = MultiHeadSublayer(n_head, d_model, d_k, d_v, dropout, impl)
        self.pos_ffn = PositionwiseFeedForward(d_model, d_inner, dropout)

    def forward(self, dec_input: Tensor, enc_output: Tensor,
                slf_attn_mask: Tensor | None = None, dec_enc_attn_mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        dec_output, dec_slf_attn = self.slf_attn(dec_input, dec_input, dec_input,
                                                 mask=slf_attn_mask)
        dec_output, dec_enc_attn = self.enc_attn(dec_output, enc_output, enc_output,
                                                 mask=dec_enc_attn_mask)
        return self.pos_ffn(dec_output), dec_slf_attn, dec_enc_attn


class _Stack(nn.Module):
    """The front end both stacks share: embedding -> scale -> positions -> dropout -> LN."""

    def __init__(self, d_word_vec: int, d_model: int, n_position: int, dropout: float,
                 scale_emb: bool) -> None:
        super().__init__()
        self.position_enc = PositionalEncoding(d_word_vec, n_position=n_position)
        self.dropout = nn.Dropout(p=dropout)
        self.layer_norm = nn.LayerNorm(d_model, eps=LN_EPS)
        self.scale_emb, self.d_model = scale_emb, d_model

    def front_end(self, word_emb: nn.Embedding, seq: Tensor) -> Tensor:
        x = word_emb(seq)  # (N, len, d_word_vec)
        if self.scale_emb:
            x = x * self.d_model ** 0.5
        return self.layer_norm(self.dropout(self.position_enc(x)))


class Encoder(_Stack):
    """The repository's Encoder; ``forward(src_seq, src_mask) -> (enc_output,)`` (no final
    LayerNorm), plus the list of attention weights with ``return_attns``."""

    def __init__(self, n_src_vocab: int, d_word_vec: int, n_layers: int, n_head: int, d_k: int,
                 d_v: int, d_model: int, d_inner: int, pad_idx: int, dropout: float = 0.1,
                 n_position: int = N_POSITION, scale_emb: bool = False,
                 impl: str = "matmul") -> None:
        super().__init__(d_word_vec, d_model, n_position, dropout, scale_emb)
        self.src_word_emb = nn.Embedding(n_src_vocab, d_word_vec, padding_idx=pad_idx)
        self.layer_stack = nn.ModuleList([
            EncoderLayer(d_model, d_inner, n_head, d_k, d_v, dropout, impl)
            for _ in range(n_layers)])

    def forward(self, src_seq: Tensor, src_mask: Tensor | None,
                return_attns: bool = False) -> tuple[Any, ...]:
        enc_output, attns = self.front_end(self.src_word_emb, src_seq), []
        for enc_layer in self.layer_stack:
            enc_output, enc_slf_attn = enc_layer(enc_output, slf_attn_mask=src_mask)
            attns.append(enc_slf_attn)
        return (enc_output, attns) if return_attns else (enc_output,)


class Decoder(_Stack):
    """The repository's Decoder; ``forward(trg_seq, trg_mask, enc_output, src_mask) ->
    (dec_output,)`` (no final LayerNorm), plus both attention lists with ``return_attns``."""

    def __init__(self, n_trg_vocab: int, d_word_vec: int, n_layers: int, n_head: int, d_k: int,
                 d_v: int, d_model: int, d_inner: int, pad_idx: int,
                 n_position: int = N_POSITION, dropout: float = 0.1, scale_emb: bool = False,
                 impl: str = "matmul") -> None:
        super().__init__(d_word_vec, d_model, n_position, dropout, scale_emb)
        self.trg_word_emb = nn.Embedding(n_trg_vocab, d_word_vec, padding_idx=pad_idx)
        self.layer_stack = nn.ModuleList([
            DecoderLayer(d_model, d_inner, n_head, d_k, d_v, dropout, impl)
            for _ in range(n_layers)])

    def forward(self, trg_seq: Tensor, trg_mask: Tensor | None, enc_output: Tensor,
                src_mask: Tensor | None, return_attns: bool = False) -> tuple[Any, ...]:
        dec_output, slf_attns, enc_attns = self.front_end(self.trg_word_emb, trg_seq), [], []
        for dec_layer in self.layer_stack:
            dec_output, dec_slf_attn, dec_enc_attn = dec_layer(
                dec_output, enc_output, slf_attn_mask=trg_mask, dec_enc_attn_mask=src_mask)
            slf_attns.append(dec_slf_attn)
            enc_attns.append(dec_enc_attn)
        return (dec_output, slf_attns, enc_attns) if return_attns else (dec_output,)


class Transformer(nn.Module):
    """The repository's Transformer: ``forward(src_seq, trg_seq) -> logits (N * trg_len,
    n_trg_vocab)``. Same arguments and defaults (weight sharings on, ``scale_emb_or_prj =
    "prj"``, Xavier-uniform init of every matrix), plus ``impl`` for the attention."""

    def __init__(self, n_src_vocab: int, n_trg_vocab: int, src_pad_idx: int, trg_pad_idx: int,
                 d_word_vec: int = 512, d_model: int = 512, d_inner: int = 2048,
                 n_layers: int = 6, n_head: int = 8, d_k: int = 64, d_v: int = 64,
                 dropout: float = 0.1, n_position: int = N_POSITION,
                 trg_emb_prj_weight_sharing: bool = True, emb_src_trg_weight_sharing: bool = True,
                 scale_emb_or_prj: str = "prj", impl: str = "matmul") -> None:
        super().__init__()
        if scale_emb_or_prj not in ("emb", "prj", "none"):
            raise ValueError(f"scale_emb_or_prj must be 'emb', 'prj' or 'none', "
                             f"got {scale_emb_or_prj!r}")
        if d_model != d_word_vec:
            raise ValueError(f"d_model ({d_model}) must equal d_word_vec ({d_word_vec}) for "
                             "the residual connections")
        self.src_pad_idx, self.trg_pad_idx = src_pad_idx, trg_pad_idx
        # as the repository: scaling only applies with the target embedding/projection shared
        scale_emb = trg_emb_prj_weight_sharing and scale_emb_or_prj == "emb"
        self.scale_prj = trg_emb_prj_weight_sharing and scale_emb_or_prj == "prj"
        self.d_model = d_model
        sizes = dict(d_word_vec=d_word_vec, n_layers=n_layers, n_head=n_head, d_k=d_k, d_v=d_v,
                     d_model=d_model, d_inner=d_inner, n_position=n_position, dropout=dropout,
                     scale_emb=scale_emb, impl=impl)
        self.encoder = Encoder(n_src_vocab=n_src_vocab, pad_idx=src_pad_idx, **sizes)
        self.decoder = Decoder(n_trg_vocab=n_trg_vocab, pad_idx=trg_pad_idx, **sizes)
        self.trg_word_prj = nn.Linear(d_model, n_trg_vocab, bias=False)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if trg_emb_prj_weight_sharing:
            self.trg_word_prj.weight = self.decoder.trg_word_emb.weight
        if emb_src_trg_weight_sharing:
            self.encoder.src_word_emb.weight = self.decoder.trg_word_emb.weight

    def forward(self, src_seq: Tensor, trg_seq: Tensor) -> Tensor:
        src_mask = get_pad_mask(src_seq, self.src_pad_idx)  # (N, 1, src_len)
        trg_mask = get_pad_mask(trg_seq, self.trg_pad_idx) & get_subsequent_mask(trg_seq)
        enc_output, *_ = self.encoder(src_seq, src_mask)
        dec_output, *_ = self.decoder(trg_seq, trg_mask, enc_output, src_mask)
        seq_logit = self.trg_word_prj(dec_output)  # (N, trg_len, n_trg_vocab)
        if self.scale_prj:
            seq_logit = seq_logit * self.d_model ** -0.5
        return seq_logit.view(-1, seq_logit.size(2))  # (N * trg_len, n_trg_vocab)
