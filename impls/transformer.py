"""Encoder, Decoder and the whole Transformer of the course notes, with a choice of attention.

Three layers: ``encoder`` (the Encoder stack: ``src_seq, src_mask -> enc_output``), ``decoder``
(the Decoder stack: ``trg_seq, trg_mask, enc_output, src_mask -> dec_output``) and
``transformer`` (``src_seq, trg_seq -> logits (N * trg_len, n_vocab)``). Each has one
implementation per registered attention implementation (``REGISTRY.derive``: the built-in ones
and any a user registers), all computing the repository's structure
(``impls.transformer_parts``) with ``impls.mha.multi_head_attention``, and ``torch_layers`` on
nn.TransformerEncoderLayer / nn.TransformerDecoderLayer with the weights mapped in
(``impls.transformer_torch``). ``sdpa_flash`` takes no attention mask and every case here is
masked, so its cases are skipped (``Unsupported``).

The ``transformer`` layer uses the repository's defaults: ``trg_emb_prj_weight_sharing`` and
``emb_src_trg_weight_sharing`` on (one ``emb`` table, listed once in ``grad``) and
``scale_emb_or_prj = "prj"`` (logits scaled by ``d_model ** -0.5``).

The repository's nn.Modules are in ``impls.transformer_modules``.
"""

from __future__ import annotations

import dataclasses
import math
from abc import abstractmethod
from collections.abc import Callable, Collection
from typing import Any, ClassVar

import torch
from torch import Tensor

from impls.attention import LAYER as ATTENTION
from impls.ffn import LAYER as FFN
from impls.mha import LAYER as MHA
from impls.mha import AttentionFn, per_head_sizes
from impls.registry import (
    REGISTRY,
    CaseInputs,
    Impl,
    Layer,
    Params,
    register_layer,
)
from impls.transformer_parts import (
    N_POSITION,
    DecoderLayerFn,
    EncoderLayerFn,
    decoder_forward,
    encoder_forward,
    get_pad_mask,
    get_subsequent_mask,
    kink_free_layers,
    seed_layers,
    sinusoid_table,
    transformer_forward,
)

_MODEL = ("n_layers", "d_model", "n_head", "d_k", "d_v", "d_inner", "n_vocab")
_LABELS = {"seq_len": "L", "src_len": "S", "trg_len": "T", "n_layers": "nl", "d_model": "dm",
           "n_head": "h", "d_k": "dk", "d_v": "dv", "d_inner": "di", "n_vocab": "V"}
_LINEAR = ("w_qs", "w_ks", "w_vs", "fc", "w_1", "w_2")


def _stack_shapes(prefix: str, p: Params, cross: bool) -> dict[str, tuple[int, ...]]:
    """Shapes of a stack's front-end LayerNorm and its stacked per-layer weights."""
    L, D, H, d_k, d_v, d_inner = (p[n] for n in ("n_layers", "d_model", "n_head", "d_k", "d_v",
                                                 "d_inner"))

    def attn(sub: str) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}{sub}w_qs": (L, H * d_k, D), f"{prefix}{sub}w_ks": (L, H * d_k, D),
                f"{prefix}{sub}w_vs": (L, H * d_v, D), f"{prefix}{sub}fc": (L, D, H * d_v),
                f"{prefix}{sub}ln_w": (L, D), f"{prefix}{sub}ln_b": (L, D)}

    return {f"{prefix}ln_w": (D,), f"{prefix}ln_b": (D,), **attn("slf_"),
            **(attn("enc_") if cross else {}),
            f"{prefix}ffn_w_1": (L, d_inner, D), f"{prefix}ffn_b_1": (L, d_inner),
            f"{prefix}ffn_w_2": (L, D, d_inner), f"{prefix}ffn_b_2": (L, D),
            f"{prefix}ffn_ln_w": (L, D), f"{prefix}ffn_ln_b": (L, D)}


