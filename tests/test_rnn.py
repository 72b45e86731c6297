"""myRNN: every implementation against nn.RNN and the notes' code, its costs, and planted bugs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from impls import REGISTRY
from impls.rnn import myRNN, rnn_loops
from suites.correctness import check
from suites.presets import notes_size, preset_table

LAYER = REGISTRY.layer("rnn")
IMPLS = REGISTRY.impls("rnn")
IMPL_IDS = [impl.name for impl in IMPLS]
NAMES = LAYER.params
SEEDS = [0, 1, 2]

# (seq_len, N, vocab_size, embed_dim, hidden_dim, output_dim): one step, one sequence, one
# output, embed_dim above and below hidden_dim, a vocabulary smaller than the tokens drawn.
TINY = [
    (1, 2, 5, 3, 4, 2),
    (7, 1, 11, 5, 6, 1),
    (6, 3, 4, 9, 5, 3),
    (12, 4, 30, 6, 8, 2),
]
SMALL = dict(zip(NAMES, (6, 3, 13, 5, 7, 3), strict=True))


def _params(size: tuple[int, ...]) -> dict[str, int]:
    return dict(zip(NAMES, size, strict=True))


def _size_id(size: tuple[int, ...]) -> str:
    return LAYER.label(_params(size))


def _check(fn, params=SMALL, dtype=torch.float32, mode="fwd", device="cpu"):
    with torch.set_grad_enabled(mode != "fwd"):  # as the runner calls it
        verdict, _ = check(fn, LAYER, params, SEEDS, dtype, device, mode)
    return verdict


def _weights(size: tuple[int, ...], seed: int) -> dict[str, Tensor]:
    inputs = LAYER.make_inputs(_params(size), torch.Generator().manual_seed(seed))
    return inputs.tensors


def _torch_rnn(t: dict[str, Tensor]) -> Tensor:
    """The same model from torch.nn: Embedding -> nn.RNN (tanh) -> Linear on h_T."""
    H, E = t["W_ih"].shape
    rnn = nn.RNN(E, H, nonlinearity="tanh").double()
    weights = {"weight_ih_l0": t["W_ih"], "weight_hh_l0": t["W_hh"], "bias_ih_l0": t["b_ih"],
               "bias_hh_l0": t["b_hh"]}  # the very tensors, so gradients reach them
    embedded = F.embedding(t["text"], t["embedding"])  # (seq_len, N, embed_dim)
    _, h_n = torch.func.functional_call(rnn, weights, (embedded,))  # h_n: (1, N, hidden_dim)
    return F.linear(h_n[0], t["fc_weight"], t["fc_bias"])


# --- every implementation against nn.RNN ------------------------------------------------------


def test_the_documented_implementations_are_registered() -> None:
    assert {"loops", "fused", "einsum", "builtin"} <= set(IMPL_IDS)
    # a Python loop over seq_len of vectorised steps: not slow per element, and compilable
    assert not any(impl.naive for impl in IMPLS)
    assert all(impl.compilable for impl in IMPLS)


@pytest.mark.parametrize("size", TINY, ids=_size_id)
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_forward_and_gradients_match_nn_rnn(impl, size: tuple[int, ...]) -> None:
    t = _weights(size, seed=1)
    floats = [n for n, v in t.items() if v.is_floating_point()]
    for n in floats:
        t[n].requires_grad_()
    expected = _torch_rnn(t)
    out = impl.fn(**t)
    assert out.shape == (size[1], size[5])
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)

    grad_out = torch.randn(out.shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(2))
    want = torch.autograd.grad(expected, [t[n] for n in floats], grad_out)
    got = torch.autograd.grad(out, [t[n] for n in floats], grad_out)
    for name, g, w in zip(floats, got, want, strict=True):
        assert g.layout == torch.strided  # the embedding gradient is dense, like nn.Embedding's
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10,
                                   msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_passes_the_correctness_check(impl, dtype: torch.dtype, mode: str) -> None:
    verdict = _check(impl.fn, dtype=dtype, mode=mode)
    assert verdict.ok, verdict.problems


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_runs_on_the_inputs_device(impl) -> None:
    """h_0 follows the inputs (the notes read a global ``device``): on the meta device no
    tensor may be made on the CPU."""
    t = {n: v.to("meta") for n, v in _weights(TINY[2], seed=3).items()}
    with torch.no_grad():
        out = impl.fn(**t)
    assert out.device.type == "meta"
    assert out.shape == (TINY[2][1], TINY[2][5])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_passes_the_correctness_check_on_cuda(impl, mode: str) -> None:
    verdict = _check(impl.fn, mode=mode, device="cuda")
    assert verdict.ok, verdict.problems


# --- the notes' code --------------------------------------------------------------------------


class NotesRNN(nn.Module):
    """The notes' myRNN as printed (with the global ``device`` it reads)."""

    def __init__(self, vocab_size, embed_dim, hidden_dim, output_dim):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.hidden_dim = hidden_dim
        self.W_ih = nn.Linear(embed_dim, hidden_dim)
        self.W_hh = nn.Linear(hidden_dim, hidden_dim)
        self.tanh = nn.Tanh()
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, text):  # [seq_len, batch_size]
        embedded = self.embedding(text)  # [seq_len, batch_size, embed_dim]
        seq_len, batch_size, _ = embedded.size()
        h_t = torch.zeros(batch_size, self.hidden_dim, dtype=embedded.dtype).to(device)
        for t in range(seq_len):
            x_t = embedded[t]
            h_t = self.tanh(self.W_ih(x_t) + self.W_hh(h_t))
        out = self.fc(h_t)
        return out


