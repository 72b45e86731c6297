"""The repository's Transformer nn.Modules, each attention computed by a chosen implementation.

PositionalEncoding, EncoderLayer, DecoderLayer, Encoder, Decoder and Transformer mirror
jadore801120/attention-is-all-you-need-pytorch, parameter names included, so its ``state_dict``
loads; ``impl=`` picks the registered attention implementation of every MultiHeadAttention
(``impls.mha``); the PositionwiseFeedForward is ``impls.ffn``'s. Dropout is the repository's:
active in training mode.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from impls.ffn import PositionwiseFeedForward
from impls.layernorm import LN_EPS
from impls.mha import MultiHeadAttention
from impls.transformer_parts import (
    N_POSITION,
    add_positions,
    get_pad_mask,
    get_subsequent_mask,
    sinusoid_table,
)


class PositionalEncoding(nn.Module):
    """Adds the sinusoid table (a buffer ``pos_table (1, n_position, d_hid)``) to ``x``.

    A sequence longer than ``n_position`` raises ``ValueError``.
    """

    def __init__(self, d_hid: int, n_position: int = N_POSITION) -> None:
        super().__init__()
        self.register_buffer("pos_table", sinusoid_table(n_position, d_hid).float().unsqueeze(0))

    def forward(self, x: Tensor) -> Tensor:
        return add_positions(x, self.pos_table[0].detach())  # (N, len, d_hid)


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward; ``forward -> (enc_output, enc_slf_attn)``."""

    def __init__(self, d_model: int, d_inner: int, n_head: int, d_k: int, d_v: int,
                 dropout: float = 0.1, impl: str = "matmul") -> None:
        super().__init__()
        self.slf_attn = MultiHeadAttention(n_head, d_model, d_k, d_v, dropout, attention=impl)
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
        self.slf_attn = MultiHeadAttention(n_head, d_model, d_k, d_v, dropout, attention=impl)
        self.enc_attn = MultiHeadAttention(n_head, d_model, d_k, d_v, dropout, attention=impl)
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
