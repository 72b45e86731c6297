"""``flash``: attention tiled like FlashAttention, sized for the device's caches.

The plain ``matmul`` implementation writes the whole ``(len_q, len_k)`` score matrix to memory
and reads it back twice (softmax, product with v); at 1,024 tokens that traffic makes it ~3x
slower than ``F.scaled_dot_product_attention``, whose CPU kernel never materialises it. Here
each tile of about ``FLASH_TILE`` scores is computed, masked, softmaxed and multiplied by v
while it is still in cache. Registered as the ``attention`` layer's ``flash`` implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from impls.attention import MASK_FILL
from impls.registry import register_impl

#: scores per tile of ``flash``: 2**18 float32 (1 MiB, about one core's L2 cache) stay cached
#: while the softmax and the product with v reread them, where the whole (len_q, len_k) matrix
#: goes to memory and back; the fastest of 2**16..2**20 on the default sizes, one thread
FLASH_TILE = 1 << 18
#: scores per tile on a GPU: each tile's scores go to device memory either way (this is tensor
#: code, not a fused kernel, so nothing stays on chip), and every tile costs a few kernel
#: launches: large tiles (64 MiB of float32 scores) keep the launches few. Not tuned on a GPU.
FLASH_TILE_GPU = 1 << 24
#: queries per tile of ``flash`` where the mask varies along them (causal), so each tile can
#: skip the keys it cannot see; and the fewest otherwise (thinner tiles slow the GEMMs)
FLASH_BLOCK_Q = 64
#: most keys one softmax of ``flash`` sees; a longer visible key range is split into blocks
#: joined by the online softmax
FLASH_BLOCK_K = 4096


def _part(t: Tensor, dim: int, start: int, end: int) -> Tensor:
    """``t[start:end]`` along ``dim``, or ``t`` itself where that dimension broadcasts."""
    return t if t.shape[dim] == 1 else t.narrow(dim, start, end - start)


def tile_scores(device: torch.device) -> int:
    """Scores per tile of ``flash`` on ``device``: ``FLASH_TILE`` (a CPU core's L2), or
    ``FLASH_TILE_GPU`` on an accelerator."""
    return FLASH_TILE if device.type == "cpu" else FLASH_TILE_GPU


def _flash_tiles(N: int, n_head: int, len_q: int, len_k: int, by_query: bool,
                 tile: int = FLASH_TILE) -> tuple[int, int, int]:
    """Batch elements, heads and queries per tile: about ``tile`` scores in each."""
    block_q = FLASH_BLOCK_Q if by_query else max(FLASH_BLOCK_Q, tile // len_k)
    block_q = min(len_q, block_q)
    heads = min(n_head, max(1, tile // (block_q * len_k)))
    batch = min(N, max(1, tile // (n_head * block_q * len_k))) if heads == n_head else 1
    return batch, heads, block_q


def _visible_keys(visible: Tensor, block_q: int) -> tuple[list, list]:
    """First and one-past-last visible key of each (batch, head, query tile) of the mask.

    ``visible (N|1, h|1, len_q|1, len_k)``; nested lists ``[N|1][h|1][query tiles|1]``. Rows
    that see no key are left out (their output is replaced by the mean of v).
    """
    len_k = visible.shape[-1]
    keys = torch.arange(len_k, dtype=torch.int32, device=visible.device)
    first = torch.where(visible, keys, len_k).amin(-1)  # (N|1, h|1, len_q|1)
    last = torch.where(visible, keys + 1, 0).amax(-1)
    if first.shape[-1] > 1:  # per query tile: (N|1, h|1, tiles, block_q) reduced
        pad = -first.shape[-1] % block_q
        first = F.pad(first, (0, pad), value=len_k).unflatten(-1, (-1, block_q)).amin(-1)
        last = F.pad(last, (0, pad), value=0).unflatten(-1, (-1, block_q)).amax(-1)
    return first.tolist(), last.tolist()


def _key_range(ranges: tuple[list, list] | None, len_k: int, n: range, h: range,
               tile: int) -> tuple[int, int]:
    """The keys that the queries of tile ``tile`` of batch elements ``n``, heads ``h`` see."""
    if ranges is None:
        return 0, len_k
    first, last = ranges
    n = n if len(first) > 1 else range(1)
    h = h if len(first[0]) > 1 else range(1)
    tile = tile if len(first[0][0]) > 1 else 0
    lo = min(first[i][j][tile] for i in n for j in h)
    hi = max(last[i][j][tile] for i in n for j in h)
    return (lo, hi) if lo < hi else (0, len_k)  # every row blind: any range will do


def _scores(q_t: Tensor, k_t: Tensor, bias_t: Tensor | None, scale: float, n_heads: int,
            out: Tensor | None) -> Tensor:
    """``scale * q_t k_t^T + bias_t``: ``(B, T, S)`` from ``q_t (B, T, d_k)``, ``k_t (B, S,
    d_k)`` and ``bias_t`` broadcastable to ``(B / n_heads, n_heads, T, S)``.

    The scale is folded into the GEMM (beta=0 ignores its input); the mask is an added 0 or
    -1e9 (an add runs several times faster than masked_fill on the CPU). A masked score is
    then -1e9 plus a score, whose exp underflows to exactly 0 as the notes' -1e9 does.
    """
    k_t = k_t.transpose(1, 2)  # (B, d_k, S)
    if out is None:
        scores = torch.baddbmm(q_t.new_zeros(()), q_t, k_t, beta=0, alpha=scale)
    else:
        scores = torch.baddbmm(q_t.new_zeros(()), q_t, k_t, beta=0, alpha=scale, out=out)
    if bias_t is not None:
        scores.view(-1, n_heads, *scores.shape[1:]).add_(bias_t)  # (B / h, h, T, S)
    return scores  # (B, T, S)


def _online_softmax(q_t: Tensor, k_t: Tensor, v_t: Tensor, bias_t: Tensor | None,
                    scale: float, n_heads: int) -> Tensor:
    """``_attend_tile`` over key blocks of FLASH_BLOCK_K: a running row maximum and sum
    rescale the partial output as each block arrives. Out of place, for autograd."""
    row_max = row_sum = acc = None
    for start in range(0, k_t.shape[1], FLASH_BLOCK_K):
        end = min(start + FLASH_BLOCK_K, k_t.shape[1])
        bias = None if bias_t is None else _part(bias_t, 3, start, end)
        scores = _scores(q_t, k_t[:, start:end], bias, scale, n_heads, None)  # (B, T, S')
        # the maximum only keeps exp in range (the result does not depend on it): detached,
        # autograd skips its gradient terms, which cancel only up to rounding
        block_max = scores.detach().amax(-1, keepdim=True)  # (B, T, 1)
        new_max = block_max if row_max is None else torch.maximum(row_max, block_max)
        p = torch.exp(scores - new_max)  # (B, T, S')
        pv = torch.bmm(p, v_t[:, start:end])  # (B, T, d_v)
        if row_max is None:
            row_sum, acc = p.sum(-1, keepdim=True), pv
        else:
            rescale = torch.exp(row_max - new_max)  # (B, T, 1)
            row_sum = row_sum * rescale + p.sum(-1, keepdim=True)
            acc = acc * rescale + pv
        row_max = new_max
    return acc / row_sum  # (B, T, d_v)


def _attend_tile(q_t: Tensor, k_t: Tensor, v_t: Tensor, bias_t: Tensor | None, scale: float,
                 n_heads: int, inplace: bool, buf: Tensor | None = None,
                 out: Tensor | None = None) -> Tensor:
    """``softmax(scale * q_t k_t^T + bias_t) v_t``: ``(B, T, d_v)``; arguments as ``_scores``.

    ``inplace`` (no autograd): the scores are softmaxed where they are, at the start of the
    flat ``buf`` if given, and the product lands in ``out (B, T, d_v)`` if given.
    """
    B, T, S = q_t.shape[0], q_t.shape[1], k_t.shape[1]
    if S > FLASH_BLOCK_K:
        result = _online_softmax(q_t, k_t, v_t, bias_t, scale, n_heads)
        return result if out is None else out.copy_(result)
    buf = None if buf is None else buf[:B * T * S].view(B, T, S)
    scores = _scores(q_t, k_t, bias_t, scale, n_heads, buf)  # (B, T, S)
    if not inplace:
        return torch.bmm(torch.softmax(scores, -1), v_t)  # (B, T, d_v)
    torch.softmax(scores, -1, out=scores)  # in place, while in cache
    return torch.bmm(scores, v_t, out=out)  # (B, T, d_v)


def _cat(tensors: list[Tensor], dim: int) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def _flash_tiled(q: Tensor, k: Tensor, v: Tensor, visible: Tensor | None, bias: Tensor | None,
                 scale: float, inplace: bool, tile: int = FLASH_TILE) -> Tensor:
    """``attention_flash``'s loop over tiles: ``(N, h, len_q, d_v)``.

    ``visible`` and ``bias`` are the mask as ``(N|1, h|1, len_q|1, len_k|1)`` booleans and as
    0 / -1e9 scores; ``inplace`` when autograd is off.
    """
    N, n_head, len_q, _ = q.shape
    len_k, d_v = k.shape[2], v.shape[-1]
    by_query = visible is not None and visible.shape[2] > 1
    batch_t, heads_t, block_q = _flash_tiles(N, n_head, len_q, len_k, by_query, tile)
    ranges = None
    if visible is not None and visible.shape[3] == len_k > 1:
        ranges = _visible_keys(visible, block_q)
    buf = q.new_empty(batch_t * heads_t * block_q * min(len_k, FLASH_BLOCK_K)) \
        if inplace else None
    out = q.new_empty(N, n_head, len_q, d_v) if inplace else None
    rows = []
    for n0 in range(0, N, batch_t):
        n = range(n0, min(n0 + batch_t, N))
        heads = []
        for h0 in range(0, n_head, heads_t):
            h = range(h0, min(h0 + heads_t, n_head))
            # (B, len, d), B = len(n) * len(h): one batch element, or whole heads
            k_g = k[n.start:n.stop, h.start:h.stop].flatten(0, 1)  # (B, len_k, d_k)
            v_g = v[n.start:n.stop, h.start:h.stop].flatten(0, 1)  # (B, len_k, d_v)
            bias_g = None if bias is None else \
                _part(_part(bias, 0, n.start, n.stop), 1, h.start, h.stop)
            parts = []
            for tile, s0 in enumerate(range(0, len_q, block_q)):
                s1 = min(s0 + block_q, len_q)
                lo, hi = _key_range(ranges, len_k, n, h, tile)
                q_t = q[n.start:n.stop, h.start:h.stop, s0:s1].flatten(0, 1)  # (B, T, d_k)
                bias_t = None if bias_g is None else \
                    _part(_part(bias_g, 2, s0, s1), 3, lo, hi)  # (len(n)|1, len(h)|1, T|1, S)
                if out is None:
                    parts.append(_attend_tile(q_t, k_g[:, lo:hi], v_g[:, lo:hi], bias_t,
                                              scale, len(h), False))
                    continue
                out_t = out[n.start:n.stop, h.start:h.stop, s0:s1]  # (len(n), len(h), T, d_v)
                out_t = out_t.view(-1, s1 - s0, d_v)  # (B, T, d_v): a view, so bmm fills out
                _attend_tile(q_t, k_g[:, lo:hi], v_g[:, lo:hi], bias_t, scale, len(h), True,
                             buf, out_t)
            if out is None:
                heads.append(_cat(parts, 1))  # (B, len_q, d_v)
        if out is None:
            rows.append(_cat(heads, 0).unflatten(0, (len(n), -1)))  # (n, h, len_q, d_v)
    return _cat(rows, 0) if out is None else out  # (N, h, len_q, d_v)


@register_impl("attention", "flash", notes="returns no attention weights")
def attention_flash(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                    temperature: float) -> Tensor:
    """Tiled exact softmax: cache-sized tiles of queries, each against every key it can see.

    FlashAttention's tiling, sized for the device (``tile_scores``: on a CPU, L2-sized): each
    tile holds about FLASH_TILE scores (a few heads, or a block of queries of one head),
    computed (1 / temperature folded into the GEMM), masked, softmaxed in place and multiplied
    by v while in L2 cache; the full
    ``(len_q, len_k)`` matrix never exists. A tile's rows fit whole, so the softmax is exact
    (no running rescale) up to FLASH_BLOCK_K keys; past that the online softmax joins key
    blocks. A tile skips the keys the mask hides from all its queries (causal, padding): their
    weight is exactly zero. Half precision is computed in float32 and rounded once. A row that
    sees no key gets the mean of v, as the notes' -1e9 fill gives.
    """
    N, n_head, len_q, _ = q.shape
    len_k, d_v, dtype = k.shape[2], v.shape[-1], q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    visible = bias = None
    if mask is not None:
        visible = mask if mask.dtype == torch.bool else mask != 0
        visible = visible.reshape((1,) * (4 - visible.dim()) + tuple(visible.shape))
        bias = q.new_zeros(visible.shape).masked_fill_(~visible, MASK_FILL)  # (N|1, h|1, *)
    # in place without autograd, except under torch.compile, which plans its own buffers
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    inplace = not (grad or torch.compiler.is_compiling())
    scale, tile = 1.0 / temperature, tile_scores(q.device)
    if N * n_head * len_q * len_k <= tile:  # one tile: no loop
        B = N * n_head
        result = _attend_tile(q.reshape(B, len_q, -1), k.reshape(B, len_k, -1),
                              v.reshape(B, len_k, -1), bias, scale, n_head, inplace)
        result = result.view(N, n_head, len_q, d_v)  # from (N * h, len_q, d_v)
    else:
        result = _flash_tiled(q, k, v, visible, bias, scale, inplace, tile)
    if visible is not None:
        sees = visible.any(-1, keepdim=True)  # (N|1, h|1, len_q|1, 1)
        if not bool(sees.all()):  # a row with every key masked: the mean of all values
            result = torch.where(sees, result, v.mean(2, keepdim=True))
    return result if result.dtype == dtype else result.to(dtype)


__all__ = ["attention_flash"]
