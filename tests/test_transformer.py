"""Encoder, Decoder and Transformer: every implementation against the reference, the seed's
semantics pinned (post-norm, eps 1e-6, masks, positional table, no final LayerNorm, weight
sharing), the nn.Modules against the functions, cost formulas, and planted bugs flagged."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from impls import REGISTRY
from impls.registry import Unsupported
from impls.transformer import (
    ATTENTIONS,
    KINK_MARGIN,
    Decoder,
    DecoderStack,
    Encoder,
    EncoderStack,
    PositionalEncoding,
    Transformer,
    TransformerModel,
    get_pad_mask,
    get_subsequent_mask,
    sinusoid_table,
)
from impls.transformer_parts import (
    LN_EPS,
    N_POSITION,
    AttnWeights,
    FFNWeights,
    decoder_forward,
    embed,
    encoder_forward,
    multi_head_attention,
    positionwise_feed_forward,
    reference_attention,
    seed_layers,
    transformer_forward,
)
from suites.correctness import check, make_trial
from suites.presets import notes_size, preset_table

SEEDS = [0, 1]
LAYERS = ("encoder", "decoder", "transformer")
_MODEL = dict(n_layers=2, d_model=8, n_head=2, d_k=4, d_v=4, d_inner=12, n_vocab=11)
TINY = {"encoder": dict(N=2, seq_len=5, **_MODEL),
        "decoder": dict(N=2, trg_len=5, src_len=6, **_MODEL),
        "transformer": dict(N=2, src_len=6, trg_len=5, **_MODEL)}
# d_k != d_v and n_head * d_k != d_model: the seed's structure allows it, torch_layers cannot
_ODD = dict(n_layers=1, d_model=10, n_head=3, d_k=4, d_v=5, d_inner=14, n_vocab=9)
ODD = {"encoder": dict(N=3, seq_len=7, **_ODD),
       "decoder": dict(N=3, trg_len=4, src_len=7, **_ODD),
       "transformer": dict(N=3, src_len=7, trg_len=4, **_ODD)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes run as fast on one thread, and a busy machine's oversubscribed cores then
    cannot stall every small op (two threads on two shared cores made this file 7x slower)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _cpu_impls(layer: str) -> list:
    return [i for i in REGISTRY.impls(layer) if "cpu" in i.devices]


def _cases() -> list:
    return [pytest.param(layer, impl, id=f"{layer}-{impl.name}")
            for layer in LAYERS for impl in _cpu_impls(layer)]


def _check(fn, layer, params, mode="fwd", dtype=torch.float32, seeds=SEEDS):
    layer = REGISTRY.layer(layer) if isinstance(layer, str) else layer
    with torch.set_grad_enabled(mode != "fwd"):  # as the runner calls it
        return check(fn, layer, params, seeds, dtype, "cpu", mode)


def _impl(layer: str, name: str):
    return REGISTRY.impl(layer, name).fn


# --- registry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS)
def test_one_implementation_per_attention_and_torch_layers(layer: str) -> None:
    names = {i.name for i in REGISTRY.impls(layer)}
    assert {"loops", "matmul", "einsum", "blockwise", "builtin", "torch_layers"} <= names
    assert {"sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn"} <= names
    assert set(ATTENTIONS) <= names
    assert REGISTRY.impl(layer, "loops").naive
    for name in ("sdpa_math", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn"):
        assert REGISTRY.impl(layer, name).devices == {"cuda"}
    assert "skipped" in REGISTRY.impl(layer, "sdpa_flash").notes  # takes no mask
    assert "float16" in REGISTRY.impl(layer, "matmul").notes


# --- every implementation against the reference -----------------------------------------------


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize(("layer", "impl"), _cases())
def test_implementation_matches_reference(layer: str, impl, mode: str) -> None:
    verdict, trial = _check(impl.fn, layer, TINY[layer], mode)
    assert verdict.ok, verdict.problems
    if mode == "fwdbwd":
        assert set(trial.ref_grads) == set(trial.inputs.grad)
        assert "pos_table" not in trial.ref_grads  # a buffer, as in the repository


@pytest.mark.parametrize(("layer", "impl"), [c for c in _cases()
                                             if c.values[1].name != "torch_layers"])
def test_seed_structure_handles_odd_head_sizes(layer: str, impl) -> None:
    verdict, _ = _check(impl.fn, layer, ODD[layer], "fwdbwd", seeds=[3])
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("layer", LAYERS)
def test_torch_layers_needs_heads_that_split_d_model(layer: str) -> None:
    trial = make_trial(REGISTRY.layer(layer), ODD[layer], 0, torch.float64, "cpu", "fwd")
    with pytest.raises(Unsupported, match="n_head \\* d_k == n_head \\* d_v == d_model"):
        _impl(layer, "torch_layers")(**trial.inputs.tensors, **trial.inputs.static)


@pytest.mark.parametrize("layer", ["encoder", "decoder"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_torch_layers_equal_the_seed_structure_in_float64(layer: str, grad: bool) -> None:
    """nn.TransformerEncoderLayer / DecoderLayer with mapped weights is the seed's layer
    (no_grad takes the encoder's fused fast path, grad the composite one)."""
    params = {**TINY[layer], "N": 3, "d_model": 12, "n_head": 3, "d_k": 4, "d_v": 4}
    trial = make_trial(REGISTRY.layer(layer), params, 5, torch.float64, "cpu", "fwd")
    with torch.set_grad_enabled(grad):
        got = _impl(layer, "torch_layers")(**trial.inputs.tensors, **trial.inputs.static)
    torch.testing.assert_close(got, trial.ref_out, rtol=1e-10, atol=1e-10)


# --- seed semantics -----------------------------------------------------------------------------


def test_positional_table_matches_a_hand_computation() -> None:
    d_hid = 6
    table = sinusoid_table(N_POSITION, d_hid)
    assert table.shape == (200, 6) and table.dtype == torch.float64
    for pos in (0, 1, 7, 199):
        # column j: angle pos / 10000 ** (2 * (j // 2) / d_hid); sin on even j, cos on odd j
        expected = [math.sin(pos), math.cos(pos),
                    math.sin(pos / 10000 ** (2 / 6)), math.cos(pos / 10000 ** (2 / 6)),
                    math.sin(pos / 10000 ** (4 / 6)), math.cos(pos / 10000 ** (4 / 6))]
        torch.testing.assert_close(table[pos], torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)


def test_positional_encoding_module_adds_the_first_rows() -> None:
    module = PositionalEncoding(4)
    assert module.pos_table.shape == (1, N_POSITION, 4)
    assert module.pos_table.dtype == torch.float32  # as the repository's FloatTensor buffer
    assert "pos_table" in dict(module.named_buffers())
    x = torch.randn(2, 9, 4)
    torch.testing.assert_close(module(x), x + sinusoid_table(N_POSITION, 4)[:9].float())


def test_sequences_longer_than_n_position_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="n_position = 200") as info:
        REGISTRY.layer("encoder").check({**TINY["encoder"], "seq_len": 201})
    assert "\n" not in str(info.value)
    REGISTRY.layer("encoder").check({**TINY["encoder"], "seq_len": 200})
    for layer, p in (("decoder", "trg_len"), ("decoder", "src_len"),
                     ("transformer", "src_len"), ("transformer", "trg_len")):
        with pytest.raises(ValueError, match=f"{p} = 201 exceeds"):
            REGISTRY.layer(layer).check({**TINY[layer], p: 201})
    with pytest.raises(ValueError, match="sequence length 201 exceeds"):
        PositionalEncoding(4)(torch.randn(1, 201, 4))
    seq = torch.ones(1, 201, dtype=torch.long)
    emb, table = torch.randn(3, 4), sinusoid_table(N_POSITION, 4)
    with pytest.raises(ValueError, match="n_position = 200"):
        embed(seq, emb, table, torch.ones(4), torch.zeros(4), 0, False)


