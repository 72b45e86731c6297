"""Encoder, Decoder and Transformer: what is special about them (tests/test_contract.py checks
every implementation, FLOPs, bytes, presets and inputs): one implementation per attention
implementation, the repository's semantics (masks, positional table, post-norm, no final
LayerNorm, weight sharing, scaling), its nn.Modules, torch_layers' weight mapping, the kink
conditioning, half precision, sizes, and planted bugs flagged."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls import (
    REGISTRY,
    Decoder,
    Encoder,
    EncoderLayer,
    PositionalEncoding,
    Transformer,
    transformer_parts,
)
from impls.attention import LAYER as ATTENTION
from impls.ffn import KINK_MARGIN, positionwise_feed_forward
from impls.layernorm import LN_EPS
from impls.mha import MultiHeadAttention
from impls.registry import Unsupported, register_impl
from impls.transformer import DecoderStack, EncoderStack, TransformerModel
from impls.transformer_parts import (
    N_POSITION,
    AttnWeights,
    FFNWeights,
    decoder_forward,
    embed,
    encoder_forward,
    get_pad_mask,
    get_subsequent_mask,
    mha_sublayer,
    seed_layers,
    sinusoid_table,
)
from suites.correctness import check, make_trial
from suites.presets import notes_size, parse_size

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
REF = ATTENTION.reference


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes run as fast on one thread, and a busy machine's oversubscribed cores then
    cannot stall every small op (two threads on two shared cores made this file 7x slower)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _check(fn, layer, params, mode="fwd", dtype=torch.float32, seeds=(0, 1)):
    layer = REGISTRY.layer(layer) if isinstance(layer, str) else layer
    with torch.set_grad_enabled(mode != "fwd"):  # as the runner calls it
        return check(fn, layer, params, list(seeds), dtype, "cpu", mode)


def _fn(layer: str, name: str):
    return REGISTRY.impl(layer, name).fn


def _tokens(N: int, length: int, seed: int) -> Tensor:
    seq = torch.randint(1, 11, (N, length), generator=torch.Generator().manual_seed(seed))
    seq[0, -2:] = 0
    seq[-1, -1:] = 0
    return seq


def _model(**kwargs) -> Transformer:
    sizes = dict(d_word_vec=8, d_model=8, d_inner=12, n_layers=1, n_head=2, d_k=4, d_v=4)
    return Transformer(11, 11, 0, 0, **{**sizes, **kwargs})


# --- one implementation per attention implementation ------------------------------------------


@pytest.mark.parametrize("layer", LAYERS)
def test_one_implementation_per_attention_and_torch_layers(layer: str) -> None:
    attentions = {i.name: i for i in REGISTRY.impls("attention")}
    assert {i.name for i in REGISTRY.impls(layer)} == {*attentions, "torch_layers"}
    assert {"loops", "matmul", "einsum", "blockwise", "builtin", "flash", "sdpa_math",
            "sdpa_flash", "sdpa_efficient", "sdpa_cudnn"} <= set(attentions)
    assert REGISTRY.impl(layer, "loops").naive
    assert all(REGISTRY.impl(layer, n).devices == {"cuda"} for n in attentions if "sdpa_" in n)
    for name, base in attentions.items():
        impl = REGISTRY.impl(layer, name)
        assert impl.parts == (("attention", name),)
        assert (impl.devices, impl.dtypes, impl.naive) == (base.devices, base.dtypes, base.naive)
    assert "skipped" in REGISTRY.impl(layer, "sdpa_flash").notes  # takes no mask
    assert "float16" in REGISTRY.impl(layer, "matmul").notes


def _mine(q, k, v, mask, temperature, dim=-1):
    scores = (q / temperature) @ k.transpose(-2, -1)  # (N, h, len_q, len_k)
    return scores.masked_fill(mask == 0, -1e9).softmax(dim) @ v  # (N, h, len_q, d_v)


def _mine_over_queries(q, k, v, mask, temperature):
    return _mine(q, k, v, mask, temperature, dim=-2)  # a planted bug: softmax over the queries


def test_a_registered_attention_gets_encoder_decoder_and_transformer() -> None:
    with REGISTRY.scoped():
        register_impl("attention", "mine", devices=("cpu",))(_mine)
        for layer in LAYERS:
            impl = REGISTRY.impl(layer, "mine")
            assert impl.parts == (("attention", "mine"),) and impl.devices == {"cpu"}
            verdict, _ = _check(impl.fn, layer, TINY[layer], "fwdbwd", seeds=[0])
            assert verdict.ok, verdict.problems
        register_impl("attention", "mine", replace=True)(_mine_over_queries)  # derived follow
        for layer in LAYERS:
            assert not _check(_fn(layer, "mine"), layer, TINY[layer], seeds=[0])[0].ok
    for layer in LAYERS:
        with pytest.raises(KeyError, match="mine"):
            REGISTRY.impl(layer, "mine")


def test_one_multi_head_attention_serves_the_modules() -> None:
    calls = []

    def spy(q: Tensor, *rest):
        calls.append(q.shape)
        return REF(q, *rest)

    with REGISTRY.scoped():
        register_impl("attention", "spy")(spy)
        model = _model(n_layers=2, impl="spy").eval()
    mhas = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert len(mhas) == 2 + 2 * 2 and all(m.attention.impl == "spy" for m in mhas)
    assert isinstance(EncoderLayer(8, 12, 2, 4, 4, impl="einsum").slf_attn, MultiHeadAttention)
    model(_tokens(2, 6, 1), _tokens(2, 5, 2))
    assert len(calls) == 6 and calls[0] == (2, 2, 6, 4)  # (N, n_head, src_len, d_k)


@pytest.mark.parametrize(("layer", "impl"), [
    pytest.param(layer, impl, id=f"{layer}-{impl.name}") for layer in LAYERS
    for impl in REGISTRY.impls(layer) if "cpu" in impl.devices and impl.name != "torch_layers"])
def test_seed_structure_handles_odd_head_sizes(layer: str, impl) -> None:
    verdict, _ = _check(impl.fn, layer, ODD[layer], "fwdbwd", seeds=[3])
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("layer", LAYERS)
def test_torch_layers_needs_heads_that_split_d_model(layer: str) -> None:
    trial = make_trial(REGISTRY.layer(layer), ODD[layer], 0, torch.float64, "cpu", "fwd")
    with pytest.raises(Unsupported, match="n_head \\* d_k == n_head \\* d_v == d_model"):
        _fn(layer, "torch_layers")(**trial.inputs.args)


@pytest.mark.parametrize("layer", ["encoder", "decoder"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_torch_layers_equal_the_seed_structure_in_float64(layer: str, grad: bool) -> None:
    """nn.TransformerEncoderLayer / DecoderLayer with mapped weights is the seed's layer
    (no_grad takes the encoder's fused fast path, grad the composite one)."""
    params = {**TINY[layer], "N": 3, "d_model": 12, "n_head": 3, "d_k": 4, "d_v": 4}
    trial = make_trial(REGISTRY.layer(layer), params, 5, torch.float64, "cpu", "fwd")
    with torch.set_grad_enabled(grad):
        got = _fn(layer, "torch_layers")(**trial.inputs.args)
    torch.testing.assert_close(got, trial.ref_out, rtol=1e-10, atol=1e-10)


def test_float16_the_notes_masked_fill_overflows_the_others_compute() -> None:
    with pytest.raises(RuntimeError, match="overflow"):  # -1e9: an error row, not a crash
        _check(_fn("encoder", "matmul"), "encoder", TINY["encoder"], dtype=torch.float16)
    for impl in ("einsum", "builtin", "torch_layers"):
        verdict, _ = _check(_fn("encoder", impl), "encoder", TINY["encoder"],
                            dtype=torch.float16)
        assert verdict.ok, (impl, verdict.problems)


# --- sizes and tolerances ---------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS)
def test_notes_size_is_the_repository_model_and_heads_split_d_model(layer: str) -> None:
    spec, notes = REGISTRY.layer(layer), notes_size(layer)
    assert notes == {**TINY[layer], "N": 4, "n_layers": 6, "d_model": 512, "n_head": 8,
                     "d_k": 64, "d_v": 64, "d_inner": 2048, "n_vocab": 1000,
                     **{p: 32 for p in spec.lengths}}
    assert parse_size("d_model=256,n_head=4", notes, spec) == {
        **notes, "d_model": 256, "n_head": 4, "d_k": 64, "d_v": 64}
    assert parse_size("n_head=4,d_k=16", notes, spec)["d_v"] == 64  # d_k given: as set
    with pytest.raises(ValueError, match="not divisible by n_head"):
        parse_size("d_model=100,n_head=8", notes, spec)


def test_check_gives_one_line_reasons() -> None:
    encoder = REGISTRY.layer("encoder")
    for changes, match in (({"N": 0}, "N must be >= 1"), ({"d_k": 0}, "d_k"),
                           ({"n_layers": -1}, "n_layers"), ({"n_vocab": 1}, "n_vocab must be >= 2"),
                           ({"seq_len": 201}, "seq_len = 201 exceeds .* n_position = 200")):
        with pytest.raises(ValueError, match=match) as info:
            encoder.check({**TINY["encoder"], **changes})
        assert "\n" not in str(info.value)
    encoder.check({**TINY["encoder"], "seq_len": 200})
    for layer, p in (("decoder", "trg_len"), ("decoder", "src_len"),
                     ("transformer", "src_len"), ("transformer", "trg_len")):
        with pytest.raises(ValueError, match=f"{p} = 201 exceeds"):
            REGISTRY.layer(layer).check({**TINY[layer], p: 201})


def test_grad_atol_scale_relaxes_the_gradients_only() -> None:
    def nudged(emb, **inputs):  # every gradient of emb off by 3x the float32 atol
        emb = emb.clone()
        emb.register_hook(lambda g: g + 3e-4 * g.pow(2).mean().sqrt())
        return _fn("encoder", "matmul")(emb=emb, **inputs)

    class Strict(EncoderStack):
        grad_atol_scale = 1.0

    assert REGISTRY.layer("encoder").grad_atol_scale == 5.0
    assert _check(nudged, "encoder", TINY["encoder"], "fwdbwd")[0].ok
    verdict, _ = _check(nudged, Strict(), TINY["encoder"], "fwdbwd")
    assert [p.split(":")[0] for p in verdict.problems] == ["grad emb"]


# --- seed semantics ---------------------------------------------------------------------------


def test_positional_table_and_module() -> None:
    table = sinusoid_table(N_POSITION, 6)
    assert table.shape == (200, 6) and table.dtype == torch.float64
    for pos in (0, 1, 7, 199):  # angle pos / 10000 ** (2 * (j // 2) / d_hid): sin even, cos odd
        expected = [(math.cos if j % 2 else math.sin)(pos / 10000 ** (2 * (j // 2) / 6))
                    for j in range(6)]
        torch.testing.assert_close(table[pos], torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
    module = PositionalEncoding(4)
    assert module.pos_table.shape == (1, N_POSITION, 4)
    assert module.pos_table.dtype == torch.float32  # as the repository's FloatTensor buffer
    assert "pos_table" in dict(module.named_buffers())
    x = torch.randn(2, 9, 4)
    torch.testing.assert_close(module(x), x + sinusoid_table(N_POSITION, 4)[:9].float())
    with pytest.raises(ValueError, match="sequence length 201 exceeds"):
        module(torch.randn(1, 201, 4))
    seq, emb = torch.ones(1, 201, dtype=torch.long), torch.randn(3, 4)
    with pytest.raises(ValueError, match="n_position = 200"):
        embed(seq, emb, sinusoid_table(N_POSITION, 4), torch.ones(4), torch.zeros(4), 0, False)


def test_pad_and_subsequent_masks() -> None:
    seq = torch.tensor([[5, 3, 0, 0], [2, 0, 7, 0]])
    mask = get_pad_mask(seq, 0)
    assert mask.shape == (2, 1, 4) and mask.dtype == torch.bool
    assert mask[:, 0].tolist() == [[True, True, False, False], [True, False, True, False]]
    assert get_pad_mask(seq, 3)[0, 0].tolist() == [True, False, True, True]
    mask = get_subsequent_mask(seq)  # lower triangular including the diagonal
    assert mask.shape == (1, 4, 4) and mask.dtype == torch.bool
    assert mask[0].tolist() == [[True, False, False, False], [True, True, False, False],
                                [True, True, True, False], [True, True, True, True]]
    inputs = REGISTRY.layer("decoder").make_inputs(TINY["decoder"],
                                                   torch.Generator().manual_seed(1))
    trg_seq, trg_mask = inputs.tensors["trg_seq"], inputs.tensors["trg_mask"]
    causal = torch.arange(5)[None, :, None] >= torch.arange(5)  # [n, i, j]: j <= i ...
    assert torch.equal(trg_mask, causal & (trg_seq != 0)[:, None])  # ... and token j real
    assert inputs.tensors["src_mask"].shape == (2, 1, 6) and "enc_output" in inputs.grad


@pytest.mark.parametrize("layer", LAYERS)
def test_inputs_are_trailing_padded_tokens(layer: str) -> None:
    inputs = REGISTRY.layer(layer).make_inputs(TINY[layer], torch.Generator().manual_seed(2))
    seqs = [t for n, t in inputs.tensors.items() if n.endswith("_seq")]
    assert seqs
    for seq in seqs:
        real = seq != 0
        lengths = real.sum(1)
        assert (lengths >= 1).all() and (lengths < seq.size(1)).all()  # some padding, never all
        assert (real == (torch.arange(seq.size(1)) < lengths[:, None])).all()  # trailing pads
        assert seq.dtype == torch.long and int(seq.max()) < TINY[layer]["n_vocab"]
    torch.testing.assert_close(inputs.tensors["pos_table"], sinusoid_table(N_POSITION, 8))
    assert "pos_table" not in inputs.grad  # a buffer, as in the repository
    assert inputs.static["pad_idx"] == 0 and inputs.static["n_head"] == 2


def _ffn_preactivations(spec, inputs) -> list[tuple[Tensor, Tensor]]:
    """(x w_1^T, b_1) of every FFN, from the reference's own forward."""
    found = []

    def spy(x: Tensor, w_1: Tensor, b_1: Tensor, *rest: Tensor) -> Tensor:
        found.append((F.linear(x, w_1), b_1))
        return positionwise_feed_forward(x, w_1, b_1, *rest)

    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(transformer_parts, "positionwise_feed_forward", spy)
        spec.reference(**inputs.args)
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


def test_transformer_shares_one_embedding_and_scales_the_logits() -> None:
    inputs = REGISTRY.layer("transformer").make_inputs(TINY["transformer"],
                                                       torch.Generator().manual_seed(0))
    assert inputs.grad.count("emb") == 1 and inputs.static["scale_emb_or_prj"] == "prj"
    assert not [n for n in inputs.tensors if "word_emb" in n or "prj" in n]
    prj = _fn("transformer", "matmul")(**inputs.args)
    none = _fn("transformer", "matmul")(**{**inputs.args, "scale_emb_or_prj": "none"})
    assert prj.shape == (2 * 5, 11)
    torch.testing.assert_close(prj, none * 8 ** -0.5)  # d_model ** -0.5


# --- the nn.Modules ---------------------------------------------------------------------------


def test_modules_are_the_repositorys_eps_biases_names_and_sharing() -> None:
    model = _model(n_layers=2)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == (1 + 2 * 2) + (1 + 2 * 3)  # front ends + every sublayer
    assert all(n.eps == LN_EPS == 1e-6 and n.weight is not None and n.bias is not None
               for n in norms)
    attn = model.decoder.layer_stack[0].enc_attn
    assert all(getattr(attn, n).bias is None for n in ("w_qs", "w_ks", "w_vs", "fc"))
    ffn = model.encoder.layer_stack[1].pos_ffn
    assert ffn.w_1.bias is not None and ffn.w_2.bias is not None
    assert model.trg_word_prj.bias is None
    assert {"encoder.src_word_emb.weight", "encoder.position_enc.pos_table",  # so theirs loads
            "encoder.layer_norm.weight", "encoder.layer_stack.1.slf_attn.w_qs.weight",
            "encoder.layer_stack.0.slf_attn.layer_norm.bias",
            "encoder.layer_stack.0.pos_ffn.w_1.bias", "decoder.trg_word_emb.weight",
            "decoder.layer_stack.0.enc_attn.fc.weight", "trg_word_prj.weight"
            } <= set(model.state_dict())
    emb = model.decoder.trg_word_emb.weight
    assert model.encoder.src_word_emb.weight is emb and model.trg_word_prj.weight is emb
    assert model.scale_prj and not model.encoder.scale_emb
    emb_scaled = _model(scale_emb_or_prj="emb")
    assert emb_scaled.encoder.scale_emb and emb_scaled.decoder.scale_emb
    assert not emb_scaled.scale_prj
    separate = _model(trg_emb_prj_weight_sharing=False, emb_src_trg_weight_sharing=False)
    assert separate.trg_word_prj.weight is not separate.decoder.trg_word_emb.weight
    assert separate.encoder.src_word_emb.weight is not separate.decoder.trg_word_emb.weight
    assert not separate.scale_prj  # scaling only applies with the projection shared
    with pytest.raises(ValueError, match="scale_emb_or_prj"):
        Transformer(11, 11, 0, 0, scale_emb_or_prj="both")


def test_encoder_output_ends_in_the_last_sublayer_norm_not_a_final_one() -> None:
    encoder = Encoder(11, 8, 2, 2, 4, 4, 8, 12, pad_idx=0, dropout=0.0).eval()
    with torch.no_grad():
        encoder.layer_stack[-1].pos_ffn.layer_norm.weight.fill_(2.0)
        encoder.layer_stack[-1].pos_ffn.layer_norm.bias.fill_(3.0)
    seq = torch.tensor([[4, 5, 6, 0], [7, 8, 0, 0]])
    (out,) = encoder(seq, get_pad_mask(seq, 0))
    torch.testing.assert_close(out.mean(-1), torch.full((2, 4), 3.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.std(-1, unbiased=False), torch.full((2, 4), 2.0),
                               rtol=0, atol=1e-4)


_PATHS = {"w_qs": "w_qs.weight", "w_ks": "w_ks.weight", "w_vs": "w_vs.weight", "fc": "fc.weight",
          "w_1": "w_1.weight", "b_1": "w_1.bias", "w_2": "w_2.weight", "b_2": "w_2.bias",
          "ln_w": "layer_norm.weight", "ln_b": "layer_norm.bias"}


def _stack_weights(stack: Encoder | Decoder, prefix: str) -> dict[str, Tensor]:
    """The stacked ``prefix + "slf_w_qs"``... tensors of a module stack's parameters."""
    weights = {f"{prefix}ln_w": stack.layer_norm.weight, f"{prefix}ln_b": stack.layer_norm.bias}
    for short, attr, kind in (("slf_", "slf_attn", AttnWeights), ("enc_", "enc_attn",
                              AttnWeights), ("ffn_", "pos_ffn", FFNWeights)):
        if hasattr(stack.layer_stack[0], attr):
            for f in kind._fields:
                weights[prefix + short + f] = torch.stack(
                    [layer.get_parameter(f"{attr}.{_PATHS[f]}") for layer in stack.layer_stack])
    return weights


@pytest.mark.parametrize("impl", ["matmul", "einsum", "blockwise", "builtin", "loops"])
def test_modules_match_the_functions_with_the_same_weights(impl: str) -> None:
    model = _model(n_layers=2, dropout=0.1, impl=impl).double().eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # random everywhere (LayerNorm gains near 1): no zero bias hides a bug
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.copy_(1 + 0.1 * r if name.endswith("layer_norm.weight")
                    else r / math.sqrt(p.shape[-1]) if p.dim() == 2 and "word_emb" not in name
                    else 0.1 * r if p.dim() == 1 else r)
    src, trg = _tokens(2, 6, 1), _tokens(2, 5, 2)
    emb, table = model.decoder.trg_word_emb.weight, model.encoder.position_enc.pos_table[0]
    enc_w, dec_w = _stack_weights(model.encoder, "enc_"), _stack_weights(model.decoder, "dec_")
    src_mask, trg_mask = get_pad_mask(src, 0), get_pad_mask(trg, 0) & get_subsequent_mask(trg)
    encoder, decoder = seed_layers(2, REF)
    (enc_out,) = model.encoder(src, src_mask)
    torch.testing.assert_close(enc_out, encoder_forward(src, src_mask, emb, table, enc_w, "enc_",
                                                        0, False, encoder))
    (dec_out,) = model.decoder(trg, trg_mask, enc_out, src_mask)
    torch.testing.assert_close(dec_out, decoder_forward(trg, trg_mask, enc_out, src_mask, emb,
                                                        table, dec_w, "dec_", 0, False, decoder))
    logits = model(src, trg)
    assert logits.shape == (2 * 5, 11)
    got = _fn("transformer", impl)(src_seq=src, trg_seq=trg, emb=emb, pos_table=table, pad_idx=0,
                                   n_head=2, scale_emb_or_prj="prj", **enc_w, **dec_w)
    torch.testing.assert_close(logits, got)


def test_module_outputs_attention_lists_and_dropout() -> None:
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
    model, (src, trg) = _model(dropout=0.5).eval(), (_tokens(2, 6, 1), _tokens(2, 5, 2))
    torch.testing.assert_close(model(src, trg), model(src, trg))
    torch.manual_seed(0)
    assert not torch.allclose(model.train()(src, trg), model.eval()(src, trg))
    with pytest.raises(KeyError, match="nope"):
        Encoder(11, 8, 1, 2, 4, 4, 8, 12, pad_idx=0, impl="nope")


# --- planted bugs are flagged -----------------------------------------------------------------


def _encoder_with_ffn(ffn):
    """An encoder implementation whose feed-forward sublayers are ``ffn(x, weights)``."""

    def impl(src_seq, src_mask, emb, pos_table, pad_idx, n_head, scale_emb, **weights):
        def layer(x, mask, slf, w):
            return ffn(mha_sublayer(x, x, mask, slf, n_head, REF), w)
        return encoder_forward(src_seq, src_mask, emb, pos_table, weights, "", pad_idx,
                               scale_emb, layer)
    return impl


def _prenorm(x: Tensor, w: FFNWeights) -> Tensor:
    """x + FFN(LN(x)) instead of the seed's post-norm LN(x + FFN(x))."""
    h = F.layer_norm(x, x.shape[-1:], w.ln_w, w.ln_b, eps=LN_EPS)
    return x + F.linear(F.relu(F.linear(h, w.w_1, w.b_1)), w.w_2, w.b_2)


def _eps_1e5(x: Tensor, w: FFNWeights) -> Tensor:
    """nn.LayerNorm's default eps 1e-5 instead of 1e-6 (~5e-6 relative: float64 sees it)."""
    out = F.linear(F.relu(F.linear(x, w.w_1, w.b_1)), w.w_2, w.b_2) + x
    return F.layer_norm(out, out.shape[-1:], w.ln_w, w.ln_b, eps=1e-5)


def _with(layer: str, **changes):
    """The notes' implementation with inputs replaced: ``name=f``, ``f(inputs)`` the value."""
    return lambda **a: _fn(layer, "matmul")(**{**a, **{k: f(a) for k, f in changes.items()}})


def _strict_causal(a):  # query i sees keys 0..i-1: the diagonal excluded, row 0 sees nothing
    length = a["trg_seq"].size(1)
    return a["trg_mask"] & torch.ones(length, length, dtype=torch.bool).tril(-1)


@pytest.mark.parametrize(("layer", "fn", "mode", "dtype", "first"), [
    ("encoder", _encoder_with_ffn(_prenorm), "fwd", torch.float32, "output"),
    ("encoder", _encoder_with_ffn(_eps_1e5), "fwd", torch.float64, "output"),
    # nn.Embedding without padding_idx: a right forward, a gradient into the pad row
    ("encoder", _with("encoder", pad_idx=lambda a: -1), "fwdbwd", torch.float32, "grad emb"),
    ("decoder", _with("decoder", trg_mask=_strict_causal), "fwd", torch.float32, "output"),
    ("decoder", _with("decoder", trg_mask=lambda a: get_pad_mask(a["trg_seq"], 0)), "fwd",
     torch.float32, "output"),  # the padding mask only: the decoder sees the future
], ids=["prenorm", "eps_1e5", "no_padding_idx", "strict_causal", "padding_only"])
def test_planted_bug_is_flagged(layer: str, fn, mode: str, dtype: torch.dtype,
                                first: str) -> None:
    verdict, _ = _check(fn, layer, TINY[layer], mode, dtype)
    assert [p.split(":")[0] for p in verdict.problems] == [first], verdict.problems
    verdict, _ = _check(_fn(layer, "matmul"), layer, TINY[layer], mode, dtype)
    assert verdict.ok, verdict.problems  # the control


@pytest.mark.parametrize(("spec", "option", "ignored"), [
    (EncoderStack(scale_emb=True), "scale_emb", False),
    (DecoderStack(scale_emb=True), "scale_emb", False),
    (TransformerModel(scale_emb_or_prj="emb"), "scale_emb_or_prj", "none"),
    (TransformerModel(), "scale_emb_or_prj", "none"),  # "prj", the registered layer's
], ids=["encoder-scale_emb", "decoder-scale_emb", "transformer-emb", "transformer-prj"])
def test_scaling_options_are_followed_and_ignoring_them_is_flagged(spec, option: str,
                                                                   ignored) -> None:
    for impl in ("matmul", "einsum", "builtin", "torch_layers"):
        verdict, _ = _check(_fn(spec.name, impl), spec, TINY[spec.name], "fwdbwd")
        assert verdict.ok, (impl, verdict.problems)
    ignores = _with(spec.name, **{option: lambda a: ignored})
    assert _check(ignores, spec, TINY[spec.name])[0].problems[0].startswith("output:")
    if option == "scale_emb":  # the control: with it off (the registered layer) no bug shows
        assert _check(ignores, spec.name, TINY[spec.name])[0].ok


# --- CUDA -------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize(("layer", "impl"), [
    pytest.param(layer, impl, id=f"{layer}-{impl.name}")
    for layer in LAYERS for impl in REGISTRY.impls(layer) if "cuda" in impl.devices])
def test_cuda_implementations_match_reference(layer: str, impl, mode: str) -> None:
    params = {**TINY[layer], "d_model": 64, "n_head": 4, "d_k": 16, "d_v": 16, "d_inner": 96}
    for dtype in (torch.float32, torch.bfloat16):
        if impl.unsupported("cuda", dtype, mode, "none"):
            continue
        try:
            with torch.set_grad_enabled(mode == "fwdbwd"):
                verdict, trial = check(impl.fn, REGISTRY.layer(layer), params, [0, 1], dtype,
                                       "cuda", mode)
        except Unsupported as exc:  # sdpa_flash: every case here is masked
            pytest.skip(str(exc))
        except RuntimeError as exc:  # cuDNN attention needs a recent GPU and cuDNN
            if impl.name == "sdpa_cudnn":
                pytest.skip(f"sdpa_cudnn unavailable here: {exc}")
            raise
        assert verdict.ok, (dtype, verdict.problems)
        assert trial.inputs.tensors["pos_table"].device.type == "cuda"
