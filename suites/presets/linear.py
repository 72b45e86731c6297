"""Linear sizes: N, in_features, out_features."""

from impls.linear import LAYER
from suites.presets import sizes

PARAMS = LAYER.params

NOTES = sizes(PARAMS, (64, 1352, 10))[0]  # MyCNN's fc: 8 * 13 * 13 -> 10 on 64 MNIST digits

PRESETS = {
    # seconds: tiny sizes for the loops, plus the notes' size
    "quick": sizes(PARAMS,
        (3, 7, 5),
        (2, 33, 1),  # one output feature
        (64, 1352, 10),
    ),
    # 27 thousand to 8.6 billion FLOPs forward: from the notes' fc to a large square GEMM
    "default": sizes(PARAMS,
        (1, 1352, 10),  # one MNIST digit
        (64, 1352, 10),
        (64, 1024, 256),
        (512, 1024, 1024),
        (1024, 2048, 2048),
    ),
    "full": sizes(PARAMS,
        (1, 1352, 10),
        (64, 1352, 10),
        (64, 1024, 256),
        (512, 1024, 1024),
        (1024, 2048, 2048),
        (1024, 4096, 4096),  # a transformer's FFN-sized GEMM
        (4096, 512, 2048),  # d_model 512 -> d_inner 2048 on 4096 tokens
    ),
}