def test_pad_mask_marks_real_tokens_as_attendable() -> None:
    seq = torch.tensor([[5, 3, 0, 0], [2, 0, 7, 0]])
    mask = get_pad_mask(seq, 0)
    assert mask.shape == (2, 1, 4) and mask.dtype == torch.bool
    assert mask[:, 0].tolist() == [[True, True, False, False], [True, False, True, False]]
    assert get_pad_mask(seq, 3)[0, 0].tolist() == [True, False, True, True]


def test_subsequent_mask_is_lower_triangular_including_the_diagonal() -> None:
    mask = get_subsequent_mask(torch.zeros(2, 4, dtype=torch.long))
    assert mask.shape == (1, 4, 4) and mask.dtype == torch.bool
    assert mask[0].tolist() == [[True, False, False, False], [True, True, False, False],
                                [True, True, True, False], [True, True, True, True]]


def test_decoder_inputs_combine_padding_and_subsequent_masks() -> None:
    generator = torch.Generator().manual_seed(1)
    inputs = REGISTRY.layer("decoder").make_inputs(TINY["decoder"], generator)
    t = inputs.tensors
    trg_seq, trg_mask = t["trg_seq"], t["trg_mask"]
    N, T = trg_seq.shape
    assert trg_mask.shape == (N, T, T) and trg_mask.dtype == torch.bool
    for n in range(N):
        for i in range(T):
            for j in range(T):
                assert bool(trg_mask[n, i, j]) == (j <= i and int(trg_seq[n, j]) != 0)
    assert t["src_mask"].shape == (N, 1, TINY["decoder"]["src_len"])
    assert t["enc_output"].dtype == torch.float64 and "enc_output" in inputs.grad