device = "cpu"  # the notes' global, read by NotesRNN


def test_the_reference_is_the_notes_forward() -> None:
    torch.manual_seed(4)
    notes = NotesRNN(13, 5, 7, 3).double()
    text = torch.randint(0, 13, (6, 4))
    ref = LAYER.reference(text, notes.embedding.weight, notes.W_ih.weight, notes.W_ih.bias,
                          notes.W_hh.weight, notes.W_hh.bias, notes.fc.weight, notes.fc.bias)
    torch.testing.assert_close(ref, notes(text), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPL_IDS)
def test_myrnn_loads_the_notes_state_dict_and_agrees(impl: str) -> None:
    torch.manual_seed(5)
    notes = NotesRNN(13, 5, 7, 3).double()
    module = myRNN(13, 5, 7, 3, impl=impl).double()
    module.load_state_dict(notes.state_dict())  # same names and shapes (nn.Tanh holds none)
    text = torch.randint(0, 13, (6, 4))
    out = module(text)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, notes(text), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPL_IDS)
def test_myrnn_matches_nn_rnn_with_copied_weights(impl: str) -> None:
    torch.manual_seed(6)
    module = myRNN(11, 4, 6, 2, impl=impl).double()
    assert module.embedding.weight.shape == (11, 4)
    assert module.W_ih.weight.shape == (6, 4) and module.W_hh.weight.shape == (6, 6)
    assert module.fc.weight.shape == (2, 6)
    rnn = nn.RNN(4, 6).double()
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(module.W_ih.weight)
        rnn.weight_hh_l0.copy_(module.W_hh.weight)
        rnn.bias_ih_l0.copy_(module.W_ih.bias)
        rnn.bias_hh_l0.copy_(module.W_hh.bias)
    text = torch.randint(0, 11, (9, 3))
    out = module(text)
    _, h_n = rnn(module.embedding(text))
    expected = module.fc(h_n[0])
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    # one backward reaches every parameter, and nn.RNN's gradients agree
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(module.W_hh.weight.grad, rnn.weight_hh_l0.grad)
    torch.testing.assert_close(module.W_ih.bias.grad, rnn.bias_ih_l0.grad)


def test_myrnn_rejects_unknown_impl() -> None:
    with pytest.raises(KeyError, match="nope"):
        myRNN(3, 2, 2, 1, impl="nope")


# --- deliberately wrong implementations -------------------------------------------------------


