"""Elman RNN: the course notes' myRNN (embedding -> tanh RNN -> fc on the last hidden state).

Every implementation takes the token ids ``text (seq_len, N)`` (``torch.long``, in
``[0, vocab_size)``) and the weights of the notes' modules: ``embedding (vocab_size, embed_dim)``,
``W_ih (hidden_dim, embed_dim)``, ``b_ih (hidden_dim,)``, ``W_hh (hidden_dim, hidden_dim)``,
``b_hh (hidden_dim,)`` (the notes' ``nn.Linear`` W_ih and W_hh, both with a bias),
``fc_weight (output_dim, hidden_dim)`` and ``fc_bias (output_dim,)``. Starting from
``h_0 = 0``, ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`` for ``t = 1..seq_len``, and
the output is ``fc(h_T)``: ``(N, output_dim)``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from impls.registry import REGISTRY, CaseInputs, Layer, Params, register_impl, register_layer

_UNROLLS = "torch.compile unrolls the loop over seq_len: compile time grows with seq_len"


class RNNLayer(Layer):
    name = "rnn"
    title = "Elman RNN (myRNN)"
    order = 60
    params = ("seq_len", "N", "vocab_size", "embed_dim", "hidden_dim", "output_dim")
    positive: ClassVar[tuple[str, ...] | None] = None  # every size parameter
    labels: ClassVar[dict[str, str]] = {"seq_len": "T", "vocab_size": "V", "embed_dim": "E",
                                        "hidden_dim": "H", "output_dim": "O"}

    def make_inputs(self, params: Params, generator: torch.Generator) -> CaseInputs:
        T, N, V, E, H, n_out = (params[p] for p in self.params)

        def randn(*shape: int, std: float = 1.0) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64) * std

        # Weights with the standard deviation of nn.Linear's default uniform init,
        # 1/sqrt(3 fan_in): the recurrence then contracts (spectral radius of W_hh ~ 0.6), so
        # rounding errors do not grow over hundreds of steps. Biases of 0.1 keep tanh out of
        # saturation but are large enough that a dropped bias is flagged. The embedding is
        # N(0, 1), as nn.Embedding initialises it.
        return CaseInputs(
            tensors={"text": torch.randint(0, V, (T, N), generator=generator),
                     "embedding": randn(V, E),
                     "W_ih": randn(H, E, std=1 / math.sqrt(3 * E)),
                     "b_ih": randn(H, std=0.1),
                     "W_hh": randn(H, H, std=1 / math.sqrt(3 * H)),
                     "b_hh": randn(H, std=0.1),
                     "fc_weight": randn(n_out, H, std=1 / math.sqrt(3 * H)),
                     "fc_bias": randn(n_out, std=0.1)},
            grad=("embedding", "W_ih", "b_ih", "W_hh", "b_hh", "fc_weight", "fc_bias"),
        )

    def reference(self, text: Tensor, embedding: Tensor, W_ih: Tensor, b_ih: Tensor,
                  W_hh: Tensor, b_hh: Tensor, fc_weight: Tensor, fc_bias: Tensor) -> Tensor:
        # The notes' recurrence written out, independent of the registered implementations.
        embedded = embedding[text]  # (seq_len, N, embed_dim)
        h = embedding.new_zeros(text.shape[1], W_hh.shape[0])  # (N, hidden_dim)
        for x_t in embedded:  # x_t: (N, embed_dim)
            h = torch.tanh(x_t @ W_ih.T + b_ih + h @ W_hh.T + b_hh)  # (N, hidden_dim)
        return h @ fc_weight.T + fc_bias  # (N, output_dim)

    def flops(self, params: Params, mode: str) -> int:
        # GEMMs only, as torch.utils.flop_counter counts: per step W_ih x_t and W_hh h_{t-1}
        # (h_0 = 0 is multiplied too, as the notes do), then fc. Left out: the embedding gather
        # and its scatter-add backward, bias adds, tanh. Backward: every weight gradient costs
        # one forward GEMM; input gradients too, except that of h_0 (a constant, no gradient).
        T, N, _, E, H, n_out = (params[p] for p in self.params)
        ih, hh, fc = 2 * N * E * H, 2 * N * H * H, 2 * N * H * n_out
        fwd = T * (ih + hh) + fc
        if mode == "fwd":
            return fwd
        return fwd + 2 * T * ih + (2 * T - 1) * hh + 2 * fc

    def bytes_moved(self, params: Params, dtype: torch.dtype, mode: str) -> int:
        # The forward reads only the embedding rows it gathers (at most seq_len * N of them);
        # the backward writes the whole dense embedding gradient.
        T, N, V, E, H, n_out = (params[p] for p in self.params)
        weights = H * E + H + H * H + H + n_out * H + n_out
        elements = min(V, T * N) * E + weights + N * n_out
        if mode != "fwd":  # read grad_out; write the gradient of every weight
            elements += N * n_out + V * E + weights
        text_bytes = T * N * torch.empty((), dtype=torch.long).element_size()
        return elements * torch.empty((), dtype=dtype).element_size() + text_bytes

    def calibration_params(self, params: Params) -> dict[str, int]:
        return {"seq_len": min(params["seq_len"], 4), "N": min(params["N"], 2),
                "vocab_size": min(params["vocab_size"], 16),
                "embed_dim": min(params["embed_dim"], 8),
                "hidden_dim": min(params["hidden_dim"], 8),
                "output_dim": min(params["output_dim"], 4)}


LAYER = register_layer(RNNLayer())


@register_impl("rnn", "loops", notes=_UNROLLS)
def rnn_loops(text: Tensor, embedding: Tensor, W_ih: Tensor, b_ih: Tensor, W_hh: Tensor,
              b_hh: Tensor, fc_weight: Tensor, fc_bias: Tensor) -> Tensor:
    """The notes' step loop: two Linear calls per step (h_0 made on the input's device)."""
    embedded = F.embedding(text, embedding)  # (seq_len, N, embed_dim)
    # The notes write torch.zeros(...).to(device) with a global `device`; new_zeros follows
    # the embedding's device and dtype instead.
    h_t = embedded.new_zeros(text.shape[1], W_hh.shape[0])  # (N, hidden_dim)
    for t in range(text.shape[0]):
        # embedded[t] as in the notes: its backward zero-fills a whole (seq_len, N, embed_dim)
        # gradient per step, part of what this version costs (fused and einsum unbind).
        h_t = torch.tanh(F.linear(embedded[t], W_ih, b_ih) + F.linear(h_t, W_hh, b_hh))
    return F.linear(h_t, fc_weight, fc_bias)  # (N, output_dim)


@register_impl("rnn", "fused", notes=_UNROLLS)
def rnn_fused(text: Tensor, embedding: Tensor, W_ih: Tensor, b_ih: Tensor, W_hh: Tensor,
              b_hh: Tensor, fc_weight: Tensor, fc_bias: Tensor) -> Tensor:
    """The input projection of all steps as one GEMM, then one addmm + tanh per step."""
    embedded = F.embedding(text, embedding)  # (seq_len, N, embed_dim)
    # W_ih x_t does not depend on h: one (seq_len*N, embed_dim) @ (embed_dim, hidden_dim) GEMM
    # instead of seq_len small ones, with both biases folded in.
    xw = F.linear(embedded, W_ih, b_ih + b_hh)  # (seq_len, N, hidden_dim)
    W_hh_t = W_hh.t()  # (hidden_dim, hidden_dim), transposed once, not per step
    h_t = xw.new_zeros(xw.shape[1:])  # (N, hidden_dim)
    # unbind, not xw[t]: the backward of seq_len selects would zero-fill a whole
    # (seq_len, N, hidden_dim) gradient per step, O(seq_len^2) traffic; unbind's is one stack.
    for xw_t in xw.unbind(0):  # xw_t: (N, hidden_dim)
        h_t = torch.tanh(torch.addmm(xw_t, h_t, W_hh_t))  # (N, H) @ (H, H) + xw_t
    return F.linear(h_t, fc_weight, fc_bias)  # (N, output_dim)


@register_impl("rnn", "einsum", notes=_UNROLLS)
def rnn_einsum(text: Tensor, embedding: Tensor, W_ih: Tensor, b_ih: Tensor, W_hh: Tensor,
               b_hh: Tensor, fc_weight: Tensor, fc_bias: Tensor) -> Tensor:
    """einsum for every contraction: all input projections at once, then one per step."""
    embedded = F.embedding(text, embedding)  # (seq_len, N, embed_dim)
    xw = torch.einsum("tne,he->tnh", embedded, W_ih) + (b_ih + b_hh)  # (seq_len, N, hidden)
    h_t = xw.new_zeros(xw.shape[1:])  # (N, hidden_dim)
    for xw_t in xw.unbind(0):  # xw_t: (N, hidden_dim); unbind for a cheap backward, as fused
        h_t = torch.tanh(xw_t + torch.einsum("nk,hk->nh", h_t, W_hh))  # (N, hidden_dim)
    return torch.einsum("nh,oh->no", h_t, fc_weight) + fc_bias  # (N, output_dim)


@register_impl("rnn", "builtin", libraries=("cudnn_rnn", "cublas"),
               notes="on CUDA, cuDNN repacks the (unflattened) weights on every call")
def rnn_builtin(text: Tensor, embedding: Tensor, W_ih: Tensor, b_ih: Tensor, W_hh: Tensor,
                b_hh: Tensor, fc_weight: Tensor, fc_bias: Tensor) -> Tensor:
    """torch.rnn_tanh (what nn.RNN(embed_dim, hidden_dim) calls), then fc on h_T.

    The weights go in as a list in nn.RNN's order (weight_ih_l0, weight_hh_l0, bias_ih_l0,
    bias_hh_l0), so no module is built per call and autograd reaches every weight. nn.RNN
    itself would first flatten its weights into one buffer for cuDNN; here cuDNN copies them
    on each call, which is part of what this implementation costs on CUDA.
    """
    embedded = F.embedding(text, embedding)  # (seq_len, N, embed_dim)
    h_0 = embedded.new_zeros(1, text.shape[1], W_hh.shape[0])  # (num_layers=1, N, hidden_dim)
    _, h_n = torch.rnn_tanh(
        embedded, h_0, [W_ih, W_hh, b_ih, b_hh],
        True,  # has_biases
        1,  # num_layers
        0.0,  # dropout
        False,  # train (only switches dropout)
        False,  # bidirectional
        False,  # batch_first: input is (seq_len, N, embed_dim), as the notes'
    )  # h_n: (num_layers=1, N, hidden_dim)
    return F.linear(h_n[0], fc_weight, fc_bias)  # (N, output_dim)


class myRNN(nn.Module):
    """The notes' myRNN, computed by a chosen implementation.

    Submodules and parameter names are the notes' (``embedding``, ``W_ih``, ``W_hh``, ``fc``),
    so a state_dict saved from the notes' class loads here. The notes' ``nn.Tanh`` submodule
    holds no parameters and is left out.

    Args:
        impl: a registered rnn implementation (``loops``, ``fused``, ``einsum``, ``builtin``).

    Shapes: ``text (seq_len, N)`` token ids -> ``(N, output_dim)``.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, output_dim: int,
                 impl: str = "fused") -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.hidden_dim = hidden_dim
        self.W_ih = nn.Linear(embed_dim, hidden_dim)
        self.W_hh = nn.Linear(hidden_dim, hidden_dim)
        self.fc = nn.Linear(hidden_dim, output_dim)
        self.impl = impl
        self._fn = REGISTRY.impl("rnn", impl).fn

    def forward(self, text: Tensor) -> Tensor:
        return self._fn(text, self.embedding.weight, self.W_ih.weight, self.W_ih.bias,
                        self.W_hh.weight, self.W_hh.bias, self.fc.weight, self.fc.bias)

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}"


__all__ = ["LAYER", "myRNN", "rnn_builtin", "rnn_einsum", "rnn_fused", "rnn_loops"]