@pytest.mark.parametrize("layer", LAYERS)
def test_inputs_are_padded_tokens_and_random_weights(layer: str) -> None:
    inputs = REGISTRY.layer(layer).make_inputs(TINY[layer], torch.Generator().manual_seed(2))
    seqs = [t for n, t in inputs.tensors.items() if n.endswith("_seq")]
    assert seqs
    for seq in seqs:
        assert seq.dtype == torch.long
        real = seq != 0
        lengths = real.sum(1)
        assert (lengths >= 1).all() and (lengths < seq.size(1)).all()  # some padding, never all
        assert (real == (torch.arange(seq.size(1)) < lengths[:, None])).all()  # trailing pads
        assert int(seq.max()) < TINY[layer]["n_vocab"]
    torch.testing.assert_close(inputs.tensors["pos_table"], sinusoid_table(N_POSITION, 8))
    assert inputs.static["pad_idx"] == 0 and inputs.static["n_head"] == 2
    for name in inputs.grad:
        t = inputs.tensors[name]
        assert t.is_floating_point() and t.std() > 0, name  # random, never constant
    assert len(set(inputs.grad)) == len(inputs.grad)


def _ffn_preactivations(spec, inputs) -> list[tuple[Tensor, Tensor]]:
    """(x w_1^T, b_1) of every FFN, from the reference's own forward."""
    found = []

    def ffn(x: Tensor, w: FFNWeights) -> Tensor:
        found.append((F.linear(x, w.w_1), w.b_1))
        return positionwise_feed_forward(x, w)

    def encoder(x, mask, slf, w):
        return ffn(multi_head_attention(x, x, x, mask, slf, 2, reference_attention), w)

    def decoder(x, enc_output, slf_mask, enc_mask, slf, enc, w):
        x = multi_head_attention(x, x, x, slf_mask, slf, 2, reference_attention)
        return ffn(multi_head_attention(x, enc_output, enc_output, enc_mask, enc, 2,
                                        reference_attention), w)

    with torch.no_grad():
        spec.run((encoder, decoder), **inputs.tensors, **inputs.static)
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_no_relu_preactivation_sits_at_the_kink(layer: str) -> None:
    """Near the kink float32 and float64 may gate differently (a false "incorrect" gradient):
    make_inputs nudges b_1 so no pre-activation is within KINK_MARGIN of zero."""
    spec = REGISTRY.layer(layer)
    params = {**TINY[layer], "N": 4, "d_inner": 512, "n_vocab": 50}
    params.update({p: 40 for p in spec.lengths})
    raw = _ffn_preactivations(spec, spec.random_inputs(params, torch.Generator().manual_seed(3)))
    made = _ffn_preactivations(spec, spec.make_inputs(params, torch.Generator().manual_seed(3)))
    assert len(made) == 2 * (2 if layer == "transformer" else 1)
    near = 0
    for (h_raw, b_raw), (h, b) in zip(raw, made, strict=True):
        margin = KINK_MARGIN * float(h.pow(2).mean().sqrt())
        near += int(((h_raw + b_raw).abs() < margin).sum())
        assert ((h + b).abs() >= 0.9 * margin).all()  # found in float32: ~1e-6 off
        assert (b - b_raw).abs().max() < 0.01  # a nudge, not a new distribution
    assert near > 0  # the random draw alone would have had kinks here


def test_transformer_shares_one_embedding_table_listed_once() -> None:
    inputs = REGISTRY.layer("transformer").make_inputs(TINY["transformer"],
                                                       torch.Generator().manual_seed(0))
    assert inputs.grad.count("emb") == 1
    assert not [n for n in inputs.tensors if "word_emb" in n or "prj" in n]
    assert inputs.static["scale_emb_or_prj"] == "prj"


def test_transformer_scales_the_logits_by_d_model_to_the_minus_half() -> None:
    layer = REGISTRY.layer("transformer")
    inputs = layer.make_inputs(TINY["transformer"], torch.Generator().manual_seed(0))
    fn = _impl("transformer", "matmul")
    prj = fn(**inputs.tensors, **inputs.static)
    none = fn(**inputs.tensors, **{**inputs.static, "scale_emb_or_prj": "none"})
    assert prj.shape == (2 * 5, 11)
    torch.testing.assert_close(prj, none * 8 ** -0.5)


def _affine_layer_norms(module: nn.Module) -> list[nn.LayerNorm]:
    return [m for m in module.modules() if isinstance(m, nn.LayerNorm)]


