"""Elman RNN sizes: seq_len, N, vocab_size, embed_dim, hidden_dim, output_dim.

The notes give no sizes for myRNN. Its ``forward(text)  # [seq_len, batch_size]`` is the RNN of
bentrevett/pytorch-sentiment-analysis ("1 - Simple Sentiment Analysis", IMDB), whose settings
we take: a 25,000-word vocabulary plus <unk> and <pad> (25,002), embedding 100, hidden 256, one
output (positive/negative), batches of 64. IMDB reviews run to a few hundred tokens: seq_len 256.
"""

from impls.rnn import LAYER
from suites.presets import sizes

PARAMS = LAYER.params

NOTES = sizes(PARAMS, (256, 64, 25002, 100, 256, 1))[0]

PRESETS = {
    "quick": sizes(PARAMS,
        (5, 3, 50, 8, 16, 2),  # tiny: every path in a fraction of a second
        (256, 64, 25002, 100, 256, 1),
    ),
    # seq_len 16 -> 512: the cost of the serial recurrence grows linearly with it, and the
    # per-step overhead of the Python loop shows at the short end.
    "default": sizes(PARAMS,
        (16, 64, 25002, 100, 256, 1),
        (64, 64, 25002, 100, 256, 1),
        (128, 64, 25002, 100, 256, 1),
        (256, 64, 25002, 100, 256, 1),
        (512, 64, 25002, 100, 256, 1),
    ),
    "full": sizes(PARAMS,
        (16, 64, 25002, 100, 256, 1),
        (64, 64, 25002, 100, 256, 1),
        (128, 64, 25002, 100, 256, 1),
        (256, 64, 25002, 100, 256, 1),
        (512, 64, 25002, 100, 256, 1),
        (1024, 64, 25002, 100, 256, 1),  # long documents
        (256, 64, 25002, 300, 512, 1),  # GloVe-300 embeddings, wider state
        (256, 128, 50000, 512, 1024, 2),  # large vocabulary and state: GEMM-bound steps
    ),
}
