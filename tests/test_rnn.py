"""myRNN beyond tests/test_contract.py: a dense embedding gradient, half precision, h_0 on the
inputs' device (the notes read a global ``device``), the notes' code and state dict, planted
bugs, the bytes of a partial embedding read, and rnn's own sizes and checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls import REGISTRY
from impls.rnn import myRNN, rnn_loops
from suites.correctness import check
from suites.presets import preset_table

LAYER = REGISTRY.layer("rnn")
IMPLS = REGISTRY.impls("rnn")
IMPL_IDS = [impl.name for impl in IMPLS]
SMALL = dict(zip(LAYER.params, (6, 3, 13, 5, 7, 3), strict=True))


def _params(size: tuple[int, ...]) -> dict[str, int]:
    return dict(zip(LAYER.params, size, strict=True))


def _id(size: tuple[int, ...]) -> str:
    return LAYER.label(_params(size))


def _check(fn, dtype=torch.float32, mode="fwd", device="cpu") -> list[str]:
    """What the correctness check finds wrong: ``["output", "grad W_hh", ...]``, or nothing."""
    with torch.set_grad_enabled(mode != "fwd"):  # as the runner calls it
        verdict, _ = check(fn, LAYER, SMALL, [0, 1, 2], dtype, device, mode)
    return [p.split(":")[0] for p in verdict.problems]


def _tensors(seed: int, device: str = "cpu") -> dict[str, Tensor]:
    inputs = LAYER.make_inputs(SMALL, torch.Generator().manual_seed(seed))
    return {n: t.to(device) for n, t in inputs.tensors.items()}


def test_the_documented_implementations_are_registered() -> None:
    assert {"loops", "fused", "einsum", "builtin"} <= set(IMPL_IDS)
    # a Python loop over seq_len of vectorised steps: not slow per element, and compilable
    assert not any(impl.naive for impl in IMPLS)
    assert all(impl.compilable for impl in IMPLS)


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_the_embedding_gradient_is_dense_like_nn_embeddings(impl) -> None:
    t = _tensors(seed=1)
    embedding = t["embedding"].requires_grad_()
    (grad,) = torch.autograd.grad(impl.fn(**t).sum(), embedding)
    assert grad.layout == torch.strided and grad.shape == embedding.shape


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_half_precision_passes_with_its_tolerance(impl, dtype: torch.dtype, mode: str) -> None:
    assert _check(impl.fn, dtype, mode) == []


@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_runs_on_the_inputs_device(impl) -> None:
    """h_0 follows the inputs (the notes read a global ``device``): on the meta device no
    tensor may be made on the CPU."""
    t = _tensors(seed=3, device="meta")
    with torch.no_grad():
        out = impl.fn(**t)
    assert out.device.type == "meta"
    assert out.shape == (SMALL["N"], SMALL["output_dim"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", IMPLS, ids=IMPL_IDS)
def test_passes_the_correctness_check_on_cuda(impl, mode: str) -> None:
    assert _check(impl.fn, mode=mode, device="cuda") == []


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


@pytest.mark.parametrize("impl", IMPL_IDS)
def test_myrnn_and_the_reference_are_the_notes_module(impl: str) -> None:
    torch.manual_seed(5)
    notes = NotesRNN(13, 5, 7, 3).double()
    module = myRNN(13, 5, 7, 3, impl=impl).double()
    assert module.embedding.weight.shape == (13, 5) and module.fc.weight.shape == (3, 7)
    assert module.W_ih.weight.shape == (7, 5) and module.W_hh.weight.shape == (7, 7)
    module.load_state_dict(notes.state_dict())  # same names and shapes (nn.Tanh holds none)
    text = torch.randint(0, 13, (6, 4))
    out, want = module(text), notes(text)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    ref = LAYER.reference(text, *(p.detach() for p in notes.parameters()))  # the notes' order
    torch.testing.assert_close(ref, want, rtol=1e-12, atol=1e-12)
    # one backward reaches every parameter, as in the notes' module
    out.sum().backward()
    want.sum().backward()
    for (name, ours), theirs in zip(module.named_parameters(), notes.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, msg=lambda m, n=name: f"{n}: {m}")
    with pytest.raises(KeyError, match="nope"):
        myRNN(3, 2, 2, 1, impl="nope")


# --- planted bugs ------------------------------------------------------------------------------


def rnn_notes_global_device(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """The notes' bug: h_0 made on a fixed device (the CPU) instead of the input's."""
    embedded = F.embedding(text, embedding)
    h = torch.zeros(text.shape[1], W_hh.shape[0], dtype=embedding.dtype).to("cpu")
    for x_t in embedded:
        h = torch.tanh(F.linear(x_t, W_ih, b_ih) + F.linear(h, W_hh, b_hh))
    return F.linear(h, fc_weight, fc_bias)


def _states(text, embedding, W_ih, b_ih, W_hh, b_hh, detach: bool = False) -> list[Tensor]:
    h, states = torch.zeros_like(b_hh).expand(text.shape[1], -1), []
    for x_t in F.embedding(text, embedding):
        h = torch.tanh(F.linear(x_t, W_ih, b_ih) + F.linear(h.detach() if detach else h, W_hh,
                                                            b_hh))
        states.append(h)
    return states


def rnn_first_state(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """fc on h_1 instead of h_T."""
    return F.linear(_states(text, embedding, W_ih, b_ih, W_hh, b_hh)[0], fc_weight, fc_bias)


def rnn_mean_state(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """fc on the mean of the hidden states (a common variant, but not the notes' model)."""
    states = _states(text, embedding, W_ih, b_ih, W_hh, b_hh)
    return F.linear(torch.stack(states).mean(0), fc_weight, fc_bias)


def rnn_no_hidden_bias(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """W_hh as a Linear without bias."""
    return rnn_loops(text, embedding, W_ih, b_ih, W_hh, torch.zeros_like(b_hh), fc_weight,
                     fc_bias)


def rnn_transposed_w_hh(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """h @ W_hh instead of h @ W_hh^T."""
    return rnn_loops(text, embedding, W_ih, b_ih, W_hh.t(), b_hh, fc_weight, fc_bias)


def rnn_truncated_bptt(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """Exact forward, but the state is detached every step (backpropagation through one step)."""
    h_T = _states(text, embedding, W_ih, b_ih, W_hh, b_hh, detach=True)[-1]
    return F.linear(h_T, fc_weight, fc_bias)


def rnn_frozen_embedding(text, embedding, W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias):
    """Exact forward; no gradient reaches the embedding table."""
    return rnn_loops(text, embedding.detach(), W_ih, b_ih, W_hh, b_hh, fc_weight, fc_bias)


@pytest.mark.parametrize(("bug", "mode", "problem"), [
    (rnn_first_state, "fwd", "output"), (rnn_mean_state, "fwd", "output"),
    (rnn_no_hidden_bias, "fwd", "output"), (rnn_transposed_w_hh, "fwd", "output"),
    (rnn_truncated_bptt, "fwdbwd", "grad W_hh"), (rnn_frozen_embedding, "fwdbwd", "grad embedding"),
], ids=lambda v: getattr(v, "__name__", None))
def test_planted_bugs_are_flagged(bug, mode: str, problem: str) -> None:
    problems = _check(bug, mode=mode)
    if mode == "fwd":
        assert problems[:1] == [problem], problems
    else:
        assert _check(bug) == []  # the forward is exact
        assert problem in problems, problems


def test_the_notes_global_device_fails_off_the_cpu() -> None:
    assert _check(rnn_notes_global_device) == []  # on the CPU it is right
    t = _tensors(seed=7, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        rnn_notes_global_device(**t)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_notes_global_device_is_an_error_on_cuda() -> None:
    """The check runs the notes' h_0 (made on the CPU) against CUDA inputs: the call raises,
    which the runner records as an ``error`` row."""
    with pytest.raises(RuntimeError, match="device"):
        _check(rnn_notes_global_device, device="cuda")


# --- the bytes of a partial embedding read, rnn's sizes ----------------------------------------


# a batch that can touch fewer rows than the vocabulary holds, one that touches them all, the notes'
@pytest.mark.parametrize("size", [(1, 2, 5, 3, 4, 2), (6, 3, 13, 5, 7, 3),
                                  (16, 64, 25002, 100, 256, 1)], ids=_id)
def test_bytes_read_only_the_embedding_rows_a_batch_can_touch(size: tuple[int, ...]) -> None:
    T, N, V, E, H, n_out = size
    weights = H * E + H * H + 2 * H + n_out * H + n_out
    rows = min(V, T * N)  # embedding rows the forward can read
    for dtype, width in ((torch.float32, 4), (torch.bfloat16, 2)):
        fwd = (rows * E + weights + N * n_out) * width + T * N * 8
        assert LAYER.bytes_moved(_params(size), dtype, "fwd") == fwd
        # the backward writes the dense (V, E) embedding gradient and every weight's gradient
        grads = (N * n_out + V * E + weights) * width
        assert LAYER.bytes_moved(_params(size), dtype, "fwdbwd") == fwd + grads


@pytest.mark.parametrize("name", LAYER.params)
def test_check_rejects_nonsense(name: str) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match=name) as info:
            LAYER.check({**SMALL, name: bad})
        assert "\n" not in str(info.value)


def test_inputs_and_sizes() -> None:
    a = LAYER.make_inputs(SMALL, torch.Generator().manual_seed(8))
    text = a.tensors["text"]
    assert text.dtype == torch.long and text.shape == (SMALL["seq_len"], SMALL["N"])
    assert int(text.min()) >= 0 and int(text.max()) < SMALL["vocab_size"]
    assert set(a.grad) == {n for n, t in a.tensors.items() if t.is_floating_point()}
    seq_lens = [s["seq_len"] for s in preset_table("rnn")["default"]]
    assert min(seq_lens) <= 16 and max(seq_lens) >= 512
