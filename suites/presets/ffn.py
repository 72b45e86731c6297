"""Position-wise feed-forward sizes: N, len, d_model, d_inner.

Two GEMMs of ``N * len`` tokens by ``d_model x d_inner``: the cost is ``N * len`` (the tokens)
times ``d_model * d_inner``; d_inner = 4 d_model, as the paper's.
"""

from impls.ffn import LAYER
from suites.presets import sizes

PARAMS = LAYER.params

# The quoted repository's FFN (d_model 512, d_inner 2048) on the mha notes' batch: 16 padded
# sequences of 32 tokens, the encoder self-attention's input.
NOTES = sizes(PARAMS, (16, 32, 512, 2048))[0]

# tokens 32..4096 at the notes' width (with the notes' 512); 4096 tokens: 17 GFLOP forward
_TOKENS = [(n, 32, 512, 2048) for n in (1, 4, 64, 128)]
_WIDTH = [(16, 32, d, 4 * d) for d in (128, 256, 1024)]  # ~ d_model^2

PRESETS = {
    # seconds: tiny odd shapes (one token; d_inner < d_model), and the notes' size
    "quick": sizes(PARAMS,
        (2, 5, 12, 40),
        (1, 1, 8, 6),
        (3, 7, 20, 33),
        tuple(NOTES.values()),
    ),
    # tokens 32..4096 at d_model 512, d_model 128..1024 at 512 tokens, and the notes' size
    "default": sizes(PARAMS, *_TOKENS, *_WIDTH, tuple(NOTES.values())),
    "full": sizes(PARAMS,
        *_TOKENS, *_WIDTH, tuple(NOTES.values()),
        (64, 128, 512, 2048),  # a large translation batch: 8192 tokens
        (16, 200, 1024, 4096),  # the paper's "big" model, longest input
    ),
}