def _init(name: str, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Random normal, scaled so every sublayer's output is O(1) (float16 does not overflow)."""
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    if name.endswith("ln_w"):
        return 1 + 0.1 * x  # LayerNorm gains near 1
    if name.endswith(("ln_b", "b_1", "b_2")):
        return 0.1 * x
    if name.endswith(_LINEAR):
        return x / math.sqrt(shape[-1])  # / sqrt(fan_in)
    return x  # emb, enc_output


def _tokens(generator: torch.Generator, N: int, length: int, n_vocab: int,
            pad_idx: int) -> Tensor:
    """``(N, length)`` ids: real tokens, then trailing ``pad_idx`` in every row (real length
    ``ceil(length / 2) .. length - 1``; never a fully padded row)."""
    ids = torch.randint(0, n_vocab - 1, (N, length), generator=generator)
    ids = ids + (ids >= pad_idx).long()  # real tokens skip pad_idx
    low = (length + 1) // 2
    lengths = torch.randint(low, max(length, low + 1), (N,), generator=generator)
    return ids.masked_fill(torch.arange(length) >= lengths[:, None], pad_idx)


def _mha_flops(N: int, len_q: int, len_k: int, p: Params) -> int:
    """Forward FLOPs of one attention sublayer: the ``mha`` layer's count."""
    return MHA.flops({"N": N, "len_q": len_q, "len_k": len_k, "d_model": p["d_model"],
                      "n_head": p["n_head"], "d_k": p["d_k"], "d_v": p["d_v"], "mask": 0}, "fwd")


def _ffn_flops(N: int, length: int, p: Params) -> int:
    """Forward FLOPs of one feed-forward sublayer: the ``ffn`` layer's count."""
    return FFN.flops({"N": N, "len": length, "d_model": p["d_model"],
                      "d_inner": p["d_inner"]}, "fwd")


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


class _TransformerPart(Layer):
    """What the three layers share: size checks, cost formulas, bytes from the input shapes."""

    labels: ClassVar[dict[str, str]] = _LABELS
    lengths: ClassVar[tuple[str, ...]] = ()
    positive: ClassVar[tuple[str, ...] | None] = None  # every size parameter
    # float32 fwdbwd at the repo's size: 1-40 of 1.5M elements of the top layer's q/k weight
    # gradients reach 1.1-3.1x the single-op atol, for every implementation (torch's layers too)
    grad_atol_scale: ClassVar[float] = 5.0

    def __init__(self, pad_idx: int = 0) -> None:
        self.pad_idx = pad_idx

    def derived(self, params: Params, given: Collection[str]) -> Params:
        return per_head_sizes(self.name, params, given)

    def check(self, params: Params) -> None:
        super().check(params)
        if params["n_vocab"] < 2:
            raise ValueError(f"{self.name}: n_vocab must be >= 2 (the pad token and at least "
                             f"one real token), got {params['n_vocab']}")
        for p in self.lengths:
            if params[p] > N_POSITION:
                raise ValueError(f"{self.name}: {p} = {params[p]} exceeds the positional "
                                 f"table's n_position = {N_POSITION}")

    @abstractmethod
    def float_shapes(self, params: Params) -> dict[str, tuple[int, ...]]:
        """Floating inputs that receive gradients (all of them but ``pos_table``)."""

    @abstractmethod
    def random_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        """Seeded tokens, masks and weights, before ``make_inputs`` conditions ``ffn_b_1``."""

    @abstractmethod
    def run(self, layers: tuple[EncoderLayerFn, DecoderLayerFn], **inputs: Any) -> Tensor:
        """The layer's computation with the given EncoderLayer / DecoderLayer functions."""

    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        inputs = self.random_inputs(params, generator)
        # Nudge every ffn_b_1 clear of the ReLU's kink (see kink_free_layers). float32 is plenty
        # (it errs by ~1e-6 where the margin is 1e-4) and twice as fast as float64.
        probe = inputs.to(torch.float32, "cpu")
        with torch.no_grad():
            self.run(kink_free_layers(params["n_head"], ATTENTION.reference), **probe.args)
        for name, t in inputs.tensors.items():
            if name.endswith("ffn_b_1"):
                t.copy_(probe.tensors[name])
        return inputs

    def reference(self, **inputs: Any) -> Tensor:
        return self.run(seed_layers(inputs["n_head"], ATTENTION.reference), **inputs)

    @abstractmethod
    def other_bytes(self, params: Params) -> int:
        """Token ids (int64) and boolean masks."""

    @abstractmethod
    def output_numel(self, params: Params) -> int:
        """Defined by each layer."""

    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        grads = sum(_numel(s) for s in self.float_shapes(params).values())
        out = self.output_numel(params)
        elements = grads + N_POSITION * params["d_model"] + out
        if mode == "fwdbwd":  # read grad_out and every weight again; write every gradient
            elements += out + 2 * grads
        return elements * torch.empty((), dtype=dtype).element_size() + self.other_bytes(params)

    def calibration_params(self, params: Params) -> dict[str, int]:
        # The loops run one iteration per query position, each over every batch element, head
        # and key: one layer and at most 4 positions keep the cost per iteration (and per FLOP).
        return {**params, "n_layers": 1, **{p: min(params[p], 4) for p in self.lengths}}


class EncoderStack(_TransformerPart):
    name = "encoder"
    title = "Encoder (stack of EncoderLayer)"
    order = 90
    params = ("N", "seq_len", *_MODEL)
    lengths = ("seq_len",)

    def __init__(self, pad_idx: int = 0, scale_emb: bool = False) -> None:
        super().__init__(pad_idx)
        self.scale_emb = scale_emb

    def float_shapes(self, params: Params) -> dict[str, tuple[int, ...]]:
        return {"emb": (params["n_vocab"], params["d_model"]),
                **_stack_shapes("", params, cross=False)}

    def random_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        src_seq = _tokens(generator, params["N"], params["seq_len"], params["n_vocab"],
                          self.pad_idx)
        floats = {n: _init(n, s, generator) for n, s in self.float_shapes(params).items()}
        return CaseInputs(
            tensors={"src_seq": src_seq, "src_mask": get_pad_mask(src_seq, self.pad_idx),
                     "pos_table": sinusoid_table(N_POSITION, params["d_model"]), **floats},
            static={"pad_idx": self.pad_idx, "n_head": params["n_head"],
                    "scale_emb": self.scale_emb},
            grad=tuple(floats))

    def run(self, layers: tuple[EncoderLayerFn, DecoderLayerFn], src_seq: Tensor,
            src_mask: Tensor, emb: Tensor, pos_table: Tensor, pad_idx: int, n_head: int,
            scale_emb: bool, **weights: Tensor) -> Tensor:
        return encoder_forward(src_seq, src_mask, emb, pos_table, weights, "", pad_idx,
                               scale_emb, layers[0])

    def flops(self, params: Params, mode: str) -> int:
        # GEMMs only (projections, q k^T, attn v, FFN), as FlopCounterMode counts; embedding,
        # LayerNorm, softmax and residual adds are left out. Backward: every GEMM has both
        # operands requiring grad (the embedding feeds the first layer), so 2 more forwards.
        N, L = params["N"], params["seq_len"]
        fwd = params["n_layers"] * (_mha_flops(N, L, L, params) + _ffn_flops(N, L, params))
        return fwd if mode == "fwd" else 3 * fwd

    def other_bytes(self, params: Params) -> int:
        tokens = params["N"] * params["seq_len"]
        return 8 * tokens + tokens  # int64 ids, (N, 1, seq_len) bool mask

    def output_numel(self, params: Params) -> int:
        return params["N"] * params["seq_len"] * params["d_model"]


class DecoderStack(_TransformerPart):
    name = "decoder"
    title = "Decoder (stack of DecoderLayer)"
    order = 91
    params = ("N", "trg_len", "src_len", *_MODEL)
    lengths = ("trg_len", "src_len")

    def __init__(self, pad_idx: int = 0, scale_emb: bool = False) -> None:
        super().__init__(pad_idx)
        self.scale_emb = scale_emb

    def float_shapes(self, params: Params) -> dict[str, tuple[int, ...]]:
        N, D = params["N"], params["d_model"]
        return {"enc_output": (N, params["src_len"], D), "emb": (params["n_vocab"], D),
                **_stack_shapes("", params, cross=True)}

    def random_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        N, n_vocab = params["N"], params["n_vocab"]
        trg_seq = _tokens(generator, N, params["trg_len"], n_vocab, self.pad_idx)
        src_seq = _tokens(generator, N, params["src_len"], n_vocab, self.pad_idx)
        floats = {n: _init(n, s, generator) for n, s in self.float_shapes(params).items()}
        trg_mask = get_pad_mask(trg_seq, self.pad_idx) & get_subsequent_mask(trg_seq)
        return CaseInputs(
            tensors={"trg_seq": trg_seq, "trg_mask": trg_mask,  # (N, trg_len, trg_len)
                     "src_mask": get_pad_mask(src_seq, self.pad_idx),  # (N, 1, src_len)
                     "pos_table": sinusoid_table(N_POSITION, params["d_model"]), **floats},
            static={"pad_idx": self.pad_idx, "n_head": params["n_head"],
                    "scale_emb": self.scale_emb},
            grad=tuple(floats))

    def run(self, layers: tuple[EncoderLayerFn, DecoderLayerFn], trg_seq: Tensor,
            trg_mask: Tensor, enc_output: Tensor, src_mask: Tensor, emb: Tensor,
            pos_table: Tensor, pad_idx: int, n_head: int, scale_emb: bool,
            **weights: Tensor) -> Tensor:
        return decoder_forward(trg_seq, trg_mask, enc_output, src_mask, emb, pos_table, weights,
                               "", pad_idx, scale_emb, layers[1])

    def flops(self, params: Params, mode: str) -> int:
        # As the encoder, with the cross-attention over src_len keys (enc_output needs grad).
        N, T, S = params["N"], params["trg_len"], params["src_len"]
        per_layer = (_mha_flops(N, T, T, params) + _mha_flops(N, T, S, params)
                     + _ffn_flops(N, T, params))
        fwd = params["n_layers"] * per_layer
        return fwd if mode == "fwd" else 3 * fwd

    def other_bytes(self, params: Params) -> int:
        N, T, S = params["N"], params["trg_len"], params["src_len"]
        return 8 * N * T + N * T * T + N * S  # int64 ids, bool trg_mask and src_mask

    def output_numel(self, params: Params) -> int:
        return params["N"] * params["trg_len"] * params["d_model"]


class TransformerModel(_TransformerPart):
    name = "transformer"
    title = "Transformer (src, trg -> logits; shared embeddings, scale_emb_or_prj='prj')"
    order = 92
    params = ("N", "src_len", "trg_len", *_MODEL)
    lengths = ("src_len", "trg_len")

    def __init__(self, pad_idx: int = 0, scale_emb_or_prj: str = "prj") -> None:
        super().__init__(pad_idx)
        if scale_emb_or_prj not in ("emb", "prj", "none"):
            raise ValueError(f"scale_emb_or_prj must be 'emb', 'prj' or 'none', "
                             f"got {scale_emb_or_prj!r}")
        self.scale_emb_or_prj = scale_emb_or_prj

    def float_shapes(self, params: Params) -> dict[str, tuple[int, ...]]:
        return {"emb": (params["n_vocab"], params["d_model"]),  # shared by all three uses
                **_stack_shapes("enc_", params, cross=False),
                **_stack_shapes("dec_", params, cross=True)}

    def random_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        N, n_vocab = params["N"], params["n_vocab"]
        src_seq = _tokens(generator, N, params["src_len"], n_vocab, self.pad_idx)
        trg_seq = _tokens(generator, N, params["trg_len"], n_vocab, self.pad_idx)
        floats = {n: _init(n, s, generator) for n, s in self.float_shapes(params).items()}
        return CaseInputs(
            tensors={"src_seq": src_seq, "trg_seq": trg_seq,
                     "pos_table": sinusoid_table(N_POSITION, params["d_model"]), **floats},
            static={"pad_idx": self.pad_idx, "n_head": params["n_head"],
                    "scale_emb_or_prj": self.scale_emb_or_prj},
            grad=tuple(floats))

    def run(self, layers: tuple[EncoderLayerFn, DecoderLayerFn], src_seq: Tensor,
            trg_seq: Tensor, emb: Tensor, pos_table: Tensor, pad_idx: int, n_head: int,
            scale_emb_or_prj: str, **weights: Tensor) -> Tensor:
        return transformer_forward(src_seq, trg_seq, emb, pos_table, weights, pad_idx,
                                   scale_emb_or_prj, layers)

    def flops(self, params: Params, mode: str) -> int:
        # The encoder and decoder GEMMs plus the logits projection onto the shared table.
        N, S, T = params["N"], params["src_len"], params["trg_len"]
        encoder = _mha_flops(N, S, S, params) + _ffn_flops(N, S, params)
        decoder = (_mha_flops(N, T, T, params) + _mha_flops(N, T, S, params)
                   + _ffn_flops(N, T, params))
        fwd = (params["n_layers"] * (encoder + decoder)
               + 2 * N * T * params["d_model"] * params["n_vocab"])
        return fwd if mode == "fwd" else 3 * fwd

    def other_bytes(self, params: Params) -> int:
        return 8 * params["N"] * (params["src_len"] + params["trg_len"])  # int64 ids

    def output_numel(self, params: Params) -> int:
        return params["N"] * params["trg_len"] * params["n_vocab"]


ENCODER = register_layer(EncoderStack())
DECODER = register_layer(DecoderStack())
TRANSFORMER = register_layer(TransformerModel())


# --- implementations: one per attention implementation (torch_layers: impls.transformer_torch)


def _with_attention(layer: _TransformerPart, attention: AttentionFn) -> Callable[..., Tensor]:
    """``layer``'s computation (the reference's structure) with ``attention`` in every
    multi-head attention sublayer."""
    def impl(**inputs: Any) -> Tensor:
        return layer.run(seed_layers(inputs["n_head"], attention), **inputs)
    return impl


_FAMILY_NOTES = {"matmul": "float16 fails: the notes' masked_fill(-1e9) does not fit and every "
                           "case here is masked",
                 "sdpa_flash": "flash takes no mask and every case here is masked (padding), so "
                               "every case is skipped; listed for completeness"}


def _register_family(base: Impl) -> None:
    """``encoder``, ``decoder`` and ``transformer`` implementations named after the attention
    implementation ``base`` and computed with it, with its devices, dtypes, naivety and source
    (``list`` names a user's file)."""
    for layer in (ENCODER, DECODER, TRANSFORMER):
        fn = _with_attention(layer, base.fn)
        fn.__name__ = fn.__qualname__ = f"{layer.name}_{base.name}"
        fn.__doc__ = f"The notes' structure, attention/{base.name}: {base.description}"
        REGISTRY.add_impl(dataclasses.replace(
            base, layer=layer.name, fn=fn, modes=base.modes & set(layer.modes),
            notes=_FAMILY_NOTES.get(base.name, ""), parts=(("attention", base.name),)),
            replace=True)


REGISTRY.derive("attention", _register_family)


__all__ = ["DECODER", "ENCODER", "TRANSFORMER", "DecoderStack", "EncoderStack",
           "TransformerModel"]
