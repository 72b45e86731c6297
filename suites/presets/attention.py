"""Scaled dot-product attention sizes: N, n_head, len_q, len_k, d_k, d_v, mask.

``mask``: 0 none, 1 key padding (random trailing keys of each batch element), 2 causal (lower
triangular incl. the diagonal, aligned top-left), 3 padding and causal (the decoder's
self-attention). No preset has a fully masked row, where SDPA and the notes' -1e9 fill differ.
"""

from impls.attention import LAYER
from suites.presets import sizes

PARAMS = LAYER.params

# The quoted repository's heads (n_head 8, d_k = d_v = 64) on a short padded batch, as in its
# encoder self-attention.
NOTES = sizes(PARAMS, (16, 8, 32, 32, 64, 64, 1))[0]

# one sequence (its float64 reference at 1024 already takes ~0.3 s per trial here)
_SWEEP = [(1, 8, n, n, 64, 64, 0) for n in (32, 64, 128, 256, 512, 1024)]
_MASKS = [(2, 8, 256, 256, 64, 64, mask) for mask in (1, 2)]

PRESETS = {
    # seconds: tiny odd shapes (len_q != len_k, d_k != d_v), every mask kind, and the notes' size
    "quick": sizes(PARAMS,
        (2, 2, 5, 7, 8, 4, 0),
        (2, 3, 6, 9, 4, 8, 1),
        (1, 2, 7, 7, 8, 8, 2),
        (3, 2, 8, 5, 8, 8, 3),  # len_q > len_k: the causal mask stays top-left aligned
        (16, 8, 32, 32, 64, 64, 1),
    ),
    # sequence length 32..1024 unmasked (cost grows as len^2); padding and causal at 256
    "default": sizes(PARAMS, *_SWEEP, *_MASKS, (16, 8, 32, 32, 64, 64, 1)),
    "full": sizes(PARAMS,
        *_SWEEP, *_MASKS,
        (16, 8, 32, 32, 64, 64, 1),
        (32, 8, 128, 128, 64, 64, 3),  # a translation batch: decoder self-attention
        (8, 8, 1024, 1024, 64, 64, 2),
        (2, 8, 2048, 2048, 64, 64, 0),
        (1, 16, 2048, 2048, 128, 128, 2),  # large heads
    ),
}
