"""Transformer sizes: N, src_len, trg_len, n_layers, d_model, n_head, d_k, d_v, d_inner,
n_vocab.

The whole model (src, trg -> logits) with the repository's defaults: one embedding table shared
by source, target and the logits projection, scale_emb_or_prj = "prj"; padded sequences
(pad_idx 0). Lengths are at most the positional table's n_position = 200.
"""

from impls.transformer import TRANSFORMER
from suites.presets import sizes

PARAMS = TRANSFORMER.params

# The quoted repository's model (6 + 6 layers, d_model 512, n_head 8, d_k = d_v = 64,
# d_inner 2048) on a short padded batch.
NOTES = sizes(PARAMS, (4, 32, 32, 6, 512, 8, 64, 64, 2048, 1000))[0]

_TINY = (2, 7, 5, 1, 16, 2, 8, 8, 32, 50)  # small enough for the per-query loops
_SEQ = [(4, n, n, 2, 256, 4, 64, 64, 1024, 1000) for n in (16, 64, 200)]
_WIDTH = [(4, 64, 64, 2, d, 4, d // 4, d // 4, 4 * d, 1000) for d in (64, 512)]

PRESETS = {
    # seconds: tiny shapes (src_len != trg_len), and the notes' size
    "quick": sizes(PARAMS, _TINY, (3, 4, 8, 2, 24, 3, 8, 8, 40, 30), tuple(NOTES.values())),
    # lengths 16..200 at d_model 256, and the notes' size (d_model 512, 6 + 6 layers); the
    # whole model costs about twice a stack, so one width fewer than encoder and decoder
    "default": sizes(PARAMS, *_SEQ, tuple(NOTES.values())),
    "full": sizes(PARAMS,
        _TINY, *_SEQ, *_WIDTH, tuple(NOTES.values()),
        (32, 100, 100, 6, 512, 8, 64, 64, 2048, 10000),  # a translation batch
        (16, 200, 200, 6, 1024, 16, 64, 64, 4096, 32000),  # the paper's "big" model
    ),
}
