"""LayerNorm: the post-norm LayerNorm of the notes' MultiHeadAttention and
PositionwiseFeedForward (eps 1e-6)."""

#: the notes' LayerNorm epsilon (PyTorch's default is 1e-5)
LN_EPS = 1e-6
