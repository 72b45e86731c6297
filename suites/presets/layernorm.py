"""LayerNorm sizes: N, len, d_model (normalised over d_model, one row per token).

The cost is the number of elements ``N * len * d_model``; the loops pay per token row
(``N * len``), the fused hand-written version per full-size pass over memory.
"""

from impls.layernorm import LAYER
from suites.presets import sizes

PARAMS = LAYER.params

# The LayerNorm inside the notes' MultiHeadAttention at the mha notes' size: d_model 512 on 16
# padded sequences of 32 tokens.
NOTES = sizes(PARAMS, (16, 32, 512))[0]

# tokens 32..8192 at the notes' width (8192 x 512 float32 is 16 MiB: far past the 1 MiB L2)
_TOKENS = [(1, 32, 512), (4, 32, 512), (16, 128, 512), (64, 128, 512)]
# d_model 64..4096 at the notes' 512 tokens: few features per row is where per-row overheads show
_WIDTH = [(16, 32, 64), (16, 32, 256), (16, 32, 1024), (16, 32, 2048), (16, 32, 4096)]

PRESETS = {
    # seconds: tiny odd shapes (one token of three features; d_model not a multiple of the vector
    # width) and the notes' size
    "quick": sizes(PARAMS,
        (2, 3, 8),
        (1, 1, 3),
        (3, 5, 17),
        tuple(NOTES.values()),
    ),
    # tokens 32..8192 at d_model 512, d_model 64..4096 at 512 tokens, and the notes' size
    "default": sizes(PARAMS, *_TOKENS, *_WIDTH, tuple(NOTES.values())),
    "full": sizes(PARAMS,
        *_TOKENS, *_WIDTH, tuple(NOTES.values()),
        (64, 128, 1024),  # the repository's "big" width: 32 MiB of float32, fresh pages each call
        (32, 512, 512),  # a long-sequence batch: 16k tokens
        (8, 1024, 4096),
    ),
}