def test_modules_use_eps_1e6_and_the_repository_bias_flags() -> None:
    model = Transformer(11, 11, 0, 0, d_word_vec=8, d_model=8, d_inner=12, n_layers=2,
                        n_head=2, d_k=4, d_v=4)
    norms = _affine_layer_norms(model)
    assert len(norms) == (1 + 2 * 2) + (1 + 2 * 3)  # front ends + every sublayer
    assert all(n.eps == LN_EPS == 1e-6 and n.weight is not None and n.bias is not None
               for n in norms)
    attn = model.decoder.layer_stack[0].enc_attn
    assert all(getattr(attn, n).bias is None for n in ("w_qs", "w_ks", "w_vs", "fc"))
    ffn = model.encoder.layer_stack[1].pos_ffn
    assert ffn.w_1.bias is not None and ffn.w_2.bias is not None
    assert model.trg_word_prj.bias is None
    # the repository's parameter names, so its state_dict loads
    keys = set(model.state_dict())
    assert {"encoder.src_word_emb.weight", "encoder.position_enc.pos_table",
            "encoder.layer_norm.weight", "encoder.layer_stack.1.slf_attn.w_qs.weight",
            "encoder.layer_stack.0.slf_attn.layer_norm.bias",
            "encoder.layer_stack.0.pos_ffn.w_1.bias",
            "decoder.trg_word_emb.weight", "decoder.layer_stack.0.enc_attn.fc.weight",
            "trg_word_prj.weight"} <= keys


def test_repository_weight_sharing() -> None:
    model = Transformer(11, 11, 0, 0, d_word_vec=8, d_model=8, d_inner=12, n_layers=1,
                        n_head=2, d_k=4, d_v=4)
    emb = model.decoder.trg_word_emb.weight
    assert model.encoder.src_word_emb.weight is emb and model.trg_word_prj.weight is emb
    assert model.scale_prj and not model.encoder.scale_emb
    emb_scaled = Transformer(11, 11, 0, 0, d_word_vec=8, d_model=8, d_inner=12, n_layers=1,
                             n_head=2, d_k=4, d_v=4, scale_emb_or_prj="emb")
    assert emb_scaled.encoder.scale_emb and emb_scaled.decoder.scale_emb
    assert not emb_scaled.scale_prj
    separate = Transformer(11, 13, 0, 0, d_word_vec=8, d_model=8, d_inner=12, n_layers=1,
                           n_head=2, d_k=4, d_v=4, trg_emb_prj_weight_sharing=False,
                           emb_src_trg_weight_sharing=False)
    assert separate.trg_word_prj.weight is not separate.decoder.trg_word_emb.weight
    assert not separate.scale_prj  # scaling only applies with the projection shared
    with pytest.raises(ValueError, match="scale_emb_or_prj"):
        Transformer(11, 11, 0, 0, scale_emb_or_prj="both")


