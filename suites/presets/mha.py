"""Multi-head attention sizes: N, len_q, len_k, d_model, n_head, d_k, d_v, mask.

``mask``: 0 none, 1 key padding ``(N, 1, len_k)``, 2 causal ``(1, len_q, len_k)``, 3 padding and
causal ``(N, len_q, len_k)`` (the decoder's self-attention). No preset has a fully masked row.
"""

from impls.mha import LAYER
from suites.presets import sizes

PARAMS = LAYER.params

# The quoted repository's defaults (d_model 512, n_head 8, d_k = d_v = 64) on a short padded
# batch, as in its encoder self-attention.
NOTES = sizes(PARAMS, (16, 32, 32, 512, 8, 64, 64, 1))[0]

# one sequence, so the whole default run stays near a minute on a 2-core CPU
_SWEEP = [(1, n, n, 512, 8, 64, 64, 0) for n in (32, 64, 128, 256, 512, 1024)]
_MASKS = [(2, 256, 256, 512, 8, 64, 64, mask) for mask in (1, 2)]

PRESETS = {
    # seconds: tiny shapes (cross-attention len_q != len_k, d_k != d_v where the builtin can't
    # follow is left to the tests), every mask kind, and the notes' size
    "quick": sizes(PARAMS,
        (2, 5, 7, 16, 2, 8, 8, 0),
        (2, 6, 9, 16, 2, 8, 8, 1),
        (1, 7, 7, 16, 4, 4, 4, 2),
        (3, 8, 8, 24, 3, 8, 8, 3),
        (16, 32, 32, 512, 8, 64, 64, 1),
    ),
    # sequence length 32..1024 unmasked; padding and causal at 256; all at the notes' d_model 512
    "default": sizes(PARAMS, *_SWEEP, *_MASKS, (16, 32, 32, 512, 8, 64, 64, 1)),
    "full": sizes(PARAMS,
        *_SWEEP, *_MASKS,
        (16, 32, 32, 512, 8, 64, 64, 1),
        (32, 128, 128, 512, 8, 64, 64, 3),  # a translation batch: decoder self-attention
        (32, 96, 128, 512, 8, 64, 64, 1),  # decoder cross-attention over a padded source
        (8, 1024, 1024, 512, 8, 64, 64, 2),
        (4, 1024, 1024, 1024, 16, 64, 64, 0),  # the repository's "big" model width
    ),
}