def rnn_notes_global_device(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """The notes' bug: h_0 made on a fixed device (the CPU) instead of the input's."""
    embedded = F.embedding(text, embedding)
    h = torch.zeros(text.shape[1], W_hh.shape[0], dtype=embedding.dtype).to("cpu")
    for x_t in embedded:
        h = torch.tanh(F.linear(x_t, W_ih, b_ih) + F.linear(h, W_hh, b_hh))
    return F.linear(h, fc_weight, fc_bias)


def rnn_first_state(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """fc on h_1 instead of h_T."""
    embedded = F.embedding(text, embedding)
    h = torch.zeros_like(b_hh).expand(text.shape[1], -1)
    states = []
    for x_t in embedded:
        h = torch.tanh(F.linear(x_t, W_ih, b_ih) + F.linear(h, W_hh, b_hh))
        states.append(h)
    return F.linear(states[0], fc_weight, fc_bias)


def rnn_mean_state(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """fc on the mean of the hidden states (a common variant, but not the notes' model)."""
    embedded = F.embedding(text, embedding)
    h = torch.zeros_like(b_hh).expand(text.shape[1], -1)
    total = torch.zeros_like(h)
    for x_t in embedded:
        h = torch.tanh(F.linear(x_t, W_ih, b_ih) + F.linear(h, W_hh, b_hh))
        total = total + h
    return F.linear(total / text.shape[0], fc_weight, fc_bias)


def rnn_no_hidden_bias(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """W_hh as a Linear without bias."""
    return rnn_loops(text, embedding, W_ih, b_ih, W_hh, torch.zeros_like(b_hh), fc_weight,
                     fc_bias)


def rnn_transposed_w_hh(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """h @ W_hh instead of h @ W_hh^T."""
    return rnn_loops(text, embedding, W_ih, b_ih, W_hh.t(), b_hh, fc_weight, fc_bias)


def rnn_truncated_bptt(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """Exact forward, but the state is detached every step (backpropagation through one step)."""
    embedded = F.embedding(text, embedding)
    h = torch.zeros_like(b_hh).expand(text.shape[1], -1)
    for x_t in embedded:
        h = torch.tanh(F.linear(x_t, W_ih, b_ih) + F.linear(h.detach(), W_hh, b_hh))
    return F.linear(h, fc_weight, fc_bias)


def rnn_frozen_embedding(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """Exact forward; no gradient reaches the embedding table."""
    return rnn_loops(text, embedding.detach(), W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias)


@pytest.mark.parametrize("bug", [rnn_first_state, rnn_mean_state, rnn_no_hidden_bias,
                                 rnn_transposed_w_hh], ids=lambda f: f.__name__)
def test_planted_forward_bugs_are_flagged(bug) -> None:
    verdict = _check(bug)
    assert not verdict.ok
    assert verdict.problems[0].startswith("output")


@pytest.mark.parametrize(("bug", "what"), [(rnn_truncated_bptt, "grad W_hh"),
                                           (rnn_frozen_embedding, "grad embedding")],
                         ids=["truncated-bptt", "frozen-embedding"])
def test_planted_gradient_bugs_are_flagged(bug, what: str) -> None:
    assert _check(bug, mode="fwd").ok  # the forward is exact
    verdict = _check(bug, mode="fwdbwd")
    assert not verdict.ok
    assert any(p.startswith(what) for p in verdict.problems), verdict.problems


def test_the_notes_global_device_fails_off_the_cpu() -> None:
    t = {n: v.to("meta") for n, v in _weights(TINY[2], seed=7).items()}
    with pytest.raises((RuntimeError, NotImplementedError)):
        rnn_notes_global_device(**t)


# --- costs, sizes, presets --------------------------------------------------------------------

FLOP_SIZES = [(1, 2, 5, 3, 4, 2), (6, 3, 13, 5, 7, 3), (16, 64, 25002, 100, 256, 1)]


def _meta_inputs(size: tuple[int, ...], grad: bool) -> dict[str, Tensor]:
    t = _weights((*size[:2], min(size[2], 50), *size[3:]), seed=0)
    t["embedding"] = torch.empty(size[2], size[3], dtype=torch.float64)
    return {n: (v.to("meta").requires_grad_(grad) if v.is_floating_point() else v.to("meta"))
            for n, v in t.items()}


@pytest.mark.parametrize("size", FLOP_SIZES, ids=_size_id)
@pytest.mark.parametrize("fn", [LAYER.reference, REGISTRY.impl("rnn", "builtin").fn],
                         ids=["reference", "builtin"])
def test_flops_match_flop_counter(fn, size: tuple[int, ...]) -> None:
    params = _params(size)
    with FlopCounterMode(display=False) as counter:
        fn(**_meta_inputs(size, grad=False))
    assert LAYER.flops(params, "fwd") == counter.get_total_flops()

    with FlopCounterMode(display=False) as counter:
        out = fn(**_meta_inputs(size, grad=True))
        out.backward(torch.empty_like(out))
    assert LAYER.flops(params, "fwdbwd") == counter.get_total_flops()


@pytest.mark.parametrize("size", FLOP_SIZES, ids=_size_id)
def test_bytes_count_each_tensor_once(size: tuple[int, ...]) -> None:
    params = _params(size)
    T, N, V, E, H, n_out = size
    weights = H * E + H * H + 2 * H + n_out * H + n_out
    rows = min(V, T * N)  # embedding rows the forward can read
    for dtype, width in ((torch.float32, 4), (torch.bfloat16, 2)):
        fwd = (rows * E + weights + N * n_out) * width + T * N * 8
        assert LAYER.bytes_moved(params, dtype, "fwd") == fwd
        # the backward writes the dense (V, E) embedding gradient and every weight's gradient
        grads = (N * n_out + V * E + weights) * width
        assert LAYER.bytes_moved(params, dtype, "fwdbwd") == fwd + grads


@pytest.mark.parametrize("name", NAMES)
def test_check_rejects_nonsense(name: str) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match=name) as info:
            LAYER.check({**SMALL, name: bad})
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="num_layers"):
        LAYER.check({**SMALL, "num_layers": 2})


def test_make_inputs_are_seeded_random_and_in_range() -> None:
    a = LAYER.make_inputs(SMALL, torch.Generator().manual_seed(8))
    b = LAYER.make_inputs(SMALL, torch.Generator().manual_seed(8))
    for name, t in a.tensors.items():
        assert torch.equal(t, b.tensors[name])
        if t.is_floating_point():
            assert t.dtype == torch.float64 and t.std() > 0
    text = a.tensors["text"]
    assert text.dtype == torch.long and text.shape == (SMALL["seq_len"], SMALL["N"])
    assert int(text.min()) >= 0 and int(text.max()) < SMALL["vocab_size"]
    assert set(a.grad) == {n for n, t in a.tensors.items() if t.is_floating_point()}


def test_presets_are_valid_and_include_the_notes_size() -> None:
    notes = notes_size("rnn")
    for preset, sizes in preset_table("rnn").items():
        assert notes in sizes, preset
        for params in sizes:
            LAYER.check(params)
            assert LAYER.flops(params, "fwd") > 0
            LAYER.check(LAYER.calibration_params(params))
    seq_lens = [s["seq_len"] for s in preset_table("rnn")["default"]]
    assert min(seq_lens) <= 16 and max(seq_lens) >= 512