def test_encoder_output_ends_in_the_last_sublayer_norm_not_a_final_one() -> None:
    """No LayerNorm after the stack: the output is the last FFN LayerNorm's affine output."""
    encoder = Encoder(11, 8, 2, 2, 4, 4, 8, 12, pad_idx=0, dropout=0.0).eval()
    with torch.no_grad():
        last = encoder.layer_stack[-1].pos_ffn.layer_norm
        last.weight.fill_(2.0)
        last.bias.fill_(3.0)
    seq = torch.tensor([[4, 5, 6, 0], [7, 8, 0, 0]])
    (out,) = encoder(seq, get_pad_mask(seq, 0))
    torch.testing.assert_close(out.mean(-1), torch.full((2, 4), 3.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.std(-1, unbiased=False), torch.full((2, 4), 2.0),
                               rtol=0, atol=1e-4)


# --- the nn.Modules against the functions -------------------------------------------------------

_ATTN_PATHS = {"w_qs": "w_qs.weight", "w_ks": "w_ks.weight", "w_vs": "w_vs.weight",
               "fc": "fc.weight", "ln_w": "layer_norm.weight", "ln_b": "layer_norm.bias"}
_FFN_PATHS = {"w_1": "w_1.weight", "b_1": "w_1.bias", "w_2": "w_2.weight", "b_2": "w_2.bias",
              "ln_w": "layer_norm.weight", "ln_b": "layer_norm.bias"}


def _randomize(module: nn.Module, seed: int) -> None:
    """Random weights everywhere (LayerNorm gains near 1), so no zero bias hides a bug."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.copy_(1 + 0.1 * r if name.endswith("layer_norm.weight")
                    else r / math.sqrt(p.shape[-1]) if p.dim() == 2 and "word_emb" not in name
                    else 0.1 * r if p.dim() == 1 else r)


def _stack_weights(stack: Encoder | Decoder, prefix: str = "") -> dict[str, Tensor]:
    weights = {f"{prefix}ln_w": stack.layer_norm.weight, f"{prefix}ln_b": stack.layer_norm.bias}
    subs = [("slf_", "slf_attn", _ATTN_PATHS), ("ffn_", "pos_ffn", _FFN_PATHS)]
    if isinstance(stack, Decoder):
        subs.insert(1, ("enc_", "enc_attn", _ATTN_PATHS))
    for short, attr, paths in subs:
        for field, path in paths.items():
            weights[prefix + short + field] = torch.stack(
                [layer.get_parameter(f"{attr}.{path}") for layer in stack.layer_stack])
    return weights


def _tokens(N: int, length: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, 11, (N, length), generator=g)
    seq[0, -2:] = 0
    seq[-1, -1:] = 0
    return seq


@pytest.mark.parametrize("impl", ["matmul", "einsum", "blockwise", "builtin", "loops"])
def test_modules_match_the_functions_with_the_same_weights(impl: str) -> None:
    model = Transformer(11, 11, 0, 0, d_word_vec=8, d_model=8, d_inner=12, n_layers=2,
                        n_head=2, d_k=4, d_v=4, dropout=0.1, impl=impl).double().eval()
    _randomize(model, 7)
    src, trg = _tokens(2, 6, 1), _tokens(2, 5, 2)
    emb, table = model.decoder.trg_word_emb.weight, model.encoder.position_enc.pos_table[0]
    enc_w, dec_w = _stack_weights(model.encoder, "enc_"), _stack_weights(model.decoder, "dec_")
    layers = seed_layers(2, reference_attention)

    src_mask = get_pad_mask(src, 0)
    trg_mask = get_pad_mask(trg, 0) & get_subsequent_mask(trg)
    (enc_out,) = model.encoder(src, src_mask)
    torch.testing.assert_close(enc_out, encoder_forward(src, src_mask, emb, table, enc_w, "enc_",
                                                        0, False, layers[0]))
    (dec_out,) = model.decoder(trg, trg_mask, enc_out, src_mask)
    torch.testing.assert_close(dec_out, decoder_forward(trg, trg_mask, enc_out, src_mask, emb,
                                                        table, dec_w, "dec_", 0, False,
                                                        layers[1]))
    logits = model(src, trg)
    assert logits.shape == (2 * 5, 11)
    got = _impl("transformer", impl)(src, trg, emb, table, 0, 2, "prj", **enc_w, **dec_w)
    torch.testing.assert_close(logits, got)


def test_module_return_shapes_and_attention_lists() -> None:
    encoder = Encoder(11, 8, 3, 2, 4, 5, 8, 12, pad_idx=0, impl="matmul").eval()
    decoder = Decoder(11, 8, 2, 2, 4, 5, 8, 12, pad_idx=0, impl="builtin").eval()
    src, trg = _tokens(2, 6, 3), _tokens(2, 4, 4)
    out = encoder(src, get_pad_mask(src, 0))
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (2, 6, 8)
    enc_out, attns = encoder(src, get_pad_mask(src, 0), return_attns=True)
    assert len(attns) == 3 and all(a.shape == (2, 2, 6, 6) for a in attns)
    trg_mask = get_pad_mask(trg, 0) & get_subsequent_mask(trg)
    dec_out, slf, enc = decoder(trg, trg_mask, enc_out, get_pad_mask(src, 0), return_attns=True)
    assert dec_out.shape == (2, 4, 8) and len(slf) == len(enc) == 2
    assert slf[0] is None  # SDPA forms no weights; the attention impl says so


def test_module_dropout_is_active_only_in_training() -> None:
    model = Transformer(11, 11, 0, 0, d_word_vec=8, d_model=8, d_inner=12, n_layers=1,
                        n_head=2, d_k=4, d_v=4, dropout=0.5)
    src, trg = _tokens(2, 6, 1), _tokens(2, 5, 2)
    model.eval()
    torch.testing.assert_close(model(src, trg), model(src, trg))
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(model(src, trg), model.eval()(src, trg))


def test_module_rejects_unknown_attention_impl() -> None:
    with pytest.raises(KeyError, match="nope"):
        Encoder(11, 8, 1, 2, 4, 4, 8, 12, pad_idx=0, impl="nope")


# --- FLOPs, bytes, sizes -----------------------------------------------------------------------

FLOP_SIZES = {
    "encoder": [TINY["encoder"], ODD["encoder"],
                dict(N=3, seq_len=20, n_layers=2, d_model=32, n_head=4, d_k=8, d_v=6,
                     d_inner=48, n_vocab=40)],
    "decoder": [TINY["decoder"], ODD["decoder"],
                dict(N=3, trg_len=12, src_len=20, n_layers=2, d_model=32, n_head=4, d_k=8,
                     d_v=6, d_inner=48, n_vocab=40)],
    "transformer": [TINY["transformer"], ODD["transformer"],
                    dict(N=3, src_len=20, trg_len=12, n_layers=2, d_model=32, n_head=4, d_k=8,
                         d_v=6, d_inner=48, n_vocab=40)],
}


def _flop_cases() -> list:
    return [pytest.param(layer, p, id=f"{layer}-{REGISTRY.layer(layer).label(p)}")
            for layer, sizes in FLOP_SIZES.items() for p in sizes]


@pytest.mark.parametrize(("layer", "params"), _flop_cases())
def test_flops_match_flop_counter(layer: str, params: dict[str, int]) -> None:
    spec = REGISTRY.layer(layer)
    inputs = spec.make_inputs(params, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        spec.reference(**inputs.tensors, **inputs.static)
    assert spec.flops(params, "fwd") == counter.get_total_flops()
    leaves = {n: t.requires_grad_(n in inputs.grad) for n, t in inputs.tensors.items()}
    with FlopCounterMode(display=False) as counter:
        out = spec.reference(**leaves, **inputs.static)
        out.backward(torch.ones_like(out))
    assert spec.flops(params, "fwdbwd") == counter.get_total_flops()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("layer", "params"), _flop_cases())
def test_bytes_are_every_input_and_the_output_once(layer: str, params: dict[str, int],
                                                   dtype: torch.dtype) -> None:
    spec = REGISTRY.layer(layer)
    inputs = spec.make_inputs(params, torch.Generator().manual_seed(0)).to(dtype, "cpu")
    out = spec.reference(**inputs.to(torch.float64, "cpu").tensors, **inputs.static)
    expected = sum(t.numel() * t.element_size() for t in inputs.tensors.values())
    expected += out.numel() * torch.empty((), dtype=dtype).element_size()
    assert spec.bytes_moved(params, dtype, "fwd") == expected
    grads = sum(inputs.tensors[n].numel() * inputs.tensors[n].element_size()
                for n in inputs.grad)
    assert spec.bytes_moved(params, dtype, "fwdbwd") >= expected + grads + out.numel()


@pytest.mark.parametrize("layer", LAYERS)
def test_every_preset_size_is_valid_and_includes_the_notes(layer: str) -> None:
    spec = REGISTRY.layer(layer)
    table = preset_table(layer)
    notes = {**TINY[layer], "N": 4, "n_layers": 6, "d_model": 512, "n_head": 8, "d_k": 64,
             "d_v": 64, "d_inner": 2048, "n_vocab": 1000}
    notes.update({p: 32 for p in spec.lengths})
    assert notes_size(layer) == notes  # the repository's model, on a short padded batch
    for preset, sizes in table.items():
        assert notes in sizes, preset
        for params in sizes:
            spec.check(params)
            assert spec.flops(params, "fwd") > 0
            small = spec.calibration_params(params)
            spec.check(small)
            assert spec.flops(small, "fwd") <= spec.flops(params, "fwd")
    assert any(p["d_model"] == 512 and p["n_head"] == 8 and p["d_inner"] == 2048
               for p in table["full"])


@pytest.mark.parametrize(("changes", "match"), [
    ({"N": 0}, "N must be >= 1"), ({"d_k": 0}, "d_k"), ({"n_layers": -1}, "n_layers"),
    ({"n_vocab": 1}, "n_vocab must be >= 2"), ({"seq_len": 201}, "seq_len = 201"),
])
def test_check_rejects_nonsense(changes: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        REGISTRY.layer("encoder").check({**TINY["encoder"], **changes})
    assert "\n" not in str(info.value)


def test_check_names_missing_and_unknown_parameters() -> None:
    with pytest.raises(ValueError, match="d_inner"):
        REGISTRY.layer("decoder").check({k: v for k, v in TINY["decoder"].items()
                                         if k != "d_inner"})
    with pytest.raises(ValueError, match="seq_len"):
        REGISTRY.layer("transformer").check({**TINY["transformer"], "seq_len": 4})


# --- planted bugs are flagged -------------------------------------------------------------------


def _prenorm_mha(x: Tensor, mask: Tensor | None, w: AttnWeights, n_head: int) -> Tensor:
    N, L, D = x.shape
    d_k, d_v = w.w_qs.size(0) // n_head, w.w_vs.size(0) // n_head
    h = F.layer_norm(x, (D,), w.ln_w, w.ln_b, eps=LN_EPS)  # normalise first ...
    q = F.linear(h, w.w_qs).view(N, L, n_head, d_k).transpose(1, 2)  # (N, h, L, d_k)
    k = F.linear(h, w.w_ks).view(N, L, n_head, d_k).transpose(1, 2)  # (N, h, L, d_k)
    v = F.linear(h, w.w_vs).view(N, L, n_head, d_v).transpose(1, 2)  # (N, h, L, d_v)
    out = reference_attention(q, k, v, mask.unsqueeze(1), d_k ** 0.5)  # (N, h, L, d_v)
    out = out.transpose(1, 2).reshape(N, L, n_head * d_v)  # (N, L, h * d_v)
    return x + F.linear(out, w.fc)  # ... and add the residual last


def encoder_prenorm(src_seq, src_mask, emb, pos_table, pad_idx, n_head, scale_emb, **weights):
    """Pre-norm layers (x + sublayer(LN(x))) instead of the seed's post-norm."""

    def layer(x, mask, slf: AttnWeights, ffn: FFNWeights):
        x = _prenorm_mha(x, mask, slf, n_head)
        h = F.layer_norm(x, (x.size(-1),), ffn.ln_w, ffn.ln_b, eps=LN_EPS)
        return x + F.linear(F.relu(F.linear(h, ffn.w_1, ffn.b_1)), ffn.w_2, ffn.b_2)

    return encoder_forward(src_seq, src_mask, emb, pos_table, weights, "", pad_idx, scale_emb,
                           layer)


def encoder_final_layernorm(src_seq, src_mask, emb, pos_table, pad_idx, n_head, scale_emb,
                            **weights):
    """nn.Transformer's habit: a LayerNorm after the stack (the seed has none)."""
    out = _impl("encoder", "matmul")(src_seq, src_mask, emb, pos_table, pad_idx, n_head,
                                     scale_emb, **weights)
    return F.layer_norm(out, (out.size(-1),), eps=LN_EPS)


def encoder_eps_1e5(src_seq, src_mask, emb, pos_table, pad_idx, n_head, scale_emb, **weights):
    """nn.LayerNorm's default eps 1e-5 in the FFN sublayers instead of 1e-6."""

    def layer(x, mask, slf: AttnWeights, ffn: FFNWeights):
        x = multi_head_attention(x, x, x, mask, slf, n_head, reference_attention)
        hidden = F.relu(F.linear(x, ffn.w_1, ffn.b_1))  # (N, L, d_inner)
        return F.layer_norm(F.linear(hidden, ffn.w_2, ffn.b_2) + x, (x.size(-1),), ffn.ln_w,
                            ffn.ln_b, eps=1e-5)

    return encoder_forward(src_seq, src_mask, emb, pos_table, weights, "", pad_idx, scale_emb,
                           layer)


def encoder_no_padding_idx(src_seq, src_mask, emb, pos_table, pad_idx, n_head, scale_emb,
                           **weights):
    """nn.Embedding without padding_idx: the pad row gets a gradient."""
    return _impl("encoder", "matmul")(src_seq, src_mask, emb, pos_table, -1, n_head, scale_emb,
                                      **weights)


def encoder_wrong_temperature(src_seq, src_mask, emb, pos_table, pad_idx, n_head, scale_emb,
                              **weights):
    """Scores divided by sqrt(d_model) instead of sqrt(d_k)."""

    def attention(q, k, v, mask, temperature):
        return reference_attention(q, k, v, mask, math.sqrt(q.size(1) * q.size(-1)))

    return encoder_forward(src_seq, src_mask, emb, pos_table, weights, "", pad_idx, scale_emb,
                           seed_layers(n_head, attention)[0])


def encoder_ignores_scale_emb(src_seq, src_mask, emb, pos_table, pad_idx, n_head, scale_emb,
                              **weights):
    """Forgets to multiply the embeddings by sqrt(d_model) when scale_emb is on."""
    return _impl("encoder", "matmul")(src_seq, src_mask, emb, pos_table, pad_idx, n_head, False,
                                      **weights)


def _strict_subsequent_mask(seq: Tensor) -> Tensor:
    length = seq.size(1)  # query i sees keys 0..i-1: the diagonal excluded, row 0 sees nothing
    return torch.ones(1, length, length, dtype=torch.bool).tril(diagonal=-1)


def decoder_strict_causal(trg_seq, trg_mask, enc_output, src_mask, emb, pos_table, pad_idx,
                          n_head, scale_emb, **weights):
    """Builds its own causal mask without the diagonal."""
    trg_mask = get_pad_mask(trg_seq, pad_idx) & _strict_subsequent_mask(trg_seq)
    return _impl("decoder", "matmul")(trg_seq, trg_mask, enc_output, src_mask, emb, pos_table,
                                      pad_idx, n_head, scale_emb, **weights)


def decoder_padding_only(trg_seq, trg_mask, enc_output, src_mask, emb, pos_table, pad_idx,
                         n_head, scale_emb, **weights):
    """Self-attention with the padding mask only: the decoder sees the future."""
    return _impl("decoder", "matmul")(trg_seq, get_pad_mask(trg_seq, pad_idx), enc_output,
                                      src_mask, emb, pos_table, pad_idx, n_head, scale_emb,
                                      **weights)


def transformer_strict_causal(src_seq, trg_seq, emb, pos_table, pad_idx, n_head,
                              scale_emb_or_prj, **weights):
    """The whole model with get_subsequent_mask excluding the diagonal."""
    layers = seed_layers(n_head, reference_attention)
    src_mask = get_pad_mask(src_seq, pad_idx)
    trg_mask = get_pad_mask(trg_seq, pad_idx) & _strict_subsequent_mask(trg_seq)
    enc = encoder_forward(src_seq, src_mask, emb, pos_table, weights, "enc_", pad_idx, False,
                          layers[0])
    dec = decoder_forward(trg_seq, trg_mask, enc, src_mask, emb, pos_table, weights, "dec_",
                          pad_idx, False, layers[1])
    return (F.linear(dec, emb) * emb.size(1) ** -0.5).flatten(0, 1)


def transformer_unscaled_logits(src_seq, trg_seq, emb, pos_table, pad_idx, n_head,
                                scale_emb_or_prj, **weights):
    """Ignores scale_emb_or_prj = "prj": logits not scaled by d_model ** -0.5."""
    return transformer_forward(src_seq, trg_seq, emb, pos_table, weights, pad_idx, "none",
                               seed_layers(n_head, reference_attention))


@pytest.mark.parametrize(("layer", "fn"), [
    ("encoder", encoder_prenorm),
    ("encoder", encoder_final_layernorm),
    ("encoder", encoder_wrong_temperature),
    ("decoder", decoder_strict_causal),
    ("decoder", decoder_padding_only),
    ("transformer", transformer_strict_causal),
    ("transformer", transformer_unscaled_logits),
], ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_planted_bug_is_flagged(layer: str, fn) -> None:
    verdict, _ = _check(fn, layer, TINY[layer])
    assert not verdict.ok
    assert verdict.problems[0].startswith("output:"), verdict.problems


def test_missing_embedding_scale_is_flagged_when_scale_emb_is_on() -> None:
    scaled = EncoderStack(scale_emb=True)  # not registered: the same layer, scale_emb on
    verdict, _ = _check(encoder_ignores_scale_emb, scaled, TINY["encoder"])
    assert not verdict.ok
    for impl in ("matmul", "builtin", "torch_layers"):
        verdict, _ = _check(_impl("encoder", impl), scaled, TINY["encoder"])
        assert verdict.ok, (impl, verdict.problems)
    # with scale_emb off (the registered layer) the bug is invisible: the control
    verdict, _ = _check(encoder_ignores_scale_emb, "encoder", TINY["encoder"])
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("layer_cls", [DecoderStack, TransformerModel])
def test_other_static_options_still_match(layer_cls) -> None:
    spec = layer_cls(scale_emb=True) if layer_cls is DecoderStack else layer_cls(
        scale_emb_or_prj="emb")
    verdict, _ = _check(_impl(spec.name, "einsum"), spec, TINY[spec.name], "fwdbwd")
    assert verdict.ok, verdict.problems


def test_forgotten_padding_idx_passes_forward_and_fails_backward() -> None:
    verdict, _ = _check(encoder_no_padding_idx, "encoder", TINY["encoder"], "fwd")
    assert verdict.ok, verdict.problems
    verdict, _ = _check(encoder_no_padding_idx, "encoder", TINY["encoder"], "fwdbwd")
    assert not verdict.ok
    assert [p.split(":")[0] for p in verdict.problems] == ["grad emb"]


def test_layer_norm_eps_1e5_is_flagged_in_float64() -> None:
    """eps 1e-5 instead of 1e-6 moves outputs by ~5e-6 relative: float64's check sees it."""
    verdict, _ = _check(encoder_eps_1e5, "encoder", TINY["encoder"], dtype=torch.float64)
    assert not verdict.ok
    verdict, _ = _check(_impl("encoder", "matmul"), "encoder", TINY["encoder"],
                        dtype=torch.float64)
    assert verdict.ok, verdict.problems


# --- CUDA ---------------------------------------------------------------------------------------


def _cuda_cases() -> list:
    return [pytest.param(layer, impl, id=f"{layer}-{impl.name}")
            for layer in LAYERS for impl in REGISTRY.impls(layer) if "cuda" in impl.devices]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize(("layer", "impl"), _cuda_cases())
def test_cuda_implementations_match_reference(layer: str, impl, mode: str) -> None:
    params = {**TINY[layer], "d_model": 64, "n_head": 4, "d_k": 16, "d_v": 16, "d_inner": 96}
    for dtype in (torch.float32, torch.bfloat16):
        if impl.unsupported("cuda", dtype, mode, "none"):
            continue
        try:
            with torch.set_grad_enabled(mode == "fwdbwd"):
                verdict, trial = check(impl.fn, REGISTRY.layer(layer), params, SEEDS, dtype,
                                       "cuda", mode)
        except Unsupported as exc:  # sdpa_flash: every case here is masked
            pytest.skip(str(exc))
        except RuntimeError as exc:  # cuDNN attention needs a recent GPU and cuDNN
            if impl.name == "sdpa_cudnn":
                pytest.skip(f"sdpa_cudnn unavailable here: {exc}")
            raise
        assert verdict.ok, (dtype, verdict.problems)
        assert trial.inputs.tensors["pos_table"].device.type == "cuda"
